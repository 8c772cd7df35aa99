"""The fit stage's config (METHOD §4): one dataclass, its CLI options and its saved record.

Kept apart from :mod:`.analysis` so that reading a study config does not import scipy and
scikit-learn (seconds, on a cold start, before a typo in the config can be reported).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FitConfig:
    """Everything that defines a fit stage; the CLI's options mirror these fields."""

    strength: float | None = None
    """Outcomes at this strength (default: the first the steer stage recorded)."""
    n_splits: int = 5
    """K of the repeated K-fold CV (grouped by feature)."""
    n_repeats: int = 5
    """Repeats of the K-fold CV."""
    n_boot: int = 1000
    """Bootstrap resamples for every CI."""
    n_permutations: int = 200
    """Outcome permutations through the whole CV pipeline (primary endpoint)."""
    top_share: float = 0.2
    """Held-out screening: share kept in each test fold."""
    boosting_sets: tuple[str, ...] = ("freq+mag", "baselines", "full")
    """Sets also fit with gradient boosting (primary context set only)."""
    conformal_level: float = 0.9
    """Coverage of the split-conformal prediction intervals."""
    seed: int = 0
    """Seeds folds, bootstraps and permutations."""
