"""Helpers for the gRPC-Web tests: raw HTTP/1.1 requests (http.client, in a thread, as the
server runs in the test's own event loop) and the frames of a reply."""

from __future__ import annotations

import asyncio
import http.client
from dataclasses import dataclass

from greeter._proto import helloworld_pb2
from greeter.web import codec

PROTO = "application/grpc-web+proto"
SAY_HELLO = "/helloworld.Greeter/SayHello"
STREAM = "/helloworld.Greeter/SayHelloStreamReply"
CHECK = "/grpc.health.v1.Health/Check"


@dataclass
class Reply:
    status: int  # HTTP status
    headers: dict[str, str]  # lower-case names (the last of repeated ones)
    body: bytes

    def frames(self) -> list[tuple[int, bytes]]:
        raw = codec.decode_text(self.body) if "text" in self.headers["content-type"] else self.body
        return list(codec.iter_frames(raw, 1 << 30))

    @property
    def messages(self) -> list[bytes]:
        return [payload for flag, payload in self.frames() if flag == codec.MESSAGE]

    @property
    def trailers(self) -> dict[str, str]:
        frames = self.frames()
        assert frames, "no frames in the reply"
        flag, payload = frames[-1]
        assert flag == codec.TRAILERS, f"the last frame has flag {flag:#x}, not 0x80"
        return dict(codec.parse_trailers(payload))

    @property
    def grpc_status(self) -> int:
        return int(self.trailers["grpc-status"])


def hello(name: str = "web") -> bytes:
    return codec.frame(helloworld_pb2.HelloRequest(name=name).SerializeToString())


def _request(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        data = response.read()
        found = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, found, data)
    finally:
        conn.close()


async def request(
    port: int,
    path: str,
    body: bytes | None = None,
    content_type: str = PROTO,
    method: str = "POST",
    **headers: str,
) -> Reply:
    """One HTTP/1.1 request; extra headers as keyword arguments (``x_grpc_web="1"``)."""
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    if method == "POST":
        sent.setdefault("content-type", content_type)
    return await asyncio.to_thread(_request, port, method, path, body, sent)


def reply_text(reply: Reply) -> list[str]:
    return [helloworld_pb2.HelloReply.FromString(m).message for m in reply.messages]
