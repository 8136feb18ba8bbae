"""Tells the caller where its call was served: cluster, pod, node and zone.

Unary calls carry the identity in the trailers (set without an extra write,
and still sent when the call fails: the pipeline sets them as the call starts,
and again with the server-timing as it ends); streams also send it in the
response headers, so a client knows the backend before the first message arrives.
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

        if not method.response_streaming or method.owns_metadata:
            # (a handler that owns its headers sends the identity in them itself)
            return Hooks(trailers=metadata)

        async def before_stream(
            context: grpc.aio.ServicerContext, request_metadata: Metadata
        ) -> None:
            await context.send_initial_metadata(metadata)

        return Hooks(before=before_stream, trailers=metadata)
