"""The steer stage end to end on a tiny model: outcomes against the naive oracle, strength 0,
batch-size invariance, resume after an interruption, calibration, and the CLI."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.errors import SteerscreenError
from steerscreen.layout import STEER_SHARDS
from steerscreen.pipeline import shards
from steerscreen.pipeline import steer as stage_mod
from steerscreen.pipeline.runs import RunDir
from steerscreen.pipeline.stats import StatsConfig, run_stats
from steerscreen.pipeline.steer import SteerConfig, run_steer
from steerscreen.saes import load_sae
from steerscreen.steering import OUTCOME_COLUMNS
from tests.stats.test_stage import CONTEXT_LEN, HOOK, make_corpus, make_sae
from tests.steering.naive import naive_outcomes
from tests.tiny_models import tiny_model

DOWN_HOOK = "blocks.3.hook_resid_post"
KW = dict(features=4, random_directions=2, contexts=3, fresh_contexts=2, context_len=10,
          calibration_contexts=3, calibration_directions=4, shard_directions=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("steer")
    model = tiny_model("llama")
    model_dir = root / "tiny-llama"
    model.model.config.save_pretrained(model_dir)
    corpus = make_corpus(root / "corpus.txt", n_docs=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = load_sae(str(make_sae(root / "sae")))
        down = load_sae(str(make_sae(root / "down", hook=DOWN_HOOK)))
    stats_cfg = StatsConfig(sae=str(sae.path), model=f"local:{model_dir}",
                            corpus=f"text:{corpus}", tokens=200, context_len=CONTEXT_LEN,
                            batch_size=4, reservoir_size=5, n_examples=2, example_window=4,
                            final_norm_contexts=4, n_components=4)
    stats_dir = root / "stats"
    run_stats(stats_cfg, stats_dir, model=model, sae=sae, progress=False)
    return {"root": root, "model": model, "sae": sae, "down": down, "stats_dir": stats_dir}


def fresh_run(base: dict[str, Any], name: str) -> Path:
    """A copy of the stats-only run folder."""
    import shutil

    out = base["root"] / name
    shutil.copytree(base["stats_dir"], out)
    return out


def steer(base: dict[str, Any], out: Path, **kw: Any):
    cfg = SteerConfig(downstream_sae=str(base["down"].path), **{**KW, **kw})
    return run_steer(cfg, out, model=base["model"], sae=base["sae"], down=base["down"],
                     progress=False)


@pytest.fixture(scope="module")
def fixed(base) -> dict[str, Any]:
    out = fresh_run(base, "fixed")
    res = steer(base, out, strengths=[0.0, 0.6])
    return {"out": out, "res": res,
            "outcomes": pl.read_parquet(out / RunDir.STEERING_OUTCOMES),
            "gram": pl.read_parquet(out / RunDir.STEERING_GRAM),
            "contexts": pl.read_parquet(out / RunDir.CONTEXTS)}


def test_tables_have_every_row_and_column(base, fixed) -> None:
    df = fixed["outcomes"]
    for col in ("feature", "direction", "strength", "alpha", "context_set", "n_contexts",
                *OUTCOME_COLUMNS):
        assert col in df.columns, col
    # (4 features + 2 random) x 2 strengths x 2 context sets
    assert df.height == 6 * 2 * 2
    assert sorted(set(df["feature"].to_list())) == sorted(
        fixed["res"].run.stage("steer")["results"]["features"] + [-1, -2])
    assert set(df["direction"].to_list()) == {"feature", "random"}
    assert (df.filter(pl.col("feature") < 0)["direction"] == "random").all()
    ctx = fixed["contexts"]
    assert ctx.group_by("set").len().sort("set").rows() == [("fresh", 2), ("steering", 3)]
    assert fixed["gram"].height == df.height
    g = fixed["gram"].filter(pl.col("context_set") == "steering")["gram"].to_list()[0]
    assert len(g) == 9
    dose = pl.read_parquet(fixed["out"] / stage_mod.DOSE_STATS)
    assert dose["feature"].to_list() == list(range(base["sae"].d_sae))
    assert dose["strength"].unique().to_list() == [0.6]  # the first positive strength, not s = 0
    m = json.loads((fixed["out"] / RunDir.MANIFEST).read_text())
    assert m["stages"]["steer"]["outputs"][stage_mod.DOSE_STATS]["sha256"]


def test_dose_stats_at_a_positive_dose(base) -> None:
    out = fresh_run(base, "dose")
    steer(base, out, strengths=[0.6], features=2, fresh_contexts=0)
    dose = pl.read_parquet(out / stage_mod.DOSE_STATS)
    assert np.isfinite(dose["base_pass"].to_numpy()).mean() > 0.5
    assert np.isfinite(dose["logit_entropy"].to_numpy()).all()
    m = json.loads((out / RunDir.MANIFEST).read_text())
    assert dose["alpha"][0] == pytest.approx(0.6 * m["residual_norm"])


def test_steering_and_fresh_contexts_use_disjoint_documents(fixed) -> None:
    ctx = fixed["contexts"]
    steer_docs = set(ctx.filter(pl.col("set") == "steering")["doc_id"].to_list())
    fresh_docs = set(ctx.filter(pl.col("set") == "fresh")["doc_id"].to_list())
    assert steer_docs and fresh_docs and not steer_docs & fresh_docs


def test_strength_zero_reproduces_the_clean_run_exactly(fixed) -> None:
    zero = fixed["outcomes"].filter(pl.col("strength") == 0.0)
    assert zero.height == 12
    assert (zero["effect_kl"] == 0.0).all() and (zero["target_gain"] == 0.0).all()
    assert (zero["n_recruited"] == 0.0).all() and (zero["n_suppressed"] == 0.0).all()
    assert zero["effect_stability"].is_nan().all()
    assert zero["collateral_spread"].is_nan().all()


def test_outcomes_match_the_naive_oracle(base, fixed) -> None:
    df = fixed["outcomes"].filter(pl.col("strength") == 0.6)
    W = base["sae"].sae.W_dec.detach().double()
    ctx = fixed["contexts"]
    from steerscreen.steering.sampling import random_directions

    rand = random_directions(2, W.shape[1], 0).double()
    unembed = base["model"].unembed()
    for row in df.iter_rows(named=True):
        f = row["feature"]
        v = (W[f] / W[f].norm()) if f >= 0 else rand[-1 - f]
        ids = np.array(ctx.filter(pl.col("set") == row["context_set"])["token_ids"].to_list())
        dl = unembed.direct_logits(v.float()[None])[0]
        tokens = torch.topk(dl, 10).indices.numpy()
        ref = naive_outcomes(base["model"], base["down"], HOOK, DOWN_HOOK, v.float().numpy(),
                             row["alpha"], ids, tokens)
        for col in OUTCOME_COLUMNS:
            a, b = row[col], ref[col]
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-4,
                                                                           abs=1e-6), (f, col)
        assert sorted(row["downstream_targets"]) == sorted(np.asarray(ref["targets"]).tolist())
        gram = fixed["gram"].filter((pl.col("feature") == f) & (pl.col("strength") == 0.6) & (
            pl.col("context_set") == row["context_set"]))["gram"].to_list()[0]
        np.testing.assert_allclose(np.array(gram).reshape(ref["gram"].shape), ref["gram"],
                                   rtol=1e-4, atol=1e-9)


def test_same_numbers_whatever_the_batch_size(base, fixed) -> None:
    out = fresh_run(base, "batch1")
    steer(base, out, strengths=[0.0, 0.6], batch_rows=1)
    a = fixed["outcomes"]
    b = pl.read_parquet(out / RunDir.STEERING_OUTCOMES)
    assert a["feature"].to_list() == b["feature"].to_list()
    for col in OUTCOME_COLUMNS:
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=1e-5, atol=1e-7,
                                   equal_nan=True, err_msg=col)


def test_interrupted_run_resumes_without_recomputing(base, fixed, monkeypatch) -> None:
    out = fresh_run(base, "resume")
    real = shards.write_shard
    calls = {"n": 0}

    def dying(shard_dir, rows):
        written = real(shard_dir, rows)
        calls["n"] += 1
        if calls["n"] == 3:  # after the rename, before the manifest records it: adopted
            raise KeyboardInterrupt
        return written

    monkeypatch.setattr(shards, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        steer(base, out, strengths=[0.0, 0.6])
    monkeypatch.setattr(shards, "write_shard", real)
    assert RunDir(out).stage("steer")["status"] == "running"
    assert len(RunDir(out).stage("steer")["shards"]) == 2  # the third was never recorded
    done = pl.concat([pl.read_parquet(p) for p in (out / STEER_SHARDS).glob("*.parquet")])
    assert done.height == 6  # 3 shards of 2 directions survived
    res = steer(base, out, strengths=[0.0, 0.6])
    assert res.computed_directions == 24 - 6
    b = pl.read_parquet(out / RunDir.STEERING_OUTCOMES)
    a = fixed["outcomes"]
    assert a.select(["feature", "strength", "context_set"]).rows() == b.select(
        ["feature", "strength", "context_set"]).rows()
    for col in OUTCOME_COLUMNS:
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)
    assert not (out / STEER_SHARDS).exists()
    # A complete stage is skipped on a rerun.
    assert steer(base, out, strengths=[0.0, 0.6]).skipped


def test_calibrated_dose_hits_the_target_kl(base) -> None:
    out = fresh_run(base, "calibrated")
    res = steer(base, out, target_kl=0.005, fresh_contexts=0, features=2)
    m = json.loads((out / RunDir.MANIFEST).read_text())
    cal = m["stages"]["steer"]["results"]["calibration"]
    assert m["dose_mode"] == "calibrated" and cal["converged"]
    assert abs(cal["kl"] / 0.005 - 1) <= 0.05
    assert res.strengths == [cal["strength"]]
    assert m["alpha"][0] == pytest.approx(cal["strength"] * m["residual_norm"])
    df = pl.read_parquet(out / RunDir.STEERING_OUTCOMES)
    assert set(df["context_set"].to_list()) == {"steering"}


def test_changed_config_is_refused_without_force(base, fixed) -> None:
    with pytest.raises(SteerscreenError, match="different config"):
        steer(base, fixed["out"], strengths=[0.3])


def test_steer_needs_a_stats_stage(tmp_path) -> None:
    res = CliRunner().invoke(app, ["steer", "--run", str(tmp_path / "nothing"),
                                   "--downstream-sae", str(tmp_path)])
    assert res.exit_code == 2
    assert "no complete stats stage" in " ".join(res.output.split())


def test_bad_feature_ids_fail_clearly(base) -> None:
    out = fresh_run(base, "badids")
    with pytest.raises(SteerscreenError, match="out of range"):
        steer(base, out, strengths=[0.5], feature_ids="3,999")


# --- per-direction doses (--dose equal-kl) ------------------------------------------------------

def test_per_direction_alphas_equal_one_scalar_run_per_alpha(base) -> None:
    from steerscreen.steering.engine import SteeringEngine
    from steerscreen.steering.sampling import random_directions

    engine = SteeringEngine(base["model"], HOOK, base["down"], DOWN_HOOK, batch_rows=3)
    ids = np.array(pl.read_parquet(base["stats_dir"] / "linear_contexts.parquet")
                   ["token_ids"].to_list())[:3, :10]
    cache = engine.clean(ids)
    dirs = random_directions(3, base["model"].d_model, 5)
    alphas = [0.7, 2.5, 4.0]
    mixed = dict(engine.run(cache, dirs, alphas))
    for k, a in enumerate(alphas):
        one = dict(engine.run(cache, dirs, a))[k]
        assert one.values.keys() == mixed[k].values.keys()
        for name, v in one.values.items():
            np.testing.assert_allclose(mixed[k].values[name], v, rtol=1e-6, atol=1e-9,
                                       equal_nan=True, err_msg=name)
        np.testing.assert_array_equal(mixed[k].targets, one.targets)
    # The same alpha for every direction is the scalar run, bit for bit.
    same = dict(engine.run(cache, dirs, [2.5] * 3))
    scalar = dict(engine.run(cache, dirs, 2.5))
    for k in range(3):
        for name, v in scalar[k].values.items():
            np.testing.assert_array_equal(same[k].values[name], v, err_msg=name)


@pytest.fixture(scope="module")
def equal(base) -> dict[str, Any]:
    out = fresh_run(base, "equal-kl")
    res = steer(base, out, dose="equal-kl", target_kl=0.01)
    return {"out": out, "res": res, "outcomes": pl.read_parquet(out / RunDir.STEERING_OUTCOMES)}


def test_equal_kl_rows_carry_their_own_alpha(base, equal) -> None:
    from steerscreen.pipeline.linear import read_forms
    from steerscreen.steering.sampling import random_directions

    out, df = equal["out"], equal["outcomes"]
    m = json.loads((out / RunDir.MANIFEST).read_text())
    r = m["residual_norm"]
    assert m["dose_mode"] == "equal-kl" and m["target_kl"] == 0.01
    assert m["strengths"] == [0.01] and m["alpha"] == []
    assert equal["res"].dose_mode == "equal-kl" and equal["res"].target_kl == 0.01
    assert df.height == 6 * 2 and (df["target_kl"] == 0.01).all()
    lin = pl.read_parquet(out / RunDir.FEATURE_STATS).sort("feature")["lin_kl"].to_numpy()
    feats = df.filter(pl.col("direction") == "feature")
    want = np.sqrt(0.01 / np.exp(lin[feats["feature"].to_numpy()]))
    np.testing.assert_allclose(feats["alpha"].to_numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(df["strength"].to_numpy(), df["alpha"].to_numpy() / r,
                               rtol=1e-12)
    assert feats["alpha"].n_unique() > 1  # each feature its own dose
    rand = df.filter((pl.col("direction") == "random") & (pl.col("context_set") == "steering"))
    rate = read_forms(out / "linear_forms.safetensors").kl_rate(
        random_directions(KW["random_directions"], base["model"].d_model, 0))
    order = (-1 - rand["feature"].to_numpy())
    np.testing.assert_allclose(rand["alpha"].to_numpy(), np.sqrt(0.01 / rate[order]),
                               rtol=1e-12)
    # base_pass in feature_dose_stats at each feature's own alpha.
    dose = pl.read_parquet(out / stage_mod.DOSE_STATS).sort("feature")
    np.testing.assert_allclose(dose["alpha"].to_numpy(), np.sqrt(0.01 / np.exp(lin)),
                               rtol=1e-12)
    # Measured KL near the target (tiny dose: near-linear).
    kl = feats["effect_kl"].to_numpy()
    assert np.all((kl > 0.01 / 5) & (kl < 0.01 * 5)), kl


def test_equal_kl_row_equals_steering_that_feature_at_its_strength(base, equal) -> None:
    df = equal["outcomes"].filter(pl.col("direction") == "feature")
    row = df.filter(pl.col("context_set") == "steering").row(1, named=True)
    out = fresh_run(base, "equal-kl-check")
    steer(base, out, strengths=[row["strength"]], feature_ids=str(row["feature"]))
    b = pl.read_parquet(out / RunDir.STEERING_OUTCOMES).filter(
        (pl.col("feature") == row["feature"]) & (pl.col("context_set") == "steering"))
    assert b.height == 1
    np.testing.assert_allclose(b["alpha"][0], row["alpha"], rtol=1e-12)
    for col in OUTCOME_COLUMNS:
        np.testing.assert_allclose(b[col][0], row[col], rtol=1e-5, atol=1e-7, equal_nan=True,
                                   err_msg=col)


def test_equal_kl_resumes_after_an_interruption(base, equal, monkeypatch) -> None:
    out = fresh_run(base, "equal-kl-resume")
    real = shards.write_shard
    calls = {"n": 0}

    def dying(shard_dir, rows):
        written = real(shard_dir, rows)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return written

    monkeypatch.setattr(shards, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        steer(base, out, dose="equal-kl", target_kl=0.01)
    monkeypatch.setattr(shards, "write_shard", real)
    res = steer(base, out, dose="equal-kl", target_kl=0.01)
    assert res.computed_directions == 12 - 4
    a, b = equal["outcomes"], pl.read_parquet(out / RunDir.STEERING_OUTCOMES)
    assert a.select(["feature", "context_set"]).rows() == b.select(
        ["feature", "context_set"]).rows()
    for col in ("strength", "alpha", *OUTCOME_COLUMNS):
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)
    assert steer(base, out, dose="equal-kl", target_kl=0.01).skipped


def test_equal_kl_refusals(base) -> None:
    from steerscreen.errors import SpecError

    with pytest.raises(SpecError, match=r"takes no --strengths"):
        SteerConfig(downstream_sae="x", dose="equal-kl", strengths=[0.5])
    with pytest.raises(SpecError, match="unknown dose"):
        SteerConfig(downstream_sae="x", dose="loud")
    out = fresh_run(base, "equal-kl-nolin")
    fs = pl.read_parquet(out / RunDir.FEATURE_STATS)
    fs.with_columns(pl.lit(None, dtype=pl.Float64).alias("lin_kl")).write_parquet(
        out / RunDir.FEATURE_STATS)
    with pytest.raises(SteerscreenError, match="no finite lin_kl") as e:
        steer(base, out, dose="equal-kl")
    assert "--linear-contexts" in e.value.fix
    out = fresh_run(base, "equal-kl-noforms")
    (out / "linear_forms.safetensors").unlink()
    with pytest.raises(SteerscreenError, match=r"no linear_forms\.safetensors"):
        steer(base, out, dose="equal-kl")
    assert not (out / RunDir.STEERING_OUTCOMES).exists()


def test_stored_top_tokens_match_the_naive_oracle(base, fixed) -> None:
    """steering_tokens.parquet: the 10 largest / smallest entries of m = mean_c d_c, as the
    oracle computes them from its own hooked forwards."""
    tokens = pl.read_parquet(fixed["out"] / RunDir.STEERING_TOKENS)
    assert set(tokens["kind"].to_list()) == {"promoted", "suppressed"}
    assert tokens.height == 6 * 2 * 2 * 20  # every outcome row, 10 of each kind
    W = base["sae"].sae.W_dec.detach().double()
    ctx = fixed["contexts"]
    unembed = base["model"].unembed()
    rows = fixed["outcomes"].filter((pl.col("strength") == 0.6) & (pl.col("feature") >= 0))
    for row in rows.head(4).iter_rows(named=True):
        f, cs = row["feature"], row["context_set"]
        v = W[f] / W[f].norm()
        ids = np.array(ctx.filter(pl.col("set") == cs)["token_ids"].to_list())
        top = torch.topk(unembed.direct_logits(v.float()[None])[0], 10).indices.numpy()
        m = naive_outcomes(base["model"], base["down"], HOOK, DOWN_HOOK, v.float().numpy(),
                           row["alpha"], ids, top)["m"]
        mine = tokens.filter((pl.col("feature") == f) & (pl.col("context_set") == cs)
                             & (pl.col("strength") == 0.6))
        for kind, order in (("promoted", np.argsort(-m)), ("suppressed", np.argsort(m))):
            got = mine.filter(pl.col("kind") == kind).sort("rank")
            assert got["rank"].to_list() == list(range(1, 11))
            assert got["token_id"].to_list() == order[:10].tolist(), (f, cs, kind)
            np.testing.assert_allclose(got["value"].to_numpy(), m[order[:10]], rtol=1e-4,
                                       atol=1e-9)
