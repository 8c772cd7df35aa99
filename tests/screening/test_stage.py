"""fit and screen end to end on a tiny model: stats -> steer -> fit -> screen."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.config import FitConfig
from steerscreen.errors import ArtifactError
from steerscreen.pipeline.fit import run_fit
from steerscreen.pipeline.runs import RunDir
from steerscreen.pipeline.screen import run_screen
from steerscreen.pipeline.stats import StatsConfig
from steerscreen.screening.predictor import Predictor
from tests.screening.intervals import interval_violations
from tests.steering.test_stage import base, fresh_run, steer  # noqa: F401  (fixture)

FAST = FitConfig(n_splits=3, n_repeats=1, n_permutations=10,
                 boosting_sets=("full",))


@pytest.fixture(scope="module")
def fitted(base):  # noqa: F811
    out = fresh_run(base, "fit")
    # The tiny SAE has few features that fire on 200 tokens; steer ids regardless.
    steer(base, out, strengths=[0.6], feature_ids=",".join(map(str, range(2, 26))),
          random_directions=4, contexts=3, fresh_contexts=3)
    res = run_fit(FAST, out)
    return {"out": out, "res": res}


def test_fit_writes_every_table_and_the_summary(fitted) -> None:
    folder = fitted["out"] / "screening"
    for name in ("cv_metrics", "comparisons", "confounds", "heldout", "predictions"):
        assert pl.read_parquet(folder / f"{name}.parquet").height > 0, name
    s = json.loads((folder / "summary.json").read_text())
    p = s["primary_endpoint"]
    assert p["context_set"] == "fresh" and p["full"] == "full" and p["baseline"] == "freq+mag"
    assert set(s["verdicts"]) == {"effect_stability", "collateral_spread", "cleanliness"}
    cv = pl.read_parquet(folder / "cv_metrics.parquet")
    assert {"freq", "mag", "freq+mag", "full", "geom", "full-geom"} <= set(cv["set"].to_list())
    assert set(cv["model"].to_list()) == {"ridge", "boosting"}
    m = json.loads((fitted["out"] / RunDir.MANIFEST).read_text())
    assert m["stages"]["fit"]["status"] == "complete"
    # Every interval of every table and of the summary contains its own estimate.
    tables = {name: pl.read_parquet(folder / f"{name}.parquet")
              for name in ("cv_metrics", "comparisons", "confounds", "heldout")}
    assert interval_violations(tables, s) == []
    assert p["n"] == 24 and p["underpowered"] and p["verdict"].startswith("underpowered")


def test_predictor_round_trips_and_checks_columns(fitted, tmp_path) -> None:
    path = fitted["res"].predictor_path
    p = Predictor.load(path)
    assert set(p.models) == {"effect_stability", "collateral_spread", "cleanliness"}
    assert all(np.isfinite(m.conformal_q) for m in p.models.values())
    stats = pl.read_parquet(fitted["out"] / RunDir.FEATURE_STATS)
    pred = p.predict(stats)
    assert pred.height == stats.height and np.isfinite(pred["pred_cleanliness"].to_numpy()).all()
    with pytest.raises(ArtifactError, match="lacks"):
        p.predict(stats.drop("geom_max_cos"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "pickle"}')
    with pytest.raises(ArtifactError, match="not a steerscreen predictor"):
        Predictor.load(bad)


def test_screen_ranks_every_feature_without_steering(base, fitted, tmp_path) -> None:  # noqa: F811
    m = json.loads((fitted["out"] / RunDir.MANIFEST).read_text())
    sc = m["stages"]["stats"]["config"]
    cfg = StatsConfig(**{**sc, "tokens": 150})
    res = run_screen(fitted["res"].predictor_path, cfg, tmp_path / "screen", model=base["model"],
                     sae=base["sae"], down=base["down"])
    t = res.table
    assert t.height == base["sae"].d_sae and t["rank"].to_list() == list(range(1, t.height + 1))
    alive = t.filter(~pl.col("dead"))
    assert (np.diff(alive["pred_cleanliness"].to_numpy()) <= 0).all()
    assert res.csv.is_file() and not (tmp_path / "screen" / RunDir.STEERING_OUTCOMES).exists()
    # The predicted dose: pred_alpha = sqrt(target_kl / exp(lin_kl)), pred_strength = alpha / r.
    stats = pl.read_parquet(tmp_path / "screen" / RunDir.FEATURE_STATS).sort("feature")
    r = json.loads((tmp_path / "screen" / RunDir.MANIFEST).read_text())["residual_norm"]
    d = t.sort("feature")
    want = np.sqrt(0.25 / np.exp(stats["lin_kl"].to_numpy()))
    assert np.isfinite(want).all()
    np.testing.assert_allclose(d["pred_alpha"].to_numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(d["pred_strength"].to_numpy(), want / r, rtol=1e-12)
    assert (d["target_kl"] == 0.25).all()
    assert "pred_strength" in pl.read_csv(res.csv).columns


def test_screen_dose_follows_target_kl_and_is_nan_without_lin(base, fitted,  # noqa: F811
                                                              tmp_path) -> None:
    m = json.loads((fitted["out"] / RunDir.MANIFEST).read_text())
    sc = m["stages"]["stats"]["config"]
    cfg = StatsConfig(**{**sc, "tokens": 150, "linear_contexts": 0})
    res = run_screen(fitted["res"].predictor_path, cfg, tmp_path / "nolin", model=base["model"],
                     sae=base["sae"], down=base["down"], target_kl=0.5)
    assert np.isnan(res.table["pred_alpha"].to_numpy()).all()
    assert np.isnan(res.table["pred_strength"].to_numpy()).all()
    assert (res.table["target_kl"] == 0.5).all()
    from steerscreen.pipeline.screen import print_screen

    print_screen(res, 3)  # NaN strengths print as a dash


@pytest.fixture(scope="module")
def equal_fitted(base):  # noqa: F811
    out = fresh_run(base, "fit-equal-kl")
    steer(base, out, dose="equal-kl", target_kl=0.02,
          feature_ids=",".join(map(str, range(2, 26))), random_directions=4, contexts=3,
          fresh_contexts=3)
    return {"out": out, "res": run_fit(FAST, out)}


def test_fit_and_report_of_an_equal_kl_run(equal_fitted, tmp_path) -> None:
    from steerscreen.report import write_report

    out = equal_fitted["out"]
    s = json.loads((out / "screening" / "summary.json").read_text())
    assert s["strength"] == 0.02 and s["dose_mode"] == "equal-kl"
    acc = s["dose_accuracy"]
    assert acc["mode"] == "equal-kl" and acc["context_set"] == "fresh"
    assert acc["features"]["n"] == 24 and acc["random"]["n"] == 4
    assert acc["features"]["q10"] <= acc["features"]["median"] <= acc["features"]["q90"]
    assert 0.2 < acc["features"]["median"] < 5  # near-linear at a small KL
    p = Predictor.load(equal_fitted["res"].predictor_path)
    assert p.dose["target_kl"] == 0.02 and p.dose["strength"] > 0
    rep = write_report(out)
    html = rep.html.read_text()
    assert "Dose accuracy" in html and "equal-kl" in html
    assert "Dose accuracy" in (out / "summary.md").read_text()


def test_fit_summary_reports_the_predicted_kl_at_one_dose(fitted) -> None:
    s = json.loads((fitted["out"] / "screening" / "summary.json").read_text())
    acc = s["dose_accuracy"]
    assert acc["mode"] == "predicted" and acc["features"]["n"] == 24 and acc["random"] is None


def test_fit_needs_a_steer_stage(tmp_path) -> None:
    res = CliRunner().invoke(app, ["fit", "--run", str(tmp_path)])
    assert res.exit_code == 2 and "no complete steer stage" in " ".join(res.output.split())


def test_compare_transfers_between_runs(fitted, tmp_path) -> None:
    import shutil

    from steerscreen.pipeline.compare import compare

    other = tmp_path / "other"
    shutil.copytree(fitted["out"], other)
    transfer, per_run = compare([fitted["out"], other])
    assert transfer.height == 2 * 3  # 2 ordered pairs x 3 outcomes
    assert interval_violations({"transfer": transfer}) == []
    assert np.isfinite(transfer["rho"].to_numpy()).all()
    assert per_run.height == 2 and "verdict_cleanliness" in per_run.columns
    res = CliRunner().invoke(app, ["compare", str(fitted["out"]), str(other),
                                   "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cmp" / "transfer.parquet").is_file()


def test_fit_closing_lines_state_power(fitted) -> None:
    from steerscreen.pipeline.fit import fit_lines

    out = " ".join(fit_lines(fitted["res"].summary))
    assert "n = 24" in out and "underpowered (n = 24: detectable Δρ ≥" in out
    assert "detectable delta rho at 80% power" in out


def test_screen_repeats_the_training_runs_linearisation(base, fitted, tmp_path) -> None:  # noqa: F811
    m = json.loads((fitted["out"] / RunDir.MANIFEST).read_text())
    trained = m["stages"]["stats"]["results"]["linear"]
    pred = json.loads(fitted["res"].predictor_path.read_text())
    assert pred["trained_on"]["linear"] == {"contexts": trained["contexts"],
                                            "context_len": trained["context_len"]}
    sc = {k: v for k, v in m["stages"]["stats"]["config"].items()
          if k not in ("linear_contexts", "linear_len")}
    cfg = StatsConfig(**{**sc, "tokens": 400, "context_len": trained["context_len"] + 2})
    run_screen(fitted["res"].predictor_path, cfg, tmp_path / "scr", model=base["model"],
               sae=base["sae"], down=base["down"])
    got = RunDir(tmp_path / "scr").stage("stats")["results"]["linear"]
    assert (got["contexts"], got["context_len"]) == (trained["contexts"],
                                                     trained["context_len"])
