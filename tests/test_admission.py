"""Admission control over real calls: what is shed, why, and what is never shed.

Overload is made on purpose, not hoped for from the machine's speed: a fixed cap on calls in
flight held by calls the fault injection keeps waiting, an event loop kept busy by the test
itself (the queue the adaptive controller measures), and a deadline that has passed before
the handler could start (the gRPC-Web port, where a 1 ns grpc-timeout is certain to have).
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import pytest
import web_support as ws
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_metrics import scrape, value

from conftest import channel_to, free_port, running, until
from greeter import admission as adm
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.connections import ConnectionReader, Connections
from greeter.load.render import CORE_DROP
from greeter.metrics import CoreDrops
from greeter.server import server_options
from greeter.service import Greeter
from greeter.settings import Settings

HelloRequest = helloworld_pb2.HelloRequest
GREETER = "helloworld.Greeter"
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
HOLD = (("x-greeter-fault-delay-ms", "60000"),)  # cancelled by the test long before


@pytest.fixture
def handled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names SayHello's handler itself ran for (servers started after this fixture)."""
    ran: list[str] = []
    real = Greeter.SayHello

    async def counting(self: Greeter, request: HelloRequest, context: object) -> object:
        ran.append(request.name)
        return await real(self, request, context)  # type: ignore[arg-type]

    monkeypatch.setattr(Greeter, "SayHello", counting)
    return ran


def shed(samples: dict, reason: str, method: str = "SayHello") -> float:
    labels = {"grpc_service": GREETER, "grpc_method": method, "reason": reason}
    return value(samples, "greeter_server_shed_total", **labels)


async def test_a_fixed_limit_sheds_the_calls_past_it_before_their_handler(handled, caplog):
    caplog.set_level(logging.INFO, logger="greeter.access")
    async with (
        running(admission_limit=2, fault_enabled=True, access_log=True) as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        held = [asyncio.ensure_future(stub.SayHello(HelloRequest(), metadata=HOLD)) for _ in "ab"]
        admission = server.admission
        assert admission is not None
        await until(lambda: admission.in_flight, lambda n: n == 2, timeout=10)
        assert admission.in_flight == 2
        for name in ("c", "d", "e"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SayHello(HelloRequest(name=name))
            assert refused.value.code() is EXHAUSTED
            assert refused.value.details().startswith("overloaded: 2 calls in flight already")
        assert handled == []  # the shed calls never reached the handler
        # health is never shed: an overloaded pod is not a dead one
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=GREETER))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for call in held:
            call.cancel()
        await until(lambda: admission.in_flight, lambda n: n == 0, timeout=10)
        assert (await stub.SayHello(HelloRequest(name="f"))).message == "Hello, f!"
        assert handled == ["f"]
        samples = scrape(server.metrics_port)
        assert shed(samples, "limit") == 3
        assert shed(samples, "queue") == shed(samples, "deadline") == 0
        assert value(samples, "greeter_server_admission_limit") == 2
    lines = [r for r in caplog.records if r.name == "greeter.access"]
    marked = [r for r in lines if getattr(r, "shed", None)]
    assert len(marked) == 3
    assert all(r.code == "RESOURCE_EXHAUSTED" for r in marked)
    assert all(r.shed.startswith("2 calls in flight") for r in marked)
    assert not any(getattr(r, "shed", None) for r in lines if r.code != "RESOURCE_EXHAUSTED")


async def _hog(stop: asyncio.Event, slice_s: float) -> None:
    """Keep the event loop busy: ``slice_s`` of work between every turn it gets back."""
    while not stop.is_set():
        time.sleep(slice_s)  # noqa: ASYNC251 (a queue on the loop is the point)
        await asyncio.sleep(0)


async def test_a_standing_queue_on_the_event_loop_sheds_new_calls_and_its_end_stops_it(handled):
    # Every probe of the loop waits behind a 60 ms slice of the hog: a standing queue of at
    # least 55 ms, above a fixed 20 ms target, window after window; eight clients keep calls
    # waiting in it (one listener: its extra requests, which admission counts, take most).
    async with (
        running(admission_queue_target=0.02, listeners=1) as server,
        channel_to(server) as channel,
    ):
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        assert (await stub.SayHello(HelloRequest(name="before"))).message == "Hello, before!"
        admission = server.admission
        assert admission is not None
        assert not admission.shedding
        stop = asyncio.Event()
        refusals: list[grpc.aio.AioRpcError] = []

        async def client() -> None:
            while not stop.is_set():
                try:
                    await stub.SayHello(HelloRequest(name="during"))
                except grpc.aio.AioRpcError as exc:
                    refusals.append(exc)

        hog = asyncio.ensure_future(_hog(stop, 0.06))
        clients = [asyncio.ensure_future(client()) for _ in range(8)]
        try:
            await until(lambda: refusals, bool, timeout=20)
            assert refusals, "nothing was shed"
            refused = refusals[0]
            assert refused.code() is EXHAUSTED
            assert refused.details().startswith("overloaded: calls wait ")
            assert "above the 20 ms target" in refused.details()
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=GREETER))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            samples = scrape(server.metrics_port)
            assert value(samples, "greeter_server_queue_delay_seconds") > 0.02
            assert value(samples, "greeter_server_queue_delay_target_seconds") == 0.02
            assert shed(samples, "queue") >= 1
        finally:
            stop.set()
            await asyncio.gather(hog, *clients)
        assert all(r.code() is EXHAUSTED for r in refusals)
        await until(lambda: admission.shedding, lambda s: not s, timeout=10)
        assert not admission.shedding
        handled.clear()
        assert (await stub.SayHello(HelloRequest(name="after"))).message == "Hello, after!"
        assert handled == ["after"]
        assert value(scrape(server.metrics_port), "greeter_server_shedding") == 0


async def test_a_call_whose_deadline_passed_is_not_run(handled):
    # The gRPC-Web port shares the pipeline; its deadline starts when the request arrives,
    # so a 1 ns grpc-timeout has passed by the time the handler would start.
    port = free_port()
    async with running(web_port=port) as server:
        reply = await ws.request(port, f"/{GREETER}/SayHello", ws.hello("late"), grpc_timeout="1n")
        assert reply.grpc_status == EXHAUSTED.value[0]
        message = reply.trailers["grpc-message"]
        assert message.startswith("overloaded: the call")
        assert "deadline passed" in message
        ok = await ws.request(port, f"/{GREETER}/SayHello", ws.hello("soon"), grpc_timeout="5S")
        assert ok.grpc_status == 0
        assert ws.reply_text(ok) == ["Hello, soon!"]
        assert handled == ["soon"]
        assert shed(scrape(server.metrics_port), "deadline") == 1


async def test_nothing_is_shed_at_low_load(handled):
    async with running() as server, channel_to(server) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for batch in range(5):
            names = [f"{batch}-{i}" for i in range(20)]
            replies = await asyncio.gather(*(stub.SayHello(HelloRequest(name=n)) for n in names))
            assert [r.message for r in replies] == [f"Hello, {n}!" for n in names]
        assert len(handled) == 100
        samples = scrape(server.metrics_port)
        assert all(shed(samples, reason) == 0 for reason in adm.REASONS)
        assert value(scrape(server.metrics_port), CORE_DROPPED) == 0  # after two readings
        assert server.admission is not None
        assert server.admission.in_flight == 0


async def test_admission_off_sheds_nothing_and_leaves_grpc_its_default():
    async with (
        running(admission_control=False, admission_limit=1, fault_enabled=True) as server,
        channel_to(server) as channel,
    ):
        assert server.admission is None
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        held = asyncio.ensure_future(stub.SayHello(HelloRequest(), metadata=HOLD))
        await asyncio.sleep(0.2)  # not a timing assertion: the held call may start or not
        assert (await stub.SayHello(HelloRequest(name="x"))).message == "Hello, x!"
        held.cancel()
    options = dict(server_options(Settings(admission_control=False)))
    assert "grpc.server_max_unrequested_time_in_server" not in options
    on = dict(server_options(Settings(admission_core_wait=3)))
    assert on["grpc.server_max_unrequested_time_in_server"] == 3


CORE_DROPPED = "greeter_server_core_dropped_total"


async def test_calls_grpc_core_drops_are_answered_cancelled_and_counted():
    # The event loop is held (by this test) past admission_core_wait: calls no request of the
    # server has taken by then are dropped by grpc-core, which no Python code sees; the
    # metric counts them from channelz. accept_depth 1: one call is taken (and then served).
    sent = 12
    async with running(admission_core_wait=1, accept_depth=1) as server:
        reader = ConnectionReader(f":{server.port}")
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)  # core accepts: no loop needed
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            # a sync client: its calls go out on grpc's threads while this loop is held
            calls = [
                stub.SayHello.future(HelloRequest(name=f"{i}"), timeout=30) for i in range(sent)
            ]
            _hold_the_loop(reader, sent)
            ends = [await asyncio.to_thread(_end_of, call) for call in calls]
        codes = [code for code, _ in ends]
        dropped = codes.count(grpc.StatusCode.CANCELLED)
        # a bare CANCELLED: what `greeter load` names as the server's refusal (render.CORE_DROP)
        assert {f"{code.name}: {details}" for code, details in ends if details} == {CORE_DROP}
        assert dropped >= sent - 2  # one taken by grpc.aio's request, perhaps one more
        assert codes.count(grpc.StatusCode.OK) == sent - dropped
        # two readings in a row show a drop before it is counted: scrape until it is
        samples = await until(
            lambda: scrape(server.metrics_port), lambda s: value(s, CORE_DROPPED) == dropped
        )
        assert value(samples, CORE_DROPPED) == dropped
        assert all(shed(samples, reason) == 0 for reason in adm.REASONS)  # not the pipeline's


def _hold_the_loop(reader: ConnectionReader, sent: int) -> None:
    """Hold the event loop (the server's too) until the ``sent`` calls have reached the
    server, then past the 1 s core wait (bounded)."""
    held_until = time.monotonic() + 10
    while reader.read().unresolved < sent and time.monotonic() < held_until:
        time.sleep(0.01)
    assert reader.read().unresolved == sent  # every call reached the server
    time.sleep(2.5)


def _end_of(call: grpc.Future) -> tuple[grpc.StatusCode, str]:
    try:
        call.result()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_a_core_drop_is_counted_once_two_readings_show_it():
    drops = CoreDrops()
    # a call that ended while one reading was taken looks dropped in that reading only
    assert drops.update(Connections((0,), unresolved=1)) == 0
    assert drops.update(Connections((0,), unresolved=0)) == 0
    assert drops.count == 0
    # calls in flight are not dropped; drops are what is left over
    assert drops.update(Connections((3, 2), unresolved=8)) == 0  # 3 dropped, seen once
    assert drops.update(Connections((1,), unresolved=4)) == 3  # seen again: counted
    assert drops.update(Connections((), unresolved=5)) == 0  # 5 seen once
    assert drops.update(Connections((), unresolved=5)) == 2
    assert drops.count == 5


def test_the_adaptive_target_follows_the_queue_free_delay_within_its_bounds():
    control = adm.Admission()
    control.accepted = slow_accepted = adm.MIN_QUEUED  # calls waiting: a queue, not starvation
    now = 0.0
    for delay in (0.001, 0.002, 0.001):  # a quiet loop: the floor
        now += adm.WINDOW
        control.observe(delay, now)
    assert control.target == adm.TARGET_FLOOR
    assert not control.shedding
    now += adm.WINDOW
    control.observe(0.5, now)  # a standing queue of 500 ms
    assert control.shedding
    assert control.message(adm.QUEUE).startswith("overloaded: calls wait 500 ms")
    assert control.refuse(None) == adm.QUEUE  # no deadline: the target is its budget
    assert control.refuse(0.5) == adm.QUEUE  # cannot wait out two turns of a 500 ms queue
    assert control.refuse(5.0) is None  # time enough: run it, however long the queue
    slow = adm.Admission()
    slow.accepted = slow_accepted
    for _ in range(adm.BASELINE_WINDOWS + 1):  # a slower machine's quiet loop: 4x its delay
        now += adm.WINDOW
        slow.observe(0.01, now)
    assert slow.target == pytest.approx(0.04)
    for _ in range(adm.BASELINE_WINDOWS + 1):  # however long an overload, the target is capped
        now += adm.WINDOW
        slow.observe(1.0, now)
    assert slow.target == adm.TARGET_CEILING
    assert slow.shedding
    fixed = adm.Admission(target=0.3)
    now += adm.WINDOW
    fixed.observe(0.25, now)
    assert fixed.target == 0.3
    assert not fixed.shedding
    starved = adm.Admission()  # a late loop with no call waiting: a busy machine, not overload
    starved.accepted = adm.MIN_QUEUED - 1
    now += adm.WINDOW
    starved.observe(0.5, now)
    assert not starved.shedding
    assert fixed.refuse(0.0) == adm.DEADLINE
    assert fixed.refuse(None) is None
