"""Power per CPU-hour: how the primary endpoint's detectable delta rho depends on N (features)
against C, C_fresh and T (contexts and their length), at a fixed CPU budget (issue 19).

It reads steered runs of ONE SAE that differ only in the steer stage's (N, C, C_fresh, T)
(``benchmarks/design_runs.sh`` makes them from one stats stage) and prints, per run:

- ``s/dir``: the steer stage's measured wall seconds per steered direction (features and random
  directions, clean passes included; from the run's own stage record, so the runs must be taken
  on a quiet machine). The stage's fixed part (loading, the per-SAE ``base_pass``) is printed
  apart: it does not grow with N;
- ``ceiling``: the noise ceiling of the primary outcome, Spearman between the cleanliness of the
  same features on steering and on fresh contexts (how reliable one measurement is);
- ``mde(N)``: the primary endpoint's smallest detectable delta rho (ridge ``full`` vs
  ``freq+mag``, cleanliness on fresh contexts, Nadeau–Bengio, 80% power; exactly the number a
  fit prints) on random subsets of the run's features, ``--repeats`` subsets per size;
- ``mde@256``: the mean over subsets of 256 features, so designs compare at equal N;
- ``a = mde(N) sqrt(N)`` at the run's own N, and from it ``N(0.1)``, the features needed to
  detect delta rho = 0.1, and the steer minutes that costs. The subset curves fall faster than
  1 / sqrt(N) up to the largest N measured (832: small-N ridge fits are worse, not just fewer),
  so extrapolating with 1 / sqrt(N) from the run's own N is conservative;
- ``true-scale``: ``mde / sqrt(ceiling)``. A correlation with a noisy outcome is attenuated by
  the square root of the outcome's reliability, so this is the smallest *noise-free* delta rho
  the design detects: the number to compare across C and T.
- at ``--budget-min`` steer minutes per SAE: the N it buys and its mde and true-scale mde.

    .venv/bin/python benchmarks/design_study.py runs/design/n*   # after benchmarks/design_runs.sh
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats as sps

from steerscreen.layout import RunLayout
from steerscreen.pipeline.fit import FitConfig, load_screening_data
from steerscreen.screening.analysis import PRIMARY, Fits
from steerscreen.screening.data import ScreeningData, with_cleanliness
from steerscreen.screening.inference import correlation


def subset(data: ScreeningData, rows: np.ndarray) -> ScreeningData:
    """The run as if only ``rows`` had been steered: cleanliness re-z-scored within them."""
    t = with_cleanliness(data.table[np.sort(rows)], data.context_sets)
    return ScreeningData(t, data.predictors, data.context_sets, data.strength, data.random)


def primary_mde(data: ScreeningData, seed: int = 0) -> tuple[float, float]:
    _, a, b, outcome = PRIMARY
    e = Fits(data, FitConfig(n_permutations=0, seed=seed)).delta(a, b, outcome)
    return e.mde, e.estimate


def design(run: Path, timed: Path) -> dict:
    """The run's design, and seconds per direction from ``timed``'s steer stage (the same
    design at another N, when ``run`` itself was not steered on a quiet machine)."""
    m = json.loads((run / "manifest.json").read_text())
    cfg, res = m["stages"]["steer"]["config"], m["stages"]["steer"]["results"]
    m = json.loads((timed / "manifest.json").read_text())
    tim, tres = m["stages"]["steer"]["timings_s"], m["stages"]["steer"]["results"]
    dirs = int(tres["n_features"]) + int(tres["n_random"])
    return {"run": run.name, "N": int(res["n_features"]), "C": int(cfg["contexts"]),
            "C_fresh": int(cfg["fresh_contexts"]), "T": int(cfg["context_len"]),
            "steer_s": float(tim["steer"]), "fixed_s": float(tim["total"] - tim["steer"]),
            "dirs": dirs, "s_per_dir": float(tim["steer"]) / dirs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+",
                    help="run folders; RUN@TIMED takes the seconds per direction from TIMED")
    ap.add_argument("--sizes", default="64,96,128,192,256,384,512,768",
                    help="subset sizes N (those above a run's own N are skipped)")
    ap.add_argument("--repeats", type=int, default=6, help="random subsets per size")
    ap.add_argument("--budget-min", type=float, default=8.0,
                    help="steer minutes per SAE the fixed-budget column buys N with")
    ap.add_argument("--json", type=Path, help="also write the table here")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    rows = []
    for spec in args.runs:
        run, _, timed = spec.partition("@")
        run = Path(run)
        d = design(run, Path(timed or run))
        data = load_screening_data(RunLayout(run))
        n = data.table.height
        rng = np.random.default_rng(0)
        pts = []
        for size in [s for s in sizes if s < n] + [n]:
            reps = 1 if size == n else args.repeats
            for _ in range(reps):
                mde, _ = primary_mde(subset(data, rng.choice(n, size, replace=False)))
                if math.isfinite(mde):
                    pts.append((size, mde))
        N = np.array([p[0] for p in pts], dtype=float)
        M = np.array([p[1] for p in pts])
        mde_full, delta = primary_mde(data)
        a = mde_full * math.sqrt(n)
        y_s, y_f = data.outcome("cleanliness", "steering"), data.outcome("cleanliness", "fresh")
        ok = np.isfinite(y_s) & np.isfinite(y_f)
        ceiling = correlation(float(sps.spearmanr(y_s[ok], y_f[ok])[0]), int(ok.sum()))
        n01 = (a / 0.1) ** 2
        n_budget = args.budget_min * 60 / d["s_per_dir"]
        rows.append({**d, "n_analysed": n, "mde_at_N": mde_full, "delta_at_N": delta,
                     "mde_at_256": float(M[N == 256].mean()) if (N == 256).any() else math.nan,
                     "ceiling": ceiling.estimate, "ceiling_lo": ceiling.lo,
                     "ceiling_hi": ceiling.hi, "a": a,
                     "mde_by_size": {int(k): float(M[k == N].mean()) for k in sorted(set(N))},
                     "N_for_0.1": n01, "steer_min_for_0.1": n01 * d["s_per_dir"] / 60,
                     "true_scale_N_for_0.1": n01 / ceiling.estimate,
                     "N_at_budget": n_budget, "mde_at_budget": a / math.sqrt(n_budget),
                     "true_mde_at_budget": a / math.sqrt(n_budget) / math.sqrt(ceiling.estimate)})
    print(f"{'run':<18} {'C':>3} {'Cf':>3} {'T':>3} {'N':>4} {'s/dir':>6} {'ceiling':>16} "
          f"{'fixed':>5} {'mde@256':>7} {'mde@N':>6} {'a':>5} {'N(0.1)':>7} {'min(0.1)':>8} | "
          f"{args.budget_min:g} min: {'N':>5} {'mde':>5} {'true':>5}")
    for r in rows:
        print(f"{r['run']:<18} {r['C']:>3} {r['C_fresh']:>3} {r['T']:>3} {r['n_analysed']:>4} "
              f"{r['s_per_dir']:>6.3f} {r['ceiling']:>5.2f} [{r['ceiling_lo']:.2f},"
              f"{r['ceiling_hi']:.2f}] {r['fixed_s']:>5.0f} {r['mde_at_256']:>7.3f} "
              f"{r['mde_at_N']:>6.3f} {r['a']:>5.2f} "
              f"{r['N_for_0.1']:>7.0f} {r['steer_min_for_0.1']:>8.1f} | "
              f"{r['N_at_budget']:>9.0f} {r['mde_at_budget']:>5.3f} "
              f"{r['true_mde_at_budget']:>5.3f}")
        print("    mean mde by subset size: " + ", ".join(
            f"{s}: {v:.3f}" for s, v in r["mde_by_size"].items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
