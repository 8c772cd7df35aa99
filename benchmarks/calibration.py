"""The calibration table of docs/screening.md: the screening analysis on synthetic runs with
known truth, at fit's default configuration, with more trials than the CI suite.

    .venv/bin/python benchmarks/calibration.py --verdict-trials 200 --coverage-trials 1000

``--lin-trials 200`` adds the rows for ``full+lin`` vs ``full`` (runs with ``lin_*`` columns).
"""

from __future__ import annotations

import argparse
import time

from steerscreen.screening.calibration import suite, suite_table

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=400, help="steered features per synthetic run")
    ap.add_argument("--verdict-trials", type=int, default=200)
    ap.add_argument("--coverage-trials", type=int, default=1000)
    ap.add_argument("--conformal-trials", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lin-trials", type=int, default=0,
                    help="also runs with lin_* columns (noise, signal) for full+lin vs full")
    a = ap.parse_args()
    t = time.perf_counter()
    s = suite(n=a.n, verdict_trials=a.verdict_trials, coverage_trials=a.coverage_trials,
              conformal_trials=a.conformal_trials, workers=a.workers, lin_trials=a.lin_trials)
    print("\n".join(suite_table(s)))
    print(f"\nn = {a.n} features per run; {time.perf_counter() - t:.0f} s")
