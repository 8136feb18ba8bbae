"""Refuses requests whose metadata exceeds the size the server advertises.

grpc-core (1.85) advertises SETTINGS_MAX_HEADER_LIST_SIZE but still serves
requests with header blocks many times larger; this hook gives them the
RESOURCE_EXHAUSTED the limit promises. It is synchronous on the normal path
(a sum of a few lengths); only a refusal returns an awaitable (the abort).
"""

from __future__ import annotations

from collections.abc import Awaitable

import grpc

from greeter.pipeline import Hooks, Metadata, Method

# HTTP/2 (RFC 9113 §6.5.2) counts each header field as name + value + 32 octets.
FIELD_OVERHEAD = 32


def metadata_size(metadata: Metadata) -> int:
    size = 0
    for key, value in metadata:
        size += len(key) + len(value) + FIELD_OVERHEAD
    return size


class MetadataLimit:
    def __init__(self, limit: int) -> None:
        self._limit = limit

    def bind(self, method: Method) -> Hooks:
        limit = self._limit

        def before(context: grpc.aio.ServicerContext, metadata: Metadata) -> Awaitable[None] | None:
            size = metadata_size(metadata)
            if size <= limit:
                return None
            return context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request metadata of {size} bytes exceeds the limit of {limit} "
                "(max_metadata_size)",
            )

        return Hooks(before=before, reads_metadata=True)
