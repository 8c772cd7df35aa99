"""What makes the Ray backend exact, checked without Ray: a sharded stats pass equals the merge
(in shard order) of its shards run apart, bit for bit, on every architecture; the steer
outcomes do not depend on torch's thread count; shard states survive their files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from steerscreen.corpus import Contexts
from steerscreen.pipeline import checkpoint
from steerscreen.pipeline.stats_ray import ShardTask, reconcile, shard_bounds, stats_shard
from steerscreen.saes import load_sae
from steerscreen.stats.accumulators import StatsAccumulator, StatsOptions
from steerscreen.stats.collect import collect_stats
from steerscreen.steering.outcomes import RowSums, reduce_direction, total
from tests.stats.test_stage import make_sae
from tests.tiny_models import ARCHS, tiny_model

OPTS = StatsOptions(reservoir_size=5, coact_size=3, max_partners=6, n_examples=3,
                    example_window=4, seed=3)


def _contexts(n: int, t: int = 10, seed: int = 0) -> Contexts:
    ids = np.random.default_rng(seed).integers(2, 60, size=(n, t))
    ids[:, 0] = 1
    return Contexts(ids, np.zeros(n, np.int64), np.zeros(n, np.int64))


def _same_bits(a: StatsAccumulator, b: StatsAccumulator) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, va in sa.items():
        if isinstance(va, torch.Tensor):
            assert va.dtype == sb[k].dtype and torch.equal(va, sb[k]), k
        else:
            assert va == sb[k], k


@pytest.fixture(scope="module")
def sae(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_sae(str(make_sae(tmp_path_factory.mktemp("sae") / "sae",
                                     hook="blocks.1.hook_resid_post")))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_sharded_pass_equals_its_shards_merged_in_order(arch: str, sae) -> None:
    model = tiny_model(arch)
    ctx = _contexts(23)
    kw = dict(options=OPTS, batch_size=3, final_norm_contexts=7)
    whole = collect_stats(model, sae, ctx, "blocks.1.hook_resid_post", shard_contexts=5, **kw)
    merged = None
    for start, stop in shard_bounds(len(ctx), 5):
        part = Contexts(ctx.token_ids[start:stop], ctx.doc_ids[start:stop],
                        ctx.starts[start:stop])
        acc = collect_stats(model, sae, part, "blocks.1.hook_resid_post", ctx_id_offset=start,
                            **{**kw, "final_norm_contexts": 7 - start})
        merged = acc if merged is None else merged.merge(acc)
    assert merged is not None and merged.final_scales.numel() == 7 * 9
    _same_bits(whole, merged)
    # Resuming inside a shard (a checkpoint's next context: a batch boundary, 10 + 3) gives
    # the same bits as well.
    head = collect_stats(model, sae, ctx, "blocks.1.hook_resid_post", shard_contexts=5,
                         stop=13, **kw)
    rest = collect_stats(model, sae, ctx, "blocks.1.hook_resid_post", shard_contexts=5,
                         into=StatsAccumulator.from_state_dict(head.state_dict()), start=13,
                         **kw)
    _same_bits(whole, rest)


def test_another_shard_length_changes_only_the_float_sums_last_bits(sae) -> None:
    model = tiny_model("llama")
    ctx = _contexts(23)
    a = collect_stats(model, sae, ctx, "blocks.1.hook_resid_post", options=OPTS, batch_size=3,
                      shard_contexts=5)
    b = collect_stats(model, sae, ctx, "blocks.1.hook_resid_post", options=OPTS, batch_size=3,
                      shard_contexts=None)
    for name in a.sums:
        torch.testing.assert_close(a.sums[name], b.sums[name], rtol=1e-12, atol=1e-12)
    assert torch.equal(a.reservoir.key, b.reservoir.key)
    assert torch.equal(a.examples.value, b.examples.value)


def test_the_shard_task_runs_a_shard_as_the_pass_would(sae, tmp_path: Path) -> None:
    from tests.reliability.fixtures import save_tiny_llama

    folder = save_tiny_llama(tmp_path / "llama")
    from steerscreen.models import load_model, model_sha256

    model = load_model(f"local:{folder}", "cpu", "float32")
    ctx = _contexts(12, seed=1)
    whole = collect_stats(model, sae, ctx, "blocks.1.hook_resid_post", options=OPTS,
                          batch_size=4, final_norm_contexts=6, shard_contexts=8)
    task = dict(model=f"local:{folder}", dtype="float32", device="cpu",
                trust_remote_code=False, sae=str(sae.path), hook="blocks.1.hook_resid_post",
                model_sha256=model_sha256(model), sae_sha256=sae.sha256,
                options=OPTS.__dict__.copy(), batch_size=4, final_norm_contexts=6,
                task_cpus=1.0)
    states = [stats_shard(ShardTask(index=i, start=s, token_ids=ctx.token_ids[s:e], **task))
              for i, (s, e) in enumerate(shard_bounds(12, 8))]
    merged = StatsAccumulator.from_state_dict(states[0]).merge(
        StatsAccumulator.from_state_dict(states[1]))
    _same_bits(whole, merged)
    # A worker whose files differ from the driver's refuses to run.
    from steerscreen.errors import ArtifactError

    with pytest.raises(ArtifactError, match="differs from the driver's"):
        stats_shard(ShardTask(index=0, start=0, token_ids=ctx.token_ids[:8],
                              **{**task, "model_sha256": "0" * 64}))


def test_shard_states_are_kept_adopted_or_redone(tmp_path: Path) -> None:
    acc = StatsAccumulator(4, 3, OPTS)
    folder = tmp_path / "shards"
    f0 = checkpoint.write_state(folder, "shard-000000", acc, "k", index=0, start=0, stop=8)
    checkpoint.write_state(folder, "shard-000001", acc, "k", index=1, start=8, stop=16)
    f2 = checkpoint.write_state(folder, "shard-000002", acc, "k", index=2, start=16, stop=20)
    (folder / "shard-000002.safetensors").write_bytes(b"damaged")
    (folder / ".shard-000003.json.tmp").write_text("{")
    notes: list[str] = []
    recorded = {"0": {"start": 0, "stop": 8, "files": f0},
                "2": {"start": 16, "stop": 20, "files": f2}}
    bounds = shard_bounds(20, 8)
    kept = reconcile(folder, "k", recorded, bounds, notes.append)
    assert sorted(kept) == ["0", "1"]  # 1: written, not recorded -> adopted; 2: redone
    assert any("adopted" in n for n in notes) and any("damaged" in n for n in notes)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*f0, "shard-000001.json", "shard-000001.safetensors"])
    # Another --shard-contexts cuts other shards: shard 0 = contexts 0..5 now, not 0..8.
    assert reconcile(folder, "k", kept, shard_bounds(20, 5), notes.append) == {}
    assert "another --shard-contexts" in notes[-1]
    checkpoint.write_state(folder, "shard-000000", acc, "k", index=0, start=0, stop=8)
    assert reconcile(folder, "another config", {}, bounds, notes.append) == {}


def test_totals_do_not_depend_on_the_thread_count() -> None:
    x = torch.rand(49_152, generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64) ** 4
    before = torch.get_num_threads()
    try:
        got = {}
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            got[n] = total(x).item()
        assert got[1] == got[2] == got[3]
        torch.testing.assert_close(total(x), x.sum(), rtol=1e-13, atol=0)
    finally:
        torch.set_num_threads(before)


def test_direction_outcomes_do_not_depend_on_the_thread_count() -> None:
    gen = torch.Generator().manual_seed(1)
    c, v, g = 16, 49_152, 40_000  # vocabulary and S' widths past torch's parallel threshold

    def part() -> RowSums:
        rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
        return RowSums(d_nV=rand(c, v) - 0.5, e_nV=rand(c, v) - 0.5, kl_n=rand(c),
                       target_n=rand(c), log_pr_n=rand(c), n_spread_n=rand(c) * 5,
                       w_nG=rand(c, g), w_all_n=rand(c), w_out_n=rand(c),
                       recruited_n=rand(c), suppressed_n=rand(c))

    parts = [part()]
    before = torch.get_num_threads()
    try:
        out = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            out[n] = reduce_direction(parts, np.arange(8), 9).values
        assert out[1] == out[2]
    finally:
        torch.set_num_threads(before)


def test_an_address_where_nothing_listens_fails_at_once() -> None:
    import time

    from steerscreen.errors import SteerscreenError
    from steerscreen.pipeline.cluster import ClusterOptions, connected

    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    t = time.monotonic()
    with pytest.raises(SteerscreenError, match="nothing answers there"), connected(
            ClusterOptions(backend="ray", address="127.0.0.1:1")):
        pass
    assert time.monotonic() - t < 10  # Ray itself retries for minutes
