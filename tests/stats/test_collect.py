"""The stats pass on a tiny random model and SAEs of every type (and layer_norm input)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from steerscreen.corpus import Contexts
from steerscreen.saes.io import LoadedSAE, SAEInput
from steerscreen.stats import StatsOptions, TableOptions
from steerscreen.stats.collect import collect_stats, stats_table
from tests.tiny_models import D, tiny_ids, tiny_model

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

F = 48
HOOK = "blocks.1.hook_resid_post"
LAST = "blocks.3.hook_resid_post"
OPTS = StatsOptions(reservoir_size=6, max_partners=F, n_examples=3, example_window=4, seed=1)


def make_loaded(arch: str, norm: str = "none", centre: bool = False) -> LoadedSAE:
    common: dict[str, Any] = dict(d_in=D, d_sae=F, normalize_activations=norm)
    if arch == "standard":
        sae: Any = StandardSAE(StandardSAEConfig(**common))
    elif arch == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    else:
        sae = TopKSAE(TopKSAEConfig(k=5, **common))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(0.02 + 0.2 * torch.rand(p.shape, generator=gen))
            elif name == "b_enc":
                p.copy_(-0.3 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    sae.eval().requires_grad_(False)
    return LoadedSAE(sae=sae, spec="test", path=None, hook_name=HOOK, model_name=None,
                     input=SAEInput(centre=centre), sha256="", architecture=arch)


CASES = {
    "standard": ("llama", "standard", "none", False),
    "jumprelu": ("llama", "jumprelu", "none", False),
    "topk": ("llama", "topk", "none", False),
    "topk_layer_norm": ("llama", "topk", "layer_norm", False),
    "gpt2_centred": ("gpt2", "standard", "none", True),
}


def contexts(n: int = 10, length: int = 12) -> Contexts:
    ids = tiny_ids(n, length, seed=5).numpy()
    return Contexts(token_ids=ids, doc_ids=np.arange(n), starts=np.zeros(n, dtype=np.int64))


def reference(model, loaded: LoadedSAE, ctx: Contexts, n_final: int):
    """base_freq, base_mag (via SAELens decode, raw units) and sigma_fin, computed directly."""
    ids = torch.as_tensor(ctx.token_ids)
    out = model.forward(ids, read=[HOOK, LAST], logits=False)
    x = out.acts[HOOK][:, 1:].reshape(-1, D).float()
    if loaded.input.centre:
        x = x - x.mean(-1, keepdim=True)
    sae = loaded.sae
    with torch.no_grad():
        a = sae.encode(x)
        freq, mag = [], []
        for f in range(F):
            on = a[:, f] > 0
            freq.append(math.log10(on.sum().item() / a.shape[0]) if on.any() else math.nan)
            if not on.any():
                mag.append(math.nan)
                continue
            only = torch.zeros_like(a)
            only[:, f] = a[:, f]
            sae.encode(x)  # layer_norm SAEs keep the batch's scale for decode
            with_f = sae.decode(only)
            sae.encode(x)
            base = sae.decode(torch.zeros_like(a))
            mag.append(math.log10((with_f - base).norm(dim=-1)[on].mean().item()))
    fin = out.acts[LAST][:n_final, 1:].float()
    un = model.unembed()
    if un.norm == "rmsnorm":
        s = torch.sqrt(fin.pow(2).mean(-1) + un.eps)
    else:
        s = torch.sqrt(fin.var(-1, unbiased=False) + un.eps)
    s = np.sort(s.reshape(-1).numpy())
    return np.array(freq), np.array(mag), float(s[(s.size - 1) // 2])


@pytest.mark.parametrize("case", list(CASES))
def test_pass_matches_direct_computation(case: str) -> None:
    arch, sae_arch, norm, centre = CASES[case]
    model = tiny_model(arch)
    loaded = make_loaded(sae_arch, norm, centre)
    ctx = contexts()
    acc = collect_stats(model, loaded, ctx, HOOK, options=OPTS, batch_size=4,
                        final_norm_contexts=5)
    freq, mag, sigma = reference(model, loaded, ctx, 5)
    df = stats_table(acc, loaded, model, TableOptions(n_components=4))
    assert 3 < np.isfinite(freq).sum() < F or case == "topk"  # some dead, some alive
    np.testing.assert_allclose(df["base_freq"].to_numpy(), freq, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(df["base_mag"].to_numpy(), mag, rtol=1e-4, atol=1e-5,
                               equal_nan=True)
    assert acc.sigma_fin() == pytest.approx(sigma, rel=1e-5)
    alive = ~df["dead"].to_numpy()
    for name in ("logit_pr", "logit_top10_energy", "logit_kurtosis", "base_direct",
                 "logit_trigger_overlap", "geom_pc_share", "act_burstiness"):
        assert np.isfinite(df[name].to_numpy()[alive]).all(), name
    assert df["dead"].to_numpy().sum() == np.isnan(freq).sum()

    # Two shards with corpus-wide ids merge into the whole.
    half = Contexts(ctx.token_ids[:6], ctx.doc_ids[:6], ctx.starts[:6])
    rest = Contexts(ctx.token_ids[6:], ctx.doc_ids[6:], ctx.starts[6:])
    a1 = collect_stats(model, loaded, half, HOOK, options=OPTS, batch_size=3,
                       final_norm_contexts=5)
    a2 = collect_stats(model, loaded, rest, HOOK, options=OPTS, batch_size=4,
                       final_norm_contexts=0, ctx_id_offset=6)
    merged = a1.merge(a2)
    for key in ("n_fire", "n_ctx_fire", "reservoir.key", "reservoir.partners", "examples.uid",
                "final_scales"):
        assert torch.equal(merged.state_dict()[key], acc.state_dict()[key]), key
