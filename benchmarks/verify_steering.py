"""Reproduce a finished steer stage's outcomes with the independent naive oracle.

Reads only what the run folder records: the contexts (``contexts.parquet``), the model, SAE and
downstream-SAE specs, the hooks and ``alpha`` (``manifest.json``). For a few directions it
recomputes every METHOD §3 outcome with ``tests/steering/naive.py`` (one plain hooked forward
per context, clean and steered, formulas in numpy float64) and prints the largest differences
against ``steering_outcomes.parquet``.

    .venv/bin/python benchmarks/verify_steering.py --run RUN --directions 3
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests/

from tests.steering.naive import naive_outcomes

from steerscreen.models import load_model
from steerscreen.pipeline.runs import RunDir
from steerscreen.saes import load_sae
from steerscreen.steering import OUTCOME_COLUMNS
from steerscreen.steering.sampling import random_directions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--directions", type=int, default=3, help="features checked (+1 random)")
    ap.add_argument("--context-set", default="steering")
    args = ap.parse_args(argv)

    run = RunDir(args.run)
    m = run.read_manifest()
    stats, steer = m["stages"]["stats"], m["stages"]["steer"]
    model = load_model(stats["config"]["model"])
    sae = load_sae(stats["config"]["sae"])
    down = load_sae(steer["config"]["downstream_sae"])
    hook, down_hook = m["hook"], m["downstream_hook"]
    out = run.read_table(RunDir.STEERING_OUTCOMES).filter(
        (pl.col("context_set") == args.context_set) & (pl.col("strength") == m["strengths"][0]))
    ctx = run.read_table(RunDir.CONTEXTS).filter(pl.col("set") == args.context_set)
    ids = np.array(ctx.sort("context_id")["token_ids"].to_list(), dtype=np.int64)
    feats = out.filter(pl.col("feature") >= 0)["feature"].to_list()[: args.directions]
    W = sae.sae.W_dec.detach().double()
    rand = random_directions(steer["config"]["random_directions"], W.shape[1],
                             steer["config"]["seed"]).double()
    unembed = model.unembed()
    worst: dict[str, float] = {}
    for f in [*feats, -1]:
        row = out.filter(pl.col("feature") == f).row(0, named=True)
        v = (W[f] / W[f].norm()) if f >= 0 else rand[-1 - f]
        tokens = torch.topk(unembed.direct_logits(v.float()[None])[0], 10).indices.numpy()
        t = time.perf_counter()
        ref = naive_outcomes(model, down, hook, down_hook, v.float().numpy(), row["alpha"], ids,
                             tokens)
        print(f"direction {f}: naive recomputation over {len(ids)} contexts in "
              f"{time.perf_counter() - t:.0f} s")
        for col in OUTCOME_COLUMNS:
            a, b = float(row[col]), float(ref[col])
            if math.isnan(a) and math.isnan(b):
                continue
            rel = abs(a - b) / max(abs(b), 1e-12)
            worst[col] = max(worst.get(col, 0.0), rel)
            print(f"  {col:26s} run {a:+.6g}   naive {b:+.6g}   rel diff {rel:.1e}")
    print("\nlargest relative difference per column:")
    print(json.dumps({k: float(f"{v:.2e}") for k, v in worst.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
