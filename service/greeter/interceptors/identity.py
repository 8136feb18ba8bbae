"""Tells the caller where its call was served: cluster, pod, node and zone.

Unary calls carry the identity in the trailers (set without an extra write,
and still sent when the call fails); streams also send it in the response
headers, so a client knows the backend before the first message arrives.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from greeter.pipeline import Hooks, Metadata, Method


class Identity:
    def __init__(self, identity: Mapping[str, str]) -> None:
        self._metadata = tuple(identity.items())

    def bind(self, method: Method) -> Hooks | None:
        metadata = self._metadata
        if not metadata:
            return None

        if not method.response_streaming:

            def before(context: grpc.aio.ServicerContext, request_metadata: Metadata) -> None:
                context.set_trailing_metadata(metadata)

            return Hooks(before=before)

        async def before_stream(
            context: grpc.aio.ServicerContext, request_metadata: Metadata
        ) -> None:
            context.set_trailing_metadata(metadata)
            await context.send_initial_metadata(metadata)

        return Hooks(before=before_stream)
