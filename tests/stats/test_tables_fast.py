"""The table-building fast paths give exactly what the straightforward computations give.

Grouped counts (dense grid vs sorted keys), top-by-count (packed keys vs lexsort), the
co-activation columns through either counting path, de-duplicated decoding, and the
direct-logit top tokens.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from steerscreen.models.hooks import Unembed
from steerscreen.stats import StatsOptions, activation
from steerscreen.stats.activation import grouped_counts, top_by_count
from steerscreen.stats.coactivation import coactivation_columns
from steerscreen.stats.logits import LogitColumns, logit_columns
from steerscreen.stats.table import decode_rows, logit_token_table
from tests.stats.synthetic import accumulate, make_data


def _pairs(seed: int, n: int, n_groups: int, n_values: int):
    rng = np.random.default_rng(seed)
    g = np.sort(rng.integers(0, n_groups, n))
    v = rng.zipf(1.5, n) % n_values  # heavy repeats: counts tie and differ
    return g, v.astype(np.int32)


def _force(monkeypatch, path: str) -> None:
    if path == "sort":
        monkeypatch.setattr(activation, "DENSE_FACTOR", 0)
        monkeypatch.setattr(activation, "DENSE_MIN_CELLS", 0)
    else:
        monkeypatch.setattr(activation, "DENSE_MIN_CELLS", 1 << 40)


@pytest.mark.parametrize("path", ["dense", "sort"])
@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_counts_equal_a_counter(monkeypatch, path: str, seed: int) -> None:
    _force(monkeypatch, path)
    g, v = _pairs(seed, 3000, 17, 50)
    gc = grouped_counts(g, v)
    want = sorted(Counter(zip(g.tolist(), v.tolist(), strict=True)).items())
    assert list(zip(gc.group.tolist(), gc.value.tolist(), strict=True)) == [k for k, _ in want]
    assert gc.count.tolist() == [c for _, c in want]
    assert gc.group.dtype == gc.value.dtype == gc.count.dtype == np.int64
    same = grouped_counts(g, v, n_values=64)  # a wider span gives the same pairs
    assert all(np.array_equal(a, b) for a, b in zip(gc, same, strict=True))


def test_grouped_counts_empty(monkeypatch) -> None:
    gc = grouped_counts(np.zeros(0, np.int64), np.zeros(0, np.int32))
    assert all(x.size == 0 for x in gc)


def _top_reference(gc, n_groups: int, k: int) -> np.ndarray:
    out = np.full((n_groups, k), -1, dtype=np.int64)
    for grp in range(n_groups):
        m = gc.group == grp
        items = sorted(zip(gc.value[m].tolist(), gc.count[m].tolist(), strict=True),
                       key=lambda vc: (-vc[1], vc[0]))[:k]
        out[grp, :len(items)] = [vv for vv, _ in items]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_by_count_packed_keys(seed: int) -> None:
    g, v = _pairs(seed, 2000, 13, 40)
    gc = grouped_counts(g, v)
    assert np.array_equal(top_by_count(gc, 15, 4), _top_reference(gc, 15, 4))  # 2 empty groups


def test_top_by_count_lexsort_fallback() -> None:
    # Values near 2^52 leave no room to pack (group, count, value) into 63 bits.
    g, v = _pairs(3, 2000, 9, 30)
    gc = grouped_counts(g, v)
    big = gc._replace(value=gc.value + (1 << 52))
    got = top_by_count(big, 9, 5)
    want = _top_reference(big, 9, 5)
    assert np.array_equal(got, want) and (got >= 1 << 52).any()


@pytest.fixture(scope="module")
def acc_and_dec():
    data = make_data()
    acc = accumulate(data, StatsOptions(reservoir_size=20, coact_size=12, max_partners=40,
                                        seed=3))
    return acc, torch.from_numpy(data.W_dec)


@pytest.mark.parametrize("chunk", [4096, 7])
def test_coactivation_counting_paths_agree(monkeypatch, acc_and_dec, chunk: int) -> None:
    acc, W_dec = acc_and_dec
    dense = coactivation_columns(acc, W_dec, chunk=chunk)
    _force(monkeypatch, "sort")
    by_sort = coactivation_columns(acc, W_dec, chunk=chunk)
    assert np.isfinite(dense["coact_max_cond"]).any()
    for name, col in dense.items():
        np.testing.assert_array_equal(col, by_sort[name], err_msg=name)


class _ListTokenizer:
    """Duck-typed: batch_decode of lists only, records its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def batch_decode(self, seqs):
        assert isinstance(seqs, list) and all(isinstance(s, list) for s in seqs)
        self.calls += 1
        return ["|".join(f"t{i}" for i in s) for s in seqs]


def _windows(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 6, (300, 5)).astype(np.int32)
    w[rng.random(300) < 0.5] = w[0]  # many repeated rows
    pad = rng.integers(0, 5, 300)
    w[np.arange(5)[None, :] < pad[:, None]] = -1  # a -1 prefix of 0..4
    return w


def test_decode_rows_equals_one_batch_decode() -> None:
    w = _windows()
    tok = _ListTokenizer()
    got = decode_rows(tok, w)
    want = _ListTokenizer().batch_decode([[int(t) for t in r if t >= 0] for r in w])
    assert got == want
    assert tok.calls <= 5  # one call per padding length
    assert decode_rows(tok, w[:0]) == []
    with pytest.raises(ValueError, match="padded"):
        decode_rows(tok, np.array([[1, -1, 2]]))


def test_decode_rows_with_a_hugging_face_tokenizer() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "the": 1, "cat": 2, "##s": 3, "sat": 4, ".": 5}
    t = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    t.decoder = tokenizers.decoders.WordPiece()
    tok = PreTrainedTokenizerFast(tokenizer_object=t)
    w = _windows(1)
    want = tok.batch_decode([[int(x) for x in r if x >= 0] for r in w])
    assert decode_rows(tok, w) == want
    assert decode_rows(tok, w[:, -1:]) == tok.batch_decode([[int(r[-1])] for r in w])
    # A tokenizer whose decode is not batched falls back to batch_decode.
    batched = tok.decode
    object.__setattr__(tok, "decode", lambda *a, **kw: "not a batch" if a else batched(**kw))
    assert decode_rows(tok, w) == want


@pytest.mark.parametrize("centre", [False, True])
def test_logit_top_tokens_are_the_top_direct_logits(centre: bool) -> None:
    rng = np.random.default_rng(5)
    F, D, V = 23, 6, 40
    W_dec = torch.tensor(rng.normal(size=(F, D)), dtype=torch.float32)
    un = Unembed(W_U=torch.tensor(rng.normal(size=(D, V)), dtype=torch.float32),
                 gain=torch.tensor(1 + 0.3 * rng.normal(size=D), dtype=torch.float32),
                 centre=centre, norm="layernorm" if centre else "rmsnorm", eps=1e-5,
                 softcap=None)
    lc = logit_columns(W_dec, un, alpha=3.0, sigma_fin=2.0, chunk=5)
    assert isinstance(lc, LogitColumns)
    assert set(lc) == {"base_direct", "logit_pr", "logit_top10_energy", "logit_kurtosis",
                       "logit_trigger_overlap"} and lc["base_direct"] is lc.columns["base_direct"]
    assert set(lc.dose) == {"logit_entropy", "logit_top10_mass"}
    assert logit_columns(W_dec, un, chunk=5).dose == {}  # no dose, no diagnostics
    dl = un.direct_logits(W_dec / W_dec.norm(dim=1, keepdim=True))
    top = torch.topk(dl, 10, dim=1)
    assert np.array_equal(lc.top_ids, top.indices.numpy())
    np.testing.assert_allclose(lc.top_dl, top.values.double().numpy(), rtol=1e-6)
    assert (np.diff(lc.top_dl, axis=1) <= 0).all()
    np.testing.assert_allclose(lc["base_direct"], np.log(dl.double().norm(dim=1).numpy()),
                               rtol=1e-6)
    df = logit_token_table(lc)
    assert df.columns == ["feature", "rank", "token_id", "dl"] and df.height == F * 10
    first = df.filter(df["rank"] == 0)
    assert first["token_id"].to_list() == lc.top_ids[:, 0].tolist()
    assert first["feature"].to_list() == list(range(F))
