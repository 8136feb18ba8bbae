"""Durations as every ``greeter`` client command takes them (``-t``, ``--connect-timeout``,
``-z``, ``--warmup``...): ``10s``, ``500ms``, ``1m30s``, ``2h`` as ghz and Go write them, or a
bare number, which is seconds (as grpcurl's ``-max-time`` and ``-connect-timeout`` take it;
ghz would refuse it). One parser, so that ``greeter call -t 2s`` and ``greeter load -t 2s``
mean the same thing."""

from __future__ import annotations

import argparse
import math
import re

UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# What every command's --help says about them (one line).
NOTE = (
    "durations: 10s, 500ms, 1m30s, 2h; a bare number is seconds (grpcurl's way; ghz wants a unit)"
)
_PART = r"(\d+(?:\.\d+)?)(ms|us|µs|s|m|h)"


def parse_duration(text: str) -> float:
    """``10s``, ``500ms``, ``1m30s``, ``2h`` or a bare number of seconds → seconds."""
    raw = text.strip().lower()
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"{text!r} is not a duration")
        return value
    if not re.fullmatch(f"(?:{_PART})+", raw):
        raise ValueError(f"{text!r} is not a duration (try 10s, 500ms, 1m)")
    total = sum(float(n) * UNITS[unit] for n, unit in re.findall(_PART, raw))
    if not math.isfinite(total):
        raise ValueError(f"{text[:40]!r} is not a duration (too large)")
    return total


def duration_arg(text: str) -> float:
    """:func:`parse_duration` as an argparse ``type``."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
