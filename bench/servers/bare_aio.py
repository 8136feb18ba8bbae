"""The baseline: a bare grpc.aio Greeter in the shape of grpc's async helloworld
example (a servicer class, ``grpc.aio.server()``, ``add_insecure_port``,
``start``, ``wait_for_termination``), with no interceptors, metrics or logging.

``python -m bench.servers.bare_aio PORT [--uvloop]``
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

from bench.servers import stream_count
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc


class Greeter(helloworld_pb2_grpc.GreeterServicer):
    async def SayHello(
        self, request: helloworld_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> helloworld_pb2.HelloReply:
        return helloworld_pb2.HelloReply(message=f"Hello, {request.name}!")

    async def SayHelloStreamReply(
        self, request: helloworld_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[helloworld_pb2.HelloReply]:
        count = stream_count(context.invocation_metadata())
        for index in range(1, count + 1):
            yield helloworld_pb2.HelloReply(message=f"Hello, {request.name}! ({index}/{count})")


async def serve(port: int) -> None:
    server = grpc.aio.server()
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    port = int(sys.argv[1])
    if "--uvloop" in sys.argv:
        import uvloop

        uvloop.run(serve(port))
    else:
        asyncio.run(serve(port))


if __name__ == "__main__":
    main()
