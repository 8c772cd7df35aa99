"""The screening analysis on synthetic data: planted relations are found, noise is not, every
interval contains its estimate, and the estimators behave as documented."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from steerscreen.config import FitConfig
from steerscreen.screening.analysis import analyse, verdict_text
from steerscreen.screening.inference import (
    POWER_TARGET,
    benjamini_hochberg,
    correlation,
    fold_mean,
    holm,
)
from steerscreen.screening.models import RIDGE_ALPHAS, RidgeLOO
from tests.screening.intervals import interval_violations
from tests.screening.synthetic import synthetic

# Small but real: every step runs, on fewer folds and permutations.
FAST = FitConfig(n_splits=4, n_repeats=2, n_permutations=20, boosting_sets=())


@pytest.fixture(scope="module")
def planted():
    return analyse(synthetic(planted=True, seed=1), FAST)


@pytest.fixture(scope="module")
def noise():
    return analyse(synthetic(planted=False, seed=2), FAST)


def _tables(an) -> dict:
    return {"cv_metrics": an.cv, "comparisons": an.comparisons, "confounds": an.confounds,
            "heldout": an.heldout}


def test_planted_relation_is_recovered_and_beats_the_baselines(planted) -> None:
    p = planted.summary["primary_endpoint"]
    assert p["rho_full"] > 0.5 and p["delta_rho"] > 0.3
    assert p["delta_lo"] > 0 and p["p_nadeau_bengio"] < 0.01 and p["p_permutation"] < 0.05
    assert p["verdict"].startswith("full beats freq+mag") and p["n"] == 240
    assert planted.summary["verdicts"]["cleanliness"] == (
        "beats baselines and survives residualisation")
    cv = planted.cv.filter((planted.cv["model"] == "ridge")
                           & (planted.cv["outcome"] == "cleanliness")
                           & (planted.cv["context_set"] == "fresh"))
    rho = dict(zip(cv["set"].to_list(), cv["rho"].to_list(), strict=True))
    assert rho["full"] > rho["freq+mag"] + 0.3 and rho["full"] > rho["baselines"]
    assert rho["full-geom"] < rho["full"]  # the planted geometry predictor matters


def test_every_interval_contains_its_estimate(planted, noise) -> None:
    for an in (planted, noise):
        assert interval_violations(_tables(an), an.summary) == []


def test_verdicts_state_their_test_and_power(planted) -> None:
    tests = planted.summary["verdict_tests"]
    assert len(tests) == 6 and {t["test"] for t in tests} == {"beats baselines",
                                                               "survives residualisation"}
    for t in tests:
        assert t["method"].startswith("Nadeau–Bengio") and t["n"] == 240
        assert t["p_holm"] >= t["p"] and math.isfinite(t["mde"]) and t["mde"] > 0
        assert t["passed"] == (t["estimate"] > 0 and t["p_holm"] < 0.05)
    power = planted.summary["power"]
    assert power["n"] == 240 and power["target"] == POWER_TARGET


def test_pure_noise_makes_no_claim(noise) -> None:
    p = noise.summary["primary_endpoint"]
    assert p["delta_lo"] < 0 < p["delta_hi"] and not p["verdict"].startswith("full beats")
    for outcome, verdict in noise.summary["verdicts"].items():
        assert "beats" not in verdict and "survives" not in verdict, (outcome, verdict)
    assert all(not t["passed"] for t in noise.summary["verdict_tests"])


def test_a_small_run_says_underpowered_not_neither() -> None:
    an = analyse(synthetic(n=48, planted=False, seed=3), FAST)
    p = an.summary["primary_endpoint"]
    assert p["underpowered"] and p["mde"] > POWER_TARGET
    assert p["verdict"] == f"underpowered (n = 48: detectable Δρ ≥ {p['mde']:.2f})"
    assert all(v.startswith("underpowered (n = 48") for v in an.summary["verdicts"].values())


def test_verdict_text_covers_every_outcome_of_the_two_tests() -> None:
    def row(passed: bool, mde: float) -> dict:
        return {"passed": passed, "mde": mde, "underpowered": mde > POWER_TARGET, "n": 300}

    assert verdict_text(row(True, .05), row(True, .05)) == (
        "beats baselines and survives residualisation")
    assert verdict_text(row(True, .05), row(False, .05)) == "beats baselines only"
    assert verdict_text(row(True, .05), row(False, .2)) == (
        "beats baselines; residualisation underpowered (n = 300: detectable residual ρ ≥ 0.20)")
    assert verdict_text(row(False, .05), row(True, .05)) == "survives residualisation only"
    assert verdict_text(row(False, .3), row(False, .05)) == (
        "underpowered (n = 300: detectable Δρ ≥ 0.30)")
    assert verdict_text(row(False, .05), row(False, .05)) == "neither"


def test_heldout_payoff_is_positive_for_a_planted_relation(planted) -> None:
    h = planted.heldout.filter((planted.heldout["selector"] == "full")
                               & (planted.heldout["outcome"] == "cleanliness")).row(0, named=True)
    assert h["payoff_vs_random"] > 0.5 and h["vs_random_lo"] > 0
    assert h["payoff_vs_baseline"] > 0 and h["vs_baseline_lo"] > 0
    assert h["precision_clean"] > 0.5


def test_planted_predictors_survive_the_confound_control(planted) -> None:
    c = planted.confounds.filter((planted.confounds["outcome"] == "effect_stability")
                                 & (planted.confounds["control"] == "freq+mag"))
    q = dict(zip(c["predictor"].to_list(), c["q_bh"].to_list(), strict=True))
    assert q["geom_max_cos"] < 0.01 and q["act_cv"] < 0.01
    assert q["logit_kurtosis"] > 0.05


def test_rank_agreement_across_swept_strengths() -> None:
    import polars as pl

    data = synthetic(seed=4)
    rows = []
    for s, noise_sd in ((0.1, 0.3), (0.25, 0.0)):
        rng = np.random.default_rng(int(s * 100))
        for cs in data.context_sets:
            stab = data.outcome("effect_stability", cs) + noise_sd * rng.normal(size=240)
            rows.append(pl.DataFrame({"feature": data.table["feature"], "strength": s,
                                      "context_set": cs, "effect_stability": stab,
                                      "collateral_spread": data.outcome("collateral_spread",
                                                                        cs)}))
    sweep = pl.concat(rows).with_columns(pl.lit(0.0).alias("cleanliness"))
    data.sweep = sweep
    from steerscreen.screening.reliability import rank_agreement

    agree = {r["outcome"]: r for r in rank_agreement(data)}
    assert agree["collateral_spread"]["rho"] == pytest.approx(1.0)
    assert 0.5 < agree["effect_stability"]["rho"] < 1
    r = agree["effect_stability"]
    assert r["lo"] <= r["rho"] <= r["hi"] and r["strength_a"] == 0.1 and r["strength_b"] == 0.25


def test_boosting_recovers_a_nonlinear_relation() -> None:
    from steerscreen.screening.cv import cross_validate, folds
    from steerscreen.screening.models import boosting, ridge

    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3))
    y = np.abs(X[:, 0]) + 0.2 * rng.normal(size=200)  # invisible to a linear model
    splits = folds(200, 4, 1, seed=0)
    gb = cross_validate(boosting(0), X, y, splits)
    lin = cross_validate(ridge(0), X, y, splits)
    assert gb.fold_rho.mean() > 0.7 > lin.fold_rho.mean() + 0.3


def test_ridge_equals_scikit_learns_pipeline() -> None:
    """Our LOO ridge is a fast copy of SimpleImputer -> StandardScaler -> RidgeCV."""
    rng = np.random.default_rng(5)
    for n, p in ((120, 10), (40, 26), (30, 60)):
        X = rng.normal(size=(n, p))
        X[rng.random((n, p)) < 0.05] = np.nan
        X[:, 3] = 1.0  # a constant column
        y = 0.5 * np.nan_to_num(X[:, 0]) + rng.normal(size=n)
        ref = Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                        ("scale", StandardScaler()),
                        ("ridge", RidgeCV(alphas=np.array(RIDGE_ALPHAS)))]).fit(X, y)
        ours = RidgeLOO().fit(X, y)
        Xt = rng.normal(size=(50, p))
        assert ours.alpha_ == ref.named_steps["ridge"].alpha_
        np.testing.assert_allclose(ours.predict(Xt), ref.predict(Xt), atol=1e-10)


def test_fold_mean_is_the_corrected_t_interval() -> None:
    d = np.array([0.1, 0.12, 0.08, 0.11, 0.09] * 5)
    e = fold_mean(d, 200, 50, 250, 5)
    naive = d.std(ddof=1) / math.sqrt(d.size)
    assert e.estimate == pytest.approx(d.mean()) and e.lo < e.estimate < e.hi
    assert e.se == pytest.approx(math.sqrt((1 / 25 + 50 / 200) * d.var(ddof=1)))
    assert e.se > naive and e.p < 0.05 and "df = 4" in e.method
    flat = fold_mean(np.zeros(25), 200, 50, 250, 5, constant=True)
    assert flat.lo < 0 < flat.hi and flat.p == 1.0 and flat.mde > POWER_TARGET


def test_correlation_interval_covers_the_truth_at_about_the_nominal_rate() -> None:
    from steerscreen.screening.cv import spearman

    rng = np.random.default_rng(0)
    rho_pearson, n, reps = 0.5, 150, 400
    truth = 6 / math.pi * math.asin(rho_pearson / 2)  # population Spearman of a normal pair
    cov = np.array([[1, rho_pearson], [rho_pearson, 1]])
    hits = 0
    for _ in range(reps):
        xy = rng.multivariate_normal([0, 0], cov, size=n)
        e = correlation(spearman(xy[:, 0], xy[:, 1]), n)
        assert e.lo <= e.estimate <= e.hi
        hits += e.lo <= truth <= e.hi
    assert 0.92 <= hits / reps <= 0.98


def test_corrections() -> None:
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, np.nan, 0.5], equal_nan=True)
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3,
                                                       np.nan, 0.5], equal_nan=True)


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


# --- the linear-response group (METHOD v2 §4): full+lin vs full --------------------------------
LIN_CFG = FitConfig(n_splits=5, n_repeats=2, n_permutations=10, boosting_sets=())


@pytest.fixture(scope="module")
def lin_runs() -> dict:
    from steerscreen.screening.simulate import synthetic_data

    return {lin: analyse(synthetic_data("planted", 400, 5, lin=lin), LIN_CFG)
            for lin in ("signal", "noise", None)}


def _is_lin(name: str) -> bool:
    return name == "lin" or "+lin" in name


def _lin_mask(col):
    return (col == "lin") | col.str.contains("+lin", literal=True)


def _lin_tests(an) -> dict:
    from steerscreen.screening.analysis import LIN_ADDS

    return {t["outcome"]: t for t in an.summary["verdict_tests"] if t["test"] == LIN_ADDS}


def test_lin_signal_beyond_full_is_claimed_with_holm(lin_runs) -> None:
    an = lin_runs["signal"]
    rows = {r["outcome"]: r for r in an.summary["linear"]}
    tests = _lin_tests(an)
    assert len(an.summary["verdict_tests"]) == 9 and set(rows) == set(tests) == {
        "effect_stability", "collateral_spread", "cleanliness"}
    for outcome, r in rows.items():
        assert r["delta_lo"] > 0 and r["p_holm"] < 0.05, r
        assert r["verdict"] == "lin adds to full" and r["passed"]
        assert r["rho_full_lin"] > r["rho_full"] and r["rho_lin"] > 0
        # the Holm p is the verdict family's, and the delta the comparisons table's
        assert r["p_holm"] == tests[outcome]["p_holm"] >= r["p"]
        cmp = an.comparisons.filter((an.comparisons["a"] == "full+lin")
                                    & (an.comparisons["b"] == "full")
                                    & (an.comparisons["outcome"] == outcome)
                                    & (an.comparisons["context_set"] == "fresh"))
        assert cmp.height == 1 and cmp["delta_rho"][0] == pytest.approx(r["delta_rho"])
        assert cmp["lo"][0] == pytest.approx(r["delta_lo"])
        cv = an.cv.filter((an.cv["outcome"] == outcome) & (an.cv["context_set"] == "fresh"))
        rho = dict(zip(cv["set"].to_list(), cv["rho"].to_list(), strict=True))
        assert rho["full+lin"] == pytest.approx(r["rho_full_lin"])
        assert rho["lin"] == pytest.approx(r["rho_lin"])
    # full+lin vs full is the first comparison of every outcome and context set
    for (_o, _cs), part in an.comparisons.group_by(["outcome", "context_set"],
                                                    maintain_order=True):
        assert (part["a"][0], part["b"][0]) == ("full+lin", "full")
    assert interval_violations(_tables(an), an.summary) == []


def test_lin_noise_makes_no_lin_claim(lin_runs) -> None:
    an = lin_runs["noise"]
    for r in an.summary["linear"]:
        assert not r["passed"] and r["verdict"] != "lin adds to full", r
        assert r["delta_lo"] < 0 < r["delta_hi"] and r["p_holm"] > 0.05
        assert r["verdict"].startswith(("no gain from lin detected", "underpowered"))
    assert not any(t["passed"] for t in _lin_tests(an).values())
    assert interval_violations(_tables(an), an.summary) == []


def test_a_run_without_lin_columns_has_no_lin_rows(lin_runs) -> None:
    from steerscreen.layout import headline_row

    bare, noise = lin_runs[None], lin_runs["noise"]
    assert "linear" not in bare.summary and len(bare.summary["verdict_tests"]) == 6
    assert not any(_is_lin(s) for s in bare.cv["set"].to_list())
    assert not any(_is_lin(s) for s in (*bare.comparisons["a"], *bare.comparisons["b"]))
    assert not any(k.startswith("lin_") for k in headline_row(bare.summary))
    # The v1 numbers are the same with or without lin columns (the same folds and data): only
    # the rows of the lin sets and the Holm families grow.
    v1 = noise.cv.filter(~_lin_mask(noise.cv["set"]))
    assert v1.equals(bare.cv)
    keep = ~(_lin_mask(noise.comparisons["a"])
             | (noise.comparisons["b"] == "full"))
    cols = [c for c in bare.comparisons.columns if c != "p_holm"]
    assert noise.comparisons.filter(keep).select(cols).equals(bare.comparisons.select(cols))
    assert bare.summary["primary_endpoint"] == noise.summary["primary_endpoint"]


def test_lin_verdict_states_power() -> None:
    from steerscreen.screening.analysis import lin_verdict

    row = {"passed": False, "underpowered": True, "n": 120, "mde": 0.25}
    assert lin_verdict(row) == "underpowered (n = 120: detectable Δρ ≥ 0.25)"
    assert lin_verdict(row | {"underpowered": False, "mde": 0.08}) == (
        "no gain from lin detected (detectable Δρ ≥ 0.08)")
    assert lin_verdict(row | {"passed": True}) == "lin adds to full"


def test_all_nan_lin_columns_are_not_fitted() -> None:
    import polars as pl

    from steerscreen.screening.data import predictor_sets, screening_data
    from steerscreen.screening.simulate import LIN_PREDICTORS, synthetic_data

    d = synthetic_data("noise", 40, 0)
    stats = d.table.select(["feature", *d.predictors]).with_columns(
        [pl.lit(float("nan")).alias(c) for c in LIN_PREDICTORS])
    rows = []
    for cs in d.context_sets:
        rows.append(pl.DataFrame({
            "feature": d.table["feature"], "direction": "feature", "strength": 0.25,
            "context_set": cs, **{o: d.table[f"{o}@{cs}"] for o in (
                "effect_stability", "collateral_spread", "effect_kl", "target_gain",
                "collateral_out")}}))
    sd = screening_data(stats, pl.concat(rows), 0.25)
    assert not any(c.startswith("lin_") for c in sd.predictors)
    assert not any(_is_lin(s) for s in predictor_sets(sd.predictors))
