"""Transfer (METHOD §4): fit on one SAE or model, evaluate on another; every run side by side.

:func:`compare` takes run folders with complete steer stages. For every ordered pair (A, B) it
fits the ``full`` ridge on all of A's steered features and scores its predictions on B's
features against B's measured outcomes (primary context set). The model is fixed once fit, so
the CI is the Fisher-z interval of a Spearman rho over B's features
(:func:`~steerscreen.screening.inference.correlation`). The runs must share the predictor
columns (same steerscreen statistics). It also tabulates each run's own headline numbers from
``screening/summary.json`` when ``fit`` ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from steerscreen.errors import ArtifactError
from steerscreen.runs import RunDir
from steerscreen.screening.cv import fold_spearman
from steerscreen.screening.data import OUTCOMES, ScreeningData, predictor_sets, screening_table
from steerscreen.screening.inference import correlation
from steerscreen.screening.models import ridge


def compare(runs: list[str | Path], *, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """-> (transfer table: train, test, outcome, n, rho, lo, hi, p; per-run table)."""
    if len(runs) < 2:
        raise ArtifactError("compare needs at least two runs", "pass two or more run folders")
    names = [str(r) for r in runs]
    datas: list[ScreeningData] = [screening_table(RunDir(r)) for r in runs]
    rows = []
    for i, a in enumerate(datas):
        cols = predictor_sets(a.predictors)["full"]
        for outcome in OUTCOMES:
            ya = a.outcome(outcome, a.primary_set)
            ok = np.isfinite(ya)
            model = ridge(seed).fit(a.X(cols)[ok], ya[ok])
            for j, b in enumerate(datas):
                if i == j:
                    continue
                missing = [c for c in cols if c not in b.predictors]
                if missing:
                    raise ArtifactError(f"{names[j]!r} lacks predictor columns of "
                                        f"{names[i]!r}: {', '.join(missing[:6])}",
                                        "compute both runs' statistics with the same version")
                yb = b.outcome(outcome, b.primary_set)
                pred = model.predict(b.X(cols))
                n_test = int((np.isfinite(yb) & np.isfinite(pred)).sum())
                e = correlation(fold_spearman(pred, yb), n_test)
                rows.append({"train": names[i], "test": names[j], "outcome": outcome,
                             "test_context_set": b.primary_set, "n_test": n_test,
                             "rho": e.estimate, "lo": e.lo, "hi": e.hi, "p": e.p})
    per_run = []
    for name, d in zip(names, datas, strict=True):
        row = {"run": name, "n_features": d.table.height, "strength": d.strength,
               "context_set": d.primary_set}
        summary = RunDir(name).file("screening") / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text(encoding="utf-8"))
            p = s["primary_endpoint"]
            row |= {"rho_full": p["rho_full"], "rho_freq_mag": p["rho_baseline"],
                    "delta_rho": p["delta_rho"], "delta_lo": p["delta_lo"],
                    "delta_hi": p["delta_hi"]}
            row |= {"n_fit": p.get("n"), "detectable_delta_rho": p.get("mde"),
                    "primary_verdict": p.get("verdict")}
            row |= {f"verdict_{k}": v for k, v in s["verdicts"].items()}
        per_run.append(row)
    return pl.DataFrame(rows), pl.DataFrame(per_run, infer_schema_length=None)
