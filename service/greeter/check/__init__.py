"""``greeter check``: does this gateway carry gRPC correctly? The standard gRPC interop cases
and the known gateway pitfalls, one verdict per case.

- :mod:`.cases`: the registry (name, what the case proves, the gateway settings that break
  it, the fix) and how a case's outcome becomes PASS / FAIL / SKIP;
- :mod:`.interop_cases`: grpc's interop cases against grpc.testing.TestService;
- :mod:`.gateway_cases`: sizes, long calls, deadlines, cancellation, metadata, trailers-only
  errors, full duplex, gzip, reflection, health, ALPN;
- :mod:`.context`: the calls every case uses, over gRPC or gRPC-Web;
- :mod:`.lookup`: what the serving pod saw of a call (greeter serve --interop);
- :mod:`.runner`, :mod:`.report`, :mod:`.cli`: the run, its text/JSON/JUnit output, the
  ``greeter check`` subcommand.

    from greeter.check import choose, run_check
    run = asyncio.run(run_check(Target("127.0.0.1:50051"), choose(), max_wait=5.0))
"""

from __future__ import annotations

from greeter.check.cli import register
from greeter.check.report import schema
from greeter.check.runner import choose, run_check
from greeter.client import ConnectFailed

__all__ = ["ConnectFailed", "choose", "register", "run_check", "schema"]
