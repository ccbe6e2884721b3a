"""Statistics of the claims table: Student's t, Holm-Bonferroni, the verdict rule, the detectable difference.

Numbers only (numpy and the standard library, no torch), so that the workflow
can import :data:`CLAIMS_DEFAULTS` and :func:`claims_options` when it builds
the aggregate rule's parameters. :mod:`eroseg.report.claims` turns evaluation
records into paired differences and their standard errors; this module decides
what they say.

A row of a claim is a paired difference ``d`` (points of mIoU) with a standard
error ``se`` and degrees of freedom ``df``. Its two-sided p-value for ``d = 0``
is ``P(|T_df| > |d| / se)``. Holm's step-down procedure over the rows of one
claim gives each row the level ``a_i`` it is tested at, and its adjusted
interval is ``d ± t_df(1 - a_i / 2) · se``: the interval excludes 0 exactly
when Holm rejects, so the family-wise error rate of the claim's yes / no
verdicts is at most ``alpha``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

#: Defaults of ``evaluation.claims`` beyond its comparisons (this module owns them; the workflow imports them).
CLAIMS_DEFAULTS = {"alpha": 0.05, "min_effect": 0.5, "resamples": 4000, "bootstrap_seed": 0}

YES, NO, EQUIVALENT, INCONCLUSIVE, TOO_FEW = (
    "yes", "no (the opposite holds)", "equivalent", "inconclusive", "too few seeds")
#: Every verdict a row can get, in the order the ``verdicts`` table counts them.
VERDICTS = (YES, NO, EQUIVALENT, INCONCLUSIVE, TOO_FEW)
#: Overall answer of a comparison whose models say both yes and no.
MIXED = "mixed (yes on some models, no on others)"


def claims_options(claims: dict | None) -> dict:
    """``evaluation.claims`` with :data:`CLAIMS_DEFAULTS` filled in and checked; ``{}`` for none.

    Raises:
        ValueError: one line naming the config key, for a value out of range or of the wrong type.
    """
    if not claims:
        return {}
    key = "config key evaluation.claims"
    if not isinstance(claims, dict):
        raise ValueError(f"{key}: {claims!r}; expected a mapping (attack_pairs, eroseg_at, at_baselines, ...)")
    out = {**CLAIMS_DEFAULTS, **claims}
    key += "."

    def number(name, ok, expected):
        v = out[name]
        if isinstance(v, bool) or not isinstance(v, Real) or not ok(v):
            raise ValueError(f"{key}{name}: {v!r}; expected {expected}")

    number("alpha", lambda v: 0 < v < 1, "a family-wise error rate in (0, 1), e.g. 0.05")
    number("min_effect", lambda v: 0 <= v < math.inf, "points of mIoU >= 0, e.g. 0.5")
    for name, low in (("resamples", 100), ("bootstrap_seed", 0)):
        v = out[name]
        if isinstance(v, bool) or not isinstance(v, Integral) or v < low:
            raise ValueError(f"{key}{name}: {v!r}; expected an integer >= {low}")
    return out


# ------------------------------------------------------------------ Student's t
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes, 6.4)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta({a}, {b}, {x}) did not converge")


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


#: Above this many degrees of freedom Student's t is taken as the normal (quantiles differ by < 1e-4).
_NORMAL_DF = 1e5


def t_two_sided_p(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` for Student's t with ``df`` degrees of freedom (``inf``: the normal)."""
    if df > _NORMAL_DF:
        return math.erfc(abs(t) / math.sqrt(2.0))
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(alpha: float, df: float) -> float:
    """``q`` with ``P(|T_df| > q) = alpha``: the half-width, in standard errors, of a two-sided ``1 - alpha`` interval.

    Found by bisection on :func:`t_two_sided_p`, so an interval built with it
    excludes 0 exactly when that p-value is below ``alpha``.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > alpha:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_p(mid, df) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


def welch_df(var_seed: float, seeds: int, var_images: float, images: int) -> float:
    """Welch-Satterthwaite degrees of freedom of ``var_seed + var_images`` (``seeds - 1`` and ``images - 1`` each)."""
    total = var_seed + var_images
    denom = ((var_seed ** 2 / (seeds - 1) if seeds > 1 else 0.0)
             + (var_images ** 2 / (images - 1) if images > 1 else 0.0))
    if total <= 0 or denom <= 0:
        return max(seeds - 1, 1)
    return total ** 2 / denom


def p_value(estimate: float, se: float, df: float) -> float:
    """Two-sided p-value of ``estimate = 0``; 0 or 1 when the standard error is 0."""
    if math.isnan(estimate) or math.isnan(se):
        return math.nan
    if se <= 0:
        return 1.0 if estimate == 0 else 0.0
    return t_two_sided_p(estimate / se, df)


# ----------------------------------------------------------------- multiplicity
def holm(pvalues, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down procedure (Holm 1979) over one family of hypotheses.

    Sorted by p-value, the hypothesis of rank ``r`` (0-based) of ``m`` is
    tested at ``alpha / (m - r)`` while every smaller p-value was rejected; from
    the first one that is not rejected on, every later one keeps that level (and
    is not rejected). NaN p-values (rows not tested) are left out of ``m``.

    Returns:
        ``(adjusted_p, levels)``: per hypothesis, in the input order, the
        adjusted p-value ``min(1, max_{j <= r} (m - j) p_(j))`` (rejected when
        below ``alpha``) and the level its interval is built at (NaN for NaN p).
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted, levels = np.full(p.shape, np.nan), np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    order = tested[np.argsort(p[tested], kind="stable")]
    running, stop_level = 0.0, None
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
        if stop_level is None and not p[i] < alpha / (m - rank):
            stop_level = alpha / (m - rank)
        levels[i] = alpha / (m - rank) if stop_level is None else stop_level
    return adjusted, levels


# ---------------------------------------------------------------------- verdict
def verdict(estimate: float, low: float, high: float, min_effect: float, lower_is_yes: bool) -> str:
    """What a row says, from its difference and its multiplicity-adjusted interval (points).

    - ``yes`` / ``no (the opposite holds)``: the interval excludes 0 and the
      difference is at least ``min_effect`` in the claim's direction / the other;
    - ``equivalent``: the interval lies within ``±min_effect``;
    - ``inconclusive``: anything else (including a real difference below the
      minimum effect whose interval reaches beyond it);
    - ``too few seeds``: no interval (fewer than two seeds).

    Args:
        lower_is_yes: the claim holds for a negative difference (claim (a):
            EroSeg's attacked mIoU lower) rather than a positive one.
    """
    if any(math.isnan(v) for v in (estimate, low, high)):
        return TOO_FEW
    if (low > 0 or high < 0) and abs(estimate) >= min_effect:
        return YES if (estimate < 0) == lower_is_yes else NO
    if -min_effect <= low and high <= min_effect:
        return EQUIVALENT
    return INCONCLUSIVE


def detectable(se: float, df: float, alpha: float, family: int, min_effect: float) -> float:
    """Minimum detectable difference: the smallest ``|d|`` the claim's adjusted test calls yes or no.

    ``max(min_effect, t_df(1 - alpha / (2 m)) · se)`` with ``m`` the rows of the
    claim: Holm tests its first row at ``alpha / m`` (Bonferroni), so a
    difference this large is called whatever the other rows show; later Holm
    steps may call smaller ones. A true difference of this size is called about
    half of the time; below it, "inconclusive" cannot rule it out.
    """
    if math.isnan(se) or family < 1:
        return math.nan
    return max(min_effect, t_quantile(alpha / family, df) * se)


def overall_answer(counts: dict[str, int]) -> str:
    """The overall answer of one comparison from how many models gave each verdict.

    Both yes and no among the models: :data:`MIXED`. Otherwise the verdict of
    more than half of the models, and ``inconclusive`` when none has a majority.
    """
    if counts.get(YES, 0) and counts.get(NO, 0):
        return MIXED
    total = sum(counts.values())
    for v in VERDICTS:
        if counts.get(v, 0) * 2 > total:
            return v
    return INCONCLUSIVE
