"""One estimator per number: every estimate of the screening analysis with its own interval,
test and power (docs/method.md §4).

Two kinds of number, two estimators:

- **Cross-validated** (rho of a predictor set, delta rho of two sets, residual rho, held-out
  payoff): the estimate is the mean over the R x K test folds of a per-fold score, and its
  interval, p-value and power all come from the Nadeau–Bengio corrected resampled t statistic
  over the same fold scores (:func:`fold_mean`). The correction ``1/J + n_test/n_train``
  accounts for the folds sharing training rows; a plain bootstrap of fixed out-of-fold
  predictions ignores that and covered 0.85 on pure noise in our calibration runs.
- **Plain correlations** of measured or fixed quantities (noise ceiling, transfer of a fitted
  model, partial Spearman, rank agreement across strengths): Fisher's z with the
  Fieller–Hartley–Pearson variance ``1.06 / (n - 3 - k)`` for Spearman rho with ``k``
  controls (:func:`correlation`).

Both give symmetric intervals (on the z scale for correlations) that always contain their
estimate, and a p-value that is below alpha exactly when the interval excludes 0.

Power (docs/method.md §4.7): :attr:`Estimate.mde` is the smallest true effect the same test detects
with 80% power at two-sided alpha = 0.05, ``(q_{1-alpha/2} + q_{0.8}) * se``. A test whose ``mde``
exceeds :data:`POWER_TARGET` cannot detect the effect sizes the screen is about and is reported
as underpowered rather than as a negative finding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8
POWER_TARGET = 0.1
"""delta rho a run must be able to detect at 80% power, or its verdicts say "underpowered"."""


@dataclass(frozen=True)
class Estimate:
    """A number, its 95% interval, two-sided p (H0: 0) and the smallest detectable effect."""

    estimate: float
    se: float
    lo: float
    hi: float
    p: float
    mde: float
    n: int
    """Features behind the number."""
    method: str
    """The test, in words (printed next to every verdict)."""

    @property
    def underpowered(self) -> bool:
        return not (math.isfinite(self.mde) and self.mde <= POWER_TARGET)

    def significant(self, p: float | None = None) -> bool:
        """Positive and significant at ALPHA (``p``: e.g. a Holm-adjusted p instead)."""
        p = self.p if p is None else p
        return bool(math.isfinite(p) and p < ALPHA and self.estimate > 0)

    def row(self, prefix: str = "") -> dict[str, float | int | str]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


NAN_ESTIMATE = Estimate(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0, "")


def _clip(x: float, bound: float | None) -> float:
    return x if bound is None or not math.isfinite(x) else min(bound, max(-bound, x))


def fold_mean(scores: np.ndarray, n_train: float, n_test: float, n: int, n_splits: int, *,
              constant: bool = False, bound: float | None = None, level: float = 0.95,
              what: str = "") -> Estimate:
    """Mean of R x K fold scores with the Nadeau–Bengio corrected t interval, p and power.

    The t quantiles use K - 1 degrees of freedom, not R K - 1: the repeats reuse the same
    features, so only the K folds of one repeat are disjoint test sets (a calibrated df, as
    Bouckaert 2003 found for repeated CV). With R K - 1 the 95% intervals covered 0.90 on
    pure noise and 0.92 on a planted effect in the calibration suite.

    ``constant``: every fold's model predicted a constant (scored 0 without ranking anything).
    Such folds say nothing about how much a fold score varies once a model ranks, so the fold
    variance is then taken as the null variance of one test fold's Spearman, 1 / (n_test - 1);
    otherwise a run that found nothing would claim an interval of width 0 and unlimited power.
    ``bound``: the statistic's range (1 for rho, 2 for delta rho); the interval is clipped to
    it."""
    d = np.asarray(scores, dtype=np.float64)
    d = d[np.isfinite(d)]
    k = d.size
    method = (f"Nadeau–Bengio corrected t over {k} folds, df = {max(1, min(k, n_splits) - 1)}"
              f"{', ' + what if what else ''}")
    if k < 2:
        return Estimate(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, n, method)
    m = float(d.mean())
    var = float(d.var(ddof=1))
    if constant:
        var = max(var, 1 / max(1.0, n_test - 1))
        method += " (fold variance 1/(m-1): every fold predicted a constant)"
    if var == 0:
        return Estimate(m, 0.0, m, m, 1.0 if m == 0 else 0.0, math.nan, n, method)
    se = math.sqrt((1 / k + n_test / n_train) * var)
    df = max(1, min(k, n_splits) - 1)
    q = float(sps.t.ppf(0.5 + level / 2, df))
    p = float(2 * sps.t.sf(abs(m) / se, df))
    mde = (float(sps.t.ppf(1 - ALPHA / 2, df)) + float(sps.t.ppf(POWER, df))) * se
    return Estimate(m, se, _clip(m - q * se, bound), _clip(m + q * se, bound), p, mde, n, method)


def correlation(rho: float, n: int, k: int = 0, level: float = 0.95) -> Estimate:
    """Spearman ``rho`` of ``n`` pairs (``k`` covariates partialled out): Fisher-z interval
    and p with the Fieller–Hartley–Pearson variance 1.06 / (n - 3 - k)."""
    method = f"Fisher z, var 1.06/(n-3{f'-{k}' if k else ''})"
    dof = n - 3 - k
    if not math.isfinite(rho) or dof < 1:
        return Estimate(rho, math.nan, math.nan, math.nan, math.nan, math.nan, n, method)
    se_z = math.sqrt(1.06 / dof)
    z = math.atanh(min(max(rho, -1 + 1e-12), 1 - 1e-12))
    q = float(sps.norm.ppf(0.5 + level / 2))
    p = float(2 * sps.norm.sf(abs(z) / se_z))
    # Power on the z scale, mapped back at rho = 0 (where dz/drho = 1).
    mde = math.tanh((float(sps.norm.ppf(1 - ALPHA / 2)) + float(sps.norm.ppf(POWER))) * se_z)
    se = se_z * (1 - rho**2)  # delta method, for reading only
    return Estimate(rho, se, math.tanh(z - q * se_z), math.tanh(z + q * se_z), p, mde, n, method)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values; NaN stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    q = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out[order] = np.minimum(q, 1.0)
    return out


def power_note(n: int, mde: float, what: str = "Δρ") -> str:
    """``underpowered (n = 48: detectable Δρ >= 0.35)``."""
    if not math.isfinite(mde):
        return f"underpowered (n = {n}: no fold-to-fold variance, power unknown)"
    return f"underpowered (n = {n}: detectable {what} ≥ {mde:.2f})"
