"""Repeated cross-validation and the statistics of comparing predictors (METHOD §4).

Every feature is one row, so K-fold over rows is grouped by feature. :func:`cross_validate`
returns out-of-fold predictions per repeat and the per-fold test Spearman rho, on folds that are
the same for every predictor set (paired comparisons). Scaling, imputation and hyper-parameter
tuning live inside the estimator pipelines, so they are refit inside every fold (nested).

Inference:

- rho and R^2: mean over repeats of the pooled out-of-fold value; 95% CI by a bootstrap over
  features of the out-of-fold predictions (averaged over repeats).
- delta rho (A - B): the same, paired (the same bootstrap rows for both), plus the
  Nadeau–Bengio corrected resampled t-test over the R x K fold scores.
- Holm (family-wise) and Benjamini–Hochberg (false discovery) corrections.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import KFold


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rho over rows where both are finite (NaN with < 3 rows or a constant)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(sps.spearmanr(a[ok], b[ok]).statistic)


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    ok = np.isfinite(y) & np.isfinite(pred)
    ss = float(((y[ok] - y[ok].mean()) ** 2).sum())
    return 1.0 - float(((y[ok] - pred[ok]) ** 2).sum()) / ss if ss > 0 else math.nan


@dataclass
class CVResult:
    """Out-of-fold predictions and fold scores of one estimator on one outcome."""

    oof: np.ndarray  # [R, n] out-of-fold predictions, one row per repeat
    target: np.ndarray  # [R, n] what each prediction is scored against (y, or its residual)
    fold_rho: np.ndarray  # [R * K] test-fold Spearman rho
    fold_test_size: float  # mean test-fold size

    @property
    def mean_oof(self) -> np.ndarray:
        return self.oof.mean(0)


def folds(n: int, n_splits: int = 5, n_repeats: int = 5, seed: int = 0
          ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """[repeat][fold] -> (train, test) indices; the same for every set (paired design)."""
    out = []
    for r in range(n_repeats):
        kf = KFold(n_splits=min(n_splits, n), shuffle=True, random_state=seed + r)
        out.append(list(kf.split(np.arange(n))))
    return out


def cross_validate(est: BaseEstimator, X: np.ndarray, y: np.ndarray,
                   splits: list[list[tuple[np.ndarray, np.ndarray]]],
                   transform_y: Callable | None = None) -> CVResult:
    """Fit a clone of ``est`` on every training fold, predict its test fold.

    ``transform_y(train_idx, test_idx) -> (y_train, y_test)`` replaces the targets per fold
    (residualised CV: baselines regressed out inside the fold).
    """
    n = len(y)
    oof = np.full((len(splits), n), np.nan)
    target = np.full((len(splits), n), np.nan)
    rhos, sizes = [], []
    for r, rep in enumerate(splits):
        for tr, te in rep:
            ytr, yte = (y[tr], y[te]) if transform_y is None else transform_y(tr, te)
            ok = np.isfinite(ytr)
            m = clone(est).fit(X[tr][ok], ytr[ok])
            oof[r, te] = m.predict(X[te])
            target[r, te] = yte
            rhos.append(spearman(oof[r, te], yte))
            sizes.append(len(te))
    return CVResult(oof, target, np.asarray(rhos), float(np.mean(sizes)))


def bootstrap_rows(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[B, n] row indices resampled with replacement (shared by paired statistics)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def nadeau_bengio(diff: np.ndarray, n_train: float, n_test: float) -> tuple[float, float]:
    """Corrected resampled t-test of fold-score differences -> (t, two-sided p)."""
    d = diff[np.isfinite(diff)]
    k = d.size
    if k < 2:
        return math.nan, math.nan
    var = d.var(ddof=1)
    if var == 0:
        return (math.inf if d.mean() > 0 else -math.inf if d.mean() < 0 else math.nan,
                0.0 if d.mean() != 0 else 1.0)
    t = d.mean() / math.sqrt((1 / k + n_test / n_train) * var)
    return float(t), float(2 * sps.t.sf(abs(t), df=k - 1))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok])]
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
    order = ok[np.argsort(p[ok])]
    m = order.size
    q = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out[order] = np.minimum(q, 1.0)
    return out


def spearman_boot(a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman rho of ``a`` and ``b`` on each bootstrap row set of ``idx`` [B, n] (rows where
    either is NaN are dropped first; ``idx`` then indexes the kept rows modulo their count)."""
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = a.size
    if n < 3:
        return np.full(idx.shape[0], np.nan)
    i = idx if idx.shape[1] == n and ok.all() else np.random.default_rng(
        int(idx[0, 0])).integers(0, n, size=(idx.shape[0], n))
    ra, rb = sps.rankdata(a[i], axis=1), sps.rankdata(b[i], axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / den, np.nan)


def percentile_ci(vals: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    v = vals[np.isfinite(vals)]
    if v.size < 10:
        return math.nan, math.nan
    a = (1 - level) / 2
    return float(np.quantile(v, a)), float(np.quantile(v, 1 - a))
