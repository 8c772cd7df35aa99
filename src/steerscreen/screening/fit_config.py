"""The fit stage's config (METHOD §4): one dataclass, its CLI options and its saved record.

Kept apart from :mod:`.analysis` so that reading a study config does not import scipy and
scikit-learn (seconds, on a cold start, before a typo in the config can be reported).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from steerscreen.errors import SpecError, check_seed


@dataclass
class FitConfig:
    """Everything that defines a fit stage; the CLI's options mirror these fields."""

    strength: float | None = None
    """Outcomes at this strength (default: the first positive one the steer stage recorded)."""
    n_splits: int = 5
    """K of the repeated K-fold CV (grouped by feature)."""
    n_repeats: int = 5
    """Repeats of the K-fold CV."""
    n_permutations: int = 200
    """Outcome permutations through the whole CV pipeline (primary endpoint)."""
    top_share: float = 0.2
    """Held-out screening: share kept in each test fold."""
    boosting_sets: tuple[str, ...] = ("freq+mag", "baselines", "full")
    """Sets also fit with gradient boosting (primary context set only)."""
    conformal_level: float = 0.9
    """Coverage of the split-conformal prediction intervals."""
    seed: int = 0
    """Seeds folds, tie-breaks and permutations."""

    def __post_init__(self) -> None:
        check_seed(self.seed)

        def bad(name: str, want: str) -> SpecError:
            return SpecError(f"{name} = {getattr(self, name)!r} must be {want}",
                             f"set --{name.replace('_', '-')} (study config: fit.{name}) to "
                             f"{want}")

        if self.n_splits < 2:
            raise bad("n_splits", "an integer >= 2")
        if self.n_repeats < 1:
            raise bad("n_repeats", "an integer >= 1")
        if self.n_permutations < 0:
            raise bad("n_permutations", "an integer >= 0")
        for name in ("top_share", "conformal_level"):
            if not 0 < getattr(self, name) < 1:  # NaN fails this too
                raise bad(name, "a number between 0 and 1 (exclusive)")
        if self.strength is not None and not (math.isfinite(self.strength)
                                              and self.strength >= 0):
            raise bad("strength", "a recorded strength (a number >= 0)")
