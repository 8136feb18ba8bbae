"""The Helm path without Argo CD: render or install/upgrade the chart through pyhelm3.

    greeter deploy render  --cluster-name ack-1 [-f values.yaml] [--set k=v]
    greeter deploy install --cluster-name ack-1 [--namespace gateway-demo] [--wait]

It passes the chart the same values the ApplicationSet in gitops/ does (the cluster name), so a
release installed by hand answers like one Argo CD synced. pyhelm3 and PyYAML are the optional
extra ``greeter[deploy]``; they are imported only when a deploy command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_NAMESPACE = "gateway-demo"
DEFAULT_RELEASE = "greeter"
CHART_ENV = "GREETER_CHART"
HELM_ENV = "GREETER_HELM"


class DeployError(RuntimeError):
    """The deploy command cannot go on (missing chart, helm or extra)."""


def find_chart(explicit: str | None = None) -> Path:
    """The chart folder: --chart, $GREETER_CHART, or chart/ in this source tree or the cwd."""
    candidates = [explicit, os.environ.get(CHART_ENV)]
    candidates += [
        str(Path(__file__).resolve().parents[2] / "chart"),
        str(Path.cwd() / "chart"),
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "Chart.yaml").is_file():
            return Path(candidate)
    raise DeployError("no chart found: pass --chart or set GREETER_CHART")


def find_helm(explicit: str | None = None) -> str:
    helm = explicit or os.environ.get(HELM_ENV) or shutil.which("helm")
    if not helm:
        raise DeployError("no helm binary: put helm on PATH, set GREETER_HELM or pass --helm")
    return helm


def parse_set(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set a.b=c`` pairs as nested values (true/false/null/integers typed as Helm does)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise DeployError(f"--set {pair!r}: expected key=value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise DeployError(f"--set {pair!r}: {part} is already a value")
            node = child
        node[parts[-1]] = _typed(raw)
    return out


def _typed(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if lowered == "null":
        return None
    try:
        return int(raw)
    except ValueError:
        return raw


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge, later wins (as Helm merges -f files and --set)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build_values(
    *,
    cluster_name: str | None,
    value_files: Sequence[Path] = (),
    sets: Sequence[str] = (),
) -> dict[str, Any]:
    """Values in Helm's order: files, then --set, then the cluster name (as Argo CD passes it)."""
    yaml = _import("yaml", "PyYAML")
    values: dict[str, Any] = {}
    for path in value_files:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise DeployError(f"{path}: values must be a mapping")
        values = merge(values, loaded)
    values = merge(values, parse_set(sets))
    if cluster_name is not None:
        values = merge(values, {"cluster": {"name": cluster_name}})
    return values


def _import(module: str, package: str) -> Any:
    """Import an optional dependency of greeter[deploy] (kept lazy: the server needs neither)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = "pip install '.[deploy]' (from a clone)"
        raise DeployError(f"{package} is not installed: {hint}") from exc


def _client(helm: str) -> Any:
    return _import("pyhelm3", "pyhelm3").Client(executable=helm)


async def render(
    values: Mapping[str, Any],
    *,
    chart: Path,
    helm: str,
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
    include_tests: bool = False,
) -> list[dict[str, Any]]:
    """The chart's objects, rendered by the real helm (``helm template``)."""
    client = _client(helm)
    loaded = await client.get_chart(chart)
    resources = await client.template_resources(
        loaded, release, dict(values), namespace=namespace, no_hooks=not include_tests
    )
    return [dict(r) for r in resources if r]


async def install(
    values: Mapping[str, Any],
    *,
    chart: Path,
    helm: str,
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
    wait: bool = False,
    timeout: str | None = None,
    dry_run: bool = False,
) -> Any:
    """``helm upgrade --install`` into the current kube context; returns the new revision."""
    client = _client(helm)
    loaded = await client.get_chart(chart)
    return await client.install_or_upgrade_release(
        release,
        loaded,
        dict(values),
        namespace=namespace,
        create_namespace=True,
        atomic=wait,
        wait=wait,
        timeout=timeout,
        dry_run=dry_run,
    )


DEPLOY_EXAMPLES = """examples:
  greeter deploy render --cluster-name cluster-a > manifests.yaml
  greeter deploy install --cluster-name cluster-a -f my-values.yaml --wait"""


def register(subparsers: Any) -> None:
    """Add ``greeter deploy render|install`` to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "deploy",
        help="render or install the Helm chart (needs the deploy extra and helm)",
        epilog=DEPLOY_EXAMPLES,
    )
    actions = parser.add_subparsers(
        dest="deploy_action", required=True, metavar="ACTION", help="one of:"
    )
    for name, help_text in (
        ("render", "print the chart's manifests, as Argo CD would apply them"),
        ("install", "helm upgrade --install into the current kube context"),
    ):
        sub = actions.add_parser(name, help=help_text, epilog=DEPLOY_EXAMPLES)
        sub.add_argument(
            "--cluster-name",
            help="this cluster's name, the pods' GREETER_CLUSTER_NAME (default: the values')",
        )
        sub.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE, help="namespace")
        sub.add_argument("--release", default=DEFAULT_RELEASE, help="Helm release name")
        sub.add_argument(
            "-f",
            "--values",
            action="append",
            default=[],
            type=Path,
            help="values file (repeatable)",
        )
        sub.add_argument("--set", action="append", default=[], help="key=value (repeatable)")
        sub.add_argument("--chart", help=f"chart folder (default ${CHART_ENV} or ./chart)")
        sub.add_argument("--helm", help=f"helm binary (default ${HELM_ENV} or helm on PATH)")
        if name == "install":
            sub.add_argument("--wait", action="store_true", help="wait for ready; roll back")
            sub.add_argument("--timeout", help="helm timeout, e.g. 5m (default: helm's, 5m)")
            sub.add_argument("--dry-run", action="store_true", help="ask helm to simulate")
        else:
            sub.add_argument("--include-tests", action="store_true", help="add the test pod")
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point for ``greeter deploy``; returns the exit code."""
    try:
        chart = find_chart(args.chart)
        helm = find_helm(args.helm)
        values = build_values(
            cluster_name=args.cluster_name, value_files=args.values, sets=args.set
        )
        if args.deploy_action == "render":
            yaml = _import("yaml", "PyYAML")
            objects = asyncio.run(
                render(
                    values,
                    chart=chart,
                    helm=helm,
                    release=args.release,
                    namespace=args.namespace,
                    include_tests=args.include_tests,
                )
            )
            sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
            return 0
        revision = asyncio.run(
            install(
                values,
                chart=chart,
                helm=helm,
                release=args.release,
                namespace=args.namespace,
                wait=args.wait,
                timeout=args.timeout,
                dry_run=args.dry_run,
            )
        )
        print(
            f"release {args.release} in {args.namespace}: revision {revision.revision}, "
            f"{revision.status}"
        )
        return 0
    except DeployError as exc:
        print(f"greeter deploy: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # pyhelm3 raises its own error types for helm failures
        print(f"greeter deploy: helm failed: {exc}", file=sys.stderr)
        return 1
