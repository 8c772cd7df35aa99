"""Greedy steered continuations: the KV-cached path against a naive recomputation, strength 0,
the 2x dose, and ``steered_text.parquet`` appended idempotently."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from steerscreen.files import sha256_file
from steerscreen.pipeline.generate import card_features, run_generations
from steerscreen.pipeline.runs import RunDir
from steerscreen.steering.generate import greedy, logprob_rise, unit_direction
from tests.stats.test_stage import HOOK
from tests.steering.test_stage import base, fresh_run, steer  # noqa: F401 (fixture)
from tests.tiny_models import tiny_ids, tiny_model

N = 8


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def _naive(model, prompts: torch.Tensor, shift_RD: torch.Tensor | None, n: int):
    """Greedy by full recomputation: one hooked forward of the whole sequence per token, the
    steering edit written as docs/method.md §2 states it (positions >= 1, float32)."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[:, 1:] = (x[:, 1:].float() + shift_RD.unsqueeze(1)).to(x.dtype)
        return y

    seq, lps = prompts.clone(), []
    for _ in range(n):
        write = {HOOK: edit} if shift_RD is not None else {}
        z = model.forward(seq, write=write).logits[:, -1].double()
        lp = torch.log_softmax(z, -1)
        nxt = lp.argmax(-1, keepdim=True)
        lps.append(lp.gather(1, nxt))
        seq = torch.cat([seq, nxt], 1)
    return seq[:, prompts.shape[1]:], torch.cat(lps, 1)


def test_kv_cached_greedy_equals_naive_recomputation(model) -> None:
    prompts = tiny_ids(3, 6, seed=4)
    W = torch.randn(5, model.d_model, generator=torch.Generator().manual_seed(0))
    shift = torch.stack([8.0 * unit_direction(W, f) for f in (0, 1, 2)])
    for s in (None, shift):
        got = greedy(model, HOOK, prompts, s, N)
        ids, lp = _naive(model, prompts, s, N)
        assert torch.equal(got.token_ids, ids)
        np.testing.assert_allclose(got.logprob.numpy(), lp.numpy(), atol=1e-4)
    clean = greedy(model, HOOK, prompts, None, N)
    assert not torch.equal(clean.token_ids, greedy(model, HOOK, prompts, shift, N).token_ids)
    # The rise: the steered log-prob minus the clean model's on the same steered prefix.
    steered = greedy(model, HOOK, prompts, shift, N)
    seq = torch.cat([prompts, steered.token_ids], 1)
    z = model.forward(seq).logits[:, prompts.shape[1] - 1:-1].double()
    lp_clean = torch.log_softmax(z, -1).gather(2, steered.token_ids.unsqueeze(-1))[..., 0]
    np.testing.assert_allclose(logprob_rise(model, prompts, steered).numpy(),
                               (steered.logprob.double() - lp_clean).numpy(), atol=1e-4)


def test_alpha_zero_continues_exactly_as_clean(model) -> None:
    prompts = tiny_ids(3, 6, seed=5)
    v = unit_direction(torch.randn(3, model.d_model), 1)
    clean = greedy(model, HOOK, prompts, None, N)
    zero = greedy(model, HOOK, prompts, 0.0 * v.expand(3, -1), N)
    assert torch.equal(clean.token_ids, zero.token_ids)
    assert torch.equal(clean.logprob, zero.logprob)
    # The clean side is an uncached forward: equal up to the cache's rounding.
    assert logprob_rise(model, prompts, zero).abs().max() < 1e-5


def test_steered_text_table_is_appended_idempotently(base) -> None:  # noqa: F811
    out = fresh_run(base, "generate")
    steer(base, out, strengths=[0.6], fresh_contexts=3)
    feats = card_features(out)
    assert len(feats) == 4  # 2 cleanest + 2 least clean of the 4 steered features
    kw = dict(model=base["model"], sae=base["sae"], new_tokens=6, prompt_tokens=5)
    res = run_generations(out, feats[:2], **kw)
    assert res.generated == feats[:2] and res.tokens == 3 * 6 + 2 * 2 * 3 * 6
    df = pl.read_parquet(res.path)
    assert df.height == 2 * 3 * 3
    assert df["condition"].to_list()[:9] == ["clean", "1x", "2x"] * 3  # prompt by prompt
    # The dose: the outcome row's alpha; 2x is exactly twice it.
    outcomes = pl.read_parquet(out / RunDir.STEERING_OUTCOMES).filter(
        pl.col("context_set") == "fresh")
    ctx = pl.read_parquet(out / RunDir.CONTEXTS).filter(pl.col("set") == "fresh")
    prompts = torch.tensor([r[:5] for r in ctx.sort("context_id")["token_ids"].to_list()][:3])
    for f in feats[:2]:
        rows = df.filter(pl.col("feature") == f)
        a = outcomes.filter(pl.col("feature") == f)["alpha"][0]
        one = rows.filter(pl.col("condition") == "1x")
        two = rows.filter(pl.col("condition") == "2x")
        assert (one["alpha"] == a).all() and (two["alpha"] == 2 * a).all()
        ref = greedy(base["model"], HOOK, prompts,
                     (2 * a * unit_direction(base["sae"].sae.W_dec, f)).expand(3, -1), 6)
        assert two.sort("prompt")["token_ids"].to_list() == ref.token_ids.tolist()
        assert all(len(t) == 6 for t in rows["logprob_rise"].to_list())
    assert rows["prompt_ids"].to_list()[0] == prompts[0].tolist()
    first = sha256_file(res.path)
    again = run_generations(out, feats[:2], **kw)
    assert again.generated == [] and sha256_file(res.path) == first
    more = run_generations(out, feats[:3], **kw)
    assert more.generated == [feats[2]] and more.tokens == 2 * 3 * 6  # clean reused
    df2 = pl.read_parquet(res.path)
    assert df2.height == 3 * 3 * 3
    assert df2.filter(pl.col("feature").is_in(feats[:2])).equals(df)
    gen = json.loads((out / RunDir.MANIFEST).read_text())["generation"]
    assert gen["n_features"] == 3 and gen["tokens"] == res.tokens + more.tokens
