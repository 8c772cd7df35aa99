"""The screening table: one row per steered feature, its predictors and its measured outcomes.

:func:`screening_data` joins the ``feature_stats`` table (the predictors, with the dose columns
``base_pass`` and ``lin_pass`` taken from ``feature_dose_stats`` when the steer stage wrote them:
:func:`with_dose_stats`) with the ``steering_outcomes`` table at one strength, one
column per outcome and context set (``effect_stability@fresh`` ...). It also adds the
cleanliness score,
``z(effect_stability) - z(collateral_spread)`` with z over the feature rows of that context set.

Predictor sets (docs/method.md §4) are named lists of columns (:func:`predictor_sets`): ``freq``,
``mag``, ``freq+mag``, ``direct``, ``pass``, ``baselines``, ``full``, each group alone (``geom``
...) and ``full-GROUP`` for every group. ``full`` holds the v1 groups only (the primary endpoint's
set, fixed in advance); with ``lin_*`` columns there are also ``lin``, ``full+lin`` and
``full+lin-GROUP`` (METHOD v2 §4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from steerscreen.errors import ArtifactError
from steerscreen.layout import dose_groups
from steerscreen.stats.registry import COLUMNS, GROUPS, LINEAR_GROUP

OUTCOMES = ("effect_stability", "collateral_spread", "cleanliness")
SIDE_OUTCOMES = ("effect_kl", "target_gain", "collateral_out")
BASELINES = ("base_freq", "base_mag", "base_direct", "base_pass")
DOSE_COLUMNS = ("base_pass", "lin_pass")
"""Registered predictors the steer stage computes at the steering dose into
``feature_dose_stats`` (NaN in ``feature_stats``). That table's other columns (the v1 logit
diagnostics ``logit_entropy`` / ``logit_top10_mass``, strength, alpha) never reach the fit."""
OUTCOME_COLUMNS = ("feature", "direction", "strength", "context_set", "effect_stability",
                   "collateral_spread", *SIDE_OUTCOMES)
"""The steering_outcomes columns the screening reads."""


def predictor_columns(stats: pl.DataFrame) -> list[str]:
    """Registered predictor columns present in ``stats`` with at least one finite value
    (registry order): a column that was not computed (``lin_*`` without a linearisation,
    ``base_pass`` without S') carries nothing to fit."""
    return [c.name for c in COLUMNS.values() if c.predictor and c.name in stats.columns
            and bool(np.isfinite(stats[c.name].cast(pl.Float64).fill_null(np.nan)
                                 .to_numpy()).any())]


def predictor_sets(columns: list[str]) -> dict[str, list[str]]:
    """docs/method.md §4's named sets over the available predictor ``columns`` (empty sets
    dropped)."""
    have = set(columns)

    def keep(names) -> list[str]:
        return [c for c in columns if c in set(names) and c in have]

    groups = {g: [c for c in columns if COLUMNS[c].group == g] for g in GROUPS
              if g not in ("id", "base")}
    lin = set(groups.get(LINEAR_GROUP, []))
    full = [c for c in columns if c not in lin]  # v1 groups: the primary endpoint's set
    sets = {"freq": keep(["base_freq"]), "mag": keep(["base_mag"]),
            "freq+mag": keep(["base_freq", "base_mag"]), "direct": keep(["base_direct"]),
            "pass": keep(["base_pass"]), "baselines": keep(BASELINES), "full": full}
    for g, cols in groups.items():
        sets[g] = cols
    for g, cols in groups.items():
        if g != LINEAR_GROUP:
            sets[f"full-{g}"] = [c for c in full if c not in set(cols)]
    sets["full-baselines"] = [c for c in full if c not in set(BASELINES)]
    if lin:  # full+lin, and full+lin minus each group (METHOD v2 §4)
        sets["full+lin"] = list(columns)
        for g, cols in groups.items():
            sets[f"full+lin-{g}"] = [c for c in columns if c not in set(cols)]
        sets["full+lin-baselines"] = [c for c in columns if c not in set(BASELINES)]
    return {k: v for k, v in sets.items() if v}


def zscore(x: np.ndarray) -> np.ndarray:
    """(x - mean) / sd over finite entries (NaN stays NaN); zeros when sd is 0."""
    ok = np.isfinite(x)
    out = np.full(x.shape, np.nan)
    if ok.sum() == 0:
        return out
    sd = x[ok].std()
    out[ok] = (x[ok] - x[ok].mean()) / sd if sd > 0 else 0.0
    return out


@dataclass
class ScreeningData:
    """Predictors and outcomes of the steered features of one run, aligned by row."""

    table: pl.DataFrame  # feature, predictors..., OUTCOME@SET columns
    predictors: list[str]
    context_sets: list[str]
    strength: float
    random: pl.DataFrame  # random-direction outcome rows at the same strength
    sweep: pl.DataFrame | None = None
    """Feature rows at every positive strength (feature, strength, context_set, the OUTCOMES)
    when the run swept several; None otherwise."""

    def outcome(self, name: str, context_set: str) -> np.ndarray:
        return self.table[f"{name}@{context_set}"].to_numpy().astype(np.float64)

    def X(self, columns: list[str]) -> np.ndarray:
        return self.table.select(columns).to_numpy().astype(np.float64)

    @property
    def primary_set(self) -> str:
        """Fresh contexts when the run has them (the primary endpoint, docs/method.md §4)."""
        return "fresh" if "fresh" in self.context_sets else self.context_sets[0]


def with_dose_stats(stats: pl.DataFrame, dose: pl.DataFrame | None) -> pl.DataFrame:
    """``feature_stats`` with the steer stage's dose columns (:data:`DOSE_COLUMNS` that
    ``feature_dose_stats`` holds) swapped in; nothing else of ``dose`` is taken."""
    if dose is None:
        return stats
    have = [c for c in DOSE_COLUMNS if c in dose.columns]
    if not have:
        return stats
    return stats.drop([c for c in have if c in stats.columns]).join(
        dose.select(["feature", *have]), on="feature", how="left")


def screening_data(stats: pl.DataFrame, outcomes: pl.DataFrame, strength: float
                   ) -> ScreeningData:
    """Join predictors (``stats``, dose columns swapped in) and outcomes at ``strength``: one
    row per steered feature, one column per outcome and context set. Rows of an equal-KL
    steer stage count as one dose, labelled by their target_kl (:func:`dose_groups`)."""
    outcomes = dose_groups(outcomes)
    strengths = sorted(set(outcomes["strength"].to_list()))
    if strength not in strengths:
        raise ArtifactError(f"the run has no outcomes at strength {strength} (it has "
                            f"{strengths})", "pass one of the recorded strengths")
    at = outcomes.filter(pl.col("strength") == strength)
    preds = predictor_columns(stats)
    feats = at.filter(pl.col("direction") == "feature")
    sets = [s for s in ("steering", "fresh") if s in set(feats["context_set"].to_list())]
    table = stats.select(["feature", *preds])
    for s in sets:
        part = feats.filter(pl.col("context_set") == s).select(
            ["feature", *[pl.col(c).alias(f"{c}@{s}") for c in (*OUTCOMES[:2], *SIDE_OUTCOMES)]])
        table = table.join(part, on="feature", how="inner")
    table = with_cleanliness(table, sets)
    random = at.filter(pl.col("direction") == "random")
    swept = [x for x in strengths if x > 0]
    sweep = None
    if len(swept) > 1:
        sweep = outcomes.filter((pl.col("direction") == "feature") & (pl.col("strength") > 0)
                                ).select(["feature", "strength", "context_set", *OUTCOMES[:2]])
        sweep = sweep.with_columns((_z("effect_stability") - _z("collateral_spread")).over(
            ["strength", "context_set"]).alias("cleanliness"))
    return ScreeningData(table.sort("feature"), preds, sets, float(strength), random, sweep)


def with_cleanliness(table: pl.DataFrame, sets: list[str]) -> pl.DataFrame:
    """``cleanliness@SET`` = z(effect_stability) - z(collateral_spread), z over ``table``'s
    feature rows (so a subset of the features gets its own z, as a run of that size would)."""
    for s in sets:
        clean = zscore(table[f"effect_stability@{s}"].to_numpy()) - zscore(
            table[f"collateral_spread@{s}"].to_numpy())
        table = table.with_columns(pl.Series(f"cleanliness@{s}", clean))
    return table


def _z(col: str) -> pl.Expr:
    c = pl.col(col).fill_nan(None)
    return (c - c.mean()) / c.std(ddof=0)
