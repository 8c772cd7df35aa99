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
