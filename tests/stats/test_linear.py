"""The linear-response columns (docs/method.md §1, ``lin_*``) against a naive per-direction
computation: one ``jvp`` of the model's own logits per direction, the §3 outcome formulas at
first order in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import jvp

from steerscreen.stats.linear import LinearForms, eager_attention, linear_columns, linearise
from tests.tiny_models import ARCHS, tiny_ids, tiny_model

HOOK = "blocks.1.hook_resid_post"


def naive(model, ids_CT: torch.Tensor, v: torch.Tensor, top_ids: torch.Tensor) -> dict:
    """The lin_* values of one unit direction, from u_ct = d logits / d alpha (one jvp)."""
    hp = model.hook_point(HOOK)
    x = model.forward(ids_CT, read=[hp], logits=False).acts[HOOK]
    t = ids_CT.shape[1]
    tang = torch.zeros_like(x)
    tang[:, 1:] = v
    with eager_attention(model):
        z, u = jvp(lambda x_: model.forward(ids_CT, start_at=(hp, x_), logits_from=1).logits,
                   (x,), (tang,))
    z, u = z.double(), u.double()
    p = torch.softmax(z, -1)
    uc = u - (p * u).sum(-1, keepdim=True)
    a = p.sqrt() * uc  # [C, T-1, V]
    d = a.mean(1)  # d_c
    s, e = d.sum(0).square().sum(), d.square().sum()
    c = ids_CT.shape[0]
    m = d.mean(0)
    m2 = m.square()
    out = 1 - torch.topk(m2, min(20, m2.numel())).values.sum() / m2.sum()
    gain = uc[:, :, top_ids].mean()
    assert t - 1 == a.shape[1]
    return {"lin_stability": float((s - e) / ((c - 1) * e)),
            "lin_kl": float(torch.log(0.5 * a.square().sum(-1).mean())),
            "lin_collateral_out": float(out), "lin_target_gain": float(gain)}


@pytest.mark.parametrize("arch", ARCHS)
def test_columns_match_a_naive_jvp_per_direction(arch):
    model = tiny_model(arch)
    ids = tiny_ids(4, 10, seed=3)
    forms = linearise(model, HOOK, ids, tangent_batch=7)  # batches that do not divide d
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(5, model.d_model, generator=g)
    dirs[1] *= 100.0  # not unit: columns use v / ||v||
    top = torch.topk(model.unembed().direct_logits(dirs / dirs.norm(dim=1, keepdim=True)),
                     10, dim=1).indices
    cols = linear_columns(forms, dirs, top, chunk=2)
    for k in range(dirs.shape[0]):
        want = naive(model, ids, dirs[k] / dirs[k].norm(), top[k])
        for name, w in want.items():
            assert cols[name][k] == pytest.approx(w, rel=1e-4, abs=1e-6), (arch, name, k)


def test_partial_state_resumes_to_the_same_forms(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model("llama")
    ids = tiny_ids(4, 10, seed=5)
    full = linearise(model, HOOK, ids)
    saved = []
    linearise(model, HOOK, ids[:2], on_context=lambda f: saved.append(
        {k: v.clone() for k, v in f.state().items()}))
    save_file(saved[-1], tmp_path / "partial.safetensors")
    part = LinearForms.from_state(load_file(tmp_path / "partial.safetensors"))
    assert part.n_contexts == 2 and not part.finished
    resumed = linearise(model, HOOK, ids, forms=part)
    for name in ("M_sum", "M_ctx", "M_pos", "A_mean", "B"):
        torch.testing.assert_close(getattr(resumed, name), getattr(full, name))


def test_columns_are_invariant_to_the_decoder_row_scale():
    model = tiny_model("gemma2")
    forms = linearise(model, HOOK, tiny_ids(3, 8))
    dirs = torch.randn(6, model.d_model)
    top = torch.topk(model.unembed().direct_logits(dirs), 10, dim=1).indices
    a = linear_columns(forms, dirs, top)
    b = linear_columns(forms, dirs * torch.tensor([0.01, 1, 3, 100, 7, 0.5])[:, None], top)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6)
    assert np.allclose(forms.kl_rate(dirs), np.exp(a["lin_kl"]))


def test_a_model_without_attention_kernel_change_is_restored():
    model = tiny_model("llama")
    cfg = model.model.config
    cfg._attn_implementation = "sdpa"
    linearise(model, HOOK, tiny_ids(2, 6))
    assert cfg._attn_implementation == "sdpa"
