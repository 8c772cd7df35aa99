"""The steering stage on the embedded model (slow): stats -> steer with small random SAEs at
layers 12 and 16 of SmolLM2, strength 0 exact, and the outcomes against the naive oracle."""

from __future__ import annotations

import math
import warnings

import numpy as np
import polars as pl
import pytest
import torch

from steerscreen.models import load_model
from steerscreen.pipeline.runs import RunDir
from steerscreen.pipeline.stats import StatsConfig, run_stats
from steerscreen.pipeline.steer import SteerConfig, run_steer
from steerscreen.saes import load_sae, save_sae
from steerscreen.steering import OUTCOME_COLUMNS
from tests.steering.naive import naive_outcomes

pytestmark = pytest.mark.slow
HOOK, DOWN = "blocks.12.hook_resid_post", "blocks.16.hook_resid_post"


def random_topk(folder, hook: str, seed: int):
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = TopKSAE(TopKSAEConfig(d_in=576, d_sae=256, k=16, metadata=SAEMetadata(
            model_name="smollm2-135m", hook_name=hook)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(576, 256, generator=g) / 24)
        sae.W_dec.copy_(torch.randn(256, 576, generator=g) / 24)
    return save_sae(sae, folder)


def test_steer_on_smollm2(tmp_path) -> None:
    model = load_model("embedded:smollm2-135m")
    up = load_sae(str(random_topk(tmp_path / "up", HOOK, 1)))
    down = load_sae(str(random_topk(tmp_path / "down", DOWN, 2)))
    run = tmp_path / "run"
    run_stats(StatsConfig(sae=str(up.path), tokens=1500, final_norm_contexts=4,
                          reservoir_size=20, linear_contexts=0), run, model=model, sae=up,
              progress=False)
    cfg = SteerConfig(downstream_sae=str(down.path), features=3, random_directions=1,
                      contexts=4, fresh_contexts=0, context_len=16, strengths=[0.0, 0.25],
                      pass_positions=64)
    run_steer(cfg, run, model=model, sae=up, down=down, progress=False)
    df = pl.read_parquet(run / RunDir.STEERING_OUTCOMES)
    zero = df.filter(pl.col("strength") == 0.0)
    assert (zero["effect_kl"] == 0.0).all() and (zero["target_gain"] == 0.0).all()
    steered = df.filter(pl.col("strength") == 0.25)
    assert (steered["effect_kl"] > 0).all()
    ctx = pl.read_parquet(run / RunDir.CONTEXTS).filter(pl.col("set") == "steering")
    ids = np.array(ctx["token_ids"].to_list(), dtype=np.int64)
    row = steered.filter(pl.col("feature") >= 0).row(0, named=True)
    W = up.sae.W_dec.detach()
    v = W[row["feature"]] / W[row["feature"]].norm()
    tokens = torch.topk(model.unembed().direct_logits(v[None])[0], 10).indices.numpy()
    ref = naive_outcomes(model, down, HOOK, DOWN, v.numpy(), row["alpha"], ids, tokens)
    for col in OUTCOME_COLUMNS:
        a, b = row[col], ref[col]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=2e-3, abs=1e-5), col


def test_linear_response_matches_steering_at_a_tiny_dose(tmp_path) -> None:
    """METHOD v2 §1's check: steering at s = 1e-3 on the linearisation contexts reproduces
    lin_stability, lin_kl (times alpha^2), lin_target_gain and lin_collateral_out within 2%."""
    from steerscreen.layout import LINEAR_CONTEXTS
    from steerscreen.steering.engine import SteeringEngine

    model = load_model("embedded:smollm2-135m")
    up = load_sae(str(random_topk(tmp_path / "up", HOOK, 1)))
    run = tmp_path / "run"
    res = run_stats(StatsConfig(sae=str(up.path), tokens=1500, final_norm_contexts=4,
                                reservoir_size=20, linear_contexts=4, linear_len=16), run,
                    model=model, sae=up, progress=False)
    stats = pl.read_parquet(run / RunDir.FEATURE_STATS)
    ids = np.array(pl.read_parquet(run / LINEAR_CONTEXTS)["token_ids"].to_list())
    feats = np.arange(8) * 31
    W = up.sae.W_dec.detach().float()[feats]
    alpha = 1e-3 * res.residual_norm
    engine = SteeringEngine(model, HOOK, batch_rows=4)
    cache = engine.clean(ids)
    got = dict(engine.run(cache, W / W.norm(dim=1, keepdim=True), alpha))
    for k, f in enumerate(feats):
        lin = stats.row(int(f), named=True)
        o = got[k].values
        assert o["effect_stability"] == pytest.approx(lin["lin_stability"], rel=0.02, abs=2e-3)
        assert o["effect_kl"] / alpha**2 == pytest.approx(math.exp(lin["lin_kl"]), rel=0.02)
        assert o["target_gain"] / alpha == pytest.approx(lin["lin_target_gain"], rel=0.02,
                                                         abs=1e-3)
        assert o["collateral_out"] == pytest.approx(lin["lin_collateral_out"], rel=0.02,
                                                    abs=2e-3)
