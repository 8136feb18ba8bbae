"""gRPC-Web on a port of its own, for browsers: the protocol, the page, and a client.

``greeter serve --web-port PORT`` serves, next to the gRPC port and in the same event
loop, gRPC-Web (binary and base64 text) for the unary and server-streaming methods,
through the very handlers the gRPC port runs (same interceptors, same metrics), plus a
page at ``/`` that calls the Greeter and shows who answered. Wire details and defaults:
``docs/grpc-web.md``.
"""
