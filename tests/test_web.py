"""gRPC-Web on the web port, on the wire: raw HTTP requests against a real server.

Each content type, the trailers frame, base64 text mode, the error statuses (each
followed by a good call: the server keeps serving), CORS, the page, HTTP/2 with prior
knowledge, TLS, the same interceptors and metrics as the gRPC port, and the drain.
"""

from __future__ import annotations

import asyncio
import base64
import socket

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from test_metrics import scrape, value
from web_support import CHECK, PROTO, SAY_HELLO, STREAM, Reply, hello, reply_text, request

from conftest import channel_to, free_port, running, until
from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
from greeter.certs import make_ca, make_leaf
from greeter.client import Target
from greeter.server import StartupError, running_server
from greeter.settings import Settings, SettingsError
from greeter.web import codec
from greeter.web.client import WebChannel

OK, INVALID, EXHAUSTED, UNIMPLEMENTED = 0, 3, 8, 12
IDENTITY = {"x-greeter-cluster": "cluster-a", "x-greeter-pod": "pod-a"}


def web(**overrides: object) -> object:
    return running(web_port=free_port(), **overrides)


async def assert_still_serving(port: int) -> None:
    reply = await request(port, SAY_HELLO, hello("again"))
    assert reply.grpc_status == OK
    assert reply_text(reply) == ["Hello, again!"]


@pytest.mark.parametrize("content_type", codec.CONTENT_TYPES)
async def test_each_content_type_answers_with_frames_trailers_and_identity(content_type):
    async with web() as server:
        body = hello("Ada")
        if content_type in codec.TEXT_TYPES:
            body = base64.b64encode(body)
        reply = await request(server.web_port, SAY_HELLO, body, content_type)
        assert reply.status == 200
        assert reply.headers["content-type"] == content_type
        for key, expected in IDENTITY.items():
            assert reply.headers[key] == expected  # identity as response headers
        frames = reply.frames()
        assert [flag for flag, _ in frames] == [codec.MESSAGE, codec.TRAILERS]
        assert reply_text(reply) == ["Hello, Ada!"]
        trailers = reply.trailers
        assert trailers["grpc-status"] == "0"
        assert trailers["x-greeter-cluster"] == "cluster-a"  # and in the trailers, as on gRPC
        if content_type in codec.TEXT_TYPES:
            base64.b64decode(reply.body, validate=True)  # the reply really is base64


async def test_text_mode_takes_several_padded_chunks_and_streams_back_chunks():
    async with web(stream_count=3) as server:
        raw = hello("chunks")
        # the 5-byte prefix and the message as two padded base64 chunks, back to back
        body = base64.b64encode(raw[:5]) + base64.b64encode(raw[5:])
        assert body.count(b"=") >= 1
        assert body.index(b"=") < len(body) - 2
        reply = await request(server.web_port, STREAM, body, "application/grpc-web-text")
        assert reply.grpc_status == OK
        assert reply_text(reply) == [f"Hello, chunks! ({i}/3)" for i in (1, 2, 3)]
        # each frame went out as its own padded chunk: the body is several base64 chunks
        assert codec.decode_text(reply.body)[:1] == b"\x00"


async def test_server_streaming_and_health_check():
    from grpc_health.v1 import health_pb2

    async with web() as server:
        reply = await request(server.web_port, STREAM, hello("s"), x_greeter_stream_count="4")
        assert reply_text(reply) == [f"Hello, s! ({i}/4)" for i in range(1, 5)]
        assert reply.grpc_status == OK
        check = codec.frame(health_pb2.HealthCheckRequest().SerializeToString())
        reply = await request(server.web_port, CHECK, check)
        assert reply.grpc_status == OK
        [message] = reply.messages
        assert health_pb2.HealthCheckResponse.FromString(message).status == 1  # SERVING
        unknown = codec.frame(health_pb2.HealthCheckRequest(service="nope").SerializeToString())
        reply = await request(server.web_port, CHECK, unknown)
        assert reply.grpc_status == grpc.StatusCode.NOT_FOUND.value[0]
        # the readiness service too (an empty request, as a health checker sends)
        ready = await request(server.web_port, "/greeter.v1.Readiness/Check", codec.frame(b""))
        assert ready.grpc_status == OK


async def test_unknown_and_client_streaming_methods_are_unimplemented_trailers_only():
    async with web() as server:
        port = server.web_port
        for path in ("/helloworld.Greeter/Nope", "/no.Such/Method", SAY_HELLO + "/x"):
            reply = await request(port, path, hello())
            assert reply.status == 200
            assert reply.headers["grpc-status"] == str(UNIMPLEMENTED)  # trailers-only: headers
            assert reply.grpc_status == UNIMPLEMENTED  # ... and the trailers frame
            assert reply.messages == []
            await assert_still_serving(port)
        reply = await request(port, "/helloworld.Greeter/SayHelloBidiStream", hello())
        assert reply.grpc_status == UNIMPLEMENTED
        assert "unary and server-streaming" in reply.trailers["grpc-message"]


@pytest.mark.parametrize(
    ("name", "body", "content_type", "code", "says"),
    [
        ("bad base64", b"AAAA!!!!", "application/grpc-web-text", INVALID, "base64"),
        ("base64 of odd length", b"AAAAA", "application/grpc-web-text", INVALID, "base64"),
        ("truncated header", b"\x00\x00\x00", PROTO, INVALID, "truncated frame"),
        ("truncated message", b"\x00\x00\x00\x00\x09\x0a\x02", PROTO, INVALID, "truncated"),
        ("no message", b"", PROTO, INVALID, "exactly one message"),
        ("two messages", hello() + hello(), PROTO, INVALID, "exactly one message"),
        ("compressed", b"\x01" + hello()[1:], PROTO, INVALID, "compressed"),
        ("undecodable protobuf", codec.frame(b"\xff\xff\xff"), PROTO, INVALID, "malformed"),
        ("frame claims 5 MB", b"\x00\x00\x50\x00\x00" + b"x" * 10, PROTO, EXHAUSTED, "larger"),
        ("message over the limit", hello("x" * 5000), PROTO, EXHAUSTED, "larger than max"),
    ],
)
async def test_bad_requests_get_their_status_and_the_server_keeps_serving(
    name, body, content_type, code, says
):
    async with web(max_recv_message_size=4096) as server:
        reply = await request(server.web_port, SAY_HELLO, body, content_type)
        assert reply.status == 200, name
        assert reply.grpc_status == code, (name, reply.trailers)
        assert says in reply.trailers["grpc-message"], (name, reply.trailers)
        assert reply.headers["grpc-status"] == str(code)  # no message went out: trailers-only
        await assert_still_serving(server.web_port)


async def test_grpc_message_is_percent_encoded():
    async with web() as server:
        reply = await request(server.web_port, "/helloworld.Greeter/Gr%C3%BC%C3%9Fe", hello())
        assert reply.grpc_status == UNIMPLEMENTED
        message = reply.trailers["grpc-message"]
        assert message.isascii()
        assert "%C3%BC" in message


async def test_http_level_errors():
    async with web() as server:
        port = server.web_port
        wrong_type = await request(port, SAY_HELLO, hello(), "application/json")
        assert wrong_type.status == 415
        assert b"application/grpc-web" in wrong_type.body
        assert (await request(port, SAY_HELLO, method="PUT", body=b"")).status == 405
        assert (await request(port, "/nothing-here", method="GET")).status == 404
        await assert_still_serving(port)


async def test_the_page_and_its_script_are_served_with_a_strict_policy():
    async with web() as server:
        page = await request(server.web_port, "/", method="GET")
        assert page.status == 200
        assert page.headers["content-type"].startswith("text/html")
        assert b'src="greeter-web.js"' in page.body
        assert b"repeat" in page.body
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-greeter-pod"] == "pod-a"
        script = await request(server.web_port, "/greeter-web.js", method="GET")
        assert script.headers["content-type"].startswith("text/javascript")
        assert b"application/grpc-web+proto" in script.body
        # nothing is fetched from elsewhere: no absolute URLs in the page or the script
        assert b"http://" not in page.body + script.body
        assert b"https://" not in page.body + script.body
        head = await request(server.web_port, "/greeter-web.css", method="HEAD")
        assert head.status == 200
        assert head.body == b""


async def test_cors_default_allows_no_other_origin():
    async with web() as server:
        preflight = await request(
            server.web_port,
            SAY_HELLO,
            method="OPTIONS",
            origin="https://evil.example",
            access_control_request_method="POST",
            access_control_request_headers="content-type,x-grpc-web",
        )
        assert preflight.status == 403
        assert "access-control-allow-origin" not in preflight.headers
        reply = await request(server.web_port, SAY_HELLO, hello(), origin="https://evil.example")
        assert "access-control-allow-origin" not in reply.headers  # the browser withholds it


async def test_cors_listed_origin_gets_preflight_and_exposed_headers():
    app = "https://app.example.com"
    async with web(web_cors_origins=(app,)) as server:
        port = server.web_port
        preflight = await request(
            port,
            SAY_HELLO,
            method="OPTIONS",
            origin=app,
            access_control_request_method="POST",
            access_control_request_headers="content-type,x-grpc-web,x-greeter-stream-count",
        )
        assert preflight.status == 204
        assert preflight.headers["access-control-allow-origin"] == app
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "x-greeter-stream-count" in preflight.headers["access-control-allow-headers"]
        reply = await request(port, SAY_HELLO, hello(), origin=app)
        assert reply.headers["access-control-allow-origin"] == app
        assert reply.headers["vary"].lower() == "origin"
        exposed = {h.strip() for h in reply.headers["access-control-expose-headers"].split(",")}
        assert {"grpc-status", "grpc-message", "server-timing", *IDENTITY} <= exposed
        other = await request(port, SAY_HELLO, method="OPTIONS", origin="https://other.example")
        assert other.status == 403
    async with web(web_cors_origins=("*",)) as server:
        reply = await request(server.web_port, SAY_HELLO, hello(), origin="https://any.example")
        assert reply.headers["access-control-allow-origin"] == "*"


async def test_web_calls_go_through_the_same_interceptors_and_metrics():
    async with (
        web(fault_enabled=True, auth_enabled=True, auth_tokens=("s3cret",)) as server,
        channel_to(server) as channel,
    ):
        port = server.web_port
        token = {"authorization": "Bearer s3cret"}
        no_token = await request(port, SAY_HELLO, hello())
        assert no_token.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert "bearer" in no_token.trailers["grpc-message"]
        for _ in range(3):
            assert (await request(port, SAY_HELLO, hello(), **token)).grpc_status == OK
        fault = await request(
            port, SAY_HELLO, hello(), x_greeter_fault_status="UNAVAILABLE", **token
        )
        assert fault.grpc_status == grpc.StatusCode.UNAVAILABLE.value[0]
        assert fault.trailers["x-greeter-cluster"] == "cluster-a"  # identity on errors too
        late = await request(
            port, SAY_HELLO, hello(), grpc_timeout="50m", x_greeter_fault_delay_ms="2000", **token
        )
        assert late.grpc_status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        bad = await request(port, SAY_HELLO, codec.frame(b"\xff\xff"), **token)
        assert bad.grpc_status == INVALID
        big = await request(port, SAY_HELLO, hello(), x_pad="p" * 17_000, **token)
        assert big.grpc_status == EXHAUSTED  # the metadata limit (max_metadata_size)
        assert "max_metadata_size" in big.trailers["grpc-message"]
        # and one gRPC call: both ports land in the same series
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        await stub.SayHello(helloworld_pb2.HelloRequest(), metadata=tuple(token.items()))
        unary = {"grpc_service": "helloworld.Greeter", "grpc_method": "SayHello"}
        unary["grpc_type"] = "unary"
        want = {"OK": 4, "Unauthenticated": 1, "Unavailable": 1, "DeadlineExceeded": 1}
        want |= {"InvalidArgument": 1, "ResourceExhausted": 1}

        def handled(samples: dict) -> dict[str, float]:
            return {
                code: value(samples, "grpc_server_handled_total", grpc_code=code, **unary)
                for code in want
            }

        samples = await until(lambda: scrape(server.metrics_port), lambda got: handled(got) == want)
        assert handled(samples) == want
        assert value(samples, "grpc_server_started_total", **unary) == sum(want.values())


async def test_health_is_exempt_from_auth_as_on_the_grpc_port():
    from grpc_health.v1 import health_pb2

    async with web(auth_enabled=True, auth_tokens=("s3cret",)) as server:
        body = codec.frame(health_pb2.HealthCheckRequest().SerializeToString())
        assert (await request(server.web_port, CHECK, body)).grpc_status == OK


def _h2_call(port: int) -> tuple[dict[bytes, bytes], bytes]:
    """One gRPC-Web call over HTTP/2 with prior knowledge (h2c), with the h2 library."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", f"127.0.0.1:{port}"),
                (":path", SAY_HELLO),
                ("content-type", PROTO),
            ],
        )
        conn.send_data(sid, hello("h2"), end_stream=True)
        sock.sendall(conn.data_to_send())
        headers: dict[bytes, bytes] = {}
        body = b""
        for _ in range(1000):  # bounded
            data = sock.recv(65536)
            if not data:
                break
            ended = False
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
            if ended:
                break
    return headers, body


async def test_http2_prior_knowledge():
    async with web() as server:
        headers, body = await asyncio.to_thread(_h2_call, server.web_port)
        assert headers[b":status"] == b"200"
        reply = Reply(200, {"content-type": PROTO}, body)
        assert reply_text(reply) == ["Hello, h2!"]
        assert reply.grpc_status == OK


async def test_tls_on_the_web_port_with_the_servers_certificate(tmp_path):
    ca = make_ca(tmp_path)
    leaf = make_leaf(tmp_path, "server", ["grpc.example.com", "127.0.0.1"], ca)
    async with web(tls_cert=str(leaf.cert), tls_key=str(leaf.key)) as server:
        address = f"127.0.0.1:{server.web_port}"
        for target in (
            Target(address, cacert=str(ca.cert), authority="grpc.example.com"),
            Target(address, insecure=True),
        ):
            channel = WebChannel(target)
            try:
                result = await channel.call(
                    SAY_HELLO,
                    helloworld_pb2.HelloRequest(name="tls").SerializeToString(),
                    timeout=10,
                )
            finally:
                await channel.close()
            assert result.code == "OK", result
            assert result.metadata("x-greeter-pod") == "pod-a"
        plain = WebChannel(Target(address))
        try:
            failed = await plain.call(SAY_HELLO, b"", timeout=10)
        finally:
            await plain.close()
        assert failed.code != "OK"


async def test_drain_lets_a_web_stream_in_flight_finish():
    settings = Settings(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        web_host="127.0.0.1",
        web_port=free_port(),
        drain_delay=0.0,
        grace_period=10.0,
        stream_count=5,
        stream_interval=0.2,
        access_log=False,
    )
    async with running_server(settings) as server:
        call = asyncio.ensure_future(request(server.web_port, STREAM, hello("d")))
        await asyncio.sleep(0.3)
        assert not call.done()
    # the block's exit drained the server; the stream still got every reply
    reply = await call
    assert reply_text(reply) == [f"Hello, d! ({i}/5)" for i in range(1, 6)]
    assert reply.grpc_status == OK


async def test_a_taken_web_port_fails_start_up():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(StartupError, match="web port"):
            async with running(web_port=taken, web_host="127.0.0.1"):
                pass


def test_web_settings_are_validated():
    assert Settings().web_port == 0  # off unless asked for
    with pytest.raises(SettingsError, match="web_port"):
        Settings(port=8080, web_port=8080)
    with pytest.raises(SettingsError, match="web_port"):
        Settings(web_port=70000)
    with pytest.raises(SettingsError, match=r"web_cors_origins .*GREETER_WEB_CORS_ORIGINS"):
        Settings(web_cors_origins=("https://app.example.com/path",))
    Settings(web_cors_origins=("*", "http://localhost:3000", "https://[::1]:8443"))


async def test_web_port_off_loads_nothing():
    async with running() as server:
        assert server.web_port == 0
