"""What a pod remembers of the calls ``greeter check`` tags, and how it tells.

A gateway may send each call to a different pod, so "the cancellation (or the
caller's deadline) reached the pod" can only be proved by the pod that served the
call. With ``greeter serve --interop``, metadata alone carries it (no proto):

- A call with the request metadata ``x-greeter-check-id: ID`` (any method) is
  remembered by the pod (the process) that serves it: when it started, and when
  and with what status it ended. ``ID`` is 1 to 64 printable ASCII characters
  (``!`` to ``~``); any other value is refused with ``INVALID_ARGUMENT``. A pod
  remembers the last 1024 ids, each for 10 minutes after it was last updated.
- ``grpc.testing.TestService/EmptyCall`` with ``x-greeter-check-lookup: ID``
  answers OK with the trailer ``x-greeter-check-seen``, what this pod knows::

      unknown                          never served here (or forgotten)
      running;after_ms=1500            started 1,500 ms ago, not ended yet
      ended;code=CANCELLED;after_ms=1003
                                       ended with that status (a grpc.StatusCode
                                       name) 1,003 ms after it started

  The state comes first; ``key=value`` fields follow, separated by ``;``. A
  parser must ignore keys it does not know (later versions may add some).

Every reply carries the serving pod (``x-greeter-pod``, and with ``--workers``
``x-greeter-worker``) in its trailers, so a caller repeats the lookup until it
reaches the pod, and worker, that served the call. A cancel or deadline the pod saw
ends ``CANCELLED`` or ``DEADLINE_EXCEEDED``; a call still ``running`` after the
caller gave up means the gateway did not pass the cancellation on.

One more header is for ``greeter check``'s ``metadata_underscore`` case: a request's
``x_greeter_check_echo: V`` (a key with underscores, which nginx drops by default and
Envoy Gateway refuses) comes back in the trailers as sent, so the caller can tell
whether it reached the pod.

This module is what both sides import: the header names, :class:`Seen` (format
and parse) and :class:`CheckLog` (the pod's bounded memory). It needs only the
standard library.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

CHECK_ID = "x-greeter-check-id"
CHECK_LOOKUP = "x-greeter-check-lookup"
CHECK_SEEN = "x-greeter-check-seen"
CHECK_ECHO = "x_greeter_check_echo"
MAX_ID_LENGTH = 64
CAPACITY = 1024
MAX_AGE_S = 600.0

UNKNOWN = "unknown"
RUNNING = "running"
ENDED = "ended"
_STATES = (UNKNOWN, RUNNING, ENDED)


def valid_id(text: str) -> bool:
    """1 to 64 printable ASCII characters, no space."""
    return 0 < len(text) <= MAX_ID_LENGTH and all("!" <= c <= "~" for c in text)


@dataclass(frozen=True)
class Seen:
    """What a pod knows of one call: ``state``, and for ``ended`` the status ``code``
    (a grpc.StatusCode name); ``after_ms`` is the time from the call's start to its end
    (ended) or to the lookup (running)."""

    state: str
    code: str = ""
    after_ms: int | None = None

    def format(self) -> str:
        parts = [self.state]
        if self.code:
            parts.append(f"code={self.code}")
        if self.after_ms is not None:
            parts.append(f"after_ms={self.after_ms}")
        return ";".join(parts)

    @classmethod
    def parse(cls, text: str) -> Seen:
        """The trailer's value as a :class:`Seen`; ValueError when it is not one."""
        state, *fields = text.strip().split(";")
        if state not in _STATES:
            raise ValueError(f"{CHECK_SEEN}: unknown state {state[:40]!r}")
        values: dict[str, str] = {}
        for item in fields:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"{CHECK_SEEN}: {item[:40]!r} is not key=value")
            values[key.strip()] = value.strip()
        after = values.get("after_ms")
        after_ms = None
        if after is not None:
            if not (after.isascii() and after.isdigit()):
                raise ValueError(f"{CHECK_SEEN}: after_ms={after[:20]!r} is not a number")
            after_ms = int(after)
        return cls(state, values.get("code", ""), after_ms)


class Entry:
    """One remembered call (the pod's side)."""

    __slots__ = ("code", "ended", "started", "touched")

    def __init__(self, now: float) -> None:
        self.started = now
        self.touched = now
        self.ended: float | None = None
        self.code = ""


class CheckLog:
    """The last ``capacity`` tagged calls, each forgotten ``max_age`` seconds after it
    was last updated. Not thread-safe: one per event loop (one per server process)."""

    def __init__(
        self,
        capacity: int = CAPACITY,
        max_age: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._capacity = capacity
        self._max_age = max_age
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def started(self, call_id: str) -> Entry:
        """A tagged call began (an id seen again starts afresh)."""
        now = self._clock()
        entry = Entry(now)
        self._entries.pop(call_id, None)
        self._entries[call_id] = entry
        self._forget(now)
        return entry

    def ended(self, call_id: str, entry: Entry, code: str) -> None:
        """The call ``started`` returned ``entry`` for ended with status ``code``."""
        now = self._clock()
        entry.ended = entry.touched = now
        entry.code = code
        if self._entries.get(call_id) is entry:
            self._entries.move_to_end(call_id)
        self._forget(now)

    def seen(self, call_id: str) -> Seen:
        now = self._clock()
        self._forget(now)
        entry = self._entries.get(call_id)
        if entry is None:
            return Seen(UNKNOWN)
        if entry.ended is None:
            return Seen(RUNNING, after_ms=_ms(now - entry.started))
        return Seen(ENDED, entry.code, _ms(entry.ended - entry.started))

    def _forget(self, now: float) -> None:
        entries = self._entries
        while len(entries) > self._capacity:
            entries.popitem(last=False)
        oldest = now - self._max_age
        while entries:
            call_id, entry = next(iter(entries.items()))
            if entry.touched >= oldest:
                break
            del entries[call_id]


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
