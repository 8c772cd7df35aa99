"""Repeated cross-validation on the same folds for every predictor set (docs/method.md §4).

Every feature is one row, so K-fold over rows is grouped by feature. :func:`cross_validate`
returns the out-of-fold predictions per repeat and one score per test fold: the Spearman rho of
that fold's predictions with its targets, all from one fitted model. Fold scores are what the
analysis averages and what its intervals are computed from (:mod:`.inference`); a rho pooled
over folds would mix models with different intercepts, which biases it downwards at small n.
Scaling, imputation and hyper-parameter tuning live inside the estimators, so they are refit
inside every fold (nested).
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


def fold_spearman(pred: np.ndarray, y: np.ndarray) -> float:
    """One test fold's score: Spearman rho, and exactly 0 for a constant prediction (a model
    that ranks nothing, e.g. a ridge that chose the intercept alone)."""
    ok = np.isfinite(pred) & np.isfinite(y)
    if ok.sum() >= 3 and np.ptp(y[ok]) > 0 and np.ptp(pred[ok]) == 0:
        return 0.0
    return spearman(pred, y)


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    ok = np.isfinite(y) & np.isfinite(pred)
    ss = float(((y[ok] - y[ok].mean()) ** 2).sum())
    return 1.0 - float(((y[ok] - pred[ok]) ** 2).sum()) / ss if ss > 0 else math.nan


@dataclass
class CVResult:
    """Out-of-fold predictions and fold scores of one estimator on one outcome."""

    oof: np.ndarray  # [R, n] out-of-fold predictions, one row per repeat
    target: np.ndarray  # [R, n] what each prediction is scored against (y, or its residual)
    fold_rho: np.ndarray  # [R * K] test-fold Spearman rho (:func:`fold_spearman`)
    fold_test_size: float  # mean test-fold size
    fold_constant: np.ndarray  # [R * K] the fold's prediction was constant (ranks nothing)

    @property
    def n_train(self) -> float:
        return self.oof.shape[1] - self.fold_test_size

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
    rhos, sizes, flat = [], [], []
    for r, rep in enumerate(splits):
        for tr, te in rep:
            ytr, yte = (y[tr], y[te]) if transform_y is None else transform_y(tr, te)
            ok = np.isfinite(ytr)
            m = clone(est).fit(X[tr][ok], ytr[ok])
            oof[r, te] = m.predict(X[te])
            target[r, te] = yte
            rhos.append(fold_spearman(oof[r, te], yte))
            sizes.append(len(te))
            p = oof[r, te][np.isfinite(oof[r, te])]
            flat.append(p.size == 0 or np.ptp(p) == 0)
    return CVResult(oof, target, np.asarray(rhos), float(np.mean(sizes)), np.asarray(flat))
