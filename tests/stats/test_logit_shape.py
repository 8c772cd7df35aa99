"""The scale-free direct-logit columns (METHOD v2 §1): ``logit_pr``, ``logit_top10_energy``,
``logit_kurtosis``; the v1 dose columns are diagnostics, never predictors."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from steerscreen.models.hooks import Unembed
from steerscreen.screening.data import DOSE_COLUMNS, predictor_columns, with_dose_stats
from steerscreen.stats.logits import DOSE_LOGIT_COLUMNS, logit_columns
from steerscreen.stats.registry import COLUMNS, predictor_names
from steerscreen.stats.table import to_frame

SHAPE = ("logit_pr", "logit_top10_energy", "logit_kurtosis")


def unembed(W_U: np.ndarray, gain: np.ndarray | None = None, centre: bool = False) -> Unembed:
    d = W_U.shape[0]
    g = np.ones(d) if gain is None else gain
    return Unembed(W_U=torch.tensor(W_U, dtype=torch.float32),
                   gain=torch.tensor(g, dtype=torch.float32), centre=centre,
                   norm="layernorm" if centre else "rmsnorm", eps=1e-5, softcap=None)


def naive(dl: np.ndarray) -> dict[str, float]:
    """float64, one feature: the registry's formulas, written out."""
    z = dl - dl.mean()
    e = z**2
    top = np.sort(np.abs(z))[::-1][:10]
    return {"logit_pr": math.log(e.sum() ** 2 / (z**4).sum()),
            "logit_top10_energy": float((top**2).sum() / e.sum()),
            "logit_kurtosis": float(np.mean(z**4) / np.mean(z**2) ** 2 - 3)}


@pytest.mark.parametrize("centre", [False, True])
def test_shape_columns_match_naive_float64(centre: bool) -> None:
    rng = np.random.default_rng(11)
    F, D, V = 37, 16, 3001
    W_dec = rng.normal(size=(F, D))
    W_dec[:5] *= 10 ** rng.uniform(-3, 3, size=(5, 1))  # norms do not matter
    W_U = rng.standard_t(3, size=(D, V))  # heavy tails: a spread of shapes
    gain = 1 + 0.3 * rng.normal(size=D)
    un = unembed(W_U, gain, centre)
    got = logit_columns(torch.tensor(W_dec, dtype=torch.float32), un, chunk=8)
    W32 = W_U.astype(np.float32).astype(np.float64)
    g32 = gain.astype(np.float32).astype(np.float64)
    for f in range(F):
        v = W_dec[f].astype(np.float32).astype(np.float64)
        v /= np.linalg.norm(v)
        if centre:
            v = v - v.mean()
        want = naive((v * g32) @ W32)
        for name in SHAPE:
            assert got[name][f] == pytest.approx(want[name], rel=1e-5), (name, f)
    # The participation ratio is the kurtosis in another form: PR = V / (kurtosis + 3).
    np.testing.assert_allclose(got["logit_pr"], math.log(V) - np.log(got["logit_kurtosis"] + 3),
                               rtol=1e-9)
    assert np.all((got["logit_top10_energy"] > 0) & (got["logit_top10_energy"] <= 1))


@pytest.mark.parametrize("factor", [0.01, 100.0])
def test_shape_columns_are_scale_free(factor: float) -> None:
    rng = np.random.default_rng(12)
    F, D, V = 20, 12, 500
    W_dec = rng.normal(size=(F, D))
    W_U = rng.normal(size=(D, V))
    un = unembed(W_U, 1 + 0.2 * rng.normal(size=D))
    ref = logit_columns(torch.tensor(W_dec, dtype=torch.float32), un, chunk=6)
    scaled = W_dec.copy()
    rows = np.arange(0, F, 2)
    scaled[rows] *= factor  # W_dec[f] rescaled, every other feature
    got = logit_columns(torch.tensor(scaled, dtype=torch.float32), un, chunk=6)
    for name in (*SHAPE, "base_direct"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # DL_f itself rescaled (W_U by a factor): only base_direct moves, by ln(factor).
    big = logit_columns(torch.tensor(W_dec, dtype=torch.float32),
                        unembed(W_U * factor, un.gain.double().numpy()), chunk=6)
    for name in SHAPE:
        np.testing.assert_allclose(big[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(big["base_direct"], ref["base_direct"] + math.log(factor),
                               rtol=1e-5, atol=1e-5)


def test_one_hot_and_flat_footprints() -> None:
    rng = np.random.default_rng(13)
    D, V = 8, 4096
    # Row 0: identity-like W_U, so feature 0 (e_0) has DL = e_0 (one-hot). Row 1: Gaussian.
    W_U = np.zeros((D, V))
    W_U[0, 7] = 1.0
    W_U[1] = rng.normal(size=V)
    W_dec = np.eye(D)[:2]
    got = logit_columns(torch.tensor(W_dec, dtype=torch.float32), unembed(W_U))
    # One-hot: z = e_7 - 1/V; PR -> 1, all energy in the top 10.
    assert math.exp(got["logit_pr"][0]) == pytest.approx(1.0, rel=1e-2)
    assert got["logit_top10_energy"][0] == pytest.approx(1.0, abs=1e-3)
    assert got["logit_kurtosis"][0] == pytest.approx(V - 6, rel=1e-2)  # PR = V / (kurt + 3)
    # Gaussian entries: E z^4 / (E z^2)^2 = 3, PR ~ V / 3; the top 10 of 4096 hold little.
    assert math.exp(got["logit_pr"][1]) == pytest.approx(V / 3, rel=0.1)
    assert got["logit_kurtosis"][1] == pytest.approx(0.0, abs=0.3)
    assert got["logit_top10_energy"][1] < 0.05


def test_constant_footprint_is_nan() -> None:
    W_U = np.zeros((4, 50))
    W_U[0] = 3.0  # DL_0 is constant over the vocabulary: z = 0
    W_U[1] = np.linspace(-1, 1, 50)
    got = logit_columns(torch.eye(4)[:2], unembed(W_U))
    for name in SHAPE:
        assert np.isnan(got[name][0]) and np.isfinite(got[name][1]), name


def test_v1_dose_columns_are_diagnostics_only() -> None:
    predictors = set(predictor_names())
    for name in DOSE_LOGIT_COLUMNS:
        assert name not in COLUMNS and name not in predictors
        assert name not in DOSE_COLUMNS
        with pytest.raises(KeyError):  # feature_stats cannot hold them
            to_frame({"feature": np.arange(2), name: np.zeros(2)})
    for name in ("logit_pr", "logit_top10_energy"):
        c = COLUMNS[name]
        assert c.group == "logit" and c.predictor and c.formula and c.units and c.description
    assert {"base_pass", "lin_pass"} <= set(DOSE_COLUMNS)
    assert all(COLUMNS[c].predictor for c in DOSE_COLUMNS)


def test_dose_table_swaps_in_only_the_dose_predictors() -> None:
    stats = pl.DataFrame({"feature": [0, 1, 2], "base_freq": [-1.0, -2.0, -3.0],
                          "base_pass": [np.nan] * 3, "logit_pr": [1.0, 2.0, 3.0]})
    dose = pl.DataFrame({"feature": [2, 1, 0], "base_pass": [0.3, 0.2, 0.1],
                         "logit_entropy": [9.0, 9.0, 9.0], "logit_top10_mass": [0.1] * 3,
                         "strength": [0.2] * 3, "alpha": [1.0] * 3})
    out = with_dose_stats(stats, dose).sort("feature")
    assert out["base_pass"].to_list() == [0.1, 0.2, 0.3]
    assert "logit_entropy" not in out.columns and "logit_top10_mass" not in out.columns
    assert predictor_columns(out) == ["base_freq", "base_pass", "logit_pr"]
    # A dose table without any dose predictor changes nothing.
    assert with_dose_stats(stats, dose.drop("base_pass")).equals(stats)
