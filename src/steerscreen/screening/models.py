"""The predictors: scikit-learn estimators in a small registry.

- ``ridge`` (primary): :class:`RidgeLOO`, median imputation -> standardisation -> ridge whose
  penalty is chosen by exact leave-one-out error inside each training fold (nested tuning).
- ``boosting`` (secondary): ``HistGradientBoostingRegressor``, which takes NaN natively.
- ``flexible_baseline``: a ridge on the tensor-product B-spline basis of ``base_freq`` x
  ``base_mag``, used to regress the baselines out inside each fold (residualised CV).

:class:`RidgeLOO` is ours (numpy, one SVD per fit) because the analysis fits it tens of
thousands of times; with the +inf option off it equals scikit-learn's
``SimpleImputer -> StandardScaler -> RidgeCV`` (a test checks this).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.preprocessing import SplineTransformer

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 15))


class RidgeLOO(RegressorMixin, BaseEstimator):
    """Standardised ridge with its penalty chosen by exact leave-one-out error.

    ``alphas``: the finite penalties tried; ``allow_constant``: also try +inf (the intercept
    alone), chosen only when it beats every finite penalty. Off for the screening models: when
    a baseline carries a weak signal, a model that flips between "constant" and "ranks" from one
    sample to the next adds variance no cross-validation interval can see (the calibration
    suite measured 0.875 coverage with it). NaN inputs are imputed with the training medians
    (0 for a column that is all NaN).

    Fitted: ``medians_``, ``mean_``, ``scale_`` (the standardisation), ``coef_`` (per
    standardised column), ``intercept_``, ``alpha_`` (``inf`` for the constant model).
    """

    def __init__(self, alphas: tuple[float, ...] = RIDGE_ALPHAS, allow_constant: bool = False):
        self.alphas = alphas
        self.allow_constant = allow_constant

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgeLOO:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        n = y.size
        if X.ndim != 2 or X.shape[0] != n or n < 2:
            raise ValueError(f"RidgeLOO needs X [n, p] and y [n] with n >= 2, got {X.shape}")
        with np.errstate(all="ignore"):
            med = np.nanmedian(np.where(np.isfinite(X), X, np.nan), axis=0)
        self.medians_ = np.where(np.isfinite(med), med, 0.0)
        X = np.where(np.isfinite(X), X, self.medians_)
        self.mean_ = X.mean(0)
        sd = X.std(0)
        # As scikit-learn's StandardScaler: a (near-)constant column keeps scale 1.
        self.scale_ = np.where(sd > 10 * np.finfo(np.float64).eps * np.maximum(
            1.0, np.abs(self.mean_)), sd, 1.0)
        Z = (X - self.mean_) / self.scale_
        self.intercept_ = float(y.mean())
        yc = y - self.intercept_
        U, s, Vt = np.linalg.svd(Z, full_matrices=False)
        Uty, s2, U2 = U.T @ yc, s**2, U**2
        best_err, best = math.inf, math.inf
        if self.allow_constant:  # LOO residual of the mean: (y_i - mean) n / (n - 1)
            best_err = float(np.mean((yc * n / (n - 1)) ** 2))
        for a in self.alphas:
            f = s2 / (s2 + a)
            loo = (yc - U @ (f * Uty)) / (1.0 - (U2 @ f + 1.0 / n))
            err = float(np.mean(loo**2))
            if err < best_err:
                best_err, best = err, float(a)
        self.alpha_ = best
        self.coef_ = (np.zeros(Z.shape[1]) if math.isinf(best)
                      else Vt.T @ (s / (s2 + best) * Uty))
        self.n_features_in_ = Z.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        X = np.where(np.isfinite(X), X, self.medians_)
        return self.intercept_ + ((X - self.mean_) / self.scale_) @ self.coef_


class SplineBaseline(RegressorMixin, BaseEstimator):
    """Outcome ~ f(columns): a ridge (LOO-tuned) on the tensor product of per-column cubic
    B-spline bases with quantile knots, extrapolated linearly. Flexible in every column and
    their interaction, smooth, and a millisecond to fit."""

    def __init__(self, n_knots: int = 5, degree: int = 3):
        self.n_knots = n_knots
        self.degree = degree

    def _basis(self, X: np.ndarray) -> np.ndarray:
        X = np.where(np.isfinite(X), X, self.medians_)
        out = np.ones((X.shape[0], 1))
        for j, sp in enumerate(self.splines_):
            b = sp.transform(X[:, j:j + 1])
            out = (out[:, :, None] * b[:, None, :]).reshape(X.shape[0], -1)
        return out

    def fit(self, X: np.ndarray, y: np.ndarray) -> SplineBaseline:
        X = np.asarray(X, dtype=np.float64)
        with np.errstate(all="ignore"):
            med = np.nanmedian(np.where(np.isfinite(X), X, np.nan), axis=0)
        self.medians_ = np.where(np.isfinite(med), med, 0.0)
        Xf = np.where(np.isfinite(X), X, self.medians_)
        knots = max(2, min(self.n_knots, len(np.unique(Xf, axis=0))))
        self.splines_ = [SplineTransformer(n_knots=knots, degree=self.degree, knots="quantile",
                                           extrapolation="linear").fit(Xf[:, j:j + 1])
                         for j in range(X.shape[1])]
        self.ridge_ = RidgeLOO().fit(self._basis(Xf), y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.ridge_.predict(self._basis(np.asarray(X, dtype=np.float64)))


def ridge(seed: int = 0) -> RidgeLOO:
    """Standardised ridge (the primary model, docs/method.md §4)."""
    del seed  # deterministic
    return RidgeLOO()


def boosting(seed: int = 0) -> HistGradientBoostingRegressor:
    """Gradient boosting (the secondary model, docs/method.md §4)."""
    return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                         min_samples_leaf=10, l2_regularization=1.0,
                                         random_state=seed)


def flexible_baseline(seed: int = 0) -> SplineBaseline:
    """Outcome ~ f(base_freq, base_mag), flexible but smooth (regressed out inside folds)."""
    del seed  # deterministic
    return SplineBaseline()


MODELS: dict[str, Callable[[int], BaseEstimator]] = {"ridge": ridge, "boosting": boosting}
