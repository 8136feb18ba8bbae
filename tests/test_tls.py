"""TLS and mTLS handshakes with real certificates, and the client's TLS options."""

from __future__ import annotations

import grpc
import pytest

from conftest import running
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.certs import make_ca, make_leaf
from greeter.client import Target, open_channel

HelloRequest = helloworld_pb2.HelloRequest


@pytest.fixture
def pki(tmp_path):
    ca = make_ca(tmp_path)
    server = make_leaf(tmp_path, "server", ["grpc.example.com", "localhost", "127.0.0.1"], ca)
    client = make_leaf(tmp_path, "client", ["client-1"], ca, client=True)
    other_ca = make_ca(tmp_path / "other")
    stranger = make_leaf(tmp_path / "other", "stranger", ["x"], other_ca, client=True)
    return {"ca": ca, "server": server, "client": client, "stranger": stranger}


async def say_hello(target: Target) -> str:
    async with open_channel(target) as channel:
        reply = await helloworld_pb2_grpc.GreeterStub(channel).SayHello(
            HelloRequest(name="tls"), timeout=5
        )
    return reply.message


async def test_tls_with_ca_and_authority(pki):
    async with running(tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key)) as srv:
        address = f"127.0.0.1:{srv.port}"
        assert await say_hello(Target(address, cacert=str(pki["ca"].cert))) == "Hello, tls!"
        # addressing by IP with the virtual host as authority, like a gateway
        target = Target(address, cacert=str(pki["ca"].cert), authority="grpc.example.com")
        assert await say_hello(target) == "Hello, tls!"
        # --insecure trusts whatever the server presents
        assert await say_hello(Target(address, insecure=True)) == "Hello, tls!"
        # plaintext against a TLS port fails
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await say_hello(Target(address))
        assert error.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_tls_wrong_authority_fails_verification(pki):
    async with running(tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key)) as srv:
        target = Target(f"127.0.0.1:{srv.port}", cacert=str(pki["ca"].cert), authority="evil.com")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await say_hello(target)
        assert error.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_from_the_ca(pki):
    async with running(
        tls_cert=str(pki["server"].cert),
        tls_key=str(pki["server"].key),
        tls_client_ca=str(pki["ca"].cert),
    ) as srv:
        address = f"127.0.0.1:{srv.port}"
        good = Target(
            address,
            cacert=str(pki["ca"].cert),
            cert=str(pki["client"].cert),
            key=str(pki["client"].key),
        )
        assert await say_hello(good) == "Hello, tls!"
        for bad in (
            Target(address, cacert=str(pki["ca"].cert)),
            Target(
                address,
                cacert=str(pki["ca"].cert),
                cert=str(pki["stranger"].cert),
                key=str(pki["stranger"].key),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await say_hello(bad)
            assert error.value.code() is grpc.StatusCode.UNAVAILABLE
