"""Peer servers the benchmark compares the Greeter with, each runnable as
``python -m bench.servers.<name> PORT``. They answer SayHello and
SayHelloStreamReply like the Greeter does (``x-greeter-stream-count`` sets
how many replies a stream gets), and nothing else."""

from __future__ import annotations

STREAM_COUNT_HEADER = "x-greeter-stream-count"
DEFAULT_STREAM_COUNT = 10
MAX_STREAM_COUNT = 100_000


def stream_count(metadata: object) -> int:
    """The stream length a caller asked for, from (key, value) metadata pairs."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == STREAM_COUNT_HEADER:
            text = value if isinstance(value, str) else value.decode()
            if text.isdigit() and int(text) <= MAX_STREAM_COUNT:
                return int(text)
    return DEFAULT_STREAM_COUNT
