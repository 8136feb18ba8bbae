"""Checks a TCP port is free before several listeners share it with SO_REUSEPORT.

Sockets that all set SO_REUSEPORT may bind the same port, and grpc sets it by
default: a server started on a port another grpc server already holds would
silently share it instead of failing. Probes bound *without* SO_REUSEPORT to
every address the host stands for fail on any listener there, so they are
asked first. The probes let go before the real listeners bind: two servers
started in the same instant on the same port can still both pass.
"""

from __future__ import annotations

import contextlib
import errno
import socket

_WILDCARD_V6 = {"::", "::0"}


def _addresses(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    """(family, sockaddr) for every address a server on ``host`` would bind."""
    bare = host.strip("[]")
    if bare in _WILDCARD_V6:
        # grpc binds "[::]" dual-stack, or 0.0.0.0 where the kernel has no IPv6.
        return [(socket.AF_INET6, ("::", port)), (socket.AF_INET, ("0.0.0.0", port))]
    infos = socket.getaddrinfo(
        bare or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    seen: list[tuple[int, tuple[str, int]]] = []
    for family, _, _, _, sockaddr in infos:
        entry = (int(family), (str(sockaddr[0]), port))
        if family in (socket.AF_INET, socket.AF_INET6) and entry not in seen:
            seen.append(entry)
    return seen


def resolve_port(host: str, port: int) -> int:
    """Bind every address of ``host:port`` without SO_REUSEPORT, then let go.

    Port 0 picks a port free on all of them. Raises OSError when someone listens
    on one of them, or when the host cannot be bound at all."""
    addresses = _addresses(host, port)
    wildcard_v6 = host.strip("[]") in _WILDCARD_V6
    dual_stack = False  # a bound dual-stack "::" probe covers 0.0.0.0 as well
    with contextlib.ExitStack() as held:
        for family, (address, _) in addresses:
            if family == socket.AF_INET and dual_stack:
                continue
            try:
                probe = held.enter_context(socket.socket(family, socket.SOCK_STREAM))
            except OSError as exc:
                if wildcard_v6 and family == socket.AF_INET6 and exc.errno == errno.EAFNOSUPPORT:
                    continue  # no IPv6 here: grpc binds 0.0.0.0, so probe that
                raise
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and wildcard_v6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                dual_stack = True
            probe.bind((address, port))
            port = int(probe.getsockname()[1])
        return port
