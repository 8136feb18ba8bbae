"""``thread_policy``: grpc's helper threads run SCHED_BATCH, the event loop does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from test_workers import children

from conftest import serving_line, until
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.threads import helper_threads

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH"), reason="scheduling policies are Linux-only"
)

NAMES = {getattr(os, n): n for n in ("SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE") if hasattr(os, n)}


def policies(pid: int) -> dict[int, str]:
    """Every thread of ``pid`` and its scheduling policy, by name."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = NAMES.get(os.sched_getscheduler(int(task.name)), "other")
        except OSError:  # the thread ended while we looked
            continue
    return out


def say_hello(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        reply = helloworld_pb2_grpc.GreeterStub(channel).SayHello(
            helloworld_pb2.HelloRequest(name="sched"), timeout=10
        )
    assert reply.message == "Hello, sched!"


def assert_helpers_batch_loop_normal(pid: int) -> None:
    found = policies(pid)
    assert found.pop(pid) == "SCHED_OTHER", "the event loop thread must keep the normal policy"
    # grpc's poller, timer, event-engine and lifeguard threads, and the metrics thread.
    assert len(found) >= 3, found
    assert set(found.values()) == {"SCHED_BATCH"}, found


def test_serve_runs_grpc_threads_batch_and_the_loop_normal(spawn_server: Callable) -> None:
    server = spawn_server()
    say_hello(server.address)  # threads grpc starts on the first call are covered too
    assert_helpers_batch_loop_normal(server.proc.pid)
    code, _, err = server.stop()
    assert code == 0
    assert serving_line(err)["thread_policy"] == "batch"


def test_thread_policy_normal_leaves_every_thread_alone(spawn_server: Callable) -> None:
    server = spawn_server(env={"GREETER_THREAD_POLICY": "normal"})
    say_hello(server.address)
    found = policies(server.proc.pid)
    assert len(found) >= 4, found
    assert set(found.values()) == {"SCHED_OTHER"}, found
    code, _, err = server.stop()
    assert code == 0
    assert serving_line(err)["thread_policy"] == "normal"


async def test_each_worker_runs_its_grpc_threads_batch(spawn_server: Callable) -> None:
    server = spawn_server("--workers", "2")
    # The port answers once the first worker listens; wait for both to say they serve.
    log = await until(lambda: server.output()[1], lambda err: err.count('"serving"') >= 2, 60)
    assert log.count('"serving"') == 2, log
    say_hello(server.address)
    workers = children(server.proc.pid)
    assert len(workers) == 2
    for pid in workers:
        assert_helpers_batch_loop_normal(pid)
    assert server.stop()[0] == 0


def test_a_policy_chosen_by_the_operator_is_kept(spawn_server: Callable) -> None:
    """Started as under ``chrt --batch``: the loop thread too stays batch, and greeter says
    it left the policy alone. (Not ``--idle``: an idle server barely runs on a busy machine.)"""
    server = spawn_server(
        preexec=lambda: os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    )
    say_hello(server.address)
    found = policies(server.proc.pid)
    assert found[server.proc.pid] == "SCHED_BATCH", found
    assert set(found.values()) == {"SCHED_BATCH"}, found
    code, _, err = server.stop()
    assert code == 0
    assert (
        serving_line(err)["thread_policy"]
        == "unchanged (the process runs under scheduling policy SCHED_BATCH)"
    )


def test_only_threads_started_inside_are_batch_and_the_caller_returns() -> None:
    release = threading.Event()
    before = threading.Thread(target=release.wait)
    before.start()
    with helper_threads("batch") as applied:
        assert applied == "batch"
        assert os.sched_getscheduler(0) == os.SCHED_BATCH
        inside = threading.Thread(target=release.wait)
        inside.start()
    try:
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        assert inside.native_id is not None
        assert before.native_id is not None
        assert os.sched_getscheduler(inside.native_id) == os.SCHED_BATCH
        assert os.sched_getscheduler(before.native_id) == os.SCHED_OTHER
        # Threads started after the block are normal again.
        after = threading.Thread(target=release.wait)
        after.start()
        assert after.native_id is not None
        assert os.sched_getscheduler(after.native_id) == os.SCHED_OTHER
    finally:
        release.set()


def test_the_caller_returns_to_normal_when_start_up_fails() -> None:
    with pytest.raises(RuntimeError, match="bind failed"), helper_threads("batch") as applied:
        assert applied == "batch"
        assert os.sched_getscheduler(0) == os.SCHED_BATCH
        raise RuntimeError("bind failed")
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="realtime"), helper_threads("realtime"):
        pass


LOAD_PROBE = """
import json, os, sys, threading
from greeter.client import Target
from greeter.load import LoadConfig, run_load
seen = {}
stop = threading.Event()
def watch():  # started before the load: itself normal, and not one of grpc's
    while not stop.is_set():
        for task in os.listdir("/proc/self/task"):
            try:
                name = open(f"/proc/self/task/{task}/comm").read().strip()
                seen[task] = (name, os.sched_getscheduler(int(task)))
            except OSError:
                pass
        stop.wait(0.02)
watcher = threading.Thread(target=watch)
watcher.start()
report = run_load(LoadConfig(target=Target(sys.argv[1]), total=2000, concurrency=16, procs=1,
                             engine="grpc"))
stop.set()
watcher.join()
seen.pop(str(watcher.native_id), None)
print(json.dumps({"ok": report["ok"], "main": seen.pop(str(os.getpid()))[1],
                  "threads": sorted(set(seen.values()))}))
"""


def test_the_load_testers_grpc_threads_are_batch(spawn_server: Callable) -> None:
    server = spawn_server()
    out = subprocess.run(
        [sys.executable, "-c", LOAD_PROBE, server.address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] == 2000
    assert result["main"] == os.SCHED_OTHER
    grpc_threads = {name: policy for name, policy in result["threads"] if name != "python"}
    # grpc's event-engine, timer and lifeguard threads were all born batch.
    assert {"event_engine", "lifeguard"} <= set(grpc_threads), result
    assert set(grpc_threads.values()) == {os.SCHED_BATCH}, result
    assert server.stop()[0] == 0
