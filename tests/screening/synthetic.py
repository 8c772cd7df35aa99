"""Synthetic screening data with a planted relation (or none)."""

from __future__ import annotations

import numpy as np
import polars as pl

from steerscreen.screening.data import ScreeningData, zscore

PREDICTORS = ["base_freq", "base_mag", "base_direct", "base_pass", "geom_max_cos",
              "geom_enc_dec_cos", "act_cv", "act_skew", "coact_n_pmi1", "coact_max_cond",
              "logit_pr", "logit_kurtosis"]


def synthetic(n: int = 240, planted: bool = True, seed: int = 0, noise: float = 0.6
              ) -> ScreeningData:
    rng = np.random.default_rng(seed)
    X = {p: rng.normal(size=n) for p in PREDICTORS}
    X["base_freq"] = -2.5 + 0.7 * X["base_freq"]
    cols: dict[str, np.ndarray] = {"feature": np.arange(n), **X}
    for cs in ("steering", "fresh"):
        if planted:  # beyond the baselines: geometry, activation and co-activation matter
            stab = (0.8 * X["geom_max_cos"] - 0.6 * X["act_cv"] + 0.2 * X["base_freq"]
                    + noise * rng.normal(size=n))
            spread = 0.7 * X["coact_n_pmi1"] + 0.2 * X["base_mag"] + noise * rng.normal(size=n)
        else:
            stab, spread = rng.normal(size=n), rng.normal(size=n)
        cols[f"effect_stability@{cs}"] = stab
        cols[f"collateral_spread@{cs}"] = spread
        cols[f"cleanliness@{cs}"] = zscore(stab) - zscore(spread)
        cols[f"effect_kl@{cs}"] = np.exp(rng.normal(size=n) * 0.3 - 1.4)
        cols[f"target_gain@{cs}"] = rng.normal(size=n)
        cols[f"collateral_out@{cs}"] = rng.uniform(size=n)
    table = pl.DataFrame(cols)
    random = pl.DataFrame({"feature": -1 - np.arange(8), "context_set": ["fresh"] * 8,
                           "effect_stability": rng.normal(size=8) - 1,
                           "collateral_spread": rng.normal(size=8),
                           "effect_kl": np.full(8, 0.25)})
    return ScreeningData(table, PREDICTORS, ["steering", "fresh"], 0.25, random)
