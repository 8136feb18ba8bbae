"""How the rehearsal's gateway checks its pods' health (:class:`HealthCheck`), timed like the
chart's ALB health checks: Envoy's active gRPC health checks use it, and the drain delay and
the scenarios' bounds are derived from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HealthCheck:
    """Envoy's active gRPC health checks, timed like the chart's ALB health checks.

    The defaults are ``albIngress.healthCheck`` in chart/values.yaml (a test keeps them equal):
    a pod that goes ``NOT_SERVING`` stops getting calls within ``detection_s`` (interval x
    unhealthy threshold + timeout), so its drain delay must be at least that plus ``margin``.
    """

    interval: float = 1.0
    timeout: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 2
    margin: float = 1.0

    def __post_init__(self) -> None:
        for name in ("interval", "timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"health check {name} must be more than 0 seconds")
        for name in ("unhealthy_threshold", "healthy_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"health check {name.replace('_', ' ')} must be at least 1")
        if self.margin < 0:
            raise ValueError("health check margin must not be negative")

    @property
    def detection_s(self) -> float:
        """Longest time from ``NOT_SERVING`` to no more calls: interval x unhealthy threshold
        + timeout."""
        return self.interval * self.unhealthy_threshold + self.timeout

    @property
    def min_drain_delay(self) -> float:
        """The shortest drain delay that loses no call: detection + margin."""
        return self.detection_s + self.margin

    @property
    def return_s(self) -> float:
        """Longest time from a pod serving again to Envoy sending it calls."""
        return self.interval * self.healthy_threshold + self.timeout
