"""The magnitude confound (docs/method.md §4): does a predictor say more than frequency and
magnitude?

- :func:`partial_spearman`: Spearman of a predictor with an outcome controlling for covariates
  (``base_freq``, ``base_mag``): ranks of both regressed on the covariates' ranks, then the
  correlation of the residuals; CI and p from Fisher's z with k controls
  (:func:`~steerscreen.screening.inference.correlation`), so the CI excludes 0 exactly when
  p < 0.05.
- :func:`residual_targets`: the fold-wise transform for residualised CV: a flexible model of the
  outcome on the baselines (tensor-product splines, :func:`.models.flexible_baseline`) is fit on
  the training fold and subtracted from both folds' targets.
- :func:`within_deciles`: Spearman of predictions with outcomes inside each ``base_freq`` decile.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats as sps
from sklearn.base import clone

from steerscreen.screening.cv import spearman
from steerscreen.screening.inference import Estimate, correlation


def _partial_batch(x: np.ndarray, y: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Partial Spearman for each row set: x, y [B, n], Z [B, n, k] -> [B].

    Ranks of x, y and each covariate, least-squares residuals of the ranks of x and y on
    [1, ranks of Z] (batched normal equations), then the correlation of the residuals."""
    rx, ry = sps.rankdata(x, axis=1), sps.rankdata(y, axis=1)
    rz = sps.rankdata(Z, axis=1)
    A = np.concatenate([np.ones((*rz.shape[:2], 1)), rz], axis=2)  # [B, n, k+1]
    AtA = np.einsum("bni,bnj->bij", A, A)
    rhs = np.stack([np.einsum("bni,bn->bi", A, rx), np.einsum("bni,bn->bi", A, ry)], -1)
    try:
        coef = np.linalg.solve(AtA, rhs)  # [B, k+1, 2]
    except np.linalg.LinAlgError:  # a degenerate resample: solve one by one
        coef = np.stack([np.linalg.lstsq(AtA[i], rhs[i], rcond=None)[0]
                         for i in range(A.shape[0])])
    fit = np.einsum("bni,bij->bnj", A, coef)
    ex, ey = rx - fit[..., 0], ry - fit[..., 1]
    ex -= ex.mean(1, keepdims=True)
    ey -= ey.mean(1, keepdims=True)
    den = np.sqrt((ex**2).sum(1) * (ey**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, (ex * ey).sum(1) / den, np.nan)


def partial_spearman(x: np.ndarray, y: np.ndarray, Z: np.ndarray) -> Estimate:
    """Partial Spearman of x and y given the columns of Z (rows with any NaN dropped)."""
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(Z).all(1)
    n, k = int(ok.sum()), Z.shape[1]
    if n < k + 4 or np.ptp(x[ok]) == 0:
        return correlation(math.nan, n, k)
    rho = float(_partial_batch(x[ok][None], y[ok][None], Z[ok][None])[0])
    return correlation(rho, n, k)


def residual_targets(y: np.ndarray, B: np.ndarray, seed: int = 0
                     ) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fold transform: y minus a flexible fit of y on the baselines ``B`` (training fold)."""
    from steerscreen.screening.models import flexible_baseline

    base = flexible_baseline(seed)

    def transform(tr: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = np.isfinite(y[tr])
        m = clone(base).fit(B[tr][ok], y[tr][ok])
        return y[tr] - m.predict(B[tr]), y[te] - m.predict(B[te])

    return transform


def within_deciles(pred: np.ndarray, y: np.ndarray, freq: np.ndarray, n_bins: int = 10
                   ) -> list[float]:
    """Spearman(pred, y) inside each quantile bin of ``freq`` (NaN where a bin is too small)."""
    ok = np.isfinite(freq)
    order = np.argsort(freq[ok], kind="stable")
    idx = np.flatnonzero(ok)[order]
    return [spearman(pred[b], y[b]) for b in np.array_split(idx, n_bins)]
