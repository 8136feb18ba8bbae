"""The gRPC-Web wire format: length-prefixed frames, the trailers frame, base64 text mode.

A frame is one flag byte, a 4-byte big-endian length and the payload. Flag 0x00 is a
message, 0x80 the trailers (``name:value\\r\\n`` lines, the HTTP/2 trailers of plain gRPC);
0x01 marks a compressed message, which this server does not accept. In text mode
(``application/grpc-web-text``) the same bytes travel base64-encoded; a body may be
several padded base64 chunks back to back (one per frame a sender flushed).
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable, Iterator, Sequence

MESSAGE = 0x00
COMPRESSED = 0x01
TRAILERS = 0x80
_HEAD = struct.Struct(">BI")
HEAD_SIZE = _HEAD.size  # 5

# Request content types: binary, binary with the codec named, and the base64 forms.
BINARY_TYPES = ("application/grpc-web", "application/grpc-web+proto")
TEXT_TYPES = ("application/grpc-web-text", "application/grpc-web-text+proto")
CONTENT_TYPES = BINARY_TYPES + TEXT_TYPES


class FrameError(ValueError):
    """The body is not a well-formed sequence of gRPC-Web frames."""


class TooLarge(FrameError):
    """A frame announces more bytes than the receiver accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"received message larger than max ({size} vs. {limit})")
        self.size = size
        self.limit = limit


def media_type(content_type: str) -> str:
    """``application/grpc-web+proto; charset=x`` → ``application/grpc-web+proto``."""
    return content_type.split(";", 1)[0].strip().lower()


def is_text(content_type: str) -> bool:
    return media_type(content_type) in TEXT_TYPES


def frame(payload: bytes, flag: int = MESSAGE) -> bytes:
    return _HEAD.pack(flag, len(payload)) + payload


def trailers_frame(trailers: Iterable[tuple[str, str]]) -> bytes:
    block = "".join(f"{name}:{value}\r\n" for name, value in trailers)
    return frame(block.encode("utf-8"), TRAILERS)


def decode_text(body: bytes) -> bytes:
    """Base64 text-mode body → the raw frame bytes. Accepts several padded chunks back to
    back; anything that is not base64 raises FrameError."""
    data = b"".join(body.split())  # line breaks and spaces carry nothing
    if len(data) % 4:
        raise FrameError(f"bad base64: {len(data)} characters is not a multiple of 4")
    out = bytearray()
    start = 0
    for end in range(4, len(data) + 1, 4):
        if data[end - 1 : end] == b"=" or end == len(data):  # a chunk ends with its padding
            try:
                out += base64.b64decode(data[start:end], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise FrameError(f"bad base64: {exc}") from None
            start = end
    return bytes(out)


def encode_text(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def iter_frames(data: bytes, limit: int) -> Iterator[tuple[int, bytes]]:
    """(flag, payload) for each frame in ``data``; FrameError on a truncated frame, TooLarge
    when a message frame is longer than ``limit``."""
    view = memoryview(data)
    at = 0
    while at < len(data):
        if len(data) - at < HEAD_SIZE:
            raise FrameError(f"truncated frame: {len(data) - at} bytes of a 5-byte header")
        flag, size = _HEAD.unpack_from(data, at)
        if flag == MESSAGE and size > limit:
            raise TooLarge(size, limit)
        at += HEAD_SIZE
        if len(data) - at < size:
            raise FrameError(f"truncated frame: {len(data) - at} of {size} bytes")
        yield flag, bytes(view[at : at + size])
        at += size


def request_messages(data: bytes, limit: int) -> list[bytes]:
    """The messages of a request body (no trailers, no compression in a request)."""
    messages = []
    for flag, payload in iter_frames(data, limit):
        if flag == COMPRESSED:
            raise FrameError("compressed message, but no grpc-encoding is supported")
        if flag != MESSAGE:
            raise FrameError(f"unexpected frame flag 0x{flag:02x} in a request")
        messages.append(payload)
    return messages


def parse_trailers(payload: bytes) -> list[tuple[str, str]]:
    """A trailers frame's payload → (lower-case name, value) pairs."""
    pairs = []
    for line in payload.decode("utf-8", "replace").split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise FrameError(f"bad trailer line {line[:80]!r}")
        pairs.append((name.strip().lower(), value.strip()))
    return pairs


def split_response(data: bytes, limit: int = 1 << 31) -> tuple[list[bytes], list[tuple[str, str]]]:
    """A whole response body → (messages, trailers). Used by the client and the tests."""
    messages: list[bytes] = []
    trailers: list[tuple[str, str]] = []
    for flag, payload in iter_frames(data, limit):
        if flag & TRAILERS:
            trailers += parse_trailers(payload)
        elif flag == MESSAGE:
            messages.append(payload)
        else:
            raise FrameError(f"unexpected frame flag 0x{flag:02x} in a response")
    return messages, trailers


def header_value(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None
