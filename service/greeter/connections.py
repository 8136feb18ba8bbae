"""Open connections and calls in flight per connection, for ``/metrics``.

grpcio tells a Python server nothing when a connection opens or closes, and a call's
context only knows its peer's address. grpc-core keeps the numbers anyway, in its
*channelz* registry (on by default, ``grpc.enable_channelz``): each server's open
sockets, and per socket the HTTP/2 streams (calls) started, succeeded and failed. So
nothing is counted per call or per connection here: :meth:`ConnectionReader.read` asks
channelz when Prometheus scrapes, and only then. It costs about 0.3-0.4 ms per open
connection (grpc-core's answer for one socket; measured on a busy 2-core machine), in the
metrics endpoint's thread: ~40 ms a scrape for 100 connections.

grpcio reaches channelz through ``grpc._cython.cygrpc`` (what the ``grpcio-channelz``
package's servicer calls); if a grpcio release drops or changes it, the gauges are
left out and one warning is logged, and the server runs as before.

A call counts as in flight on its connection from its first HTTP/2 frame until grpc-core
has sent (or received) its end, so a finished call can still count for an instant.

The same reading counts the calls grpc-core refused before the server took them
(:attr:`Connections.dropped`): a call no request of the server took within
``grpc.server_max_unrequested_time_in_server`` (admission control's ``admission_core_wait``),
or one past grpc-core's pending-call limits, is answered ``CANCELLED`` by grpc-core itself;
no Python code sees it. channelz counts it among the server's calls started, and never among
those that succeeded or failed (every call the server answered, whatever its status, is one
of those, measured on grpcio 1.85). So the calls started, less those that succeeded or
failed, less those in flight on the open connections now, are the calls core dropped.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# Pages of channelz answers to read at most (100 entries each): a bound on the work a
# scrape can cause, 2,000 connections per listener.
MAX_PAGES = 20


@dataclass(frozen=True)
class Connections:
    """One reading: the calls in flight on each open connection."""

    in_flight: tuple[int, ...] = ()
    # calls the servers started that neither succeeded nor failed: in flight, or dropped
    unresolved: int = 0

    @property
    def open(self) -> int:
        return len(self.in_flight)

    @property
    def calls(self) -> int:
        return sum(self.in_flight)

    @property
    def busiest(self) -> int:
        return max(self.in_flight, default=0)

    @property
    def dropped(self) -> int:
        """Calls grpc-core refused before the server took them (see the module's doc). A call
        that ended between the two reads of one reading can count for an instant."""
        return max(0, self.unresolved - self.calls)


def _channelz() -> Any:
    from grpc._cython import cygrpc

    for name in ("channelz_get_servers", "channelz_get_server_sockets", "channelz_get_socket"):
        if not callable(getattr(cygrpc, name, None)):
            raise AttributeError(f"grpc._cython.cygrpc has no {name}")
    return cygrpc


def _pages(fetch: Callable[[int], Any], items: str, key: str) -> Iterator[dict[str, Any]]:
    """Every entry of a paged channelz listing (``fetch(start_id)`` gives a page)."""
    start = 0
    for _ in range(MAX_PAGES):
        page = json.loads(fetch(start))
        entries = page.get(items, [])
        yield from entries
        if page.get("end", True) or not entries:
            return
        start = max(int(_ref(e)[key]) for e in entries) + 1


def _ref(entry: dict[str, Any]) -> dict[str, Any]:
    return entry.get("ref", entry)  # servers carry a "ref"; socket refs are the ref itself


def _listens_on(server: dict[str, Any], address: str) -> bool:
    """Whether one of the server's listening sockets is ``address`` (``:port`` for TCP,
    ``unix:/path`` for a unix socket): channelz names them ``chttp2 listener ipv4:...``."""
    return any(s.get("name", "").endswith(address) for s in server.get("listenSocket", []))


def _unresolved(server: dict[str, Any]) -> int:
    data = server.get("data", {})
    started = int(data.get("callsStarted", 0))
    return started - int(data.get("callsSucceeded", 0)) - int(data.get("callsFailed", 0))


def _in_flight(socket: dict[str, Any]) -> int:
    data = socket.get("data", {})
    started = int(data.get("streamsStarted", 0))
    ended = int(data.get("streamsSucceeded", 0)) + int(data.get("streamsFailed", 0))
    return max(0, started - ended)


class ConnectionReader:
    """Reads the connections of the grpc servers in this process that listen on
    ``address`` (``:50051``, or ``unix:/path``): every listener of one Greeter."""

    def __init__(self, address: str) -> None:
        self.address = address
        try:
            self._cz: Any = _channelz()
        except (ImportError, AttributeError) as exc:
            logger.warning("connection metrics are off: grpcio has no channelz here (%s)", exc)
            self._cz = None

    @property
    def available(self) -> bool:
        return self._cz is not None

    def read(self) -> Connections:
        """The connections now; none when channelz cannot be read (logged once)."""
        if self._cz is None:
            return Connections()
        try:
            return self._read(self._cz)
        except (KeyError, TypeError, ValueError) as exc:  # an answer of another shape
            logger.warning("connection metrics are off: unexpected channelz answer (%r)", exc)
            self._cz = None
            return Connections()

    def _read(self, cz: Any) -> Connections:
        counts: list[int] = []
        unresolved = 0
        for server in _pages(cz.channelz_get_servers, "server", "serverId"):
            if not _listens_on(server, self.address):
                continue
            unresolved += _unresolved(server)  # read before the sockets: see Connections.dropped
            server_id = int(server["ref"]["serverId"])
            sockets = _pages(
                functools.partial(cz.channelz_get_server_sockets, server_id, max_results=0),
                "socketRef",
                "socketId",
            )
            # A server or socket that went away since it was listed raises ValueError: it
            # has no connection (left) to count.
            with contextlib.suppress(ValueError):
                for ref in sockets:
                    with contextlib.suppress(ValueError):
                        found = json.loads(cz.channelz_get_socket(int(ref["socketId"])))
                        counts.append(_in_flight(found.get("socket", {})))
        return Connections(tuple(counts), unresolved)
