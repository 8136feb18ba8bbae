"""A lean HTTP/2 client for *unary* gRPC calls: the load tester's fast engine.

grpc's Python client spends almost all of a unary call's CPU in its own machinery (a task
per call, the completion-queue poller thread, metadata objects). This engine speaks
HTTP/2 itself (RFC 9113, the gRPC-over-HTTP/2 protocol) on an asyncio Protocol:

- the request HEADERS block is HPACK-encoded once (static-table indices and literals
  "without indexing", so the encoder keeps no dynamic-table state) and the DATA payload
  (5-byte gRPC prefix + the serialized request) once: a call only writes those bytes with
  its stream id spliced in (``sid.join(pieces)``), and the writes of one loop iteration go
  out in one ``transport.write``;
- responses are parsed frame by frame (9-byte header); header blocks go through
  ``hpack.Decoder`` (the server's dynamic table must stay right), and a block whose
  decoding left the table unchanged is cached by its bytes, so the steady state (the server
  sending the same indexed fields every time) decodes nothing;
- SETTINGS (MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE), PING, WINDOW_UPDATE (a large
  receive window, replenished in big steps), RST_STREAM, GOAWAY (streams above
  last_stream_id were not processed: they are retried on a new connection), connection
  loss, per-call deadlines (``grpc-timeout`` plus one local timer per connection),
  HTTP status mapping and stream-id exhaustion (a new connection is opened) are handled.

Used for SayHello and health Check to a single address; everything else keeps grpc.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from hpack import Decoder, HPACKError

from greeter import __version__, timing
from greeter.client import CODE_NAMES, HTTP_CODES, Target, split_host_port, tls_context
from greeter.load.recorder import NO_SERVER_TIME

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Settings identifiers.
S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE = 0x2, 0x3, 0x4
# Error codes.
NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x1, 0x7, 0x8

MAX_STREAM_ID = 2**31 - 1
MAX_FRAME = 16384  # what we send per frame: the size every peer must accept
MAX_INCOMING_FRAME = 1 << 24  # SETTINGS_MAX_FRAME_SIZE's ceiling
STREAM_WINDOW = 1 << 24  # our SETTINGS_INITIAL_WINDOW_SIZE
CONNECTION_WINDOW = 1 << 30  # added to the connection's receive window after the preface
REPLENISH = CONNECTION_WINDOW // 2  # a WINDOW_UPDATE once this much has been received
MAX_REQUEST = 16 * 1024  # larger request messages go through grpc (see ``applies``)
ATTEMPTS = 3  # tries for a call whose stream was never processed (GOAWAY, REFUSED_STREAM)
RECONNECT_BACKOFF = 1.0  # seconds between failed connection attempts
HEADER_CACHE = 512  # decoded header blocks kept (cleared when the dynamic table changes)

# RST_STREAM error code → gRPC code (gRPC over HTTP/2, "Errors"); the rest are INTERNAL.
RST_CODES = {
    0x7: "UNAVAILABLE",  # REFUSED_STREAM
    0x8: "CANCELLED",  # CANCEL
    0xB: "RESOURCE_EXHAUSTED",  # ENHANCE_YOUR_CALM
    0xC: "PERMISSION_DENIED",  # INADEQUATE_SECURITY
}

CLUSTER_KEY = b"x-greeter-cluster"
POD_KEY = b"x-greeter-pod"
SERVER_TIMING_KEY = timing.KEY_BYTES
# The server-timing as grpc-core sends it: the block's last field, a literal without
# indexing (0x00) with a literal name, neither Huffman-coded. Everything before it in a
# trailers block repeats call after call; only this value changes (see _on_headers).
_TIMING_FIELD = b"\x00" + bytes([len(SERVER_TIMING_KEY)]) + SERVER_TIMING_KEY
UNKNOWN = "(none)"

_FRAME_HEAD = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")

# A call's outcome: gRPC code name, details, cluster, pod, server time (µs; -1: none).
Result = tuple[str, str, str, str, int]
RETRY = ("", "", "", "", NO_SERVER_TIME)  # the stream was never processed: try another connection
# REFUSED_STREAM: the server did not process the stream either (RFC 9113 8.7), typically a
# slot at its stream limit not freed yet; the call waits for a slot on the same connection
# and goes again (as grpc-core's transparent retry does), reported only if it keeps happening.
REFUSED: Result = (
    "UNAVAILABLE",
    f"Received RST_STREAM with error code {REFUSED_STREAM}",
    UNKNOWN,
    UNKNOWN,
    NO_SERVER_TIME,
)


class ConnectFailed(OSError):
    """A connection could not be opened (refused, TLS, not HTTP/2, timed out)."""


# -- what a target needs --------------------------------------------------------------------
def endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a single-address target, None when grpc's resolver is needed
    (``dns:///``, several addresses, unix sockets...)."""
    if address.startswith(("dns:", "unix:", "unix-abstract:", "vsock:")) or "," in address:
        return None
    host, port = split_host_port(address)
    if not host or not port.isdigit():
        return None
    return host, int(port)


def applies(target: Target, call: str, payload: bytes) -> str:
    """Why this engine cannot run the load ("" when it can)."""
    if call not in ("SayHello", "Check"):
        return "it only makes unary calls (SayHello, Check)"
    if target.lb_policy:
        return "--lb-policy needs grpc's load balancing"
    if endpoint(target.address) is None:
        return "the target needs grpc's resolver (dns:///, several addresses)"
    if len(payload) > MAX_REQUEST:
        return f"requests over {MAX_REQUEST} bytes go through grpc"
    return ""


def ssl_context(target: Target) -> ssl.SSLContext | None:
    """TLS as ``greeter.client.credentials`` configures grpc: a custom CA, no verification
    (``--insecure``), a client certificate; ALPN h2."""
    if not target.secure:
        return None
    return tls_context(target, verify=not target.insecure)


# -- HPACK encoding (no dynamic table: nothing to keep in step with the server) ------------
def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_str(raw: bytes) -> bytes:
    return _hpack_int(len(raw), 7, 0x00) + raw


def _literal(name: int | bytes, value: bytes) -> bytes:
    """A "literal header field without indexing" (RFC 7541 6.2.2), name by static index or new."""
    if isinstance(name, int):
        return _hpack_int(name, 4, 0x00) + _hpack_str(value)
    return b"\x00" + _hpack_str(name) + _hpack_str(value)


def grpc_timeout(seconds: float) -> str:
    """The ``grpc-timeout`` header value: at most 8 digits and a unit, rounded up."""
    for unit, scale in (("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600)):
        value = math.ceil(seconds * scale)
        if value < 100_000_000:
            return f"{max(value, 1)}{unit}"
    return "99999999H"


def header_block(
    path: str,
    authority: str,
    secure: bool,
    metadata: Sequence[tuple[str, str]],
    timeout: float | None,
) -> bytes:
    block = [
        b"\x83",  # :method POST (static 3)
        b"\x87" if secure else b"\x86",  # :scheme https / http (static 7 / 6)
        _literal(4, path.encode()),  # :path
        _literal(1, authority.encode()),  # :authority
        _literal(31, b"application/grpc"),  # content-type
        _literal(b"te", b"trailers"),
        _literal(58, f"greeter-load/{__version__} (h2)".encode()),  # user-agent
    ]
    if timeout is not None:
        block.append(_literal(b"grpc-timeout", grpc_timeout(timeout).encode()))
    for key, value in metadata:
        raw = value.encode()
        if key.endswith("-bin"):
            raw = base64.b64encode(raw).rstrip(b"=")
        block.append(_literal(key.encode(), raw))
    return b"".join(block)


def _head(length: int, ftype: int, flags: int) -> bytes:
    """A frame header without its stream id (5 bytes)."""
    return length.to_bytes(3, "big") + bytes([ftype, flags])


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return _head(len(payload), ftype, flags) + _U32.pack(sid) + payload


class UnaryRequest:
    """One call's bytes, encoded once: ``sid.join(pieces)`` is the whole request (HEADERS,
    CONTINUATIONs, DATA frames) for stream ``sid``; ``size`` is what flow control counts."""

    __slots__ = ("pieces", "size", "timeout")

    def __init__(self, block: bytes, message: bytes, timeout: float | None) -> None:
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        self.size = len(body)
        self.timeout = timeout
        chunks = [block[i : i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)] or [b""]
        datas = [body[i : i + MAX_FRAME] for i in range(0, len(body), MAX_FRAME)]
        # pieces[k] + sid + pieces[k+1]...: each frame head is followed by the stream id.
        pieces = []
        tail = b""
        for i, chunk in enumerate(chunks):
            ftype = HEADERS if i == 0 else CONTINUATION
            flags = END_HEADERS if i == len(chunks) - 1 else 0
            pieces.append(tail + _head(len(chunk), ftype, flags))
            tail = chunk
        for i, chunk in enumerate(datas):
            flags = END_STREAM if i == len(datas) - 1 else 0
            pieces.append(tail + _head(len(chunk), DATA, flags))
            tail = chunk
        pieces.append(tail)
        self.pieces = tuple(pieces)


# -- response headers ---------------------------------------------------------------------
# What a header block says: :status, grpc-status, grpc-message, cluster, pod, server time
# in µs (None: absent).
Summary = tuple[int | None, int | None, str | None, str | None, str | None, int | None]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def summarize(headers: Iterable[tuple[bytes, bytes]]) -> Summary:
    status = grpc_status = server = None
    message = cluster = pod = None
    for name, value in headers:
        if name == b":status":
            status = int(value) if value.isdigit() else 0
        elif name == b"grpc-status":
            grpc_status = int(value) if value.isdigit() else 2
        elif name == b"grpc-message":
            message = _percent_decode(value)
        elif name == CLUSTER_KEY:
            cluster = _text(value)
        elif name == POD_KEY:
            pod = _text(value)
        elif name == SERVER_TIMING_KEY:
            server = timing.server_us(value)
    return status, grpc_status, message, cluster, pod, server


def _percent_decode(raw: bytes) -> str:
    """gRPC's grpc-message encoding: %XX for bytes outside printable ASCII (and %)."""
    return _text(unquote_to_bytes(raw) if b"%" in raw else raw)


class _Stream:
    __slots__ = (
        "cluster",
        "deadline",
        "done",
        "fut",
        "grpc_status",
        "http",
        "message",
        "pod",
        "received",
        "request",
        "server",
        "sid",
    )

    def __init__(self, fut: asyncio.Future[Result], request: UnaryRequest, deadline: float) -> None:
        self.fut = fut
        self.request = request
        self.deadline = deadline
        self.sid = 0
        self.done = False
        self.http: int | None = None
        self.grpc_status: int | None = None
        self.message: str | None = None
        self.cluster: str | None = None
        self.pod: str | None = None
        self.server = NO_SERVER_TIME
        self.received = 0


def _outcome(st: _Stream) -> Result:
    cluster = st.cluster or UNKNOWN
    pod = st.pod or UNKNOWN
    server = st.server
    http = st.http
    if http is not None and http != 200:
        code = HTTP_CODES.get(http, "UNKNOWN")
        return code, f"Received http2 header with status: {http}", cluster, pod, server
    status = st.grpc_status
    if status is None:
        why = "the server ended the stream without a grpc-status"
        return "INTERNAL", why, cluster, pod, server
    name = CODE_NAMES[status] if 0 <= status < len(CODE_NAMES) else "UNKNOWN"
    return name, st.message or "", cluster, pod, server


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection carrying unary gRPC calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, first_stream_id: int = 1) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.pending: deque[_Stream] = deque()  # waiting for a stream slot or send window
        self.deadlines: deque[_Stream] = deque()  # in call order: deadlines only grow
        self.timer: asyncio.TimerHandle | None = None
        self.next_id = first_stream_id
        self.max_streams = MAX_STREAM_ID  # until the server's SETTINGS say otherwise
        # Slots the server still holds for streams we saw end (it refused a stream at its
        # limit); each is given back when one of ours ends, all of them when none is open.
        self.held = 0
        self.send_window = 65535
        self.peer_stream_window = 65535
        self.received = 0  # DATA bytes since the last connection WINDOW_UPDATE
        self.decoder = Decoder()
        self.cache: dict[bytes, Summary] = {}
        self.buf = b""
        self.cont: tuple[int, int, bytearray] | None = None  # a header block in CONTINUATIONs
        self.out: list[bytes] = []
        self.flushing = False
        self.open = False  # takes new streams (SETTINGS seen, no GOAWAY, ids left, connected)
        self.closed = False
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.error = ""

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        settings = _SETTING.pack(S_ENABLE_PUSH, 0) + _SETTING.pack(
            S_INITIAL_WINDOW_SIZE, STREAM_WINDOW
        )
        transport.write(
            PREFACE
            + _frame(SETTINGS, 0, 0, settings)
            + _frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.open = False
        reason = f"connection lost: {exc}" if exc else "Socket closed"
        self.error = self.error or reason
        if not self.ready.done():
            self.ready.set_exception(
                ConnectFailed(f"the server closed the connection before HTTP/2 settings ({exc})")
                if exc
                else ConnectFailed("the server closed the connection before HTTP/2 settings")
            )
            self.ready.exception()  # retrieved: nobody may be waiting any more
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        streams = list(self.streams.values())
        self.streams.clear()
        for st in streams:
            self._resolve(st, ("UNAVAILABLE", self.error, UNKNOWN, UNKNOWN, NO_SERVER_TIME))
        self._retry_pending()
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        pos = 0
        end = len(data)
        unpack = _FRAME_HEAD.unpack_from
        while end - pos >= 9:
            high, low, ftype, flags, sid = unpack(data, pos)
            length = high << 16 | low
            start = pos + 9
            stop = start + length
            if stop > end:
                if length > MAX_INCOMING_FRAME:
                    self._protocol_error("frame too large")
                    return
                break
            pos = stop
            sid &= MAX_STREAM_ID
            if self.cont is not None and ftype != CONTINUATION:
                self._protocol_error("expected CONTINUATION")
                return
            if ftype == DATA:
                self._on_data(data, start, stop, flags, sid, length)
            elif ftype == HEADERS:
                if flags & PADDED:
                    stop -= data[start]
                    start += 1
                if flags & PRIORITY_FLAG:
                    start += 5
                if start > stop:
                    self._protocol_error("bad HEADERS padding")
                    return
                if flags & END_HEADERS:
                    self._on_headers(sid, flags, data[start:stop])
                else:
                    self.cont = (sid, flags, bytearray(data[start:stop]))
            elif ftype == CONTINUATION:
                if self.cont is None or self.cont[0] != sid:
                    self._protocol_error("unexpected CONTINUATION")
                    return
                self.cont[2].extend(data[start:stop])
                if flags & END_HEADERS:
                    first_sid, first_flags, block = self.cont
                    self.cont = None
                    self._on_headers(first_sid, first_flags, bytes(block))
            elif ftype == WINDOW_UPDATE:
                if sid == 0 and length == 4:
                    self.send_window += _U32.unpack_from(data, start)[0] & MAX_STREAM_ID
                    if self.pending:
                        self._send_pending()
            elif ftype == PING:
                if not flags & ACK:
                    self._write(_frame(PING, ACK, 0, data[start:stop]))
            elif ftype == SETTINGS:
                if not flags & ACK:
                    self._on_settings(data, start, stop)
            elif ftype == RST_STREAM:
                st = self.streams.pop(sid, None)
                if st is not None:
                    error = _U32.unpack_from(data, start)[0] if length >= 4 else 0
                    if error == REFUSED_STREAM:
                        self.held += 1
                    self._resolve(
                        st,
                        REFUSED
                        if error == REFUSED_STREAM
                        else (
                            RST_CODES.get(error, "INTERNAL"),
                            f"Received RST_STREAM with error code {error}",
                            st.cluster or UNKNOWN,
                            st.pod or UNKNOWN,
                            st.server,
                        ),
                    )
                    self._after_end()
            elif ftype == GOAWAY:
                self._on_goaway(data, start, stop)
            elif ftype == PUSH_PROMISE:
                self._protocol_error("PUSH_PROMISE although push is disabled")
                return
            # PRIORITY and unknown frame types are ignored.
            if self.closed:
                return
        if pos < end:
            self.buf = data[pos:]

    # -- frames ----------------------------------------------------------------------------
    def _on_data(
        self, data: bytes, start: int, stop: int, flags: int, sid: int, length: int
    ) -> None:
        self.received += length
        if self.received >= REPLENISH:
            self._write(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.received)))
            self.received = 0
        st = self.streams.get(sid)
        if st is None:
            return
        st.received += length
        if flags & END_STREAM:
            self._end(st)
        elif st.received >= STREAM_WINDOW // 2:
            self._write(_frame(WINDOW_UPDATE, 0, sid, _U32.pack(st.received)))
            st.received = 0

    def _on_headers(self, sid: int, flags: int, block: bytes) -> None:
        server = None
        # The server-timing differs in every trailers block: read it apart, so the rest of
        # the block (the same call after call) is still found in the cache.
        at = block.rfind(_TIMING_FIELD)
        if at >= 0:
            start = at + len(_TIMING_FIELD) + 1
            length = block[start - 1] if start <= len(block) else 0x80
            if length < 0x7F and start + length == len(block):  # plain, short, and last
                server = timing.server_us(block[start:])
                block = block[:at]
        summary = self.cache.get(block)
        if summary is None:
            summary = self._decode(block)
            if summary is None:
                return
        st = self.streams.get(sid)
        if st is None:
            return
        status, grpc_status, message, cluster, pod, found = summary
        if server is None:
            server = found
        if server is not None:
            st.server = server
        if status is not None:
            st.http = status
        if grpc_status is not None:
            st.grpc_status = grpc_status
            st.message = message
        if cluster is not None:
            st.cluster = cluster
        if pod is not None:
            st.pod = pod
        if flags & END_STREAM:
            self._end(st)

    def _decode(self, block: bytes) -> Summary | None:
        table = self.decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        try:
            headers = self.decoder.decode(block, raw=True)
        except HPACKError as exc:
            self._protocol_error(f"bad header block: {exc}", code=0x9)  # COMPRESSION_ERROR
            return None
        summary = summarize(headers)
        after = (len(entries), entries[0] if entries else None, table.maxsize)
        if before[0] == after[0] and before[1] is after[1] and before[2] == after[2]:
            # Decoding changed nothing: the same bytes mean the same headers until it does.
            if len(self.cache) >= HEADER_CACHE:
                self.cache.clear()
            self.cache[block] = summary
        else:
            self.cache.clear()
        return summary

    def _on_settings(self, data: bytes, start: int, stop: int) -> None:
        for offset in range(start, stop - 5, 6):
            ident, value = _SETTING.unpack_from(data, offset)
            if ident == S_MAX_CONCURRENT_STREAMS:
                self.max_streams = value
            elif ident == S_INITIAL_WINDOW_SIZE:
                self.peer_stream_window = value
        self._write(_frame(SETTINGS, ACK, 0))
        if not self.ready.done():
            self.open = self.next_id <= MAX_STREAM_ID
            self.ready.set_result(None)
        if self.pending:
            self._send_pending()

    def _on_goaway(self, data: bytes, start: int, stop: int) -> None:
        if stop - start < 8:
            self._protocol_error("short GOAWAY")
            return
        last = _U32.unpack_from(data, start)[0] & MAX_STREAM_ID
        error = _U32.unpack_from(data, start + 4)[0]
        self.open = False
        self.error = f"GOAWAY received (error code {error})"
        for sid in [s for s in self.streams if s > last]:
            # Never processed (RFC 9113 6.8): safe to send again elsewhere.
            self._resolve(self.streams.pop(sid), RETRY)
        self._retry_pending()
        self._after_end()

    # -- calls -----------------------------------------------------------------------------
    def call(self, request: UnaryRequest) -> asyncio.Future[Result]:
        """Start one call; the future's result is its outcome (or RETRY)."""
        fut: asyncio.Future[Result] = self.loop.create_future()
        if not self.open:
            fut.set_result(RETRY)
            return fut
        timeout = request.timeout
        st = _Stream(fut, request, 0.0 if timeout is None else self.loop.time() + timeout)
        if timeout is not None:
            deadlines = self.deadlines
            while deadlines and deadlines[0].done:
                deadlines.popleft()
            deadlines.append(st)
            if self.timer is None:
                self.timer = self.loop.call_at(deadlines[0].deadline, self._expire)
        if self.pending or self._full() or self.send_window < request.size:
            self.pending.append(st)
        else:
            self._send(st)
        return fut

    def _send(self, st: _Stream) -> None:
        request = st.request
        if request.size > self.peer_stream_window:
            detail = f"request ({request.size} bytes) exceeds the server's stream window"
            self._resolve(st, ("INTERNAL", detail, UNKNOWN, UNKNOWN, NO_SERVER_TIME))
            return
        sid = self.next_id
        self.next_id = sid + 2
        st.sid = sid
        self.streams[sid] = st
        self.send_window -= request.size
        self._write(_U32.pack(sid).join(request.pieces))
        if self.next_id > MAX_STREAM_ID:
            self.open = False  # ids used up: the channel opens a new connection

    def _send_pending(self) -> None:
        pending = self.pending
        while pending:
            st = pending[0]
            if st.done:
                pending.popleft()
                continue
            if not self.open:
                return
            if self._full() or self.send_window < st.request.size:
                return
            pending.popleft()
            self._send(st)

    def _retry_pending(self) -> None:
        while self.pending:
            self._resolve(self.pending.popleft(), RETRY)

    def _full(self) -> bool:
        streams = len(self.streams)
        if not streams:
            self.held = 0
        return streams + self.held >= self.max_streams

    def _end(self, st: _Stream) -> None:
        del self.streams[st.sid]
        if self.held:
            self.held -= 1
        self._resolve(st, _outcome(st))
        self._after_end()

    def _after_end(self) -> None:
        if self.pending:
            self._send_pending()
        if not self.open and not self.streams and not self.closed and self.ready.done():
            self.close()

    def _resolve(self, st: _Stream, result: Result) -> None:
        st.done = True
        fut = st.fut
        if not fut.done():
            fut.set_result(result)

    def _expire(self) -> None:
        self.timer = None
        now = self.loop.time()
        deadlines = self.deadlines
        while deadlines:
            st = deadlines[0]
            if st.done:
                deadlines.popleft()
                continue
            if st.deadline > now:
                break
            deadlines.popleft()
            if st.sid and self.streams.pop(st.sid, None) is not None:
                self._write(_frame(RST_STREAM, 0, st.sid, _U32.pack(CANCEL)))
            expired = ("DEADLINE_EXCEEDED", "Deadline Exceeded", UNKNOWN, UNKNOWN, NO_SERVER_TIME)
            self._resolve(st, expired)
        if deadlines:
            self.timer = self.loop.call_at(deadlines[0].deadline, self._expire)
        self._after_end()

    # -- output ----------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flushing:
            self.flushing = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flushing = False
        out = self.out
        if out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(out))
        out.clear()

    def _protocol_error(self, why: str, code: int = PROTOCOL_ERROR) -> None:
        self.error = f"HTTP/2 protocol error: {why}"
        self.open = False
        if self.transport is not None and not self.closed:
            self._flush()
            goaway = _U32.pack(self.next_id - 2 if self.next_id > 2 else 0) + _U32.pack(code)
            self.transport.write(_frame(GOAWAY, 0, 0, goaway))
            self.transport.close()
        self.closed = True

    def close(self) -> None:
        """Say GOAWAY and close (calls still in flight fail as the connection goes)."""
        self.open = False
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.write(_frame(GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(NO_ERROR)))
            self.transport.close()


class H2Channel:
    """One of the ``--connections``: a connection, replaced when it goes away."""

    def __init__(self, target: Target, first_stream_id: int = 1) -> None:
        found = endpoint(target.address)
        if found is None:
            raise ValueError(f"{target.address!r} is not a single address")
        self.host, self.port = found
        self.address = target.address
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = target.authority or f"{host}:{self.port}"
        self.ssl = ssl_context(target)
        name = target.authority.rsplit(":", 1)[0] if target.authority else ""
        if target.authority.startswith("["):
            name = target.authority[1:].partition("]")[0]
        # The TLS name (SNI, and what the certificate is checked against): the authority,
        # else the host; an IP address is checked against the certificate's IP entries.
        self.server_hostname = name or self.host
        self.first_stream_id = first_stream_id
        self.conn: H2Connection | None = None
        self.old: list[H2Connection] = []
        self._connecting: asyncio.Future[H2Connection | None] | None = None
        self._retry_at = 0.0
        self.last_error = ""
        self.connects = 0  # connections opened (for tests)

    async def _open(self, timeout: float) -> H2Connection:
        loop = asyncio.get_running_loop()
        first = self.first_stream_id

        async def dial() -> H2Connection:
            _, protocol = await loop.create_connection(
                lambda: H2Connection(loop, first),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.server_hostname if self.ssl else None,
            )
            if self.ssl is not None and protocol.transport is not None:
                tls = protocol.transport.get_extra_info("ssl_object")
                alpn = tls.selected_alpn_protocol() if tls is not None else None
                if alpn != "h2":
                    protocol.close()
                    raise ConnectFailed(f"the server did not negotiate HTTP/2 (ALPN {alpn!r})")
            try:
                await protocol.ready
            except BaseException:
                protocol.close()
                raise
            return protocol

        try:
            conn = await asyncio.wait_for(dial(), timeout)
        except TimeoutError:
            raise ConnectFailed(f"not ready within {timeout:g}s") from None
        self.connects += 1
        return conn

    async def connect(self, timeout: float) -> None:
        """The first connection; raises OSError (ConnectFailed, refused, TLS...) on failure."""
        self.conn = await self._open(timeout)

    async def ready(self, timeout: float) -> H2Connection | None:
        """An open connection (a new one if the last went away), None if connecting failed
        (``last_error`` says why)."""
        conn = self.conn
        if conn is not None and conn.open:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._reconnect(timeout))
        return await asyncio.shield(self._connecting)

    async def _reconnect(self, timeout: float) -> H2Connection | None:
        try:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.conn is not None and not self.conn.closed:
                self.old.append(self.conn)  # still finishing its streams
            self.old = [c for c in self.old if not c.closed]
            try:
                self.conn = await self._open(timeout)
            except OSError as exc:
                self._retry_at = time.monotonic() + RECONNECT_BACKOFF
                self.last_error = f"failed to connect to {self.address}: {exc}"
                return None
            return self.conn
        finally:
            self._connecting = None

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        conns = [c for c in (self.conn, *self.old) if c is not None]
        for conn in conns:
            conn.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.lost for c in conns)), 1.0)


# rec, began, code, cluster, pod, message, now (None: now), server µs (-1: no server-timing)
Record = Callable[[Any, float, str, str, str, str, float | None, int], None]


def make_caller(
    channel: H2Channel, path: str, payload: bytes, metadata: Sequence[tuple[str, str]],
    timeout: float | None, connect_timeout: float, record: Record, tracer: Any = None,
) -> Callable[[Any, float], Any]:  # fmt: skip
    """A coroutine function making one unary call on ``channel`` and recording it; a call
    ``tracer`` samples (greeter.load.tracing) carries a traceparent, encoded for it alone."""
    block = header_block(path, channel.authority, channel.ssl is not None, metadata, timeout)
    plain = UnaryRequest(block, payload, timeout)
    plain_record = record
    sleep = asyncio.sleep

    async def unary_call(rec: Any, began: float) -> None:
        request, record = plain, plain_record
        traced = tracer.start(began) if tracer is not None else None
        if traced is not None:
            header = _literal(b"traceparent", traced.header.encode())
            request, record = UnaryRequest(block + header, payload, timeout), traced.record
        conn = channel.conn
        for attempt in range(ATTEMPTS):
            if conn is None or not conn.open:
                conn = await channel.ready(connect_timeout)
                if conn is None:
                    record(
                        rec, began, "UNAVAILABLE", UNKNOWN, UNKNOWN, channel.last_error, None,
                        NO_SERVER_TIME,
                    )  # fmt: skip
                    return
            result = await conn.call(request)
            if result is REFUSED and attempt < ATTEMPTS - 1:
                continue
            if result is not RETRY:
                code, details, cluster, pod, server = result
                if code == "OK":
                    rec.replies += 1
                record(rec, began, code, cluster, pod, details, None, server)
                return
            conn = None
        again = "the server refused the call again"
        record(rec, began, "UNAVAILABLE", UNKNOWN, UNKNOWN, again, None, NO_SERVER_TIME)
        await sleep(0)

    return unary_call


async def open_channels(target: Target, connections: int, timeout: float) -> list[H2Channel]:
    """``connections`` connected channels; raises OSError (ConnectFailed, refused, TLS...)
    after closing whatever did connect."""
    channels = [H2Channel(target) for _ in range(connections)]
    results = await asyncio.gather(
        *(ch.connect(timeout) for ch in channels), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            await close_channels(channels)
            raise result
    return channels


async def close_channels(channels: Sequence[H2Channel]) -> None:
    await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
