"""Synthetic screening runs whose truth is known, to calibrate the analysis itself.

A calibrated analysis claims "beats baselines" on noise at most at its stated rate, finds a
planted signal, and gives 95% intervals that contain the true value 95% of the time. This
module makes tables with exactly the columns of a real run (the registry's predictors, the
outcomes on steering and fresh contexts, cleanliness, the side outcomes) from four processes:

- ``planted``: stability and spread depend linearly on freq and mag **and** on non-baseline
  predictors (geometry, activation, co-activation, logit shape);
- ``noise``: the outcomes are independent of every predictor;
- ``freq_mag``: the outcomes depend non-linearly on ``base_freq`` and ``base_mag`` only;
- ``mag_explained``: the outcomes depend on ``base_mag`` only, and several non-baseline
  predictors are noisy copies of it (the confound the residualisation must see through).

``lin`` optionally adds the linear-response columns (``lin_*``, METHOD v2), drawn from a
separate random stream so that the v1 columns and outcomes of a seed stay the same:
``"noise"`` makes them independent of everything; ``"signal"`` adds to both outcomes a feature
effect that no v1 predictor carries and the ``lin_*`` columns measure with noise (so
``full+lin`` beats ``full``). Without ``lin`` (the default, and what the calibration suite uses)
a run has no ``lin_*`` columns.

The predictors share three latent factors, so groups correlate as on real SAEs. Each outcome is
a feature-level value plus independent measurement noise per context set, which puts the noise
ceiling (steering vs fresh) near 0.9, as measured on the embedded model.

:func:`population_delta` gives the quantity the cross-validated delta rho estimates: the mean
over training sets of n (K-1)/K features of the Spearman, on a large fresh population, of set A's
ridge minus set B's. The calibration suite (``tests/screening/test_calibration.py``) and
``benchmarks/calibration.py`` (the table in ``docs/screening.md``) are built on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from steerscreen.screening.cv import spearman
from steerscreen.screening.data import ScreeningData, predictor_sets, zscore
from steerscreen.screening.models import ridge
from steerscreen.stats.registry import COLUMNS, LINEAR_GROUP

SCENARIOS = ("planted", "noise", "freq_mag", "mag_explained")
PREDICTORS = [c.name for c in COLUMNS.values() if c.predictor and c.group != LINEAR_GROUP]
"""The v1 predictors (every group but ``lin``)."""
LIN_PREDICTORS = [c.name for c in COLUMNS.values() if c.predictor and c.group == LINEAR_GROUP]
LIN_MODES = ("noise", "signal")
LIN_EFFECT = 1.2
"""sd of the outcome effect that only the ``lin_*`` columns carry in ``lin="signal"``."""
MEASUREMENT_NOISE = 0.3
"""sd of the per-context-set noise around a feature's true outcome (which has sd ~1)."""
_PROXIES = ("act_p50_rel", "act_p99_rel", "geom_enc_dec_cos", "logit_kurtosis")
"""Noisy copies of base_mag in ``mag_explained``."""


@dataclass(frozen=True)
class Truth:
    """Predictors and the noise-free feature-level outcomes of ``n`` synthetic features."""

    X: dict[str, np.ndarray]
    stability: np.ndarray
    spread: np.ndarray


def _loadings() -> np.ndarray:
    return np.random.default_rng(20261206).uniform(-0.6, 0.6, size=(len(PREDICTORS), 3))


def truth(scenario: str, n: int, rng: np.random.Generator, effect: float = 1.0) -> Truth:
    """``effect`` scales the non-baseline coefficients of ``planted``."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    F = rng.normal(size=(n, 3))
    Z = F @ _loadings().T + rng.normal(size=(n, len(PREDICTORS)))
    X = {p: Z[:, j] / math.sqrt(1 + float((_loadings()[j] ** 2).sum()))
         for j, p in enumerate(PREDICTORS)}
    freq, mag = X["base_freq"], X["base_mag"]
    e_stab, e_spread = rng.normal(size=n), rng.normal(size=n)
    if scenario == "planted":
        stab = (0.3 * freq + 0.3 * mag + effect * (
            0.5 * X["geom_max_cos"] - 0.4 * X["act_cv"] + 0.3 * X["coact_max_cond"]) + e_stab)
        spread = (0.3 * mag + effect * (0.5 * X["coact_n_pmi1"] + 0.4 * X["logit_kurtosis"]
                                        - 0.3 * X["geom_pc_share"]) + e_spread)
    elif scenario == "noise":
        stab, spread = e_stab, e_spread
    elif scenario == "freq_mag":
        stab = np.tanh(1.5 * freq) + 0.5 * freq * mag + 0.3 * mag**2 + e_stab
        spread = np.sin(1.2 * mag) + 0.4 * freq + e_spread
    else:  # mag_explained
        for p in _PROXIES:
            X[p] = 0.8 * mag + 0.6 * rng.normal(size=n)
        stab = 0.8 * mag + 0.3 * mag**2 + e_stab
        spread = -0.6 * mag + e_spread
    X["base_freq"] = -2.5 + 0.7 * freq  # log10 frequency-like scale
    return Truth(X, stab, spread)


def _measured(t: Truth, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = t.stability.size
    stab = t.stability + MEASUREMENT_NOISE * rng.normal(size=n)
    spread = t.spread + MEASUREMENT_NOISE * rng.normal(size=n)
    return {"effect_stability": stab, "collateral_spread": spread,
            "cleanliness": zscore(stab) - zscore(spread)}


def with_lin(t: Truth, mode: str, rng: np.random.Generator, effect: float = LIN_EFFECT
             ) -> Truth:
    """``t`` plus the ``lin_*`` columns (``mode``: see the module docstring)."""
    if mode not in LIN_MODES:
        raise ValueError(f"unknown lin mode {mode!r}; one of {', '.join(LIN_MODES)}")
    n = t.stability.size
    L_stab, L_spread = rng.normal(size=n), rng.normal(size=n)
    X = dict(t.X)
    for p in LIN_PREDICTORS:
        X[p] = rng.normal(size=n)
    if mode == "noise":
        return Truth(X, t.stability, t.spread)
    X["lin_stability"] = L_stab + 0.3 * rng.normal(size=n)
    X["lin_collateral_out"] = L_spread + 0.3 * rng.normal(size=n)
    X["lin_kl"] = 0.5 * L_stab + 0.5 * L_spread + rng.normal(size=n)
    return Truth(X, t.stability + effect * L_stab, t.spread + effect * L_spread)


def synthetic_data(scenario: str, n: int, seed: int, effect: float = 1.0,
                   lin: str | None = None) -> ScreeningData:
    """One synthetic run of ``n`` steered features (steering and fresh contexts); ``lin``:
    add ``lin_*`` columns, ``"noise"`` or ``"signal"`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    t = truth(scenario, n, rng, effect)
    if lin is not None:  # its own stream: the v1 columns and the noise draws stay the same
        t = with_lin(t, lin, np.random.default_rng([seed, 7]))
    cols: dict[str, np.ndarray] = {"feature": np.arange(n), **t.X}
    for cs in ("steering", "fresh"):
        for name, v in _measured(t, rng).items():
            cols[f"{name}@{cs}"] = v
        cols[f"effect_kl@{cs}"] = np.exp(0.3 * rng.normal(size=n) - 1.4)
        cols[f"target_gain@{cs}"] = rng.normal(size=n)
        cols[f"collateral_out@{cs}"] = rng.uniform(size=n)
    random = pl.DataFrame({"feature": -1 - np.arange(8), "context_set": ["fresh"] * 8,
                           "effect_stability": rng.normal(size=8) - 1,
                           "collateral_spread": rng.normal(size=8),
                           "effect_kl": np.full(8, 0.25)})
    preds = list(PREDICTORS) + (list(LIN_PREDICTORS) if lin is not None else [])
    return ScreeningData(pl.DataFrame(cols), preds, ["steering", "fresh"], 0.25, random)


def population_delta(scenario: str, n: int, *, a: str = "full", b: str = "freq+mag",
                     outcome: str = "cleanliness", n_splits: int = 5, draws: int = 200,
                     population: int = 50_000, effect: float = 1.0, seed: int = 0) -> float:
    """E over training sets of n (K-1)/K features of [rho_A - rho_B] on a large population."""
    rng = np.random.default_rng(seed)
    sets = predictor_sets(PREDICTORS)
    pop_t = truth(scenario, population, rng, effect)
    y_pop = _measured(pop_t, rng)[outcome]
    X_pop = np.column_stack([pop_t.X[p] for p in PREDICTORS])
    cols = {s: [PREDICTORS.index(c) for c in sets[s]] for s in (a, b)}
    n_train = round(n * (n_splits - 1) / n_splits)
    out = []
    for _ in range(draws):
        t = truth(scenario, n_train, rng, effect)
        y = _measured(t, rng)[outcome]
        X = np.column_stack([t.X[p] for p in PREDICTORS])
        rho = {}
        for s, j in cols.items():
            pred = ridge().fit(X[:, j], y).predict(X_pop[:, j])
            rho[s] = 0.0 if np.ptp(pred) == 0 else spearman(pred, y_pop)
        out.append(rho[a] - rho[b])
    return float(np.mean(out))
