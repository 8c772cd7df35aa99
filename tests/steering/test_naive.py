"""Sanity checks of the naive §3 oracle itself, on tiny random models and SAEs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from steerscreen.saes.io import LoadedSAE, encode
from tests.stats.test_collect import make_loaded
from tests.steering.naive import naive_outcomes
from tests.tiny_models import D, tiny_ids, tiny_model

with warnings.catch_warnings():
    warnings.simplefilter("ignore")

F = 48
HOOK = "blocks.1.hook_resid_post"
DOWN = "blocks.3.hook_resid_post"
C, T = 4, 9
TARGETS = np.arange(2, 12)
KEYS = {"effect_stability", "gram", "effect_stability_logit", "collateral_spread",
        "n_spread_positions", "collateral_spread_union", "collateral_mass", "collateral_out",
        "effect_kl", "target_gain", "n_recruited", "n_suppressed", "n_positions", "targets",
        "m"}


def tiny_sae(arch: str = "standard", centre: bool = False) -> LoadedSAE:
    return make_loaded(arch, centre=centre)  # the stats tests' tiny SAE (same weights)


def unit(seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(D)
    return v / np.linalg.norm(v)


def ids(n: int = C, seed: int = 3) -> np.ndarray:
    return tiny_ids(n, T, seed=seed).numpy()


def dose(model, token_ids: np.ndarray, scale: float = 3.0) -> float:
    """``scale`` x the median residual norm at HOOK (positions >= 1)."""
    x = model.forward(torch.as_tensor(token_ids), read=[HOOK], logits=False).acts[HOOK]
    return scale * float(x[:, 1:].norm(dim=-1).median())


# (model arch, SAE arch, centred SAE input)
CASES = [("gpt2", "standard", True), ("llama", "standard", False), ("gemma2", "topk", False)]


@pytest.mark.parametrize("arch,sae_arch,centre", CASES)
def test_zero_strength_is_inert(arch: str, sae_arch: str, centre: bool) -> None:
    model, sae = tiny_model(arch), tiny_sae(sae_arch, centre)
    out = naive_outcomes(model, sae, HOOK, DOWN, unit(), 0.0, ids(), TARGETS)
    assert set(out) == KEYS
    assert out["effect_kl"] == 0.0
    assert out["target_gain"] == 0.0
    assert out["n_recruited"] == 0.0 and out["n_suppressed"] == 0.0
    for key in ("effect_stability", "effect_stability_logit", "collateral_spread",
                "collateral_spread_union", "collateral_mass", "collateral_out"):
        assert math.isnan(out[key]), key
    assert out["n_spread_positions"] == 0
    assert out["n_positions"] == C * (T - 1)
    np.testing.assert_array_equal(out["gram"], np.zeros((C, C)))
    np.testing.assert_array_equal(out["targets"], np.arange(8))  # all P_g tie at 0


@pytest.mark.parametrize("arch,sae_arch,centre", CASES)
def test_positive_strength(arch: str, sae_arch: str, centre: bool) -> None:
    model, sae, tok = tiny_model(arch), tiny_sae(sae_arch, centre), ids()
    out = naive_outcomes(model, sae, HOOK, DOWN, unit(), dose(model, tok), tok, TARGETS)
    assert out["effect_kl"] > 0.0
    gram = out["gram"]
    assert gram.shape == (C, C) and gram.dtype == np.float64
    np.testing.assert_allclose(gram, gram.T, rtol=0, atol=0)
    trace = float(np.trace(gram))  # = sum_c ||d_c||^2
    assert trace > 0.0
    assert np.linalg.eigvalsh(gram).min() >= -1e-12 * trace
    # ||sum_c d_c||^2 is the sum of all Gram entries.
    expected = (gram.sum() - trace) / ((C - 1) * trace)
    assert out["effect_stability"] == pytest.approx(expected, rel=1e-12)
    assert -1.0 / (C - 1) - 1e-12 <= out["effect_stability"] <= 1.0 + 1e-12
    assert out["effect_stability_logit"] <= 1.0 + 1e-12
    assert 0.0 <= out["collateral_out"] <= 1.0
    assert 0.0 <= out["collateral_mass"] <= 1.0
    assert 0 < out["n_spread_positions"] <= out["n_positions"] == C * (T - 1)
    assert 0.0 <= out["collateral_spread"] <= math.log(F - 8) + 1e-12
    assert 0.0 <= out["collateral_spread_union"] <= math.log(F - 8) + 1e-12
    targets = out["targets"]
    assert targets.dtype.kind == "i" and len(set(targets.tolist())) == 8
    assert out["n_recruited"] + out["n_suppressed"] > 0


def test_identical_contexts_are_perfectly_stable() -> None:
    model, sae = tiny_model("llama"), tiny_sae()
    tok = np.repeat(ids(1), C, axis=0)
    out = naive_outcomes(model, sae, HOOK, DOWN, unit(1), dose(model, tok), tok, TARGETS)
    assert out["effect_stability"] == pytest.approx(1.0, abs=1e-9)
    assert out["effect_stability_logit"] == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(out["gram"], out["gram"][0, 0], rtol=1e-9)


def test_one_context_has_no_stability() -> None:
    model, sae = tiny_model("gpt2"), tiny_sae()
    tok = ids(1)
    out = naive_outcomes(model, sae, HOOK, DOWN, unit(), dose(model, tok), tok, TARGETS)
    assert out["effect_kl"] > 0.0 and math.isnan(out["effect_stability"])
    assert out["n_positions"] == T - 1


def test_kl_and_gain_match_a_batched_computation() -> None:
    model, sae, tok = tiny_model("gemma2"), tiny_sae(), ids()
    v, alpha = unit(2), dose(model, tok)
    out = naive_outcomes(model, sae, HOOK, DOWN, v, alpha, tok, TARGETS)
    delta = torch.tensor(alpha * v, dtype=torch.float32)

    def steer(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], x[:, 1:] + delta], dim=1)

    ids_t = torch.as_tensor(tok)
    lp = torch.log_softmax(model.forward(ids_t).logits.double(), -1)[:, 1:]
    lq = torch.log_softmax(model.forward(ids_t, write={HOOK: steer}).logits.double(), -1)[:, 1:]
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    gain = (lq - lp)[..., TARGETS].mean().item()
    assert out["effect_kl"] == pytest.approx(kl, rel=1e-5)  # batched float32 forward
    assert out["target_gain"] == pytest.approx(gain, rel=1e-5, abs=1e-9)


def test_steering_at_the_downstream_hook_is_the_passthrough() -> None:
    """With h' = h the steered residual at h' *is* x' + alpha v, so T_f = the top-8 features by
    total w, and the collateral mass is what is left outside them."""
    model, sae, tok = tiny_model("gemma2"), tiny_sae("topk"), ids()
    v, alpha = unit(3), dose(model, tok)
    out = naive_outcomes(model, sae, DOWN, DOWN, v, alpha, tok, TARGETS)
    x = model.forward(torch.as_tensor(tok), read=[DOWN], logits=False).acts[DOWN][:, 1:]
    delta = torch.tensor(alpha * v, dtype=torch.float32)
    norms = sae.sae.W_dec.double().norm(dim=-1)
    w = ((encode(sae, x + delta) - encode(sae, x)).double().abs() * norms).sum((0, 1)).numpy()
    top = np.argsort(-w, kind="stable")[:8]
    np.testing.assert_array_equal(out["targets"], top)
    assert out["collateral_mass"] == pytest.approx(1.0 - w[top].sum() / w.sum(), rel=1e-6)
