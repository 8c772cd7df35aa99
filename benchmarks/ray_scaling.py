"""Ray scale-out: the stats and steer stages with 1 and 2 Ray workers, and locally, side by side.

Issue 8's benchmark. For each backend it runs the real CLI in a fresh process (``stats`` into a
new run folder, then ``steer`` in it), on the same model, SAEs, corpus and config:

  local  = ``--backend local`` (one process; torch uses every core)
  ray-1  = ``--backend ray --workers 1`` (a local Ray instance with 1 CPU: one task at a time,
           1 torch thread)
  ray-2  = ``--backend ray --workers 2`` (2 CPUs: two tasks at a time, 1 thread each)

and reports each stage's wall time (the whole command: start-up, loading, Ray's start and the
workers' model loads included) and its own compute time (the stage's ``pass`` / ``steer``
timing in the manifest), the ratios ray-1 / ray-2 (the speed-up from the second worker) and
local / ray-2, and whether every table equals the local backend's bit for bit.

    .venv/bin/python benchmarks/ray_scaling.py --sae runs/bench-tk/topk \\
        --down-sae runs/topk-l16 --out runs/bench-ray
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

TABLES = {"stats": ("feature_stats.parquet", "feature_examples.parquet",
                    "feature_logit_tokens.parquet"),
          "steer": ("steering_outcomes.parquet", "steering_gram.parquet", "contexts.parquet")}
BACKENDS = {"local": [], "ray-1": ["--backend", "ray", "--workers", "1"],
            "ray-2": ["--backend", "ray", "--workers", "2"]}
STAGE_TIMING = {"stats": "pass", "steer": "steer"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", required=True, help="SAE folder (the stats and steering SAE)")
    ap.add_argument("--down-sae", required=True, help="S' folder (a later hook)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-ray"))
    ap.add_argument("--model", default="embedded:smollm2-135m")
    ap.add_argument("--corpus", default="embedded")
    ap.add_argument("--tokens", type=int, default=16_000, help="stats tokens")
    ap.add_argument("--shard-contexts", type=int, default=128,
                    help="stats contexts per shard (default: 2 shards of the 254 contexts)")
    ap.add_argument("--features", type=int, default=40)
    ap.add_argument("--random-directions", type=int, default=8)
    ap.add_argument("--contexts", type=int, default=16)
    ap.add_argument("--shard-directions", type=int, default=4)
    ap.add_argument("--batch-rows", type=int, default=16)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    args = ap.parse_args()

    stats = ["stats", "--sae", args.sae, "--model", args.model, "--corpus", args.corpus,
             "--tokens", str(args.tokens), "--shard-contexts", str(args.shard_contexts)]
    steer = ["steer", "--downstream-sae", args.down_sae, "--features", str(args.features),
             "--random-directions", str(args.random_directions), "--contexts",
             str(args.contexts), "--fresh-contexts", "0", "--strengths", "0.25",
             "--shard-directions", str(args.shard_directions), "--batch-rows",
             str(args.batch_rows)]
    rows: dict[str, dict[str, float]] = {}
    for name in args.backends.split(","):
        run = args.out / name
        shutil.rmtree(run, ignore_errors=True)
        rows[name] = {}
        for stage, cmd in (("stats", [*stats, "--out", str(run)]),
                           ("steer", [*steer, "--run", str(run)])):
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "steerscreen.cli", *cmd,
                                   *BACKENDS[name]], capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
                return 1
            rec = json.loads((run / "manifest.json").read_text())["stages"][stage]
            rows[name][f"{stage}_wall"] = wall
            rows[name][f"{stage}_compute"] = rec["timings_s"][STAGE_TIMING[stage]]
            print(f"{name:6s} {stage:5s} wall {wall:7.1f} s  {STAGE_TIMING[stage]} "
                  f"{rows[name][f'{stage}_compute']:7.1f} s", flush=True)

    print(f"\nmachine: {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}")
    print(f"stats: {args.tokens:,} tokens, shards of {args.shard_contexts} contexts; steer: "
          f"{args.features} features + {args.random_directions} random x {args.contexts} "
          f"contexts, {args.shard_directions} directions per shard")
    print(f"\n{'stage':6s} {'time':8s} " + " ".join(f"{n:>8s}" for n in rows)
          + "  ray-1/ray-2  local/ray-2")
    for stage in ("stats", "steer"):
        for kind in ("wall", "compute"):
            v = {n: r[f"{stage}_{kind}"] for n, r in rows.items()}
            line = f"{stage:6s} {kind:8s} " + " ".join(f"{x:8.1f}" for x in v.values())
            if "ray-1" in v and "ray-2" in v:
                line += f"  {v['ray-1'] / v['ray-2']:11.2f}"
            if "local" in v and "ray-2" in v:
                line += f"  {v['local'] / v['ray-2']:11.2f}"
            print(line)
    if "local" in rows:
        for name in rows:
            if name == "local":
                continue
            same = all(pl.read_parquet(args.out / "local" / t).equals(
                pl.read_parquet(args.out / name / t), null_equal=True)
                for ts in TABLES.values() for t in ts)
            print(f"tables of {name} equal local's bit for bit: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
