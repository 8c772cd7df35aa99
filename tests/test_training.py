"""SAE training: planted dictionaries (fast), the cache, and the embedded model (slow)."""

from __future__ import annotations

import json

import pytest
import torch

from steerscreen.config import TrainConfig
from steerscreen.errors import SpecError
from steerscreen.pipeline.train import train_saes
from steerscreen.saes import load_sae
from steerscreen.saes.training import evaluate_sae, fit_sae
from tests.tiny_models import tiny_model


def planted(n: int = 24_000, d: int = 16, f: int = 48, k: int = 3, seed: int = 0):
    """Activations that are exact sparse sums of a known dictionary, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(f, d, generator=g), dim=-1)
    idx = torch.stack([torch.randperm(f, generator=g)[:k] for _ in range(n)])
    coef = torch.zeros(n, f).scatter_(1, idx, 1 + torch.rand(n, k, generator=g))
    return coef @ dictionary + 0.5


@pytest.mark.parametrize("arch, extra, min_ev", [
    ("topk", {"k": 3}, 0.65),  # measured 0.71 (an untrained SAE: ~0)
    ("relu", {"l1_coefficient": 0.5}, 0.85),  # measured 0.90
    pytest.param("jumprelu", {"target_l0": 3.0}, 0.85, marks=pytest.mark.xfail(
        strict=True, reason="known gap: on this tiny planted problem (312 steps) JumpReLU still "
        "leaves most features dead; at real scale it meets its targets (docs/benchmarks.md)")),
])
def test_recovers_a_planted_dictionary(arch, extra, min_ev):
    acts = planted()
    cfg = TrainConfig(arch=arch, width=64, epochs=4, batch_size=256, lr=3e-3, **extra)
    sae = fit_sae(cfg, acts[:20_000], "tiny", "blocks.0.hook_resid_post")
    m = evaluate_sae(sae, acts[20_000:])
    assert m["explained_variance"] > min_ev, m
    assert m["mean_l0"] < 24, m
    assert sae.cfg.normalize_activations == "none"  # the input scale is folded in


def test_bad_configs():
    with pytest.raises(SpecError, match="architecture"):
        TrainConfig(arch="gated")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="k=64"):
        TrainConfig(k=64, width=64)
    with pytest.raises(SpecError, match="positive"):
        TrainConfig(tokens=0)
    with pytest.raises(SpecError, match="target_l0"):
        TrainConfig(arch="jumprelu", width=32, target_l0=40.0)


def test_train_saes_saves_caches_and_shares_one_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERSCREEN_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Document {i}. " + "words and more words " * 30
                                  for i in range(40)))
    model = tiny_model("llama")
    base = dict(model="embedded:smollm2-135m", hook="blocks.2.hook_resid_post", width=32, k=4,
                target_l0=4.0,
                tokens=3000, heldout_tokens=500, corpus=f"text:{corpus}", context_len=32,
                epochs=1, batch_size=128)
    configs = [TrainConfig(arch=a, **base) for a in ("topk", "relu", "jumprelu")]
    calls = []
    orig = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k))
    first = train_saes(configs, out=tmp_path / "out", model=model, log=lambda m: None)
    n_forward = len(calls)
    assert n_forward > 0 and [s.cached for s in first] == [False] * 3
    for s in first:
        loaded = load_sae(s.sae_path)
        assert loaded.hook_name == "blocks.2.hook_resid_post"
        assert loaded.d_sae == 32
        summary = json.loads((tmp_path / "cache" / "saes" / s.cache_key /
                              "training_summary.json").read_text())
        assert 0 <= summary["dead_fraction"] <= 1
    second = train_saes(configs, out=tmp_path / "out2", model=model, log=lambda m: None)
    assert len(calls) == n_forward  # served from the cache: no forward pass at all
    assert [s.cached for s in second] == [True] * 3
    a, b = load_sae(first[0].sae_path).sae, load_sae(second[0].sae_path).sae
    assert torch.equal(a.W_dec, b.W_dec)


@pytest.mark.slow
def test_embedded_training_small_budget(tmp_path, monkeypatch):
    """A small TopK SAE on the embedded model and corpus reaches a stated explained variance."""
    monkeypatch.setenv("STEERSCREEN_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(arch="topk", width=512, k=32, tokens=40_000, heldout_tokens=5_000,
                      epochs=4, batch_size=256, context_len=64)
    (s,) = train_saes([cfg], out=tmp_path / "sae", log=lambda m: None)
    assert s.explained_variance >= 0.80, s  # measured 0.925 (2.1% dead)
    assert s.mean_l0 == pytest.approx(32)
    assert s.dead_fraction < 0.5
