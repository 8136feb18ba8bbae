"""The web port's server: hypercorn (HTTP/1.1, HTTP/2 over TLS with ALPN, and h2c with
prior knowledge) running the :class:`~greeter.web.app.WebApp` in the gRPC server's own
event loop. The socket is bound synchronously at start-up, so a port that cannot be
bound fails start-up like the gRPC port does; stopping it is part of the drain's
``stop`` phase, with the same grace period for calls in flight."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any, cast

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app

from greeter.settings import Settings
from greeter.web.app import WebApp

logger = logging.getLogger(__name__)
BACKLOG = 1024


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (``[::]`` is dual-stack); OSError if
    the port cannot be had."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # the processes of --workers share it, as they share the gRPC port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6 and bare in ("::", "::0"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((bare, port))
        sock.listen(BACKLOG)  # connections queue from now on, before hypercorn accepts
        sock.setblocking(False)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def hypercorn_config(settings: Settings) -> Config:
    s = settings
    config = Config()
    config.accesslog = None  # the access log is the pipeline's, one line per call
    config.errorlog = logging.getLogger("greeter.web.http")
    config.graceful_timeout = s.grace_period
    config.include_server_header = False
    config.backlog = BACKLOG
    config.h2_max_concurrent_streams = s.max_concurrent_streams
    config.h11_max_incomplete_size = s.max_metadata_size + 1024  # request line and headers
    if s.tls:
        config.certfile = s.tls_cert
        config.keyfile = s.tls_key
        if s.tls_client_ca:
            config.ca_certs = s.tls_client_ca
            config.verify_mode = ssl.CERT_REQUIRED
    return config


class WebServer:
    """The web port of one server process."""

    def __init__(self, app: WebApp, settings: Settings, *, reuse_port: bool = False) -> None:
        self._app = app
        self._settings = settings
        self._reuse_port = reuse_port
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.port = 0

    def bind(self) -> int:
        """Bind the port now (OSError if taken); serving starts with :meth:`start`."""
        s = self._settings
        self._socket = bind_socket(s.web_host, s.web_port, self._reuse_port)
        self.port = int(self._socket.getsockname()[1])
        return self.port

    async def start(self) -> None:
        assert self._socket is not None, "bind() first"
        config = hypercorn_config(self._settings)
        sockets = (
            Sockets([self._socket], [], [])
            if config.ssl_enabled
            else Sockets([], [self._socket], [])
        )
        app = wrap_app(cast(Any, self._app), config.wsgi_max_body_size, "asgi")
        self._task = asyncio.ensure_future(
            worker_serve(app, config, sockets=sockets, shutdown_trigger=self._stop.wait)
        )
        self._task.add_done_callback(_report_failure)

    async def stop(self, grace: float) -> None:
        """Stop accepting; calls in flight get ``grace`` seconds (then they are cancelled)."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, grace + 1.0)
            except (TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                logger.exception("web port stopped with an error")
        self._close_socket()

    def abort(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._close_socket()

    def _close_socket(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("web port failed: %s", task.exception())
