"""One structured log line per RPC, sampled for OK calls, always for errors."""

from __future__ import annotations

import logging
import random

import grpc

from greeter.pipeline import CallRecord, Hooks, Method

logger = logging.getLogger("greeter.access")
_OK = grpc.StatusCode.OK


def _authority(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key in (":authority", "host"):
            return str(value)
    return ""


class AccessLog:
    def __init__(self, sample: float) -> None:
        self._sample = sample

    def bind(self, method: Method) -> Hooks | None:
        sample = self._sample
        path = method.path
        draw = random.random

        def after(call: CallRecord) -> None:
            if call.code is _OK and (sample <= 0 or (sample < 1 and draw() >= sample)):
                return
            if not logger.isEnabledFor(logging.INFO):
                return
            ctx = call.context
            # makeRecord + handle is logger.info without findCaller()'s stack walk
            # (the access log has no use for the caller's file and line): ~1/3 cheaper.
            record = logger.makeRecord(
                logger.name,
                logging.INFO,
                __file__,
                0,
                "rpc",
                (),
                None,
                extra={
                    "method": path,
                    "code": call.code.name,
                    "duration_ms": round(call.duration * 1000, 3),
                    "peer": ctx.peer(),
                    "authority": _authority(ctx),
                    "received": call.received,
                    "sent": call.sent,
                },
            )
            logger.handle(record)

        return Hooks(after=after)
