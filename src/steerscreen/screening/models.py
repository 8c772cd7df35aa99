"""The predictors: scikit-learn estimators in a small registry.

- ``ridge`` (primary): median imputation -> standardisation -> ``RidgeCV`` whose penalty is
  chosen by efficient leave-one-out inside each training fold (nested tuning).
- ``boosting`` (secondary): ``HistGradientBoostingRegressor``, which takes NaN natively.
- ``flexible_baseline``: a small boosted model of an outcome on ``base_freq`` x ``base_mag``,
  used to regress the baselines out inside each fold (residualised CV).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

RIDGE_ALPHAS = np.logspace(-3, 4, 15)


def ridge(seed: int = 0) -> Pipeline:
    """Standardised ridge (METHOD's primary model)."""
    del seed  # deterministic
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("ridge", RidgeCV(alphas=RIDGE_ALPHAS)),
    ])


def boosting(seed: int = 0) -> HistGradientBoostingRegressor:
    """Gradient boosting (METHOD's secondary model)."""
    return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                         min_samples_leaf=10, l2_regularization=1.0,
                                         random_state=seed)


def flexible_baseline(seed: int = 0) -> HistGradientBoostingRegressor:
    """Outcome ~ f(base_freq, base_mag), flexible but small (regressed out inside folds)."""
    return HistGradientBoostingRegressor(max_iter=100, learning_rate=0.05, max_depth=3,
                                         min_samples_leaf=15, random_state=seed)


MODELS: dict[str, Callable[[int], BaseEstimator]] = {"ridge": ridge, "boosting": boosting}
