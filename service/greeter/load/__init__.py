"""``greeter load``: a gRPC load tester that shows which cluster and pod served each call.

from greeter.load import LoadConfig, run_load
report = run_load(LoadConfig(target=Target("127.0.0.1:50051"), total=1000))
report["latency_ms"]["p99"], report["by_pod"]
"""

from __future__ import annotations

from greeter.load.config import ConfigError, LoadConfig, Threshold
from greeter.load.engine import ConnectError
from greeter.load.report import Report, schema
from greeter.load.runner import run_load

__all__ = ["ConfigError", "ConnectError", "LoadConfig", "Report", "Threshold", "run_load", "schema"]
