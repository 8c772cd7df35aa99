"""How well the linear response predicts the steered KL (docs/method.md §2, per-feature dose).

With ``--dose equal-kl`` every direction was steered at ``alpha = sqrt(target_kl / exp(lin_kl))``,
so its measured ``effect_kl`` should be ``target_kl``: the accuracy is measured / target. At one
dose for every direction (calibrated or fixed) the same statement is measured / predicted with
the prediction ``alpha^2 exp(lin_kl)`` (the stats stage's ``lin_kl``), for every feature that
has one. Both on the fresh contexts when the run has them (the steering contexts otherwise),
summarised per direction kind by the median and the 10-90% range of the ratio, with n.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from steerscreen.layout import EQUAL_KL_MODE, dose_groups


def _summary(ratio: np.ndarray) -> dict[str, Any] | None:
    r = ratio[np.isfinite(ratio) & (ratio > 0)]
    if r.size == 0:
        return None
    q10, med, q90 = np.quantile(r, [0.1, 0.5, 0.9])
    return {"n": int(r.size), "median": float(med), "q10": float(q10), "q90": float(q90)}


def dose_accuracy(outcomes: pl.DataFrame | None, stats: pl.DataFrame | None,
                  strength: float | None) -> dict[str, Any] | None:
    """Measured effect_kl over the target (equal-kl) or the prediction alpha^2 exp(lin_kl)
    (one dose, at ``strength``) -> {mode, context_set, strength, target_kl, features, random}
    (each of the last two {n, median, q10, q90} or None); None when the run has nothing to say
    (not steered, or no equal-KL rows and no finite lin_kl)."""
    if outcomes is None or outcomes.height == 0 or "effect_kl" not in outcomes.columns:
        return None
    rows = dose_groups(outcomes)
    if strength is not None:
        rows = rows.filter((pl.col("strength") - strength).abs() < 1e-12)
    sets = set(rows["context_set"].to_list())
    cs = "fresh" if "fresh" in sets else "steering"
    rows = rows.filter(pl.col("context_set") == cs)
    if rows.height == 0:
        return None
    equal = "target_kl" in rows.columns and bool(
        np.isfinite(rows["target_kl"].cast(pl.Float64).fill_null(np.nan).to_numpy()).any())
    out: dict[str, Any] = {"mode": EQUAL_KL_MODE if equal else "predicted", "context_set": cs,
                           "strength": strength}
    if equal:
        pred = rows["target_kl"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        out["target_kl"] = float(np.nanmedian(pred))
        out["ratio"] = "measured effect_kl / target_kl"
    else:
        if stats is None or "lin_kl" not in stats.columns:
            return None
        lin = stats.select(["feature", pl.col("lin_kl").cast(pl.Float64)])
        rows = rows.filter(pl.col("direction") == "feature").join(lin, on="feature", how="left")
        lk = rows["lin_kl"].fill_null(np.nan).to_numpy()
        if not np.isfinite(lk).any():
            return None
        a = rows["alpha"].cast(pl.Float64).to_numpy()
        pred = a ** 2 * np.exp(lk)
        out["target_kl"] = None
        out["ratio"] = "measured effect_kl / predicted alpha^2 exp(lin_kl)"
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = rows["effect_kl"].cast(pl.Float64).fill_null(np.nan).to_numpy() / pred
    kind = rows["direction"].to_numpy()
    out["features"] = _summary(ratio[kind == "feature"])
    out["random"] = _summary(ratio[kind == "random"])
    if out["features"] is None and out["random"] is None:
        return None
    return out


__all__ = ["dose_accuracy"]
