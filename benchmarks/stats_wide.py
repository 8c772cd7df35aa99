"""Wide-SAE stats parts: time and peak memory of geometry and co-activation at Llama Scope 32x.

Issue 3's second benchmark. A synthetic SAE with F = 131,072 features and d = 4096 (random
float32 ``W_enc`` and ``W_dec``, 2 GiB each) and synthetic sparse activations (mean L0 ~ 50,
power-law firing frequencies so that common features fill their reservoirs) stand in for
Llama Scope 32x. Measured, each part with its own peak RSS (``VmHWM``, reset before each part
through ``/proc/self/clear_refs``; elsewhere the process peak so far):

1. geometry: ``geometry_columns`` (tiled decoder-neighbour cosines, encoder-decoder cosine,
   principal-subspace share, mean-residual cosine). The all-pairs cosines cost ``2 F^2 d``
   FLOP (1.4e14 at full size, 20+ minutes on 2 cores), so ``--query-rows N`` runs N query rows
   against all F keys and extrapolates the neighbour search linearly to all F rows; the rest of
   the function runs in full. Both numbers are printed, labelled.
2. co-activation: the ``StatsAccumulator`` update (reservoir, partner sets, examples, counts) on
   ``--tokens`` synthetic tokens, then the ``coact_*`` and ``act_*`` column computation.

Also printed: the accumulator's analytic size (``StatsOptions.memory_bytes``). Target: everything
fits in 24 GiB. The process's address space is capped (``RLIMIT_AS``) at ``--limit-gib``
(default 24) or at the memory available at start, whichever is smaller, so a part that does not
fit fails cleanly (reported as out of memory) instead of waking the OOM killer.

    .venv/bin/python benchmarks/stats_wide.py                         # full size, 4096 query rows
    .venv/bin/python benchmarks/stats_wide.py --features 8192 --d-model 512 \\
        --query-rows 512 --tokens 2048                                 # smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import steerscreen.stats.geometry as geometry
from steerscreen.stats.accumulators import StatsAccumulator, StatsOptions
from steerscreen.stats.activation import activation_columns
from steerscreen.stats.coactivation import coactivation_columns

GiB = 2**30


def _status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_gib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20


def rss_gib() -> float:
    kib = _status_kib("VmRSS")
    return float("nan") if kib is None else kib / 2**20


@contextmanager
def part(name: str, results: dict):
    gc.collect()
    exact = reset_peak()
    start_rss = rss_gib()
    t = time.perf_counter()
    rec: dict = {}
    yield rec
    rec.update(seconds=time.perf_counter() - t, peak_rss_gib=peak_gib(),
               rss_at_start_gib=start_rss, peak_is_per_part=exact)
    results[name] = rec


def power_law_cdf(n_features: int, exponent: float) -> torch.Tensor:
    p = 1.0 / torch.arange(1, n_features + 1, dtype=torch.float64) ** exponent
    return torch.cumsum(p / p.sum(), 0).float()


def synthetic_batch(gen: torch.Generator, cdf: torch.Tensor, perm: torch.Tensor, b: int, t: int,
                    l0: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense activations [b, t, F] (as an SAE returns them) with ~l0 firings per token."""
    f = perm.numel()
    idx = torch.searchsorted(cdf, torch.rand(b, t, l0, generator=gen)).clamp_max(f - 1)
    acts = torch.zeros(b, t, f)
    acts.scatter_(2, perm[idx], 0.1 + torch.rand(b, t, l0, generator=gen).exp())
    return acts, torch.randint(0, vocab, (b, t), generator=gen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=131_072)
    ap.add_argument("--d-model", type=int, default=4096)
    ap.add_argument("--query-rows", type=int, default=4096,
                    help="decoder rows timed against all keys (0 or >= F: all rows)")
    ap.add_argument("--block", type=int, default=4096, help="cosine tile size")
    ap.add_argument("--tokens", type=int, default=20_000, help="synthetic tokens")
    ap.add_argument("--l0", type=int, default=50, help="firings per token")
    ap.add_argument("--zipf", type=float, default=0.8, help="power-law exponent of frequencies")
    ap.add_argument("--context-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16, help="contexts per update")
    ap.add_argument("--reservoir-size", type=int, default=200)
    ap.add_argument("--coact-size", type=int, default=None)
    ap.add_argument("--max-partners", type=int, default=64)
    ap.add_argument("--device", default="cpu",
                    help="device for the geometry part (cuda: the GPU timing, full size)")
    ap.add_argument("--skip-geometry", action="store_true")
    ap.add_argument("--skip-coact", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-gib", type=float, default=24.0,
                    help="address-space cap (0: none); also capped at the available memory")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    # CUDA reserves a huge address space: no RLIMIT_AS cap on a GPU run.
    limit = (cap_memory(args.limit_gib) if args.limit_gib > 0 and args.device == "cpu"
             else None)

    f, d = args.features, args.d_model
    q = f if args.query_rows <= 0 else min(args.query_rows, f)
    opts = StatsOptions(reservoir_size=args.reservoir_size, coact_size=args.coact_size,
                        max_partners=args.max_partners, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    res: dict = {"features": f, "d_model": d, "query_rows": q, "block": args.block,
                 "address_space_cap_gib": limit,
                 "tokens": args.tokens, "l0": args.l0, "torch_threads": torch.get_num_threads(),
                 "platform": platform.platform(),
                 "accumulator_bytes": opts.memory_bytes(f, d), "parts": {}}
    print(f"synthetic SAE F={f:,} d={d:,} (W_enc + W_dec {2 * 4 * f * d / GiB:.2f} GiB float32); "
          f"torch threads {torch.get_num_threads()}; accumulator state (analytic) "
          f"{res['accumulator_bytes'] / GiB:.2f} GiB; address space capped at "
          f"{'none' if limit is None else f'{limit:.1f} GiB'}", flush=True)
    try:
        run_parts(args, res, gen, opts, f, d, q)
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "alloc" not in str(e).lower():
            raise
        res["out_of_memory"] = f"{type(e).__name__}: {str(e)[:200]}"
        print(f"OUT OF MEMORY under the {limit} GiB cap: {res['out_of_memory']}")
    report(res, f, q)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


def cap_memory(limit_gib: float) -> float:
    """Cap the address space at min(limit, available memory - 0.5 GiB) -> the cap in GiB."""
    avail = _meminfo_kib("MemAvailable")
    cap = limit_gib if avail is None else min(limit_gib, avail / 2**20 - 0.5)
    resource.setrlimit(resource.RLIMIT_AS, (int(cap * GiB), resource.RLIM_INFINITY))
    return cap


def _meminfo_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def run_parts(args, res: dict, gen: torch.Generator, opts: StatsOptions, f: int, d: int,
              q: int) -> None:
    t = time.perf_counter()
    W_dec = torch.randn(f, d, generator=gen)
    W_enc = torch.randn(d, f, generator=gen) if not args.skip_geometry else None
    res["weights_seconds"] = time.perf_counter() - t
    res["rss_after_weights_gib"] = rss_gib()

    if not args.skip_geometry:
        # Residual moments for geom_pc_share / geom_mean_resid_cos: a low-rank-plus-noise
        # residual through the accumulator's own moment update (not timed as geometry).
        moments = StatsAccumulator(1, d, StatsOptions(reservoir_size=1))
        basis = torch.randn(d, 16, generator=gen)
        for _ in range(4):
            z = torch.randn(8, 65, 16, generator=gen) @ basis.T + torch.randn(8, 65, d,
                                                                              generator=gen)
            moments.update(torch.zeros(8, 65, 1), torch.zeros(8, 65, dtype=torch.long),
                           torch.arange(8), resid_BTD=z)
        timing: dict = {}
        real = geometry.decoder_neighbours
        dev = torch.device(args.device)
        if dev.type == "cuda":
            W_dec_g, W_enc_g = W_dec.to(dev), W_enc.to(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        else:
            W_dec_g, W_enc_g = W_dec, W_enc

        def sliced(W, **kw):  # the library's tiles, for the first q query rows only
            t0 = time.perf_counter()
            nb = real(W, **kw, query=(0, q))
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            timing["neighbours_s"] = time.perf_counter() - t0
            pad, at = f - q, nb.max_cos.device
            return geometry.Neighbours(
                torch.cat([nb.max_cos, torch.full((pad,), float("nan"), device=at)]),
                torch.cat([nb.top_mean_cos, torch.full((pad,), float("nan"), device=at)]),
                torch.cat([nb.n_above, torch.zeros(pad, dtype=torch.int64, device=at)]),
                torch.cat([nb.top_idx, torch.zeros((pad, nb.top_idx.shape[1]),
                                                   dtype=torch.int64, device=at)]))

        geometry.decoder_neighbours = sliced
        try:
            with part("geometry", res["parts"]) as rec:
                geometry.geometry_columns(moments, W_enc_g, W_dec_g, block=args.block)
        finally:
            geometry.decoder_neighbours = real
        if dev.type == "cuda":
            rec["device"] = torch.cuda.get_device_name(dev)
            rec["gpu_peak_allocated_gib"] = torch.cuda.max_memory_allocated(dev) / GiB
        del W_dec_g, W_enc_g
        rest = rec["seconds"] - timing["neighbours_s"]
        rec |= {"neighbours_measured_s": timing["neighbours_s"], "query_rows": q,
                "neighbours_extrapolated_s": timing["neighbours_s"] * f / q,
                "other_columns_s": rest,
                "total_extrapolated_s": timing["neighbours_s"] * f / q + rest,
                "flop_all_pairs": 2.0 * f * f * d}
        del W_enc, moments
        gc.collect()

    if not args.skip_coact:
        cdf = power_law_cdf(f, args.zipf)
        perm = torch.randperm(f, generator=gen)  # frequency rank -> feature index
        b, tlen = args.batch_size, args.context_len
        n_batches = max(1, -(-args.tokens // (b * tlen)))
        with part("coact_update", res["parts"]) as rec:
            acc = StatsAccumulator(f, d, opts)
            gen_s = 0.0
            for i in range(n_batches):
                t0 = time.perf_counter()
                acts, ids = synthetic_batch(gen, cdf, perm, b, tlen, args.l0, 50_000)
                gen_s += time.perf_counter() - t0
                acc.update(acts, ids, torch.arange(b) + i * b)
                del acts
            rec["synthetic_data_s"] = gen_s
        rec["seconds"] -= rec["synthetic_data_s"]
        n_tok = n_batches * b * tlen
        n_fire = acc.n_fire
        rec |= {"tokens": n_tok, "tokens_per_s": n_tok / rec["seconds"],
                "mean_l0": float(n_fire.sum()) / (n_batches * b * (tlen - 1)),
                "alive": int((n_fire > 0).sum()),
                "full_reservoirs": int((n_fire >= opts.reservoir_size).sum())}
        with part("coact_columns", res["parts"]) as rec:
            coactivation_columns(acc, W_dec)
            activation_columns(acc)


def report(res: dict, f: int, q: int) -> None:
    print()
    print(f"{'part':46s}{'seconds':>12s}{'peak RSS GiB':>14s}")
    parts = res["parts"]
    if "geometry" in parts:
        g = parts["geometry"]
        print(f"{'geometry_columns, as run (' + str(q) + ' query rows)':46s}"
              f"{g['seconds']:12.1f}{g['peak_rss_gib']:14.2f}")
        print(f"{'  neighbour cosines, measured (' + str(q) + ' rows)':46s}"
              f"{g['neighbours_measured_s']:12.1f}")
        print(f"{'  neighbour cosines, EXTRAPOLATED to all rows':46s}"
              f"{g['neighbours_extrapolated_s']:12.1f}")
        print(f"{'  other geom columns (all rows, measured)':46s}{g['other_columns_s']:12.1f}")
        print(f"{'geometry total, EXTRAPOLATED':46s}{g['total_extrapolated_s']:12.1f}")
    if "coact_update" in parts:
        u, c = parts["coact_update"], parts["coact_columns"]
        label = f"accumulator update ({u['tokens']:,} tokens)"
        print(f"{label:46s}{u['seconds']:12.1f}{u['peak_rss_gib']:14.2f}")
        print(f"{'  tokens/s':46s}{u['tokens_per_s']:12.0f}")
        print(f"{'coact_* + act_* columns':46s}{c['seconds']:12.1f}{c['peak_rss_gib']:14.2f}")
        print(f"mean L0 {u['mean_l0']:.1f}, alive {u['alive']:,}, full reservoirs "
              f"{u['full_reservoirs']:,} of {f:,}")
    peak = max((p["peak_rss_gib"] for p in parts.values()), default=float("nan"))
    res["peak_rss_gib"] = peak
    exact = all(p["peak_is_per_part"] for p in parts.values())
    print(f"accumulator state (analytic): {res['accumulator_bytes'] / GiB:.2f} GiB; largest peak "
          f"RSS {peak:.2f} GiB ({'per part' if exact else 'process peak'}); fits 24 GiB: "
          f"{'yes' if peak < 24 and 'out_of_memory' not in res else 'NO'}")


if __name__ == "__main__":
    sys.exit(main())
