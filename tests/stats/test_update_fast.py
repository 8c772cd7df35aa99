"""The optimized batch update equals the straightforward one, bit for bit, batch after batch.

Random sparse batches of varying shape, far more firings per feature than the reservoir holds
(so most batches run in the reservoir-full regime, where nearly every firing is rejected), with
and without partner truncation, value ties and reads of the reservoir between batches. Checked
against ``tests/stats/update_reference.py`` (the original dense-block update, every batch) and
against plain-python selection from the list of all firings (at the end).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerscreen.stats import StatsAccumulator, StatsOptions
from steerscreen.stats.accumulators import POS_BITS, _flat_nonzero
from tests.stats.reference import ref_key
from tests.stats.update_reference import reference_update

F, D = 30, 4


def _batches(seed: int, n: int, *, max_l0: int, ties: bool, reuse_ctx: bool = False):
    rng = np.random.default_rng(seed)
    ctx0 = 5
    for i in range(n):
        b, t = int(rng.integers(1, 6)), int(rng.integers(2, 10))
        a = np.zeros((b, t, F), dtype=np.float32)
        for bi in range(b):
            for ti in range(t):
                l0 = int(rng.integers(0, max_l0 + 1))
                on = rng.choice(F, size=l0, replace=False, p=_freq())
                vals = (rng.integers(1, 4, size=l0) * 0.5 if ties
                        else rng.uniform(0.01, 3.0, size=l0))
                a[bi, ti, on] = vals
        if i % 7 == 3:
            a[:] = 0  # a batch with no firings at all
        ids = rng.integers(0, 11, size=(b, t))
        ctx = np.arange(ctx0, ctx0 + b, dtype=np.int64) * 3
        if reuse_ctx:  # not allowed, but it must still match: equal keys, held entries first
            ctx = rng.integers(0, 4, size=b).astype(np.int64)
        ctx0 += b
        extra = dict(
            input_scale_BT=None if i % 2 else torch.from_numpy(
                rng.uniform(0.5, 2, (b, t)).astype(np.float32)),
            resid_BTD=torch.from_numpy(rng.normal(size=(b, t, D)).astype(np.float32)),
            resid_norm_BT=torch.from_numpy(rng.uniform(1, 2, (b, t)).astype(np.float32)))
        yield a, ids, ctx, extra


def _freq() -> np.ndarray:
    p = 1.0 / np.arange(1, F + 1) ** 0.7
    return p / p.sum()


def _assert_identical(a: StatsAccumulator, b: StatsAccumulator) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, va in sa.items():
        if isinstance(va, torch.Tensor):
            assert va.dtype == sb[k].dtype and torch.equal(va, sb[k]), k  # sums too: same bits
        else:
            assert va == sb[k], k


CASES = {
    "topk": (StatsOptions(reservoir_size=8, coact_size=5, max_partners=12, n_examples=3,
                          example_window=4, seed=7), 6, False),
    "truncated": (StatsOptions(reservoir_size=6, max_partners=3, n_examples=4,
                               example_window=3, seed=1), 9, False),
    "ties": (StatsOptions(reservoir_size=5, coact_size=2, max_partners=4, n_examples=2,
                          example_window=2, seed=2), 8, True),
    "wide_partners": (StatsOptions(reservoir_size=7, max_partners=F + 5, n_examples=5,
                                   example_window=1, seed=0), 10, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_update_equals_reference_every_batch(case: str) -> None:
    opts, max_l0, ties = CASES[case]
    fast, ref = StatsAccumulator(F, D, opts), StatsAccumulator(F, D, opts)
    full_seen = False
    for i, (a, ids, ctx, extra) in enumerate(_batches(11, 40, max_l0=max_l0, ties=ties)):
        args = (torch.from_numpy(a), torch.from_numpy(ids), torch.from_numpy(ctx))
        fast.update(*args, **extra)
        reference_update(ref, *args, **extra)
        if i % 5 == 4:  # reading the reservoir mid-stream must not disturb later batches
            _assert_identical(fast, ref)
        full_seen |= bool((fast.n_fire >= 4 * opts.reservoir_size).sum() >= 5)
    _assert_identical(fast, ref)
    assert full_seen  # the reservoir-full regime was exercised


@pytest.mark.parametrize("case", ["topk", "ties"])
def test_update_equals_reference_with_repeated_context_ids(case: str) -> None:
    opts, max_l0, ties = CASES[case]
    fast, ref = StatsAccumulator(F, D, opts), StatsAccumulator(F, D, opts)
    for a, ids, ctx, extra in _batches(4, 25, max_l0=max_l0, ties=ties, reuse_ctx=True):
        args = (torch.from_numpy(a), torch.from_numpy(ids), torch.from_numpy(ctx))
        fast.update(*args, **extra)
        reference_update(ref, *args, **extra)
    _assert_identical(fast, ref)


@pytest.mark.parametrize("case", ["topk", "truncated"])
def test_update_equals_plain_selection(case: str) -> None:
    opts, max_l0, _ = CASES[case]
    r, rc, p, k, w = (opts.reservoir_size, opts.coact_slots, opts.max_partners, opts.n_examples,
                      opts.example_window)
    acc = StatsAccumulator(F, D, opts)
    fir: dict[int, list] = {g: [] for g in range(F)}
    for a, ids, ctx, extra in _batches(5, 30, max_l0=max_l0, ties=False):
        acc.update(torch.from_numpy(a), torch.from_numpy(ids), torch.from_numpy(ctx), **extra)
        for bi, ti, g in zip(*np.nonzero(a[:, 1:] > 0), strict=True):
            t = int(ti) + 1
            row = a[bi, t].copy()
            row[g] = 0
            on = np.nonzero(row > 0)[0]
            parts = sorted(on[np.argsort(-row[on], kind="stable")][:p].tolist())
            win = [int(ids[bi, s]) if s >= 0 else -1 for s in range(t - w + 1, t + 1)]
            fir[int(g)].append(dict(key=ref_key(int(ctx[bi]), t, int(g), opts.seed),
                                    uid=(int(ctx[bi]) << POS_BITS) | t, value=float(a[bi, t, g]),
                                    token=int(ids[bi, t]), partners=parts,
                                    trunc=on.size > p, window=win))
    res, ex = acc.reservoir, acc.examples
    n_full = 0
    for g in range(F):
        n_full += len(fir[g]) >= 4 * r
        kept = sorted(fir[g], key=lambda x: x["key"])[:r]
        n = len(kept)
        assert res.key[g, :n].tolist() == [x["key"] for x in kept]
        assert res.uid[g, :n].tolist() == [x["uid"] for x in kept]
        assert res.value[g, :n].tolist() == [x["value"] for x in kept]
        assert res.token[g, :n].tolist() == [x["token"] for x in kept]
        assert (res.uid[g, n:] == -1).all() and (res.token[g, n:] == -1).all()
        for j in range(rc):
            got = [int(h) for h in res.partners[g, j] if h >= 0]
            assert got == (kept[j]["partners"] if j < n else []), (g, j)
            assert bool(res.truncated[g, j]) == (j < n and kept[j]["trunc"])
        top = sorted(fir[g], key=lambda x: (-x["value"], x["uid"]))[:k]
        m = len(top)
        assert ex.uid[g, :m].tolist() == [x["uid"] for x in top]
        assert ex.value[g, :m].tolist() == [x["value"] for x in top]
        assert ex.window[g, :m].tolist() == [x["window"] for x in top]
        assert (ex.uid[g, m:] == torch.iinfo(torch.int64).max).all()
    assert n_full >= 5
    if case == "truncated":
        assert bool(res.truncated.any())


def test_default_options_topk_batches_equal_reference() -> None:
    """TopK-like batches (exactly k firings per position) at the default R = R_co = 200,
    P = 64, K = 10, W = 16, until most reservoirs are full."""
    g = torch.Generator().manual_seed(3)
    nf, k, opts = 128, 16, StatsOptions()
    logits = (1.0 / torch.arange(1, nf + 1) ** 0.8).log()[torch.randperm(nf, generator=g)]
    fast, ref = StatsAccumulator(nf, D, opts), StatsAccumulator(nf, D, opts)
    for i in range(30):
        u = torch.rand(4, 33, nf, generator=g).clamp_min(1e-12)
        idx = torch.topk(logits - (-u.log()).log(), k, dim=-1).indices
        acts = torch.zeros(4, 33, nf).scatter_(2, idx, torch.rand(4, 33, k, generator=g) + 0.1)
        ids = torch.randint(0, 100, (4, 33), generator=g)
        ctx = torch.arange(4) + 4 * i
        fast.update(acts, ids, ctx, input_scale_BT=torch.ones(4, 33))
        reference_update(ref, acts, ids, ctx, input_scale_BT=torch.ones(4, 33))
    r = opts.reservoir_size
    assert int((fast.n_fire >= r).sum()) >= nf // 2 and int((fast.n_fire >= 2 * r).sum()) >= 32
    _assert_identical(fast, ref)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 64, 1000, 4099])
def test_flat_nonzero_equals_nonzero(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    for p in (0.0, 0.01, 0.3, 1.0):
        mask = torch.rand(n, generator=g) < p
        assert torch.equal(_flat_nonzero(mask), torch.nonzero(mask).squeeze(1))
        assert torch.equal(_flat_nonzero(mask[1:]), torch.nonzero(mask[1:]).squeeze(1))
