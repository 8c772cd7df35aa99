"""Micro-benchmark of ``StatsAccumulator.update``: seconds per batch on TopK-like activations.

Synthetic batches stand in for a TopK SAE on the stats pass (B = 16 contexts x T = 64 tokens,
exactly k = 32 distinct firing features per position drawn without replacement from power-law
frequencies, positive values), fed with everything ``collect_stats`` passes (input scale,
residual of width ``--d-model``, residual norms). Each feature-width runs ``--batches`` batches
through one accumulator, so the reservoirs go from empty to (for the common features) full, as
in a 100K-token stats pass (~100 batches); per-batch times are reported for the first and last
``--window`` batches and overall. ``--impl reference`` times the original update
(``tests/stats/update_reference.py``) instead; ``--impl both`` alternates the two on the same
batches (two accumulators) and checks that their states agree bit for bit.

    .venv/bin/python benchmarks/stats_update_micro.py                   # F = 4096 and 32768
    .venv/bin/python benchmarks/stats_update_micro.py --impl both --features 4096 --batches 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from steerscreen.stats.accumulators import StatsAccumulator, StatsOptions


def power_law_logits(n_features: int, exponent: float, gen: torch.Generator) -> torch.Tensor:
    """log firing propensity per feature (power law in a random feature order)."""
    p = 1.0 / torch.arange(1, n_features + 1, dtype=torch.float64) ** exponent
    return p.log().float()[torch.randperm(n_features, generator=gen)]


def topk_batch(gen: torch.Generator, logits: torch.Tensor, b: int, t: int, k: int,
               vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense [b, t, F] activations with exactly k firing features per position (TopK-like)."""
    f = logits.numel()
    u = torch.rand(b, t, f, generator=gen).clamp_min_(1e-12)
    idx = torch.topk(logits - (-u.log()).log(), k, dim=-1).indices  # Gumbel top-k: no repeats
    acts = torch.zeros(b, t, f)
    acts.scatter_(2, idx, 0.1 + torch.rand(b, t, k, generator=gen).exp())
    return acts, torch.randint(0, vocab, (b, t), generator=gen)


def run(f: int, args, impls: list[str]) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    logits = power_law_logits(f, args.zipf, gen)
    opts = StatsOptions()
    accs = {name: StatsAccumulator(f, args.d_model, opts) for name in impls}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for i in range(args.batches):
        acts, ids = topk_batch(gen, logits, args.batch_size, args.context_len, args.k, 50_000)
        resid = torch.randn(args.batch_size, args.context_len, args.d_model, generator=gen)
        kw = dict(input_scale_BT=torch.ones(args.batch_size, args.context_len),
                  resid_BTD=resid, resid_norm_BT=resid.norm(dim=-1))
        ctx = torch.arange(args.batch_size) + i * args.batch_size
        for name in impls if i % 2 == 0 else impls[::-1]:  # alternate who goes first
            t0 = time.perf_counter()
            if name == "optimized":
                accs[name].update(acts, ids, ctx, **kw)
            else:
                reference_update(accs[name], acts, ids, ctx, **kw)
            times[name].append(time.perf_counter() - t0)
    out = {}
    w = min(args.window, args.batches)
    for name, ts in times.items():
        acc = accs[name]
        out[name] = dict(first=statistics.mean(ts[:w]), last=statistics.mean(ts[-w:]),
                         mean=statistics.mean(ts), median=statistics.median(ts),
                         full=int((acc.n_fire >= opts.reservoir_size).sum()))
    if len(impls) == 2:
        sa, sb = (accs[n].state_dict() for n in impls)
        out["identical"] = all(torch.equal(v, sb[k]) if isinstance(v, torch.Tensor)
                               else v == sb[k] for k, v in sa.items())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, nargs="+", default=[4096, 32768])
    ap.add_argument("--batches", type=int, default=100, help="batches per feature width")
    ap.add_argument("--window", type=int, default=10, help="batches in the first/last means")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--context-len", type=int, default=64)
    ap.add_argument("--k", type=int, default=32, help="firing features per position")
    ap.add_argument("--d-model", type=int, default=576, help="residual width (SmolLM2: 576)")
    ap.add_argument("--zipf", type=float, default=0.8, help="power-law exponent of frequencies")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--impl", choices=["optimized", "reference", "both"], default="optimized")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    impls = ["optimized", "reference"] if args.impl == "both" else [args.impl]
    if "reference" in impls:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        global reference_update
        from tests.stats.update_reference import reference_update
    print(f"B={args.batch_size} T={args.context_len} k={args.k} D={args.d_model} "
          f"threads={args.threads}, {args.batches} batches per width")
    for f in args.features:
        res = run(f, args, impls)
        for name in impls:
            r = res[name]
            print(f"F={f:6d} {name:9s} s/batch: first {args.window} {r['first']:.4f}  "
                  f"last {args.window} {r['last']:.4f}  mean {r['mean']:.4f}  "
                  f"median {r['median']:.4f}  (full reservoirs at end: {r['full']})")
        if "identical" in res:
            print(f"F={f:6d} states identical: {res['identical']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
