"""Checks a TCP port is free before several listeners share it with SO_REUSEPORT.

Sockets that all set SO_REUSEPORT may bind the same port, and grpc sets it by
default: a server started on a port another grpc server already holds would
silently share it instead of failing. A probe bound *without* SO_REUSEPORT
fails on any listener, so it is asked first.
"""

from __future__ import annotations

import socket


def resolve_port(host: str, port: int) -> int:
    """Bind ``host:port`` without SO_REUSEPORT and let go; port 0 picks a free port.

    Raises OSError when someone listens there (or the host cannot be bound)."""
    if host.startswith("unix:"):
        raise OSError("SO_REUSEPORT shares a TCP port; a unix socket cannot be shared")
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((bare, port))
        return int(probe.getsockname()[1])
