"""Server reflection, both versions, from one implementation.

grpcio-reflection serves ``grpc.reflection.v1alpha.ServerReflection``;
grpcurl, ghz and Postman try ``grpc.reflection.v1.ServerReflection`` first.
The two have identical messages on the wire, so the v1alpha handlers are
registered a second time under the v1 name. Importing the generated v1 module
puts its descriptors in the default pool, so v1 itself can be described.
"""

from __future__ import annotations

from collections.abc import Iterable

from grpc_reflection.v1alpha import reflection as v1alpha
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc

from greeter._proto.grpc.reflection.v1 import reflection_pb2 as v1_pb2
from greeter.pipeline import Registrar

V1ALPHA_SERVICE_NAME: str = v1alpha.SERVICE_NAME
V1_SERVICE_NAME: str = v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)


def add_reflection(registrar: Registrar, service_names: Iterable[str]) -> None:
    names = (*service_names, *SERVICE_NAMES)
    v1alpha_grpc.add_ServerReflectionServicer_to_server(
        v1alpha.aio.ReflectionServicer(names), registrar
    )
    registrar.services[V1_SERVICE_NAME] = dict(registrar.services[V1ALPHA_SERVICE_NAME])
