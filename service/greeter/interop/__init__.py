"""The standard gRPC interop service, ``greeter serve --interop`` (docs/interop.md).

:mod:`greeter.interop.service` serves ``grpc.testing.TestService`` and
``grpc.testing.UnimplementedService``; :mod:`greeter.interop.checklog` is the
greeter extension that lets ``greeter check`` ask a pod what became of a call it
served. Importing this package imports neither.
"""
