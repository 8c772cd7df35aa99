"""Stats-pass overhead: the full stats pass against the bare cost it cannot avoid.

Issue 3's benchmark. In one process, on the same stats-split contexts that ``steerscreen stats``
uses, it times

  (a) bare  = model forward up to the hook (``logits=False``) + SAE ``encode``, every batch;
  (b) stats = ``collect_stats`` (the same forwards and encodes plus every accumulator, and the
      ``final_norm_contexts`` that run to the end of the model for sigma_fin) + building the
      ``feature_stats``, ``feature_examples`` and ``feature_logit_tokens`` tables (as the stage
      does).

The contexts are cut into ``--chunks`` chunks; each chunk is timed under (a) and (b) back to
back, alternating which goes first, so both see the same machine state (caches, clocks, other
load). (b) continues one accumulator across chunks (``collect_stats(into=...)``), so it is
exactly one stats pass. Target (issue 3): ratio (b)/(a) <= 1.25 for SmolLM2 + a 4096-feature
SAE at layer 12 over 100K tokens.

    .venv/bin/python benchmarks/stats_overhead.py --sae runs/topk            # the full benchmark
    .venv/bin/python benchmarks/stats_overhead.py --sae runs/topk --tokens 5000   # smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from steerscreen.corpus import Contexts, load_corpus
from steerscreen.models import load_model
from steerscreen.pipeline.stats import (
    StatsConfig,
    example_rows,
    logit_token_rows,
    stats_contexts,
)
from steerscreen.saes import encode, load_sae, validate_pairing
from steerscreen.stats.accumulators import StatsAccumulator, StatsOptions
from steerscreen.stats.collect import collect_stats, stats_tables
from steerscreen.stats.table import TableOptions


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def sub(ctx: Contexts, i0: int, i1: int) -> Contexts:
    return Contexts(ctx.token_ids[i0:i1], ctx.doc_ids[i0:i1], ctx.starts[i0:i1])


@torch.no_grad()
def bare(model, loaded, ctx: Contexts, hook: str, batch_size: int) -> None:
    ids = torch.as_tensor(ctx.token_ids)
    for i in range(0, len(ids), batch_size):
        out = model.forward(ids[i:i + batch_size], read=[hook], logits=False)
        encode(loaded, out.acts[hook])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", required=True, help="SAE folder (e.g. from train-sae)")
    ap.add_argument("--model", default="embedded:smollm2-135m")
    ap.add_argument("--hook", default=None, help="default: the SAE's hook")
    ap.add_argument("--corpus", default="text:../shared/data/wikitext2_raw_test.txt")
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--context-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunks", type=int, default=8, help="interleaving chunks")
    ap.add_argument("--final-norm-contexts", type=int, default=32,
                    help="contexts run to the end of the model for sigma_fin (as `stats`)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    cfg = StatsConfig(sae=args.sae, model=args.model, hook=args.hook, corpus=args.corpus,
                      tokens=args.tokens, context_len=args.context_len,
                      batch_size=args.batch_size, seed=args.seed,
                      final_norm_contexts=args.final_norm_contexts)
    t = time.perf_counter()
    model = load_model(cfg.model, cfg.device, cfg.dtype)
    loaded = load_sae(cfg.sae)
    hp = validate_pairing(loaded, model, cfg.hook)
    ctx, _ = stats_contexts(cfg, load_corpus(cfg.corpus), model)
    load_s = time.perf_counter() - t
    rss_loaded = peak_rss_gib()
    n_tok = ctx.n_tokens
    print(f"model {model.name} ({model.n_layers} layers, d {model.d_model}), SAE "
          f"{loaded.architecture} {loaded.d_sae} features at {hp.name}; {len(ctx)} contexts x "
          f"{cfg.context_len} = {n_tok:,} tokens; torch threads {torch.get_num_threads()}; "
          f"loaded in {load_s:.1f} s", flush=True)

    # Warm-up (not timed): first-call costs of both paths.
    warm = sub(ctx, 0, cfg.batch_size)
    bare(model, loaded, warm, hp.name, cfg.batch_size)
    collect_stats(model, loaded, warm, hp, options=StatsOptions.of(cfg), batch_size=cfg.batch_size,
                  final_norm_contexts=cfg.batch_size)

    acc = StatsAccumulator(loaded.d_sae, loaded.d_in, StatsOptions.of(cfg),
                           device=loaded.sae.W_enc.device)
    per = -(-len(ctx) // max(1, args.chunks))
    per = -(-per // cfg.batch_size) * cfg.batch_size  # whole batches per chunk
    t_bare = t_pass = 0.0
    for j, i0 in enumerate(range(0, len(ctx), per)):
        chunk = sub(ctx, i0, i0 + per)
        order = ("bare", "stats") if j % 2 == 0 else ("stats", "bare")
        for what in order:
            t = time.perf_counter()
            if what == "bare":
                bare(model, loaded, chunk, hp.name, cfg.batch_size)
                t_bare += time.perf_counter() - t
            else:
                collect_stats(model, loaded, chunk, hp, batch_size=cfg.batch_size,
                              final_norm_contexts=max(0, cfg.final_norm_contexts - i0),
                              ctx_id_offset=i0, into=acc)
                t_pass += time.perf_counter() - t
        print(f"  chunk {j + 1}: {i0 + len(chunk)}/{len(ctx)} contexts, bare {t_bare:.1f} s, "
              f"stats pass {t_pass:.1f} s", flush=True)
    t = time.perf_counter()
    tables = stats_tables(acc, loaded, model, TableOptions(
        neighbour_threshold=cfg.neighbour_threshold, n_components=cfg.n_components))
    table = tables.stats
    examples = example_rows(acc, ctx, model, cfg.decode_examples)
    logit_tokens = logit_token_rows(tables.logit_tokens, model)
    t_table = time.perf_counter() - t
    t_stats = t_pass + t_table
    ratio = t_stats / t_bare
    res = {
        "model": model.name, "sae": str(args.sae), "sae_features": loaded.d_sae,
        "hook": hp.name, "tokens": n_tok, "contexts": len(ctx), "batch_size": cfg.batch_size,
        "final_norm_contexts": cfg.final_norm_contexts,
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "bare_s": t_bare, "stats_pass_s": t_pass, "table_s": t_table, "stats_s": t_stats,
        "bare_tok_per_s": n_tok / t_bare, "stats_tok_per_s": n_tok / t_stats,
        "ratio": ratio, "ratio_pass_only": t_pass / t_bare,
        "residual_norm": acc.residual_norm(), "sigma_fin": acc.sigma_fin(),
        "alive": int((~table["dead"]).sum()), "example_rows": examples.height,
        "logit_token_rows": logit_tokens.height,
        "accumulator_bytes": StatsOptions.of(cfg).memory_bytes(
            loaded.d_sae, loaded.d_in, int(acc.final_scales.numel()),
            int(acc.resid_norms.numel())),
        "peak_rss_after_load_gib": rss_loaded, "peak_rss_gib": peak_rss_gib(),
    }
    print()
    print(f"{'':28s}{'seconds':>10s}{'tokens/s':>12s}")
    print(f"{'(a) bare: forward + encode':28s}{t_bare:10.2f}{n_tok / t_bare:12.0f}")
    print(f"{'(b) stats pass':28s}{t_pass:10.2f}{n_tok / t_pass:12.0f}")
    print(f"{'    + tables':28s}{t_table:10.2f}")
    print(f"{'(b) total':28s}{t_stats:10.2f}{n_tok / t_stats:12.0f}")
    print(f"ratio (b)/(a) = {ratio:.3f}   (pass only {t_pass / t_bare:.3f}; target <= 1.25)")
    print(f"alive {res['alive']}/{loaded.d_sae}, r = {res['residual_norm']:.4g}, sigma_fin = "
          f"{res['sigma_fin']:.4g}; accumulator {res['accumulator_bytes'] / 2**20:.0f} MiB; "
          f"peak RSS {res['peak_rss_gib']:.2f} GiB (after loading {rss_loaded:.2f} GiB)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
