"""The ``server-timing`` trailer: the server's own time for a call, W3C Server-Timing syntax.

The server sends ``server-timing: app;dur=0.052`` (milliseconds, to the microsecond) on every
reply (:mod:`greeter.pipeline`); ``greeter call`` shows it and ``greeter load`` reads it to
split each call's latency into the server's part and the rest (network, gateways, client).
The clock is the server's own monotonic clock: a duration, so no clock sync is needed.
"""

from __future__ import annotations

import math

KEY = "server-timing"
KEY_BYTES = KEY.encode()
METRIC = "app"  # the one metric sent: the time the call spent in the server
_FAST = f"{METRIC};dur="


def value(seconds: float) -> str:
    """The trailer's value for a call that took ``seconds``."""
    return f"{_FAST}{seconds * 1000:.3f}"


def server_us(text: str | bytes) -> int | None:
    """The ``app`` metric's duration in whole microseconds, from a Server-Timing value
    (``app;dur=0.052``, or a list of metrics with parameters: ``db;dur=3, app;dur=1.5``);
    None when it has none or it is not a finite, non-negative number."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if text.startswith(_FAST) and "," not in text and ";" not in text[len(_FAST) :]:
        return _us(text[len(_FAST) :])
    for entry in text.split(","):
        name, *params = entry.split(";")
        if name.strip() != METRIC:
            continue
        for param in params:
            key, _, raw = param.partition("=")
            if key.strip().lower() == "dur":
                return _us(raw.strip().strip('"'))
    return None


def _us(raw: str) -> int | None:
    try:
        ms = float(raw)
    except ValueError:
        return None
    if not math.isfinite(ms) or ms < 0:
        return None
    return round(ms * 1000)
