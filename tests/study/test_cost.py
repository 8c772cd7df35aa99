"""The cost model (``steerscreen plan``): FLOP counts by hand, memory, the worker split, the
shipped configs offline, the CLI's errors, and the calibration against the measured H200 run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.config import build_config, load_config
from steerscreen.errors import SpecError
from steerscreen.pipeline.cost import (
    DEVICES,
    H200_RUN,
    StageCost,
    Work,
    forward_work,
    plan_cost,
    seconds,
    table_work,
    time_stage,
)
from steerscreen.pipeline.sizes import KNOWN_MODELS, ModelDims, model_dims, sae_width

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))
TINY = ModelDims("tiny", 2, 8, 32, 10, 2, 2, 4, False, True, "test")


def _cfg(steer: dict[str, Any] | None = None, width: int = 1024, preset: str = "quick") -> Any:
    raw = {"sae": [{"name": "s", "arch": "topk", "width": width,
                    "hook": "blocks.12.hook_resid_post"}],
           "downstream": {"arch": "topk", "width": 4096, "hook": "blocks.16.hook_resid_post"},
           "steer": steer or {}}
    return build_config(raw, preset)


def _stage(plan: Any, stage: str) -> StageCost:
    return next(s.cost for s in plan.stages if s.cost.stage == stage)


def test_forward_flops_match_a_hand_count() -> None:
    # One layer: q, k, v, o 4 x (8 x 8) + MLP 2 x (8 x 32) = 768 weights.
    assert TINY.layer_params == 768
    c, t = 3, 5
    per_layer = 2 * 768 * c * t + 4 * (2 * 4) * ((t + 1) / 2) * c * t  # weights + QK^T, AV
    logits = 2 * 8 * 10 * c * (t - 1)  # unembedding at positions >= 1
    w = forward_work(TINY, 2, c, t, logits=True)
    assert w.matmul == pytest.approx(2 * per_layer + logits)
    assert (w.tokens, w.full, w.partial) == (15, 3, 0)
    # Tables: all-pairs cosines F^2 d and direct logits F d V, float32.
    assert table_work(TINY, 6).fp32 == pytest.approx(2 * 36 * 8 + 2 * 6 * 8 * 10)


def test_built_in_shapes_give_the_published_parameter_counts() -> None:
    assert KNOWN_MODELS["meta-llama/Llama-3.1-8B"].n_params == pytest.approx(8.03e9, rel=0.005)
    assert KNOWN_MODELS["google/gemma-2-2b"].n_params == pytest.approx(2.61e9, rel=0.01)
    assert KNOWN_MODELS["openai-community/gpt2"].n_params == pytest.approx(124e6, rel=0.01)
    assert KNOWN_MODELS["EleutherAI/pythia-70m-deduped"].n_params == pytest.approx(70.4e6,
                                                                                   rel=0.01)
    # The embedded model's GGUF header agrees with the table.
    dims = model_dims("embedded:smollm2-135m")
    assert (dims.n_layers, dims.d_model, dims.vocab) == (30, 576, 49152)
    assert dims.source.startswith("GGUF header")


@pytest.mark.parametrize(("spec", "width"), [
    ("saelens:llama_scope_lxr_32x/l15r_32x", 131072),
    ("saelens:llama_scope_lxr_8x/l15r_8x", 32768),
    ("saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_65k/canonical", 65536),
    ("saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical", 16384),
    ("saelens:gpt2-small-res-jb/blocks.6.hook_resid_pre", 24576),
])
def test_sae_widths_from_release_names(spec: str, width: int) -> None:
    from steerscreen.config import SAEEntry

    assert sae_width(SAEEntry("x", spec=spec), 4096)[0] == width


def test_memory_grows_with_batch_and_features() -> None:
    small, large = (plan_cost(_cfg({"batch_rows": b}), "h100") for b in (8, 64))
    assert _stage(large, "steer").memory_bytes > _stage(small, "steer").memory_bytes
    assert large.batch_rows == 64 and small.batch_rows == 8
    narrow, wide = (plan_cost(_cfg(width=w), "h100") for w in (1024, 8192))
    assert _stage(wide, "stats").memory_bytes > _stage(narrow, "stats").memory_bytes
    assert _stage(wide, "steer").memory_bytes > _stage(narrow, "steer").memory_bytes


def test_workers_split_the_parallel_part_only() -> None:
    dev = DEVICES["h100"]
    par, rep, ser = Work(matmul=8e15), Work(matmul=1e14), Work(matmul=2e14)
    c = StageCost("steer", "x", par, rep, ser, units=64, memory_bytes=1.0, load_bytes=4e9)
    one, eight = (time_stage(c, dev, "bfloat16", n) for n in (1, 8))
    s = {k: seconds(w, dev, "bfloat16") for k, w in (("par", par), ("rep", rep), ("ser", ser))}
    load = one.wall_s - sum(s.values())
    assert load > 0
    assert eight.wall_s == pytest.approx(load + s["rep"] + s["par"] / 8 + s["ser"])
    # Device time: every worker loads and repeats its clean passes; the rest is shared.
    assert eight.gpu_s == pytest.approx(8 * (load + s["rep"]) + s["par"] + s["ser"])
    # Fewer shards than workers: the extra workers idle.
    few = StageCost("steer", "x", par, rep, ser, units=4, memory_bytes=1.0, load_bytes=4e9)
    assert time_stage(few, dev, "bfloat16", 8).wall_s == pytest.approx(
        load + s["rep"] + s["par"] / 4 + s["ser"])


def test_a_study_on_more_workers_is_faster_but_costs_more_gpu_time() -> None:
    cfg = load_config(None, "default")
    one, four = plan_cost(cfg, "h100", 1), plan_cost(cfg, "h100", 4)
    assert four.wall_s < one.wall_s and four.gpu_hours > one.gpu_hours
    fit = [s for s in four.stages if s.cost.stage in ("fit", "report")]
    assert fit and all(s.gpu_s == 0 for s in fit)  # CPU stages do not split


def test_h200_calibration_reproduces_the_measured_run() -> None:
    # The benchmark's shape: SmolLM2, hook 12, S' 4096 at 16, 256 features x 32 contexts x 64
    # tokens (255 + 1 random), 512 rows per forward, float32, one strength, no fresh set.
    cfg = _cfg({"features": 255, "random_directions": 1, "contexts": 32, "fresh_contexts": 0,
                "context_len": 64, "strengths": [0.25], "batch_rows": 512}, preset="full")
    plan = plan_cost(cfg, "h200")
    steer = _stage(plan, "steer")
    s = seconds(steer.parallel + steer.per_worker, DEVICES["h200"], "float32")
    assert 256 / s * 3600 == pytest.approx(H200_RUN.features_per_hour, rel=0.03)
    assert H200_RUN.features_per_hour == pytest.approx(243_000, rel=0.01)
    # Independent check: the all-pairs cosines of 131,072 x 4096 took 3.8 s on the H200.
    cos = Work(fp32=2.0 * 131072**2 * 4096)
    assert seconds(cos, DEVICES["h200"], "float32") == pytest.approx(3.8, rel=0.15)


def test_every_shipped_config_plans_offline_fast(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_config(CONFIGS[0])  # imports (torch, SAELens's release directory) are not the plan's
    t = time.perf_counter()
    for path in CONFIGS:
        for gpu in ("h100", "l4", "cpu"):
            plan = plan_cost(load_config(path), gpu, 8)
            assert plan.wall_s > 0 and plan.total.flops > 0
            assert {s.cost.stage for s in plan.stages} >= {"stats", "steer", "fit", "report"}
    assert time.perf_counter() - t < 2.0


def test_the_llama_plan_fits_an_h100_and_shows_both_widths(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = plan_cost(load_config(Path(CONFIGS[0]).parent / "llama-3.1-8b.toml"), "h100", 8)
    assert not plan.warnings
    assert plan.model.n_layers == 32 and "published" in plan.model.source
    stats = [s.cost for s in plan.stages if s.cost.stage == "stats"]
    assert [s.target for s in stats] == ["llamascope-8x-l15", "llamascope-32x-l15"]
    assert stats[1].memory_bytes > stats[0].memory_bytes  # 131,072 vs 32,768 features
    # An L4 (24 GB) cannot hold the bfloat16 model and the 32x SAE's steering: it says so.
    assert plan_cost(load_config(Path(CONFIGS[0]).parent / "llama-3.1-8b.toml"), "l4").warnings


def test_bad_inputs_are_errors_with_a_fix() -> None:
    cfg = load_config(None, "quick")
    with pytest.raises(SpecError, match="unknown GPU"):
        plan_cost(cfg, "tpu")
    with pytest.raises(SpecError, match="at least 1"):
        plan_cost(cfg, "h100", 0)


def test_cli_plan_and_its_errors() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "--preset", "quick", "--gpu", "h200", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "GPU-h" in res.output and "total" in res.output and "features/hour" in res.output
    bad = runner.invoke(app, ["plan", "--gpu", "tpu"])
    assert bad.exit_code == 2 and "unknown GPU" in bad.output and "fix:" in bad.output
    zero = runner.invoke(app, ["plan", "--workers", "0"])
    assert zero.exit_code == 2 and "at least 1" in zero.output
    missing = runner.invoke(app, ["plan", "--config", "no/such.toml"])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_the_plan_charges_the_steered_text_of_every_card() -> None:
    from steerscreen.pipeline.plan import CARD_FEATURES, make_plan
    from steerscreen.report.cards import N_CARDS

    assert CARD_FEATURES == 2 * N_CARDS
    plan = make_plan(_cfg())
    screens = [s for s in plan.steps if s.stage == "screen"]
    assert len(screens) == len(_cfg().saes) and all(s.estimate_s > 0 for s in screens)
