"""Our server, started the way ``greeter serve`` starts it (settings from the
``GREETER_*`` environment), without building the whole CLI, so the benchmark
does not depend on unrelated subcommands.

``GREETER_PORT=... python -m bench.servers.greeter_serve``
"""

from __future__ import annotations

import json
import os
import sys

from greeter import logs, server, settings

EXTRA_OPTIONS_ENV = "BENCH_GRPC_OPTIONS"


def add_experimental_options() -> None:
    """``BENCH_GRPC_OPTIONS='{"grpc.optimization_target": "throughput"}'`` appends
    channel arguments to the server's, to try options the settings do not expose."""
    extra = json.loads(os.environ.get(EXTRA_OPTIONS_ENV) or "{}")
    if not extra:
        return
    base = server.server_options

    def with_extra(config: settings.Settings) -> list[tuple[str, int]]:
        return [*base(config), *extra.items()]

    server.server_options = with_extra  # type: ignore[assignment]


def main() -> int:
    add_experimental_options()
    try:
        config = settings.load({})
    except settings.SettingsError as exc:  # as `greeter serve` reports it: exit 2, no traceback
        print(f"bad setting: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    if config.workers > 1:
        from greeter.workers import run as run_workers

        return run_workers(config)
    return server.run(config)


if __name__ == "__main__":
    sys.exit(main())
