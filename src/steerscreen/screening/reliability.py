"""How reliable and how meaningful the measured outcomes are (docs/method.md §4, reliability).

- **Noise ceiling**: Spearman of each outcome measured on the steering contexts against the
  same features' outcome on the fresh contexts. No predictor can rank features better than the
  outcome agrees with itself.
- **Axes**: the correlation of the two axes (stability vs spread) per context set.
- **Null**: feature outcomes against the random-direction null steered the same way.
- **Rank agreement across strengths**: when the run swept several strengths, Spearman of each
  outcome between every pair of them (primary context set), so a verdict at one dose can be
  read against the others.

Every correlation carries a Fisher-z interval (:func:`.inference.correlation`).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import polars as pl

from steerscreen.screening.cv import spearman
from steerscreen.screening.data import OUTCOMES, ScreeningData
from steerscreen.screening.inference import correlation


def _corr(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    n = int((np.isfinite(a) & np.isfinite(b)).sum())
    e = correlation(spearman(a, b), n)
    return {"rho": e.estimate, "lo": e.lo, "hi": e.hi, "p": e.p, "n": n}


def rank_agreement(data: ScreeningData) -> list[dict[str, Any]]:
    """One row per outcome and pair of swept strengths (primary context set)."""
    if data.sweep is None:
        return []
    cs = data.primary_set
    rows = data.sweep.filter(pl.col("context_set") == cs)
    strengths = sorted(set(rows["strength"].to_list()))
    out = []
    for s_a, s_b in itertools.combinations(strengths, 2):
        a = rows.filter(pl.col("strength") == s_a)
        b = rows.filter(pl.col("strength") == s_b)
        both = a.join(b, on="feature", suffix="_b")
        for outcome in OUTCOMES:
            out.append({"outcome": outcome, "context_set": cs, "strength_a": s_a,
                        "strength_b": s_b, **_corr(
                            both[outcome].to_numpy().astype(np.float64),
                            both[f"{outcome}_b"].to_numpy().astype(np.float64))})
    return out


def reliability(data: ScreeningData) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if {"steering", "fresh"} <= set(data.context_sets):
        for outcome in OUTCOMES:
            out[f"noise_ceiling_{outcome}"] = _corr(data.outcome(outcome, "steering"),
                                                    data.outcome(outcome, "fresh"))
    for cs in data.context_sets:
        out[f"axes_rho_{cs}"] = spearman(data.outcome("effect_stability", cs),
                                         data.outcome("collateral_spread", cs))
        rnd = data.random.filter(pl.col("context_set") == cs)
        if rnd.height:
            for outcome in ("effect_stability", "collateral_spread", "effect_kl"):
                f = data.outcome(outcome, cs)
                r = rnd[outcome].to_numpy().astype(np.float64)
                out[f"null_{outcome}_{cs}"] = {
                    "feature_median": float(np.nanmedian(f)),
                    "random_median": float(np.nanmedian(r)),
                    "share_features_above_random_p95": float(np.nanmean(
                        f > np.nanquantile(r, 0.95))) if np.isfinite(r).any() else math.nan}
    out["rank_agreement_across_strengths"] = rank_agreement(data)
    return out
