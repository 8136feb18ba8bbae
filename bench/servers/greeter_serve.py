"""Our server, started the way ``greeter serve`` starts it (settings from the
``GREETER_*`` environment), without building the whole CLI, so the benchmark
does not depend on unrelated subcommands.

``GREETER_PORT=... python -m bench.servers.greeter_serve``
"""

from __future__ import annotations

import sys

from greeter import logs, server, settings


def main() -> int:
    config = settings.load({})
    logs.configure(config.log_level, config.log_format)
    if config.workers > 1:
        from greeter.workers import run as run_workers

        return run_workers(config)
    return server.run(config)


if __name__ == "__main__":
    sys.exit(main())
