"""grpc's synchronous server with a ThreadPoolExecutor, the fastest Python
unary peer measured so far.

``python -m bench.servers.sync_pool PORT [THREADS]``
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent import futures

import grpc

from bench.servers import stream_count
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc


class Greeter(helloworld_pb2_grpc.GreeterServicer):
    def SayHello(
        self, request: helloworld_pb2.HelloRequest, context: grpc.ServicerContext
    ) -> helloworld_pb2.HelloReply:
        return helloworld_pb2.HelloReply(message=f"Hello, {request.name}!")

    def SayHelloStreamReply(
        self, request: helloworld_pb2.HelloRequest, context: grpc.ServicerContext
    ) -> Iterator[helloworld_pb2.HelloReply]:
        count = stream_count(context.invocation_metadata())
        for index in range(1, count + 1):
            yield helloworld_pb2.HelloReply(message=f"Hello, {request.name}! ({index}/{count})")


def main() -> None:
    port = int(sys.argv[1])
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
