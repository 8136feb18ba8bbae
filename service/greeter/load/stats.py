"""The statistics behind the split gate, without scipy: the normal quantile, the
regularized incomplete beta function, exact binomial tails and p-values, the
Clopper-Pearson interval, and the calls a binomial test needs to see a deviation.

All of it is textbook; each function says what it computes so the tests can check it
against known values (tables, and exact sums with :func:`math.comb`)."""

from __future__ import annotations

import math
from collections.abc import Callable

_BISECT_STEPS = 200  # interval halvings: far below double precision on [0, 1] or [-40, 40]
_CF_TERMS = 500  # continued-fraction terms; converges in well under 100 for n up to 1e7
_TINY = 1e-300


def normal_cdf(x: float) -> float:
    """P(Z <= x) for a standard normal Z."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def normal_quantile(p: float) -> float:
    """The x with P(Z <= x) = p, 0 < p < 1 (by bisection on :func:`normal_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"normal_quantile needs 0 < p < 1, got {p!r}")
    return _solve_increasing(p, normal_cdf, -40.0, 40.0)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (evaluated by the modified Lentz method);
    converges quickly for x < (a + 1) / (a + b + 2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _CF_TERMS + 1):
        # the even step, then the odd step, of the fraction's terms
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError("betainc needs a > 0 and b > 0")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    # I_x(a, b) = 1 - I_{1-x}(b, a), where the fraction converges fast
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return betainc(k, n - k + 1, p)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return 1.0 - binom_sf(k + 1, n, p)


def binom_test(x: int, n: int, p: float) -> float:
    """The two-sided exact binomial test's p-value for ``x`` successes in ``n`` draws
    against a success probability ``p``, the "central" form: twice the smaller tail,
    at most 1. ``p`` lies in :func:`clopper_pearson` (x, n, 1 - a) exactly when this
    p-value is above a: the interval and the test never disagree."""
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * min(binom_cdf(x, n, p), binom_sf(x, n, p)))


def _solve_increasing(
    f: float, fn: Callable[[float], float], lo: float = 0.0, hi: float = 1.0
) -> float:
    """The p in [lo, hi] (by bisection) where the increasing function ``fn(p)`` reaches ``f``."""
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if fn(mid) < f:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return (lo + hi) / 2


def clopper_pearson(x: int, n: int, confidence: float) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval for a binomial proportion:
    ``x`` successes in ``n`` draws, at ``confidence`` (e.g. 0.99). Each bound leaves
    (1 - confidence) / 2 in its tail; [0, 1] when n is 0."""
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1")
    if n == 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2
    # lower: P_p(X >= x) = tail, and P_p(X >= x) = I_p(x, n - x + 1) grows with p
    low = 0.0 if x == 0 else _solve_increasing(tail, lambda p: betainc(x, n - x + 1, p))
    # upper: P_p(X <= x) = tail, i.e. I_p(x + 1, n - x) = 1 - tail
    high = 1.0 if x == n else _solve_increasing(1.0 - tail, lambda p: betainc(x + 1, n - x, p))
    return low, high


def calls_to_detect(p: float, delta: float, alpha: float, power: float) -> int:
    """How many draws a two-sided binomial test of share ``p`` at level ``alpha`` needs
    to reject, with probability ``power``, when the true share is ``delta`` away from
    ``p`` (either way; the larger answer). The usual normal approximation,

        n = ((z_{1-alpha/2} sqrt(p (1-p)) + z_{power} sqrt(q (1-q))) / delta)^2,

    with q = p +- delta; for p = 0 or 1 (where any draw on the other side is already
    decisive) the exact n with 1 - (1 - delta)^n >= power."""
    if not 0.0 < delta < 1.0 or not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError("delta, alpha and power must be between 0 and 1")
    if p <= 0.0 or p >= 1.0:
        return math.ceil(math.log1p(-power) / math.log1p(-delta))
    z_alpha = normal_quantile(1.0 - alpha / 2)
    z_power = normal_quantile(power)
    needed = 0.0
    for q in (p - delta, p + delta):
        if not 0.0 <= q <= 1.0:
            continue
        root = z_alpha * math.sqrt(p * (1 - p)) + z_power * math.sqrt(q * (1 - q))
        needed = max(needed, (root / delta) ** 2)
    return math.ceil(needed)
