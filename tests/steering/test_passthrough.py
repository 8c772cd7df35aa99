"""base_pass: the affine/activation split of each SAE type, and the fast path against a loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steerscreen.saes.io import encode
from steerscreen.steering import passthrough as pt
from tests.stats.test_collect import make_loaded
from tests.tiny_models import D

CASES = [("standard", "none", False), ("jumprelu", "none", False), ("topk", "none", False),
         ("standard", "none", True), ("topk", "layer_norm", False)]


@pytest.mark.parametrize(("arch", "norm", "centre"), CASES)
def test_split_encoder_reproduces_encode(arch, norm, centre) -> None:
    loaded = make_loaded(arch, norm, centre)
    split = pt.split_encoder(loaded)
    if norm != "none":
        assert split is None  # a runtime normalisation is not affine: no fast path
        return
    assert split is not None
    x = 3 * torch.randn(50, D)
    v = torch.randn(D)
    torch.testing.assert_close(split.act(split.pre(x)), encode(loaded, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.pre(x + v), split.pre(x) + split.lin(v[None]),
                               rtol=1e-4, atol=1e-4)


def loop_pr(loaded, x, v, alpha) -> float:
    """ln PR of P_g = mean_n |a'(x_n + alpha v) - a'(x_n)| ||W'_dec[g]||, one direction."""
    a0 = encode(loaded, x).double().numpy()
    a1 = encode(loaded, x + alpha * v).double().numpy()
    P = np.abs(a1 - a0).mean(0) * loaded.sae.W_dec.detach().double().norm(dim=1).numpy()
    return math.log(P.sum() ** 2 / (P**2).sum()) if (P**2).sum() > 0 else math.nan


@pytest.mark.parametrize(("arch", "norm", "centre"), CASES)
def test_passthrough_pr_matches_a_loop(arch, norm, centre) -> None:
    loaded = make_loaded(arch, norm, centre)
    g = torch.Generator().manual_seed(2)
    x = 3 * torch.randn(40, D, generator=g)
    dirs = torch.randn(7, D, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    got = pt.passthrough_pr(loaded, x, dirs, 2.0, budget_elems=3 * 40 * 48)  # 3 per chunk
    want = np.array([loop_pr(loaded, x, dirs[i], 2.0) for i in range(7)])
    np.testing.assert_allclose(got, want, rtol=1e-4, equal_nan=True)
    assert np.isfinite(got).any()


def test_zero_dose_has_no_passthrough() -> None:
    loaded = make_loaded("standard")
    got = pt.passthrough_pr(loaded, torch.randn(10, D), torch.eye(D)[:3], 0.0)
    assert np.isnan(got).all()


@pytest.mark.parametrize(("arch", "norm", "centre"), CASES[:3] + CASES[4:])
def test_lin_pass_matches_a_per_direction_jvp(arch, norm, centre) -> None:
    """lin_pass: each direction transported to h' by its own jvp of the model, then the
    base_pass loop on the transported vectors."""
    from torch.func import jvp

    from steerscreen.stats.linear import downstream_tangents, eager_attention
    from tests.tiny_models import tiny_ids, tiny_model

    model = tiny_model("gemma3")
    hook, down_hook = "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"
    ids = tiny_ids(2, 9, seed=4)
    x, K = downstream_tangents(model, hook, down_hook, ids, tangent_batch=5)
    n = 12  # positions: the first 12 of 2 x 8
    x, K = x.reshape(-1, D)[:n], K.reshape(-1, D, D)[:n]
    loaded = make_loaded(arch, norm, centre)
    g = torch.Generator().manual_seed(3)
    dirs = torch.randn(4, D, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    got = pt.transported_pr(loaded, x, K, dirs, 2.0, budget_elems=2 * n * 48)
    h = model.forward(ids, read=[hook], logits=False).acts[hook]
    for i in range(4):
        v = dirs[i] / dirs[i].norm()
        tang = torch.zeros_like(h)
        tang[:, 1:] = v
        with eager_attention(model):
            _, w = jvp(lambda x_: model.forward(ids, read=[down_hook], logits=False,
                                                start_at=(hook, x_)).acts[down_hook], (h,), (tang,))
        w = w[:, 1:].reshape(-1, D)[:n]
        a0 = encode(loaded, x).double()
        a1 = encode(loaded, x + 2.0 * w).double()
        P = (a1 - a0).abs().mean(0) * loaded.sae.W_dec.detach().double().norm(dim=1)
        want = math.log(P.sum() ** 2 / (P**2).sum()) if (P**2).sum() > 0 else math.nan
        assert got[i] == pytest.approx(want, rel=1e-4, nan_ok=True), (arch, i)
