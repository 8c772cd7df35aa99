"""The per-row outcome sums against plain float64 formulas (METHOD §3), on random inputs shaped
as the engine passes them: logits as the ``t >= 1`` slice of a batch (strided), reused work
buffers, and rows of one batch reduced in several runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerscreen.steering import outcomes
from steerscreen.steering.outcomes import (
    active,
    clean_terms,
    downstream_sums,
    kl_sums,
    log_probs,
    logit_sums,
)

R, T, V, G = 5, 7, 300, 40


def _logits(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    full = 3 * torch.randn(R, T + 1, V, generator=g)  # position 0 is dropped, as in the engine
    return full[:, 1:]


def _clean(z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logp = log_probs(z, torch.empty(z.shape))
    return logp, clean_terms(logp)


def test_log_probs_rows_do_not_depend_on_their_batch() -> None:
    z = _logits(0)
    assert not z.is_contiguous()
    whole = log_probs(z, torch.empty(z.shape))
    assert torch.equal(whole, torch.log_softmax(z.contiguous(), -1))  # bit for bit
    for r0, r1 in ((0, 1), (1, 4), (3, 5)):
        assert torch.equal(log_probs(z[r0:r1], torch.empty(r1 - r0, T, V)), whole[r0:r1])
    np.testing.assert_allclose(whole.double().numpy(),
                               torch.log_softmax(z.double(), -1).numpy(), atol=1e-5)


@pytest.fixture(params=["buffered", "blocked-whole", "blocked-3"])
def path(request, monkeypatch) -> bool:
    """The two implementations: whole-tensor passes through work buffers (CUDA's) and blocks
    of positions (CPU's), here with whole rows and with blocks of 3 positions."""
    if request.param == "blocked-3":
        monkeypatch.setattr(outcomes, "_BLOCK_BYTES", 4 * V * 3)
    return request.param != "buffered"


def test_logit_sums_match_float64_formulas(path: bool) -> None:
    z_clean, z = _logits(1), _logits(2)
    z = z_clean + 0.3 * (z - z_clean)  # a moderate steer
    logp, terms = _clean(z_clean)
    targets = torch.randint(0, V, (R, 4), generator=torch.Generator().manual_seed(3))
    work = (torch.full((R + 2, T, V), float("nan")), torch.full((R + 2, T, V), float("nan")))
    runs = [(0, 2), (2, 5)]  # one batch reduced in two runs, through the same buffers
    got = [logit_sums(z[a:b], logp[a:b], {k: v[a:b] for k, v in terms.items()}, targets[a:b],
                      work, blocked=path) for a, b in runs]
    out = {k: torch.cat([g[k] for g in got]).double().numpy() for k in got[0]}

    lp, lq = logp.double(), torch.log_softmax(z.double(), -1)
    dl = lq - lp
    p = lp.exp()
    kl = -(p * dl).sum(-1)  # [R, T]
    g = p.sqrt() * (dl + kl[..., None])
    e = dl - dl.mean(-1, keepdim=True)
    np.testing.assert_allclose(out["kl"], kl.sum(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["d"], g.mean(1).numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out["e"], e.mean(1).numpy(), rtol=1e-4, atol=1e-6)
    tgt = torch.stack([dl[r][:, targets[r]].sum() for r in range(R)])
    np.testing.assert_allclose(out["target"], tgt.numpy(), rtol=1e-5, atol=1e-5)
    kl_only = kl_sums(z, logp, terms, work, blocked=path)
    np.testing.assert_allclose(kl_only.double().numpy(), kl.numpy(), rtol=1e-5, atol=1e-6)


def test_equal_logits_give_exact_zeros(path: bool) -> None:
    z = _logits(4)
    logp, terms = _clean(z)
    out = logit_sums(z, logp, terms, torch.zeros(R, 3, dtype=torch.long), blocked=path)
    for k, v in out.items():
        assert (v == 0).all(), k
    assert (kl_sums(z, logp, terms, blocked=path) == 0).all()


@pytest.mark.parametrize("cached", [False, True])
def test_downstream_sums_match_float64_formulas(cached: bool) -> None:
    gen = torch.Generator().manual_seed(5)

    def acts() -> torch.Tensor:  # TopK-like: 6 of G on, the rest exactly 0
        pre = torch.randn(R, T, G, generator=gen)
        top = torch.topk(pre, 6, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.abs() + 0.1)

    a_s, a_c = acts(), acts()
    a_s[:, 0] = a_c[:, 0]  # a position the steer leaves unchanged: w all zero there
    dec = torch.rand(G, generator=gen) + 0.5
    mask = torch.zeros(R, G, dtype=torch.bool)
    for r in range(R):
        mask[r, torch.randperm(G, generator=gen)[:8]] = True
    on_c = active(a_c) if cached else None
    out = downstream_sums(a_s.clone(), a_c, dec, mask, on_c)

    s, c, d = a_s.double(), a_c.double(), dec.double()
    w_all = (s - c).abs() * d
    w = w_all * (~mask).double()[:, None, :]
    s1, s2 = w.sum(-1), w.square().sum(-1)
    nz = s2 > 0
    log_pr = torch.where(nz, torch.log(s1.square() / s2.clamp_min(1e-300)), 0.0)
    on_s, on_cl = s > 0, c > 0
    np.testing.assert_allclose(out["w"].double().numpy(), w.sum(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["w_out"].double().numpy(), s1.sum(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["w_all"].double().numpy(), w_all.sum((1, 2)).numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(out["log_pr"].double().numpy(), log_pr.sum(1).numpy(), rtol=1e-5)
    assert out["n_spread"].tolist() == nz.sum(1).tolist() and (nz.sum(1) < T).all()
    assert out["recruited"].tolist() == (on_s & ~on_cl).sum((1, 2)).double().tolist()
    assert out["suppressed"].tolist() == (~on_s & on_cl).sum((1, 2)).double().tolist()
    assert active(a_c).dtype == torch.float32 and set(active(a_c).unique().tolist()) == {0.0, 1.0}
