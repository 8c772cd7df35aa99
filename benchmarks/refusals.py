"""How fast a new user hears about a bad input: every case of the error catalogue
(tests/reliability/catalogue.py, the one CI runs in-process) run as a user runs it, in a fresh
``python -m steerscreen`` process, timed from launch to exit.

    .venv/bin/python benchmarks/refusals.py --repeats 2 --baseline /tmp/old/src

For each case it prints the exit code, the median and worst wall time over the repeats, and
whether the output held the documented message, held no traceback, and left the output
location as it was. ``--baseline SRC`` runs each case also on another checkout's ``src``
(e.g. ``git worktree add /tmp/old COMMIT``), side by side: its exit code, time and traceback.
Run it on a quiet machine: importing torch alone takes 1-7 s on a loaded one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.reliability.catalogue

from tests.reliability.catalogue import CASES, build_inputs, case_out, snapshot

LIMIT_S = 5.0
HANG_S = 60.0
HUNG = -1  # the exit code shown as "hung" (killed after HANG_S)
# What the installed ``steerscreen`` script runs (a checkout without ``__main__`` runs it too).
CLI = "from steerscreen.cli import app; app(prog_name='steerscreen')"


def run_case(case, inputs: dict[str, Path], scratch: Path, src: str | None = None
             ) -> tuple[int, float, bool, bool, bool]:
    """-> (exit code, seconds, message shown, traceback-free, output location unchanged);
    ``src``: import steerscreen from there."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    out = case_out(case, inputs, scratch)
    before = snapshot(out) if out.exists() else None
    args = [a.format(out=out, **inputs) for a in case.args]
    env = {**os.environ, **case.env, "COLUMNS": "200"}
    if src:
        env["PYTHONPATH"] = src
    t = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True,
                             env=env, timeout=HANG_S)
    except subprocess.TimeoutExpired:  # e.g. an old version reading a FIFO
        return HUNG, HANG_S, False, True, False
    seconds = time.perf_counter() - t
    text = " ".join((res.stdout + res.stderr).split())
    kept = not out.exists() if before is None else snapshot(out) == before
    return (res.returncode, seconds, case.message in text and case.detail in text,
            "Traceback" not in text, kept)


def _code(code: int) -> str:
    return f"hung ({HANG_S:.0f} s)" if code == HUNG else str(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per case")
    ap.add_argument("--only", default="", help="comma-separated case ids (default: all)")
    ap.add_argument("--baseline", default="", help="another checkout's src folder, timed too")
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    cases = [c for c in CASES if not only or c.id in only]
    with tempfile.TemporaryDirectory(prefix="steerscreen-refusals-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        inputs = build_inputs(root / "inputs")
        print(f"inputs built in {time.perf_counter() - t:.1f} s; {len(cases)} cases x "
              f"{a.repeats} fresh process(es); python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs\n")
        base = " | before: exit | before: median s | before: traceback" if a.baseline else ""
        print("| case | command | exit | median s | worst s | message | no traceback | "
              f"nothing changed{base} |")
        print("|---|---|---|---|---|---|---|---" + "|---" * 3 * bool(a.baseline) + "|")
        worst_all, failures, before = [], [], []
        for case in cases:
            old = ""
            if a.baseline:
                b = [run_case(case, inputs, root / "scratch", a.baseline)
                     for _ in range(a.repeats)]
                before.append(statistics.median(r[1] for r in b))
                old = (f" | {','.join(_code(c) for c in sorted({r[0] for r in b}))} | "
                       f"{before[-1]:.2f} | {'no' if all(r[3] for r in b) else '**yes**'}")
            runs = [run_case(case, inputs, root / "scratch") for _ in range(a.repeats)]
            codes = sorted({r[0] for r in runs})
            secs = [r[1] for r in runs]
            ok = [all(r[i] for r in runs) for i in (2, 3, 4)]
            worst_all.append(max(secs))
            if codes != [2] or not all(ok) or max(secs) >= LIMIT_S:
                failures.append(case.id)
            print(f"| {case.id} | {case.args[0]} | {','.join(map(_code, codes))} | "
                  f"{statistics.median(secs):.2f} | {max(secs):.2f} | "
                  + " | ".join("yes" if x else "**no**" for x in ok) + old + " |")
        print(f"\n{len(cases)} cases: worst {max(worst_all):.2f} s, median of the worst "
              f"{statistics.median(worst_all):.2f} s; under {LIMIT_S:.0f} s with exit 2, the "
              f"message, no traceback and nothing changed: {len(cases) - len(failures)} of "
              f"{len(cases)}" + (f" (not: {', '.join(failures)})" if failures else ""))
        if before:
            print(f"before: worst {max(before):.2f} s, median {statistics.median(before):.2f} s"
                  f"; over {LIMIT_S:.0f} s: {sum(t >= LIMIT_S for t in before)} of {len(before)}")


if __name__ == "__main__":
    main()
