"""Transfer (docs/method.md §4): fit on one SAE or model, evaluate on another.

:func:`transfer` takes the screening data of several runs. For every ordered pair (A, B) it
fits the ``full`` ridge on all of A's steered features and scores its predictions on B's
features against B's measured outcomes (primary context set). The model is fixed once fit, so
the CI is the Fisher-z interval of a Spearman rho over B's features
(:func:`~steerscreen.screening.inference.correlation`). The runs must share the predictor
columns (same steerscreen statistics). ``steerscreen compare`` (``steerscreen.pipeline.
compare``) reads the runs and adds each run's own headline numbers.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from steerscreen.errors import ArtifactError
from steerscreen.screening.cv import fold_spearman
from steerscreen.screening.data import OUTCOMES, ScreeningData, predictor_sets
from steerscreen.screening.inference import correlation
from steerscreen.screening.models import ridge


def transfer(datas: dict[str, ScreeningData], *, seed: int = 0) -> pl.DataFrame:
    """Run name -> data => train, test, outcome, test_context_set, n_test, rho, lo, hi, p."""
    rows = []
    for a_name, a in datas.items():
        cols = predictor_sets(a.predictors)["full"]
        for outcome in OUTCOMES:
            ya = a.outcome(outcome, a.primary_set)
            ok = np.isfinite(ya)
            model = ridge(seed).fit(a.X(cols)[ok], ya[ok])
            for b_name, b in datas.items():
                if b_name == a_name:
                    continue
                missing = [c for c in cols if c not in b.predictors]
                if missing:
                    raise ArtifactError(f"{b_name!r} lacks predictor columns of "
                                        f"{a_name!r}: {', '.join(missing[:6])}",
                                        "compute both runs' statistics with the same version")
                yb = b.outcome(outcome, b.primary_set)
                pred = model.predict(b.X(cols))
                n_test = int((np.isfinite(yb) & np.isfinite(pred)).sum())
                e = correlation(fold_spearman(pred, yb), n_test)
                rows.append({"train": a_name, "test": b_name, "outcome": outcome,
                             "test_context_set": b.primary_set, "n_test": n_test,
                             "rho": e.estimate, "lo": e.lo, "hi": e.hi, "p": e.p})
    return pl.DataFrame(rows)
