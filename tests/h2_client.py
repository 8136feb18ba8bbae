"""A small raw HTTP/2 client (the ``h2`` package over a plain socket) for sending
gRPC requests that a real gRPC client would never send.

The Greeter serves h2c with prior knowledge, so the client writes the
connection preface straight away. Everything is blocking with a deadline on
every read: call it from a thread (``asyncio.to_thread``) when the server runs
in the test's own event loop.
"""

from __future__ import annotations

import collections
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack

GREETER = "/helloworld.Greeter"
SAY_HELLO = f"{GREETER}/SayHello"
STREAM_REPLY = f"{GREETER}/SayHelloStreamReply"
BIDI = f"{GREETER}/SayHelloBidiStream"


def _text(headers: Iterable[tuple[bytes | str, bytes | str]] | None) -> list[tuple[str, str]]:
    def text(value: bytes | str) -> str:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    return [(text(key), text(value)) for key, value in headers or ()]


def grpc_frame(payload: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    """One length-prefixed gRPC message; ``length`` lets the prefix lie."""
    size = len(payload) if length is None else length
    return struct.pack(">BI", 1 if compressed else 0, size) + payload


def hello(name: str = "h2") -> bytes:
    """A serialized ``HelloRequest{name}`` (field 1, length-delimited), by hand."""
    raw = name.encode()
    assert len(raw) < 128
    return b"\x0a" + bytes([len(raw)]) + raw


def grpc_headers(
    path: str, *, port: int, extra: list[tuple[str, str]] | None = None, **override: str | None
) -> list[tuple[str, str]]:
    """Request headers of a well-formed gRPC call; ``override`` replaces (None drops) one."""
    base = {
        ":method": "POST",
        ":scheme": "http",
        ":path": path,
        ":authority": f"127.0.0.1:{port}",
        "content-type": "application/grpc",
        "te": "trailers",
    }
    for key, value in override.items():
        name = key.replace("_", "-")
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return list(base.items()) + list(extra or [])


@dataclass
class StreamResult:
    headers: list[tuple[str, str]] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset_code: int | None = None

    def _get(self, name: str) -> str | None:
        for key, value in [*self.trailers, *self.headers]:
            if key == name:
                return value
        return None

    @property
    def http_status(self) -> int | None:
        value = self._get(":status")
        return int(value) if value is not None else None

    @property
    def grpc_status(self) -> int | None:
        value = self._get("grpc-status")
        return int(value) if value is not None else None

    @property
    def grpc_message(self) -> str:
        return self._get("grpc-message") or ""

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None

    def messages(self) -> list[bytes]:
        """The gRPC messages in the response body."""
        out, buf = [], bytes(self.data)
        while len(buf) >= 5:
            _, size = struct.unpack(">BI", buf[:5])
            out.append(buf[5 : 5 + size])
            buf = buf[5 + size :]
        return out


class _PlainEncoder(hpack.Encoder):
    """HPACK without Huffman coding: pure-Python Huffman takes seconds on 100 KiB."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return bytes(super().encode(headers, huffman=False))


class H2Client:
    """One HTTP/2 connection to 127.0.0.1 (or ::1); ``with H2Client(port) as c: ...``."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "127.0.0.1",
        timeout: float = 10.0,
        auto_ack: bool = True,
        preface: bool = True,
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.auto_ack = auto_ack
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=False
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.encoder = _PlainEncoder()
        self.streams: dict[int, StreamResult] = {}
        self.closed = False
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.pings_acked = 0
        self.remote_settings_seen = False
        self.unacked: dict[int, int] = {}
        if preface:
            self.conn.initiate_connection()
            self.flush()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    # -- sending -------------------------------------------------------------
    def start(
        self,
        path: str,
        *,
        body: bytes | None = None,
        end_stream: bool = True,
        headers: list[tuple[str, str]] | None = None,
        extra: list[tuple[str, str]] | None = None,
        flush: bool = True,
        **override: str | None,
    ) -> int:
        """Open a stream with (by default) gRPC headers and optionally a body.

        ``flush=False`` leaves the frames queued (for a body that fits the flow-control
        window) so that several streams go out in one write with the next ``flush``.
        """
        sid = self.conn.get_next_available_stream_id()
        hdrs = headers or grpc_headers(path, port=self.port, extra=extra, **override)
        self.conn.send_headers(sid, hdrs, end_stream=end_stream and body is None)
        self.streams[sid] = StreamResult()
        if body is not None:
            self.send_data(sid, body, end_stream=end_stream, flush=flush)
        if flush:
            self.flush()
        return sid

    def send_data(
        self, sid: int, body: bytes, *, end_stream: bool = False, flush: bool = True
    ) -> None:
        """Send ``body`` on a stream, waiting for flow-control window as needed."""
        view = memoryview(body)
        while True:
            window = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if len(view) <= window:
                self.conn.send_data(sid, bytes(view), end_stream=end_stream)
                break
            if window > 0:
                self.conn.send_data(sid, bytes(view[:window]))
                view = view[window:]
                self.flush()
                continue
            self.flush()
            if not self.pump(1.0) and self.closed:
                raise ConnectionError("connection closed while sending")
            if self.streams[sid].done:
                return
        if flush:
            self.flush()

    def reset(self, sid: int, code: int = 8) -> None:  # 8 = CANCEL
        self.conn.reset_stream(sid, error_code=code)
        self.flush()

    def ping(self, payload: bytes = b"12345678") -> bool:
        """Send a PING; False (nothing sent) once the server has said GOAWAY."""
        if self.goaway is not None or self.closed:
            return False
        self.conn.ping(payload)
        self.flush()
        return True

    # -- receiving -----------------------------------------------------------
    def pump(self, timeout: float) -> bool:
        """Read once (up to ``timeout``) and handle the events; False on timeout/close."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return False
        for event in events:
            self._handle(event)
        self.flush()
        return True

    def _handle(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", None)
        result = self.streams.get(sid) if sid else None
        if isinstance(event, h2.events.ResponseReceived) and result is not None:
            result.headers = _text(event.headers)
        elif isinstance(event, h2.events.TrailersReceived) and result is not None:
            result.trailers = _text(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            if result is not None:
                result.data += event.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                self.unacked[event.stream_id] = (
                    self.unacked.get(event.stream_id, 0) + event.flow_controlled_length
                )
        elif isinstance(event, h2.events.StreamEnded) and result is not None:
            result.ended = True
        elif isinstance(event, h2.events.StreamReset) and result is not None:
            result.reset_code = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
        elif isinstance(event, h2.events.PingAckReceived):
            self.pings_acked += 1
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.remote_settings_seen = True

    def start_reading(self) -> None:
        """Turn automatic flow-control credit back on and grant what was held back."""
        self.auto_ack = True
        for sid, size in self.unacked.items():
            if size and not self.streams[sid].done:
                self.conn.acknowledge_received_data(size, sid)
        self.unacked.clear()
        self.flush()

    def lift_stream_limit(self, limit: int = 1_000_000) -> None:
        """Forget the server's SETTINGS_MAX_CONCURRENT_STREAMS, to open more than it allows.

        Waits for the server's SETTINGS (and ACKs them) first: a late SETTINGS frame would
        put the limit back, and grpc-core refuses the streams past its limit with
        REFUSED_STREAM only once the client has ACKed it (before that, with
        ENHANCE_YOUR_CALM).
        """
        self.wait_settings()
        self.conn.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = (
            collections.deque([limit])
        )

    def wait_settings(self, timeout: float = 10.0) -> None:
        """Pump until the server's SETTINGS have arrived and been ACKed (``pump`` sends
        the ACK that ``h2`` queues); AssertionError if they do not come within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.remote_settings_seen and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.pump(left)
        if self.closed:
            raise AssertionError("the connection closed while waiting for the server's SETTINGS")
        if not self.remote_settings_seen:
            raise AssertionError(f"no SETTINGS from the server within {timeout} s")

    def wait(self, sid: int, timeout: float | None = None) -> StreamResult:
        """Pump until stream ``sid`` ends or is reset, the connection closes, or time runs out."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        result = self.streams[sid]
        while not result.done and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.pump(left)
        return result

    def wait_closed(self, timeout: float) -> bool:
        """Pump until the server closes the connection; True if it did in time."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.pump(min(left, 1.0))
        return True

    def call(self, path: str, body: bytes | None = None, **kwargs: object) -> StreamResult:
        """Open a stream, send everything, wait for the answer."""
        sid = self.start(path, body=body, **kwargs)  # type: ignore[arg-type]
        return self.wait(sid)


def raw_call(port: int, path: str, body: bytes | None = None, **kwargs: object) -> StreamResult:
    """One request on a fresh connection."""
    with H2Client(port) as client:
        return client.call(path, body, **kwargs)
