"""The normal and Student t distributions the significance tests need.

The sidecar does not import SciPy: it would add tens of megabytes to every
worker process for four functions. The normal distribution comes from the
standard library (``math.erfc``, ``statistics.NormalDist``); the t
distribution's tail is the regularized incomplete beta function, evaluated by
its continued fraction (modified Lentz), and its quantile by safeguarded
Newton steps on that tail. tests/test_analytics_comparison.py checks all of
them against ``scipy.stats`` to 1e-11 (up to a million degrees of freedom).
"""

from __future__ import annotations

import math
from statistics import NormalDist

_NORMAL = NormalDist()
_TINY = 1e-300
_EPS = 1e-16
_MAX_ITER = 10_000


def normal_two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z (as 2 * scipy.stats.norm.sf(|z|))."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def normal_quantile(p: float) -> float:
    """The p-quantile of the standard normal (scipy.stats.norm.ppf)."""
    return _NORMAL.inv_cdf(p)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), without its prefactor (Numerical Recipes' betacf)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < _TINY:
        d = _TINY
    d = 1.0 / d
    h = d
    for m in range(1, _MAX_ITER):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + aa / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + aa / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def _stirling_error(x: float) -> float:
    """lgamma(x) - ((x - 0.5) log x - x + log(2 pi) / 2), for x >= 10 (asymptotic series)."""
    x2 = x * x
    return (1.0 / 12 - (1.0 / 360 - (1.0 / 1260 - (1.0 / 1680) / x2) / x2) / x2) / x


def _log_inverse_beta(a: float, b: float) -> float:
    """-log B(a, b). For a large against b, without lgamma's cancellation of big numbers."""
    if a < 10.0 or b > a:
        return math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    # lgamma(a + b) - lgamma(a), term by term from Stirling's formula.
    ratio = ((a - 0.5) * math.log1p(b / a) + b * math.log(a + b) - b
             + _stirling_error(a + b) - _stirling_error(a))
    return ratio - math.lgamma(b)


def incomplete_beta(a: float, b: float, x: float, y: float | None = None) -> float:
    """The regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1.

    ``y`` is 1 - x when the caller knows it more precisely than 1 - x rounds.
    """
    if y is None:
        y = 1.0 - x
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_x = math.log(x) if x < 0.5 else math.log1p(-y)
    log_y = math.log(y) if y < 0.5 else math.log1p(-x)
    log_front = _log_inverse_beta(a, b) + a * log_x + b * log_y
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, y) / b


def t_sf(t: float, df: float) -> float:
    """P(T >= t) for Student's t with ``df`` (not necessarily whole) degrees of freedom."""
    if math.isinf(df):
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    t2 = t * t
    tail = 0.5 * incomplete_beta(0.5 * df, 0.5, df / (df + t2), t2 / (df + t2))
    return tail if t >= 0 else 1.0 - tail


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|), as 2 * scipy.stats.t.sf(|t|, df)."""
    return min(1.0, 2.0 * t_sf(abs(t), df))


def t_pdf(t: float, df: float) -> float:
    log = (math.lgamma(0.5 * (df + 1.0)) - math.lgamma(0.5 * df) - 0.5 * math.log(df * math.pi)
           - 0.5 * (df + 1.0) * math.log1p(t * t / df))
    return math.exp(log)


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (scipy.stats.t.ppf), 0 < p < 1."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    target = 1.0 - p  # upper tail, solved for t > 0
    x = max(normal_quantile(p), 1e-3)
    lo, hi = 0.0, math.inf
    for _ in range(200):
        f = t_sf(x, df) - target
        if f > 0:
            lo = x
        else:
            hi = x
        step = f / t_pdf(x, df)  # sf decreases: d(sf)/dx = -pdf
        nxt = x + step
        if not lo < nxt < hi or not math.isfinite(nxt):
            nxt = (lo + hi) / 2 if math.isfinite(hi) else 2 * x
        if abs(nxt - x) <= 1e-15 * max(1.0, abs(x)):
            return nxt
        x = nxt
    return x
