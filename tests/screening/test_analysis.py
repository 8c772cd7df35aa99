"""The screening analysis on synthetic data: planted relations are found, noise is not, and
the intervals cover at about their nominal rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from steerscreen.screening.analysis import FitConfig, analyse
from steerscreen.screening.cv import (
    benjamini_hochberg,
    holm,
    nadeau_bengio,
    percentile_ci,
    spearman_boot,
)
from tests.screening.synthetic import synthetic

# Small but real: every step runs, on fewer folds, resamples and permutations.
FAST = FitConfig(n_splits=4, n_repeats=1, n_boot=200, n_permutations=20, boosting_sets=())
NO_BOOST = FAST


@pytest.fixture(scope="module")
def planted():
    return analyse(synthetic(planted=True, seed=1), FAST)


@pytest.fixture(scope="module")
def noise():
    return analyse(synthetic(planted=False, seed=2), NO_BOOST)


def test_planted_relation_is_recovered_and_beats_the_baselines(planted) -> None:
    p = planted.summary["primary_endpoint"]
    assert p["rho_full"] > 0.5 and p["delta_rho"] > 0.3
    assert p["delta_lo"] > 0 and p["p_nadeau_bengio"] < 0.01 and p["p_permutation"] < 0.05
    assert planted.summary["verdicts"]["cleanliness"] == (
        "beats baselines and survives residualisation")
    cv = planted.cv.filter((planted.cv["model"] == "ridge")
                           & (planted.cv["outcome"] == "cleanliness")
                           & (planted.cv["context_set"] == "fresh"))
    rho = dict(zip(cv["set"].to_list(), cv["rho"].to_list(), strict=True))
    assert rho["full"] > rho["freq+mag"] + 0.3 and rho["full"] > rho["baselines"]
    assert rho["full-geom"] < rho["full"]  # the planted geometry predictor matters


def test_planted_predictors_survive_the_confound_control(planted) -> None:
    c = planted.confounds.filter((planted.confounds["outcome"] == "effect_stability")
                                 & (planted.confounds["control"] == "freq+mag"))
    q = dict(zip(c["predictor"].to_list(), c["q_bh"].to_list(), strict=True))
    assert q["geom_max_cos"] < 0.01 and q["act_cv"] < 0.01
    assert q["logit_kurtosis"] > 0.05


def test_heldout_payoff_is_positive_for_a_planted_relation(planted) -> None:
    h = planted.heldout.filter((planted.heldout["selector"] == "full")
                               & (planted.heldout["outcome"] == "cleanliness")).row(0, named=True)
    assert h["payoff_vs_random"] > 0.5 and h["vs_random_lo"] > 0
    assert h["payoff_vs_baseline"] > 0 and h["vs_baseline_lo"] > 0
    assert h["precision_clean"] > 0.5


def test_pure_noise_is_reported_as_noise(noise) -> None:
    p = noise.summary["primary_endpoint"]
    assert p["delta_lo"] < 0 < p["delta_hi"] or abs(p["delta_rho"]) < 0.15
    cv = noise.cv.filter((noise.cv["model"] == "ridge") & (noise.cv["set"] == "full")
                         & (noise.cv["outcome"] == "cleanliness")
                         & (noise.cv["context_set"] == "fresh")).row(0, named=True)
    assert cv["rho_lo"] < 0 < cv["rho_hi"] or abs(cv["rho"]) < 0.15
    assert noise.summary["verdicts"]["cleanliness"] == "neither"


def test_boosting_recovers_a_nonlinear_relation() -> None:
    from steerscreen.screening.cv import cross_validate, folds, spearman
    from steerscreen.screening.models import boosting, ridge

    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3))
    y = np.abs(X[:, 0]) + 0.2 * rng.normal(size=200)  # invisible to a linear model
    splits = folds(200, 4, 1, seed=0)
    gb = cross_validate(boosting(0), X, y, splits)
    lin = cross_validate(ridge(0), X, y, splits)
    assert spearman(gb.oof[0], y) > 0.7 > spearman(lin.oof[0], y) + 0.3


def test_bootstrap_spearman_ci_covers_the_truth_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    rho_pearson, n, reps = 0.5, 150, 120
    truth = 6 / math.pi * math.asin(rho_pearson / 2)  # population Spearman of a normal pair
    cov = np.array([[1, rho_pearson], [rho_pearson, 1]])
    hits = 0
    for i in range(reps):
        xy = rng.multivariate_normal([0, 0], cov, size=n)
        idx = np.random.default_rng(i).integers(0, n, size=(400, n))
        lo, hi = percentile_ci(spearman_boot(xy[:, 0], xy[:, 1], idx))
        hits += lo <= truth <= hi
    assert 0.87 <= hits / reps <= 0.99


def test_corrections_and_corrected_t_test() -> None:
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, np.nan, 0.5], equal_nan=True)
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3,
                                                       np.nan, 0.5], equal_nan=True)
    d = np.array([0.1, 0.12, 0.08, 0.11, 0.09] * 5)
    t, pv = nadeau_bengio(d, 200, 50)
    naive_t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert 0 < t < naive_t and pv < 0.05  # the correction widens the naive interval


def test_conformal_intervals_cover_new_features_at_the_nominal_rate(planted) -> None:
    from steerscreen.screening.predictor import fit_predictor

    data = synthetic(planted=True, seed=1)  # the fixture's data
    pred = fit_predictor(data, planted.residuals, level=0.9, dose={}, trained_on={})
    new = synthetic(n=3000, planted=True, seed=11)  # unseen features, same process
    for outcome in ("effect_stability", "collateral_spread"):
        m = pred.models[outcome]
        y = new.outcome(outcome, "fresh")
        cover = np.mean(np.abs(y - m.predict(new.X(pred.columns))) <= m.conformal_q)
        assert 0.86 <= cover <= 0.95, (outcome, cover)
