"""``greeter rehearse``: the fleet behind a real gateway (nginx or Envoy), on one machine.

- :mod:`.nginx`: the nginx gateway's configuration and process;
- :mod:`.envoy`: the Envoy gateway's configuration (health checks, localities, priorities,
  grpc_web, TLS origination), process and admin API;
- :mod:`.policy`: the fleet's traffic policies (weights, header routing, standby) in nginx;
- :mod:`.fleet`: the backends (two clusters and a canary) and the whole rehearsal's lifecycle;
- :mod:`.prometheus`: a real Prometheus scraping every backend, the chart's rules loaded;
- :mod:`.traffic`: steady-rate calls with a per-call timeline;
- :mod:`.scenarios`: a rolling drain, a cluster outage and a failover under that traffic;
- :mod:`.cli`: the ``greeter rehearse`` subcommand.
"""

from __future__ import annotations

from greeter.rehearse.cli import register

__all__ = ["register"]
