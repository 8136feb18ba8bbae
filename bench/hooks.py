"""Per-call cost of the interceptor pipeline, without the network: each
configuration's wrapped SayHello handler is awaited in a tight loop with a
stand-in context, and the time per call is compared with the bare handler.

``python -m bench.hooks`` (microseconds per call; lower is better).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.metrics import ServerMetrics
from greeter.pipeline import Registrar
from greeter.server import interceptors
from greeter.service import Greeter
from greeter.settings import Settings


class FakeContext:
    """Enough of ``grpc.aio.ServicerContext`` for the hooks."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._trailers = metadata

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass

    def code(self) -> grpc.StatusCode | None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def time_remaining(self) -> float | None:
        return None


CONFIGS: dict[str, dict[str, Any]] = {
    "no hooks": {"pod_name": "", "access_log": False, "metrics_port": 0, "server_timing": False},
    "server-timing": {"pod_name": "", "access_log": False, "metrics_port": 0},
    "identity, no server-timing": {"access_log": False, "metrics_port": 0, "server_timing": False},
    "identity": {"access_log": False, "metrics_port": 0},
    "identity+metrics": {"access_log": False},
    "identity+metrics+log 1%": {"access_log_sample": 0.01, "access_log_budget": 0},
    "identity+metrics+log 1%+auth": {
        "access_log_sample": 0.01,
        "access_log_budget": 0,
        "auth_enabled": True,
        "auth_tokens": ("t",),
    },
}


def handler(settings: Settings) -> Any:
    registrar = Registrar()
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(settings), registrar)
    metrics = ServerMetrics(registry=None) if settings.metrics_port else None

    class Capture:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            self.handlers = handlers

    capture = Capture()
    registrar.install([capture], interceptors(settings, metrics), timing=settings.server_timing)
    return capture.handlers["SayHello"].unary_unary


async def per_call(behavior: Any, calls: int) -> float:
    request = helloworld_pb2.HelloRequest(name="world")
    context = FakeContext((("authorization", "Bearer t"), (":authority", "x")))
    for _ in range(1000):
        await behavior(request, context)
    began = time.perf_counter()
    for _ in range(calls):
        await behavior(request, context)
    return (time.perf_counter() - began) / calls * 1e6


async def main(calls: int = 100_000, rounds: int = 5) -> None:
    logging.getLogger("greeter.access").addHandler(logging.NullHandler())
    logging.getLogger("greeter.access").propagate = False
    logging.getLogger("greeter.access").setLevel(logging.INFO)
    base = {"host": "127.0.0.1", "port": 0, "metrics_port": 1, "pod_name": "pod"}
    behaviors = {name: handler(Settings(**{**base, **c})) for name, c in CONFIGS.items()}
    results: dict[str, list[float]] = {name: [] for name in behaviors}
    for _ in range(rounds):
        for name, behavior in behaviors.items():
            results[name].append(await per_call(behavior, calls))
    floor = min(results["no hooks"])
    print("| hooks | µs per call (best of rounds) | added µs |")
    print("|---|---:|---:|")
    for name, samples in results.items():
        print(f"| {name} | {min(samples):.2f} | {min(samples) - floor:+.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
