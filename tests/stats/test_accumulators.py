"""Accumulators: the hash, exact merging, examples, truncation, saving, memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from steerscreen.stats import StatsAccumulator, StatsOptions, examples_table, feature_stats
from steerscreen.stats.accumulators import POS_BITS, firing_keys, splitmix64
from tests.stats.reference import M64, signed, sm64
from tests.stats.synthetic import accumulate, make_data

OPTS = StatsOptions(reservoir_size=20, coact_size=12, max_partners=40, n_examples=4,
                    example_window=5, seed=3)


@pytest.fixture(scope="module")
def data():
    return make_data()


def test_splitmix64_matches_unsigned_reference() -> None:
    x = torch.randint(-(2**62), 2**62, (500,), dtype=torch.int64) * 3 + 1
    got = splitmix64(x).tolist()
    assert got == [signed(sm64(int(v) & M64)) for v in x.tolist()]


def test_keys_are_distinct_within_a_feature() -> None:
    uid = torch.arange(50_000, dtype=torch.int64)
    k = firing_keys(uid, torch.full_like(uid, 7), seed=0)
    assert torch.unique(k).numel() == uid.numel()


def _assert_same_state(a: StatsAccumulator, b: StatsAccumulator) -> None:
    a.fold(), b.fold()  # a shard ends where a state is compared (merges fold too)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, va in sa.items():
        vb = sb[k]
        if k in ("sum_act", "sum_act_raw", "sum_resid", "sum_resid_sq"):  # float64 sums
            torch.testing.assert_close(va, vb, rtol=1e-12, atol=1e-9, msg=k)
        elif isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), k  # counts, reservoir, examples: bit for bit
        else:
            assert va == vb, k


def test_merge_of_halves_equals_whole(data) -> None:
    whole = accumulate(data, OPTS, batch=5)
    rows = np.random.default_rng(2).permutation(data.a.shape[0])
    half1 = accumulate(data, OPTS, rows=rows[:11], batch=3)
    half2 = accumulate(data, OPTS, rows=rows[11:], batch=4)
    _assert_same_state(whole, half1.merge(half2))
    _assert_same_state(whole, half2.merge(half1))
    W_enc, W_dec = torch.from_numpy(data.W_enc), torch.from_numpy(data.W_dec)
    t1 = feature_stats(whole, W_enc, W_dec)
    t2 = feature_stats(half2.merge(half1), W_enc, W_dec)
    for name in t1.columns:
        np.testing.assert_allclose(t1[name].to_numpy().astype(float),
                                   t2[name].to_numpy().astype(float), rtol=1e-10, atol=1e-12,
                                   equal_nan=True, err_msg=name)


def test_merge_is_associative_over_many_shards(data) -> None:
    whole = accumulate(data, OPTS, batch=24)
    shards = [accumulate(data, OPTS, rows=r, batch=2) for r in np.array_split(
        np.arange(data.a.shape[0]), 5)]
    merged = shards[0]
    for s in shards[1:]:
        merged = merged.merge(s)
    _assert_same_state(whole, merged)


def test_merge_refuses_other_options(data) -> None:
    a = StatsAccumulator(40, 12, OPTS)
    with pytest.raises(ValueError):
        a.merge(StatsAccumulator(40, 12, StatsOptions(reservoir_size=21)))


def test_examples_are_the_top_firings_with_windows(data) -> None:
    acc = accumulate(data, OPTS)
    df = examples_table(acc)
    B, T, _ = data.a.shape
    for f in (0, 10, 30):
        fir = [(-float(data.a[b, t, f]), (int(data.ctx[b]) << POS_BITS) | t, b, t)
               for b in range(B) for t in range(1, T) if data.a[b, t, f] > 0]
        fir.sort()
        rows = df.filter(df["feature"] == f).sort("rank")
        assert rows.height == min(4, len(fir))
        for (negv, _uid, b, t), row in zip(fir, rows.iter_rows(named=True), strict=False):
            assert row["value"] == pytest.approx(-negv)
            assert row["context_id"] == data.ctx[b] and row["position"] == t
            assert row["token_ids"] == data.ids[b, max(0, t - 4):t + 1].tolist()


def test_ties_between_identical_contexts_break_by_uid(data) -> None:
    # Contexts 4 and 5 are copies: equal values, so the smaller context id must rank first.
    acc = accumulate(data, StatsOptions(n_examples=48, reservoir_size=5))
    df = examples_table(acc)
    lo, hi = sorted([int(data.ctx[4]), int(data.ctx[5])])
    for f in range(40):
        rows = df.filter((df["feature"] == f) & df["context_id"].is_in([lo, hi]))
        for pos in set(rows["position"].to_list()):
            ranks = rows.filter(rows["position"] == pos).sort("context_id")["rank"].to_list()
            if len(ranks) == 2:
                assert ranks[0] < ranks[1]


def test_partner_truncation_keeps_the_largest(data) -> None:
    acc = accumulate(data, StatsOptions(reservoir_size=20, max_partners=2, seed=3))
    res = acc.reservoir
    n_co = acc.n_reservoir
    checked = 0
    for f in (0, 1, 2):
        for j in range(int(n_co[f])):
            uid = int(res.uid[f, j])
            b = int(np.nonzero(data.ctx == uid >> POS_BITS)[0][0])
            t = uid & ((1 << POS_BITS) - 1)
            row = data.a[b, t].copy()
            row[f] = 0
            on = np.nonzero(row > 0)[0]
            want = sorted(on[np.argsort(-row[on], kind="stable")][:2].tolist())
            got = [int(g) for g in res.partners[f, j] if g >= 0]
            assert got == want
            assert bool(res.truncated[f, j]) == (on.size > 2)
            checked += on.size > 2
    assert checked > 0
    df = feature_stats(acc, torch.from_numpy(data.W_enc), torch.from_numpy(data.W_dec))
    assert np.nanmax(df["coact_truncated_share"].to_numpy()) > 0


def test_state_dict_round_trip(data, tmp_path: Path) -> None:
    acc = accumulate(data, OPTS)
    torch.save(acc.state_dict(), tmp_path / "shard.pt")
    again = StatsAccumulator.from_state_dict(torch.load(tmp_path / "shard.pt"))
    _assert_same_state(acc, again)


def test_memory_formula_matches_the_state(data) -> None:
    acc = accumulate(data, OPTS)
    nbytes = sum(v.numel() * v.element_size() for v in acc.state_dict().values()
                 if isinstance(v, torch.Tensor))
    n_fin = acc.final_scales.numel()
    assert OPTS.memory_bytes(40, 12, n_fin) == nbytes


def test_position_zero_is_ignored() -> None:
    acc = StatsAccumulator(3, 2, StatsOptions(reservoir_size=2))
    a = torch.zeros(1, 4, 3)
    a[0, 0] = 5.0  # BOS fires everything: must not count
    a[0, 2, 1] = 1.0
    acc.update(a, torch.tensor([[1, 2, 3, 4]]), torch.tensor([0]))
    assert acc.n_fire.tolist() == [0, 1, 0] and acc.n_positions == 3
