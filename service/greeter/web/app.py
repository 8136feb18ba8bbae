"""The web port's ASGI application: gRPC-Web calls, CORS, and the page at ``/``.

A gRPC-Web call is dispatched into the same wrapped method handlers the gRPC port
serves (:mod:`greeter.pipeline`), on a :class:`~greeter.web.context.WebContext`: the
interceptors (metrics, access log, identity, metadata limit, auth, faults) run exactly
as they do for gRPC, so a call is counted and judged the same whichever port it used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import Any

import grpc

from greeter.client import IDENTITY_KEYS
from greeter.malformed import Malformed
from greeter.pipeline import SERVER_TIMING, final_code
from greeter.web import codec
from greeter.web.context import WebContext, cancel_code, metadata_value, parse_timeout

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Header = tuple[bytes, bytes]

GRPC_STATUS = "grpc-status"
GRPC_MESSAGE = "grpc-message"
WORKER_KEY = "x-greeter-worker"
# Response headers a browser script may read (CORS hides all but a few otherwise); the
# server-timing is a header when the trailers go out in the headers (trailers-only).
EXPOSED = (GRPC_STATUS, GRPC_MESSAGE, *IDENTITY_KEYS, WORKER_KEY, SERVER_TIMING)
PREFLIGHT_MAX_AGE = 600
# Request headers that are HTTP transport or gRPC-Web framing, not call metadata.
_NOT_METADATA = frozenset(
    {
        "content-type",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "te",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "x-grpc-web",
        "http2-settings",
    }
)
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/greeter-web.js": ("greeter-web.js", "text/javascript; charset=utf-8"),
    "/greeter-web.css": ("greeter-web.css", "text/css; charset=utf-8"),
}
# The page loads its own script and style, and calls its own origin: nothing else.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_OK = grpc.StatusCode.OK


def percent_encode(text: str) -> str:
    """grpc-message as the gRPC spec sends it: printable ASCII except ``%`` as is,
    everything else as percent-encoded UTF-8."""
    out = []
    for char in text:
        if " " <= char <= "~" and char != "%":
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def _header_text(value: str | bytes) -> str:
    """Metadata as an HTTP header value: binary (``-bin``) values base64-encoded."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _encode(headers: Iterable[tuple[str, str]]) -> list[Header]:
    return [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers]


def load_static() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("greeter.web") / "static"
    return {path: ((folder / name).read_bytes(), kind) for path, (name, kind) in STATIC.items()}


def peer_of(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return "unknown"
    host, port = client[0], client[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


class _Disconnected(Exception):
    """The client went away before its request was read."""


class _Response:
    """One gRPC-Web response: headers with the first message (or trailers-only), data
    frames, then the trailers frame; each frame base64-encoded on its own in text mode."""

    def __init__(self, send: Send, content_type: str, text: bool, headers: list[Header]) -> None:
        self._send = send
        self._content_type = content_type
        self._text = text
        self._headers = headers
        self.started = False

    def _head(self, context: WebContext, extra: Iterable[tuple[str, str]] = ()) -> Message:
        headers = [(b"content-type", self._content_type.encode()), *self._headers]
        have = {name for name, _ in headers}
        for key, value in (*context.initial_metadata(), *extra):
            if key.encode() not in have:
                headers.append((key.encode("latin-1"), _header_text(value).encode("latin-1")))
        self.started = True
        return {"type": "http.response.start", "status": 200, "headers": headers}

    def _body(self, raw: bytes, more: bool) -> Message:
        body = codec.encode_text(raw) if self._text else raw
        return {"type": "http.response.body", "body": body, "more_body": more}

    async def message(self, payload: bytes, context: WebContext) -> None:
        if not self.started:
            await self._send(self._head(context))
        await self._send(self._body(codec.frame(payload), True))

    async def finish(self, code: grpc.StatusCode, details: str, context: WebContext) -> None:
        status = [(GRPC_STATUS, str(code.value[0]))]
        if details:
            status.append((GRPC_MESSAGE, percent_encode(details)))
        trailers = [*status, *((k, _header_text(v)) for k, v in context.trailing_metadata())]
        if not self.started:  # trailers-only: the status (and trailers) in the headers as well
            await self._send(self._head(context, trailers))
        await self._send(self._body(codec.trailers_frame(trailers), False))


class WebApp:
    """ASGI app over the server's wrapped handlers (``{service: {method: handler}}``)."""

    def __init__(
        self,
        services: Mapping[str, Mapping[str, grpc.RpcMethodHandler]],
        *,
        identity: Mapping[str, str],
        cors_origins: Iterable[str] = (),
        max_recv_message_size: int = 4 * 1024 * 1024,
        max_send_message_size: int = 4 * 1024 * 1024,
    ) -> None:
        self._methods = {
            f"/{service}/{name}": handler
            for service, handlers in services.items()
            for name, handler in handlers.items()
        }
        self._identity = _encode(identity.items())
        origins = tuple(cors_origins)
        self._any_origin = "*" in origins
        self._origins = frozenset(o.rstrip("/").lower() for o in origins if o != "*")
        self._expose = ", ".join(EXPOSED).encode()
        self._max_recv = max_recv_message_size
        self._max_send = max_send_message_size
        self._static = load_static()

    # -- ASGI entry -------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = scope["path"]
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        origin = codec.header_value(headers, "origin")
        if method == "OPTIONS":
            await self._preflight(origin, headers, send)
        elif method in ("GET", "HEAD"):
            await self._page(path, method == "HEAD", send)
        elif method != "POST":
            await _plain(
                send,
                405,
                "use POST for gRPC-Web calls, GET for the page",
                [(b"allow", b"GET, HEAD, POST, OPTIONS")],
            )
        else:
            content_type = codec.media_type(codec.header_value(headers, "content-type") or "")
            if content_type not in codec.CONTENT_TYPES:
                await _plain(
                    send,
                    415,
                    f"content-type must be one of {', '.join(codec.CONTENT_TYPES)}",
                    self._cors(origin),
                )
                return
            await self._call(scope, receive, send, path, content_type, headers, origin)

    # -- CORS -------------------------------------------------------------------
    def _allowed(self, origin: str | None) -> bool:
        return origin is not None and (self._any_origin or origin.lower() in self._origins)

    def _cors(self, origin: str | None) -> list[Header]:
        """Headers for an allowed cross-origin request; none for a same-origin one or an
        origin that is not allowed (the browser then withholds the response)."""
        if origin is None or not self._allowed(origin):
            return []
        if self._any_origin:
            allow = [(b"access-control-allow-origin", b"*")]
        else:
            allow = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"origin"),
            ]
        return [*allow, (b"access-control-expose-headers", self._expose)]

    async def _preflight(
        self, origin: str | None, headers: list[tuple[str, str]], send: Send
    ) -> None:
        if not self._allowed(origin):
            await _plain(send, 403, f"origin {origin!r} is not allowed (web_cors_origins)")
            return
        asked = codec.header_value(headers, "access-control-request-headers") or "content-type"
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    *self._cors(origin),
                    (b"access-control-allow-methods", b"POST, OPTIONS"),
                    # Any metadata may be sent with a call, as on the gRPC port.
                    (b"access-control-allow-headers", asked.encode("latin-1")),
                    (b"access-control-max-age", str(PREFLIGHT_MAX_AGE).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    # -- the page ---------------------------------------------------------------
    async def _page(self, path: str, head: bool, send: Send) -> None:
        found = self._static.get(path)
        if found is None:
            await _plain(
                send, 404, "not found: the page is at /, gRPC-Web calls POST to /<service>/<method>"
            )
            return
        body, kind = found
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", kind.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-cache"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", PAGE_POLICY.encode()),
                    *self._identity,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if head else body})

    # -- a gRPC-Web call ----------------------------------------------------------
    def _body_limit(self, text: bool) -> int:
        raw = self._max_recv + codec.HEAD_SIZE
        return (raw + 2) // 3 * 4 + 1024 if text else raw

    async def _call(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        content_type: str,
        headers: list[tuple[str, str]],
        origin: str | None,
    ) -> None:
        text = content_type in codec.TEXT_TYPES
        metadata: list[tuple[str, str | bytes]] = []
        timeout: float | None = None
        for key, value in headers:
            if key == "grpc-timeout":
                with contextlib.suppress(ValueError):  # as grpc-core: a bad one is ignored
                    timeout = parse_timeout(value)
            elif key not in _NOT_METADATA and not key.startswith(":"):
                metadata.append((key, metadata_value(key, value)))
        context = WebContext(metadata, peer_of(scope), timeout)
        response = _Response(send, content_type, text, [*self._identity, *self._cors(origin)])
        handler = self._methods.get(path)
        if handler is None:
            await response.finish(
                grpc.StatusCode.UNIMPLEMENTED, f"unknown method {path[:200]}", context
            )
            return
        if handler.request_streaming:
            await response.finish(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{path}: gRPC-Web carries unary and server-streaming calls only",
                context,
            )
            return
        try:
            body = await _read_body(receive, self._body_limit(text), headers)
        except _Disconnected:
            return
        if body is None:
            await response.finish(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request body larger than max ({self._max_recv} byte messages)",
                context,
            )
            return
        try:
            raw = codec.decode_text(body) if text else body
            messages = codec.request_messages(raw, self._max_recv)
            if len(messages) != 1:
                raise codec.FrameError(
                    f"a request carries exactly one message, this one {len(messages)}"
                )
        except codec.TooLarge as exc:  # refused before any handler runs, as grpc-core does
            await response.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), context)
            return
        except codec.FrameError as exc:
            # The pipeline answers it INVALID_ARGUMENT after the interceptors' before-hooks,
            # as it answers an undecodable message on the gRPC port.
            request: Any = Malformed(exc)
        else:
            deserialize = handler.request_deserializer
            request = deserialize(messages[0]) if deserialize else messages[0]
        call = asyncio.ensure_future(self._run(handler, request, context, response, timeout))
        watch = asyncio.ensure_future(_cancel_on_disconnect(receive, call, context))
        try:
            await call
        except asyncio.CancelledError:
            if not context.cancelled_by_client:
                raise
        finally:
            context.finished = True
            watch.cancel()

    async def _run(
        self,
        handler: grpc.RpcMethodHandler,
        request: Any,
        context: WebContext,
        response: _Response,
        timeout: float | None,
    ) -> None:
        details = ""
        serialize = handler.response_serializer or bytes
        try:
            async with asyncio.timeout(timeout):
                if handler.response_streaming:
                    # Closed here, not by the garbage collector: a cancelled call's after-hooks
                    # (metrics, access log) run at once.
                    replies = handler.unary_stream(request, context)
                    async with contextlib.aclosing(replies):
                        async for reply in replies:
                            await response.message(serialize(reply), context)
                    code = final_code(context)
                else:
                    reply = await handler.unary_unary(request, context)
                    code = final_code(context)
                    if code is _OK:
                        payload = serialize(reply)
                        if len(payload) > self._max_send:
                            code = grpc.StatusCode.RESOURCE_EXHAUSTED
                            details = (
                                f"sent message larger than max ({len(payload)} vs. "
                                f"{self._max_send})"
                            )
                        else:
                            await response.message(payload, context)
            if code is not _OK:
                details = details or context.details()
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            details = context.details()
        except TimeoutError:
            code, details = cancel_code(context), "Deadline Exceeded"
        except Exception as exc:
            logger.exception("gRPC-Web handler failed")
            code, details = grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}"
        await response.finish(code, details, context)


async def _read_body(receive: Receive, limit: int, headers: list[tuple[str, str]]) -> bytes | None:
    """The whole request body, or None when it is longer than ``limit``."""
    declared = codec.header_value(headers, "content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _cancel_on_disconnect(
    receive: Receive, call: asyncio.Future[None], context: WebContext
) -> None:
    """A client that goes away cancels its call (CANCELLED, as on the gRPC port)."""
    while not call.done():
        message = await receive()
        if message["type"] == "http.disconnect":
            if not call.done():
                context.cancelled_by_client = True
                call.cancel()
            return


async def _plain(send: Send, status: int, text: str, headers: Iterable[Header] = ()) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
