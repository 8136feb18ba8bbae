"""Remembers the calls that carry ``x-greeter-check-id`` (greeter.interop.checklog).

On with ``--interop``, for every method: a call tagged with an id is entered in the
pod's :class:`~greeter.interop.checklog.CheckLog` as it starts and marked with its
final status as it ends (the pipeline's after-hook, so a cancel or an expired
deadline is recorded as the pipeline judged it). An id that is not 1 to 64 printable
ASCII characters is refused with INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Awaitable

import grpc

from greeter.interop.checklog import CHECK_ID, MAX_ID_LENGTH, CheckLog, Entry, valid_id
from greeter.pipeline import CallRecord, Hooks, Metadata, Method


class CheckRecorder:
    def __init__(self, log: CheckLog) -> None:
        self.log = log
        # calls in flight: their context -> (id, entry), until their after-hook runs
        self._calls: dict[grpc.aio.ServicerContext, tuple[str, Entry]] = {}

    def bind(self, method: Method) -> Hooks:
        log, calls = self.log, self._calls

        def before(context: grpc.aio.ServicerContext, metadata: Metadata) -> Awaitable[None] | None:
            for key, value in metadata:
                if key != CHECK_ID:
                    continue
                if not isinstance(value, str) or not valid_id(value):
                    return context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{CHECK_ID} must be 1 to {MAX_ID_LENGTH} printable ASCII characters",
                    )
                calls[context] = (value, log.started(value))
                return None
            return None

        def after(record: CallRecord) -> None:
            tagged = calls.pop(record.context, None)
            if tagged is not None:
                log.ended(tagged[0], tagged[1], record.code.name)

        return Hooks(before=before, after=after, reads_metadata=True)
