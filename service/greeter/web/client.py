"""A gRPC-Web client over HTTP/1.1 (h11 on asyncio streams): ``greeter call --protocol
grpc-web`` and the load tester's ``grpc-web`` engine.

It speaks to a gRPC-Web endpoint as a browser's gRPC-Web library does (``POST
/<service>/<method>``, ``application/grpc-web+proto`` or ``-text``, ``x-grpc-web: 1``),
with the connection flags of the gRPC commands: TLS with a custom CA or none
(``--insecure``), client certificates, ``--authority`` as the Host header and TLS name,
metadata as request headers. HTTP/1.1 carries one call at a time per connection: a
:class:`WebChannel` keeps idle connections and opens one more when all are busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

import h11

from greeter import __version__
from greeter.client import CODE_NAMES, HTTP_CODES, Target, split_host_port, tls_context
from greeter.web import codec

# Status names and the HTTP status → gRPC code mapping are greeter.client's, shared with
# the h2 load engine.
USER_AGENT = f"greeter/{__version__} grpc-web-python"
MAX_RESPONSE = 64 * 1024 * 1024  # bytes of response body kept per call
_READ = 65536


class WebResult(NamedTuple):
    code: str  # a grpc.StatusCode name
    details: str
    messages: list[bytes]
    headers: list[tuple[str, str]]
    trailers: list[tuple[str, str]]

    def metadata(self, key: str) -> str | None:
        """``key`` from the headers, else from the trailers."""
        found = codec.header_value(self.headers, key)
        return found if found is not None else codec.header_value(self.trailers, key)


def _percent_decode(text: str) -> str:
    return unquote_to_bytes(text).decode("utf-8", "replace") if "%" in text else text


def result_of(
    http_status: int, headers: list[tuple[str, str]], body: bytes, text: bool
) -> WebResult:
    """A whole response → its status, messages, headers and trailers."""
    if http_status != 200:
        code = HTTP_CODES.get(http_status, "UNKNOWN")
        return WebResult(code, f"HTTP status {http_status}", [], headers, [])
    try:
        raw = codec.decode_text(body) if text else body
        messages, trailers = codec.split_response(raw)
    except codec.FrameError as exc:
        return WebResult("INTERNAL", f"bad gRPC-Web response: {exc}", [], headers, [])
    status = codec.header_value(trailers, "grpc-status")
    message = codec.header_value(trailers, "grpc-message")
    if status is None:  # trailers-only: the status came in the headers
        status = codec.header_value(headers, "grpc-status")
        message = codec.header_value(headers, "grpc-message")
    if status is None:
        return WebResult(
            "INTERNAL", "the response carried no grpc-status", messages, headers, trailers
        )
    number = int(status) if status.isdigit() else 2
    code = CODE_NAMES[number] if number < len(CODE_NAMES) else "UNKNOWN"
    return WebResult(code, _percent_decode(message or ""), messages, headers, trailers)


def ssl_context(target: Target) -> ssl.SSLContext | None:
    """TLS as the gRPC commands set it up, offering HTTP/1.1 in ALPN."""
    if not target.secure:
        return None
    context = tls_context(target, verify=not target.insecure)
    context.set_alpn_protocols(["http/1.1"])
    return context


class WebConnection:
    """One HTTP/1.1 connection, one call at a time, kept alive between calls."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT)
        self.reusable = True
        self.answered = False  # some response bytes came in on the current call

    async def call(
        self, path: str, body: bytes, headers: Sequence[tuple[str, str]]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send one request, return (HTTP status, headers, body). Any failure raises
        (OSError, h11 errors); the connection is then not reusable."""
        self.reusable = False
        self.answered = False
        conn = self._h11
        request = h11.Request(
            method="POST",
            target=path,
            headers=[*headers, ("content-length", str(len(body)))],
        )
        self._writer.write(conn.send(request) + conn.send(h11.Data(data=body)))
        self._writer.write(conn.send(h11.EndOfMessage()))
        await self._writer.drain()
        status = 0
        response_headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self._reader.read(_READ)
                self.answered = self.answered or bool(data)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                response_headers = [
                    (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
                ]
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_RESPONSE:
                    raise ValueError(f"response body over {MAX_RESPONSE} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection mid-response")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.reusable = True
        return status, response_headers, b"".join(chunks)

    def close(self) -> None:
        self.reusable = False
        with contextlib.suppress(Exception):
            self._writer.close()


class WebChannel:
    """Connections to one gRPC-Web endpoint, reused between calls."""

    def __init__(self, target: Target, text: bool = False) -> None:
        host, port = split_host_port(target.address)
        if not host or not port.isdigit() or target.address.startswith(("dns:", "unix:")):
            raise ValueError(f"{target.address!r} is not host:port")
        self.host, self.port = host, int(port)
        shown = f"[{host}]" if ":" in host else host
        self.authority = target.authority or f"{shown}:{port}"
        self.ssl = ssl_context(target)
        name = target.authority.rsplit(":", 1)[0] if target.authority else ""
        if target.authority.startswith("["):
            name = target.authority[1:].partition("]")[0]
        self.server_hostname = name or host
        self.text = text
        self.content_type = codec.TEXT_TYPES[0] if text else codec.BINARY_TYPES[1]
        self.metadata = tuple(target.metadata)
        self._idle: list[WebConnection] = []
        self._open: set[WebConnection] = set()
        self.connects = 0

    async def _connect(self, timeout: float) -> WebConnection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.server_hostname if self.ssl else None,
            ),
            timeout,
        )
        self.connects += 1
        conn = WebConnection(reader, writer)
        self._open.add(conn)
        return conn

    async def connect(self, timeout: float) -> None:
        """Open a first connection (raises OSError, ssl.SSLError, TimeoutError)."""
        self._idle.append(await self._connect(timeout))

    def headers(
        self, extra: Sequence[tuple[str, str]] = (), timeout: float | None = None
    ) -> list[tuple[str, str]]:
        headers = [
            ("host", self.authority),
            ("content-type", self.content_type),
            ("accept", self.content_type),
            ("x-grpc-web", "1"),
            ("user-agent", USER_AGENT),
        ]
        if timeout is not None:
            headers.append(("grpc-timeout", f"{max(1, int(timeout * 1000))}m"))
        return [*headers, *self.metadata, *extra]

    async def call(
        self,
        path: str,
        payload: bytes,
        *,
        timeout: float | None,
        connect_timeout: float = 10.0,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> WebResult:
        """One call; transport failures come back as UNAVAILABLE, a late reply as
        DEADLINE_EXCEEDED (the connection is then dropped), never as an exception."""
        body = codec.frame(payload)
        if self.text:
            body = codec.encode_text(body)
        headers = self.headers(metadata, timeout)
        conn: WebConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                while self._idle:
                    # A kept-alive connection the server has closed meanwhile (its idle
                    # timeout) fails before any reply: the call goes on a new one.
                    conn = self._idle.pop()
                    try:
                        status, response_headers, data = await conn.call(path, body, headers)
                        break
                    except (OSError, h11.ProtocolError) as exc:
                        self._drop(conn)
                        if conn.answered:
                            raise exc
                else:
                    conn = await self._connect(connect_timeout)
                    status, response_headers, data = await conn.call(path, body, headers)
        except TimeoutError:
            if conn is not None:
                self._drop(conn)
            return WebResult("DEADLINE_EXCEEDED", "Deadline Exceeded", [], [], [])
        except (OSError, ssl.SSLError, h11.ProtocolError, ValueError) as exc:
            if conn is not None:
                self._drop(conn)
            why = str(exc) or type(exc).__name__
            return WebResult("UNAVAILABLE", f"{self.host}:{self.port}: {why}", [], [], [])
        if conn.reusable:
            self._idle.append(conn)
        else:
            self._drop(conn)
        return result_of(status, response_headers, data, self.text)

    def _drop(self, conn: WebConnection) -> None:
        conn.close()
        self._open.discard(conn)

    async def close(self) -> None:
        for conn in list(self._open):
            self._drop(conn)
        self._idle.clear()
        await asyncio.sleep(0)
