"""The ``greeter`` command: a thin layer over the importable core.

greeter serve  [--port 50051 ...]          run the server
greeter call   ADDRESS [--name N] ...      one call; prints the reply and who served it
greeter health ADDRESS [--service S] ...   grpc-health-probe compatible exit codes
                                           (--readiness: greeter.v1.Readiness/Check)
greeter load   ADDRESS [-c -n -z --rps...] load test, with the spread over backends
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import importlib
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import grpc

from greeter import __version__, habits, logs, settings
from greeter.client import (
    EXIT_BAD_ARGS,
    EXIT_CONNECT,
    EXIT_FAILED,
    HEALTH_EXIT_CODES,
    ConnectFailed,
    Target,
    TargetError,
    add_call_arguments,
    add_target_arguments,
    connect_failure,
    help_epilog,
    identity_of,
    require_positive,
    server_timing_of,
    target_from_args,
)
from greeter.durations import duration_arg

logger = logging.getLogger(__name__)

# grpc-health-probe's exit codes, so probes and scripts written for it work.
HEALTH_SERVING, HEALTH_BAD_ARGS, HEALTH_CONNECT, HEALTH_RPC, HEALTH_NOT_SERVING = 0, 1, 2, 3, 4
CALL_METHODS = ("SayHello", "SayHelloStreamReply", "SayHelloBidiStream")
# grpc: HTTP/2 gRPC; grpc-web: gRPC-Web binary over HTTP/1.1; grpc-web-text: its base64 form.
PROTOCOLS = ("grpc", "grpc-web", "grpc-web-text")
# Subcommands that live in their own modules and register themselves.
PLUGINS = ("greeter.load.cli", "greeter.deploy", "greeter.rehearse", "greeter.check")


# Flags and file names stay whole: no line ends inside --expect-cluster or grpc-web-text.
_WRAP: dict[str, Any] = {"break_on_hyphens": False, "break_long_words": False}


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions and epilogs filled paragraph by paragraph, except paragraphs with an
    indented line (examples), which keep their lines; and every flag that takes a value
    shows its default: "(default: X)" is added unless the help says it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line[:1].isspace() for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                text = " ".join(paragraph.split())
                paragraphs.append(textwrap.fill(text, width, **_WRAP, initial_indent=indent))
        return "\n\n".join(paragraphs)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, **_WRAP)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or action.nargs == 0
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
        ):
            return text
        return f"{text} (default: {shown_default(default)})"


def shown_default(value: object) -> str:
    """A default as a user would type it (``%`` escaped for argparse)."""
    if isinstance(value, list | tuple) and not value:
        text = "none"
    elif isinstance(value, list | tuple):
        text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return (text or '""').replace("%", "%%")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with a code of the subcommand's choosing;
    which answers flags from other tools with one line instead of its usage (``habits``:
    flag -> the line; ``value_habits``: dest -> a ghz value we do not take -> advice); and
    which hands its arguments to a ``nested`` command when the first word names it
    (``greeter load merge ...``: a word, where ``greeter load`` wants an address; flags may
    come before it)."""

    exit_code = EXIT_BAD_ARGS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.nested: dict[str, argparse.ArgumentParser] = {}
        self.habits: dict[str, str] = {}
        self.value_habits: dict[str, dict[str, str]] = {}

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(sys.argv[1:] if args is None else args)
        self._answer_habits(words)
        first = self._first_word(words)
        if first is not None and words[first] in self.nested:
            rest = words[:first] + words[first + 1 :]
            return self.nested[words[first]].parse_args(rest, namespace), []
        return super().parse_known_args(words, namespace)

    def _words(self, words: Sequence[str]) -> Iterator[tuple[int, argparse.Action | None]]:
        """Each word before ``--``, with our flag whose value it is (None: it is not one)."""
        owner: argparse.Action | None = None
        for index, word in enumerate(words):
            if owner is not None:
                yield index, owner
                owner = None
                continue
            if word == "--":
                return
            flag, eq, _ = word.partition("=")
            action = self._option_string_actions.get(flag)
            if action is not None and not eq and action.nargs is None:
                owner = action
            yield index, None

    def _answer_habits(self, words: Sequence[str]) -> None:
        for index, owner in self._words(words):
            word = words[index]
            if owner is not None:  # a value of ours: one ghz's flag takes and we do not?
                self._answer_value(words[index - 1], owner, word)
                continue
            flag, eq, value = word.partition("=")
            action = self._option_string_actions.get(flag)
            if eq and action is not None:  # --format=pretty
                self._answer_value(flag, action, value)
            elif word.startswith("-") and flag in self.habits:
                self._refuse(self.habits[flag])

    def _answer_value(self, flag: str, action: argparse.Action, value: str) -> None:
        advice = self.value_habits.get(action.dest, {}).get(value)
        if advice:
            self._refuse(f"ghz's {flag} {value} is not a format here; {advice}")

    def _first_word(self, words: Sequence[str]) -> int | None:
        """Where the first word that is neither a flag nor a flag's value is."""
        for index, owner in self._words(words):
            if owner is None and not words[index].startswith("-"):
                return index
        return None

    def _refuse(self, message: str) -> NoReturn:
        self.exit(self.exit_code, f"{self.prog}: {message}\n")

    def error(self, message: str) -> NoReturn:
        """One line, no usage: what is wrong, the flag meant when one is misspelt, and
        where the flags are listed."""
        words = message.partition("unrecognized arguments: ")[2].split()
        flag = next((w.partition("=")[0] for w in words if w.startswith("-")), "")
        meant = self.meant(flag) if flag else None
        if meant:
            line = f"no flag {flag}; did you mean {meant}?"
        elif message.startswith("argument "):  # a bad value: the message names the flag
            line = f"error: {message}"
        else:
            line = f"error: {message} ({self.prog} --help lists the flags)"
        self.exit(self.exit_code, f"{self.prog}: {line}\n")

    def meant(self, flag: str) -> str | None:
        """The flag of ours closest to a misspelt ``flag`` (``--concurency``), if any is."""
        long = flag.startswith("--")
        ours = [f for f in self._option_string_actions if f.startswith("--") == long]
        close = difflib.get_close_matches(flag, ours, n=1, cutoff=0.75)
        return close[0] if close else None


DESCRIPTION = "A reference gRPC Greeter: serve it, call it, check its health, load test it."
EPILOG = """examples:
  greeter serve --port 50051
  greeter call localhost:50051 --name Ada
  greeter health localhost:50051
  greeter load localhost:50051 -c 8 --connections 4 -z 30s --rps 500

Run greeter COMMAND --help for a command's flags; README.md and docs/ say more."""
SERVE_EPILOG = """examples:
  greeter serve --port 50051 --cluster-name cluster-a
  GREETER_DRAIN_DELAY=10 greeter serve --web-port 8080 --log-format json"""
CALL_EPILOG = help_epilog(
    """examples:
  greeter call localhost:50051 --name Ada
  greeter call localhost:50051 --method SayHelloStreamReply --json
  greeter call 10.0.0.7:443 --insecure --authority grpc.example.com -m x-canary:true
  greeter call localhost:8080 --protocol grpc-web"""
)
HEALTH_EPILOG = help_epilog(
    """examples:
  greeter health localhost:50051
  greeter health localhost:50051 --service helloworld.Greeter
  greeter health 10.0.0.7:443 --insecure --authority grpc.example.com --readiness""",
    HEALTH_EXIT_CODES,
).replace("exit codes:", "exit codes (grpc-health-probe's, unlike the other commands'):", 1)


def build_parser() -> Parser:
    parser = Parser(prog="greeter", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"greeter {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=Parser, metavar="COMMAND", help="one of:"
    )

    serve = sub.add_parser(
        "serve",
        help="run the Greeter server",
        description="Run the Greeter server. Every flag can also be set as GREETER_<FLAG> "
        "in the environment (e.g. GREETER_DRAIN_DELAY=10); flags win.",
        epilog=SERVE_EPILOG,
    )
    settings.add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    call = sub.add_parser(
        "call",
        help="call the Greeter once and show who served it",
        description="Call the Greeter once; print the reply and who served it (cluster, pod, "
        "node, zone from the x-greeter-* metadata) and how long it took.",
        epilog=CALL_EPILOG,
    )
    call.habits = habits.CALL
    add_target_arguments(call, protocols=PROTOCOLS)
    calling = call.add_argument_group("call")
    calling.add_argument("--name", default="world", help="the name to greet")
    add_call_arguments(calling, CALL_METHODS, "--method")
    calling.add_argument(
        "--json", action="store_true", help="print the result as JSON (replies, identity, time)"
    )
    call.set_defaults(func=cmd_call)

    health = sub.add_parser(
        "health",
        help="check gRPC health (exit 0 serving, 1 bad arguments, 2 cannot connect, "
        "3 RPC failure, 4 not serving)",
        description="Ask a server's grpc.health.v1.Health/Check (or greeter.v1.Readiness/Check)"
        ", with grpc-health-probe's exit codes, so probes and scripts written for it work.",
        epilog=HEALTH_EPILOG,
    )
    health.exit_code = HEALTH_BAD_ARGS
    health.habits = habits.HEALTH
    add_target_arguments(health)
    check = health.add_argument_group("health check")
    check.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help='service to check (default: "", the server as a whole)',
    )
    check.add_argument(
        "--readiness",
        action="store_true",
        help="ask /greeter.v1.Readiness/Check (NOT_SERVING as the status code UNAVAILABLE, "
        "what ALB's gRPC health checks see) instead of grpc.health.v1.Health/Check",
    )
    check.add_argument(
        "-t",
        "--timeout",
        type=duration_arg,
        default="5s",
        metavar="DURATION",
        help="the check's deadline (a probe's, shorter than a call's)",
    )
    health.set_defaults(func=cmd_health)

    for module in PLUGINS:
        try:
            plugin = importlib.import_module(module)
        except ImportError as exc:
            if not exc.name or not module.startswith(exc.name):  # something it imports is missing
                raise
            continue
        register = getattr(plugin, "register", None)
        if callable(register):
            register(sub)
    return parser


# -- serve ---------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    flags = {name: getattr(args, name, None) for name in vars(args)}
    try:
        config = settings.load(flags)
    except settings.SettingsError as exc:
        print(f"greeter serve: bad setting: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    from greeter import tracing

    for problem in tracing.env_problems(os.environ):
        print(f"greeter serve: bad setting: {problem}", file=sys.stderr)
        return EXIT_BAD_ARGS
    logs.configure(config.log_level, config.log_format)
    for name in settings.unknown_env(os.environ):
        logger.warning("ignoring %s: no such setting", name)
    from greeter import server

    if config.workers > 1:
        workers = importlib.import_module("greeter.workers")  # several processes: issue 6
        return int(workers.run(config))

    return server.run(config)


# -- call ------------------------------------------------------------------------
async def _call(
    target: Target, method: str, name: str, timeout: float, connect_timeout: float
) -> dict[str, Any]:
    from greeter._proto import helloworld_pb2, helloworld_pb2_grpc
    from greeter.client import open_connected_channel

    request = helloworld_pb2.HelloRequest(name=name)
    async with await open_connected_channel(target, connect_timeout) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        md = target.metadata or None
        started = time.perf_counter()
        if method == "SayHello":
            call = stub.SayHello(request, timeout=timeout, metadata=md)
        elif method == "SayHelloStreamReply":
            call = stub.SayHelloStreamReply(request, timeout=timeout, metadata=md)
        else:
            call = stub.SayHelloBidiStream(iter([request]), timeout=timeout, metadata=md)
        replies = []
        if method == "SayHello":
            replies.append((await call).message)
        else:
            async for reply in call:
                replies.append(reply.message)
        headers, trailers = await call.initial_metadata(), await call.trailing_metadata()
        return {
            "method": method,
            "replies": replies,
            "identity": identity_of(headers, trailers),
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
            "server_timing": server_timing_of(trailers, headers),
        }


class CallFailed(Exception):
    """A gRPC-Web call ended with a status other than OK."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code


async def _call_web(
    target: Target, method: str, name: str, timeout: float, text: bool
) -> dict[str, Any]:
    from greeter._proto import helloworld_pb2
    from greeter.web.client import WebChannel

    channel = WebChannel(target, text=text)
    try:
        started = time.perf_counter()
        result = await channel.call(
            f"/helloworld.Greeter/{method}",
            helloworld_pb2.HelloRequest(name=name).SerializeToString(),
            timeout=timeout,
        )
        took = time.perf_counter() - started
    finally:
        await channel.close()
    if result.code != "OK":
        raise CallFailed(result.code, result.details)
    return {
        "method": method,
        "protocol": "grpc-web-text" if text else "grpc-web",
        "replies": [helloworld_pb2.HelloReply.FromString(m).message for m in result.messages],
        "identity": identity_of(result.headers, result.trailers),
        "took_ms": round(took * 1000, 3),
        "server_timing": server_timing_of(result.trailers, result.headers),
    }


def cmd_call(args: argparse.Namespace) -> int:
    try:
        target = target_from_args(args)
        if args.protocol != "grpc":
            if args.method == "SayHelloBidiStream":
                raise TargetError("gRPC-Web carries unary and server-streaming calls only")
            if target.lb_policy or target.address.startswith(("dns:", "unix:")):
                raise TargetError("--protocol grpc-web needs a host:port address")
        require_positive(args, "timeout", "connect_timeout")
    except TargetError as exc:
        print(f"greeter call: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    try:
        if args.protocol != "grpc":
            text = args.protocol == "grpc-web-text"
            result = asyncio.run(_call_web(target, args.method, args.name, args.timeout, text))
        else:
            result = asyncio.run(
                _call(target, args.method, args.name, args.timeout, args.connect_timeout)
            )
    except CallFailed as exc:
        print(f"greeter call: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except grpc.aio.AioRpcError as exc:
        print(f"greeter call: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return EXIT_FAILED
    except ConnectFailed as exc:
        print(f"greeter call: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    except OSError as exc:  # the gRPC-Web client's
        print(f"greeter call: {connect_failure(target, str(exc))}", file=sys.stderr)
        return EXIT_CONNECT
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for reply in result["replies"]:
        print(reply)
    served = ", ".join(f"{k.removeprefix('x-greeter-')}={v}" for k, v in result["identity"].items())
    print(f"served by: {served or 'unknown (no x-greeter-* metadata)'} in {result['took_ms']} ms")
    print(f"server-timing: {result['server_timing'] or 'none (the server sent no server-timing)'}")
    return 0


# -- health --------------------------------------------------------------------------
Metadata = tuple[tuple[str, str], ...] | None


async def _health(
    target: Target, service: str, timeout: float, connect_timeout: float, readiness: bool = False
) -> int:
    from greeter.client import open_connected_channel

    try:
        channel = await open_connected_channel(target, connect_timeout)
    except ConnectFailed as exc:
        print(f"greeter health: {exc}", file=sys.stderr)
        return HEALTH_CONNECT
    async with channel:
        check = _readiness_check if readiness else _health_check
        return await check(channel, service, timeout, target.metadata or None)


async def _health_check(
    channel: grpc.aio.Channel, service: str, timeout: float, metadata: Metadata
) -> int:
    """grpc.health.v1.Health/Check: the status is in the reply."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=metadata
        )
    except grpc.aio.AioRpcError as exc:
        print(f"greeter health: rpc failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return HEALTH_RPC
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"greeter health: service unhealthy (responded with {status})", file=sys.stderr)
        return HEALTH_NOT_SERVING
    print(f"status: {status}")
    return HEALTH_SERVING


async def _readiness_check(
    channel: grpc.aio.Channel, service: str, timeout: float, metadata: Metadata
) -> int:
    """greeter.v1.Readiness/Check: the status is the call's code (UNAVAILABLE = not serving)."""
    from greeter._proto.greeter.v1 import readiness_pb2, readiness_pb2_grpc

    stub = readiness_pb2_grpc.ReadinessStub(channel)
    try:
        reply = await stub.Check(
            readiness_pb2.CheckRequest(service=service), timeout=timeout, metadata=metadata
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            print(
                f"greeter health: service unhealthy (UNAVAILABLE: {exc.details()})",
                file=sys.stderr,
            )
            return HEALTH_NOT_SERVING
        print(f"greeter health: rpc failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return HEALTH_RPC
    print(f"status: {readiness_pb2.CheckResponse.ServingStatus.Name(reply.status)}")
    return HEALTH_SERVING


def cmd_health(args: argparse.Namespace) -> int:
    try:
        target = target_from_args(args)
        require_positive(args, "timeout", "connect_timeout")
    except TargetError as exc:
        print(f"greeter health: {exc}", file=sys.stderr)
        return HEALTH_BAD_ARGS
    return asyncio.run(
        _health(target, args.service, args.timeout, args.connect_timeout, args.readiness)
    )


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.values())
    return []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand, so that its own exit code applies
        sub = next((p for p in _subparsers(parser) if p.prog.split()[-1] == args.command), parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
