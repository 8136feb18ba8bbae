"""The fleet's traffic policies as the rehearsal gateway plays them.

What the ALB multi-cluster gateway can be told to do with the member clusters, and how nginx
does the same here (docs/rehearsal.md, "Traffic policies"):

- a **weighted split** (``--weights cluster-a=80,cluster-b=20``): nginx ``weight=`` on every
  backend, spread over each cluster's pods so that the *cluster* totals hold the shares
  (:func:`pod_weights`);
- **routing by a header** to one cluster (``--route-header x-cluster``): a ``map`` on the
  header choosing a per-cluster upstream; :func:`check_route_header` refuses names nginx or
  gRPC would not pass through as plain metadata;
- **active/standby** (``--standby cluster-b``): the standby's backends are nginx ``backup``
  servers, used only while no backend of an active cluster is available.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

# Header names the gateway or gRPC itself gives a meaning to: not available as a route header.
RESERVED_HEADERS = frozenset(
    {"authorization", "content-type", "te", "user-agent", "host", "x-canary"}
)
_HEADER = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def parse_weights(spec: str) -> dict[str, int]:
    """``cluster-a=80,cluster-b=20`` → ``{"cluster-a": 80, "cluster-b": 20}`` (syntax only;
    :func:`check_weights` judges the shares against the clusters)."""
    shares: dict[str, int] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"weights {spec!r}: expected CLUSTER=PERCENT[,CLUSTER=PERCENT...]")
        if name in shares:
            raise ValueError(f"weights {spec!r}: {name} is given twice")
        try:
            shares[name] = int(value.strip())
        except ValueError:
            raise ValueError(
                f"weights {spec!r}: the share of {name} is not a whole percent: {value!r}"
            ) from None
    return shares


def check_weights(shares: Mapping[str, int], clusters: Sequence[str]) -> None:
    """Every cluster has a share (0-100), no other name does, they add up to 100."""
    unknown = [name for name in shares if name not in clusters]
    if unknown:
        raise ValueError(
            f"weights: {', '.join(unknown)} is not a cluster of this rehearsal "
            f"({', '.join(clusters)})"
        )
    missing = [name for name in clusters if name not in shares]
    if missing:
        raise ValueError(
            f"weights: no share for {', '.join(missing)} (give it =0 to send it nothing)"
        )
    for name, share in shares.items():
        if not 0 <= share <= 100:
            raise ValueError(f"weights: the share of {name} must be 0-100, not {share}")
    total = sum(shares.values())
    if total != 100:
        raise ValueError(f"weights: the shares add up to {total}, not 100")


def pod_weights(shares: Mapping[str, int], pods: Mapping[str, int]) -> dict[str, int]:
    """The nginx ``weight=`` of each pod of each cluster, so that the clusters' totals are in
    the ratio of ``shares`` exactly: cluster c's pods get ``share_c * L / pods_c`` with L the
    least common multiple of the pod counts, divided by the common divisor of all of them.
    A cluster with share 0 gets weight 0 (its servers are ``down`` in the weighted group).

    80/20 over 2 pods each: 4 and 1 (cluster totals 8 and 2); 37/63 over 3 and 2 pods: 74
    and 189 (222 and 378).
    """
    common = math.lcm(*pods.values())
    raw = {name: shares[name] * (common // pods[name]) for name in shares}
    divisor = math.gcd(*raw.values())
    if divisor == 0:
        raise ValueError("weights: at least one cluster needs a share above 0")
    return {name: w // divisor for name, w in raw.items()}


def check_route_header(name: str) -> str:
    """The header as gRPC metadata carries it (lower case), or ValueError naming the problem."""
    header = name.strip().lower()
    if not _HEADER.match(header):
        raise ValueError(
            f"route_header {name!r}: a header name is letters, digits and '-' "
            "(gRPC sends metadata keys in lower case)"
        )
    if header.startswith("grpc-") or header.endswith("-bin") or header in RESERVED_HEADERS:
        raise ValueError(
            f"route_header {name!r}: reserved (grpc-*, *-bin and "
            f"{', '.join(sorted(RESERVED_HEADERS))} already mean something to the gateway)"
        )
    return header


def header_variable(header: str) -> str:
    """nginx's variable for a request header: ``x-cluster`` → ``$http_x_cluster``."""
    return "$http_" + header.replace("-", "_")


def check_standby(standby: Sequence[str], clusters: Sequence[str]) -> None:
    unknown = [name for name in standby if name not in clusters]
    if unknown:
        raise ValueError(
            f"standby: {', '.join(unknown)} is not a cluster of this rehearsal "
            f"({', '.join(clusters)})"
        )
    if len(set(standby)) == len(clusters):
        raise ValueError("standby: at least one cluster must stay active")
