"""A grpclib Greeter (pure-Python HTTP/2 on asyncio, uvloop), the fastest
Python streaming peer measured so far. The handler mapping is written out by
hand instead of generated, so grpclib is needed only to run this benchmark.

``python -m bench.servers.grpclib_server PORT``
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from bench.servers import stream_count
from greeter._proto import helloworld_pb2

HelloRequest = helloworld_pb2.HelloRequest
HelloReply = helloworld_pb2.HelloReply
SERVICE = helloworld_pb2.DESCRIPTOR.services_by_name["Greeter"].full_name


class Greeter:
    async def say_hello(self, stream: Any) -> None:
        request = await stream.recv_message()
        await stream.send_message(HelloReply(message=f"Hello, {request.name}!"))

    async def say_hello_stream_reply(self, stream: Any) -> None:
        request = await stream.recv_message()
        count = stream_count(stream.metadata.items())
        for index in range(1, count + 1):
            reply = HelloReply(message=f"Hello, {request.name}! ({index}/{count})")
            await stream.send_message(reply)

    def __mapping__(self) -> dict[str, Any]:
        from grpclib.const import Cardinality, Handler

        return {
            f"/{SERVICE}/SayHello": Handler(
                self.say_hello, Cardinality.UNARY_UNARY, HelloRequest, HelloReply
            ),
            f"/{SERVICE}/SayHelloStreamReply": Handler(
                self.say_hello_stream_reply, Cardinality.UNARY_STREAM, HelloRequest, HelloReply
            ),
        }


async def serve(port: int) -> None:
    from grpclib.server import Server

    server = Server([Greeter()])
    await server.start("127.0.0.1", port)
    await server.wait_closed()


def main() -> None:
    port = int(sys.argv[1])
    if "--asyncio" in sys.argv:
        asyncio.run(serve(port))
    else:
        import uvloop

        uvloop.run(serve(port))


if __name__ == "__main__":
    main()
