"""Calibration of the screening analysis on synthetic runs with known truth (:mod:`.simulate`).

Each trial draws one synthetic run and applies the same code as ``steerscreen fit``:

- :func:`verdict_trial`: the six verdict tests with Holm (:func:`.analysis.verdict_family`);
  on a null scenario every "beats baselines" or "survives residualisation" is a false claim;
- :func:`coverage_trial`: does the primary comparison's 95% interval (``full`` vs
  ``freq+mag``, cleanliness, fresh contexts) contain :func:`.simulate.population_delta`?
- :func:`payoff_trial`: does the held-out payoff interval contain 0 on noise?
- :func:`conformal_trial`: the share of unseen features whose measured outcome falls inside
  the fitted predictor's conformal interval;
- optionally (``lin_trials``) :func:`verdict_trial` on runs with ``lin_*`` columns: the rate of
  "lin adds to full" (``full+lin`` vs ``full``) when they are pure noise (a false claim) and
  when they carry a planted signal beyond ``full`` (a detection).

:func:`rate` turns hits into a rate with its Wilson 95% Monte-Carlo interval, and
:func:`trials` runs a trial over seeds on several processes.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from steerscreen.config import FitConfig
from steerscreen.screening.analysis import BEATS, LIN_ADDS, SURVIVES, Fits, verdict_family
from steerscreen.screening.data import OUTCOMES
from steerscreen.screening.heldout import heldout
from steerscreen.screening.predictor import fit_predictor
from steerscreen.screening.simulate import synthetic_data


@dataclass(frozen=True)
class Rate:
    hits: int
    trials: int

    @property
    def rate(self) -> float:
        return self.hits / self.trials if self.trials else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson 95% interval of the rate (the Monte-Carlo uncertainty of a calibration)."""
        n, p, z = self.trials, self.rate, 1.959964
        if n == 0:
            return math.nan, math.nan
        mid = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, mid - half), min(1.0, mid + half)

    def __str__(self) -> str:
        lo, hi = self.interval
        return f"{self.rate:.3f} [{lo:.3f}, {hi:.3f}] ({self.hits}/{self.trials})"


def rate(flags: list[bool]) -> Rate:
    return Rate(int(sum(bool(f) for f in flags)), len(flags))


def verdict_trial(seed: int, *, scenario: str, n: int, cfg: FitConfig, effect: float = 1.0,
                  lin: str | None = None) -> dict[str, bool]:
    """``{"cleanliness: beats baselines": passed, ...}`` for one synthetic run (``lin``: with
    ``lin_*`` columns, see :func:`.simulate.synthetic_data`)."""
    rows, _ = verdict_family(Fits(synthetic_data(scenario, n, seed, effect, lin=lin), cfg))
    out = {f"{r['outcome']}: {r['test']}": bool(r["passed"]) for r in rows}
    for name, test in (("beats baselines", BEATS), ("survives residualisation", SURVIVES),
                       ("lin adds to full", LIN_ADDS)):
        out[f"any {name}"] = any(r["passed"] for r in rows if r["test"] == test)
    return out


def coverage_trial(seed: int, *, scenario: str, n: int, cfg: FitConfig, target: float,
                   effect: float = 1.0) -> dict[str, Any]:
    e = Fits(synthetic_data(scenario, n, seed, effect), cfg).delta("full", "freq+mag",
                                                                   "cleanliness")
    return {"covered": bool(e.lo <= target <= e.hi), "contains_estimate": bool(
        e.lo <= e.estimate <= e.hi), "estimate": e.estimate, "lo": e.lo, "hi": e.hi}


def payoff_trial(seed: int, *, scenario: str, n: int, cfg: FitConfig) -> dict[str, bool]:
    data = synthetic_data(scenario, n, seed)
    h = heldout(data, Fits(data, cfg).splits, cfg)
    row = h.filter((h["selector"] == "full") & (h["outcome"] == "cleanliness")).row(
        0, named=True)
    return {"covers_0_vs_random": row["vs_random_lo"] <= 0 <= row["vs_random_hi"],
            "covers_0_vs_baseline": row["vs_baseline_lo"] <= 0 <= row["vs_baseline_hi"]}


def conformal_trial(seed: int, *, scenario: str, n: int, cfg: FitConfig,
                    unseen: int = 4000) -> dict[str, float]:
    """Coverage of the predictor's conformal intervals on ``unseen`` new features."""
    data = synthetic_data(scenario, n, seed)
    fits = Fits(data, cfg)
    cs = data.primary_set
    residuals = {o: np.abs(fits.cv("full", o).oof - data.outcome(o, cs)[None, :]).ravel()
                 for o in OUTCOMES}
    pred = fit_predictor(data, residuals, level=cfg.conformal_level, dose={},
                         trained_on={})
    new = synthetic_data(scenario, unseen, seed + 10_000_000)
    out = {}
    for o in ("effect_stability", "collateral_spread"):
        m = pred.models[o]
        y = new.outcome(o, cs)
        out[o] = float(np.mean(np.abs(y - m.predict(new.X(pred.columns))) <= m.conformal_q))
    return out


def _one_thread() -> None:
    """A worker's BLAS and OpenMP pools at one thread: the workers are the parallelism (two
    workers with two BLAS threads each ran the suite several times slower on 2 cores)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def trials(fn: Callable[..., Any], seeds: range | list[int], workers: int = 2, **kw: Any
           ) -> list[Any]:
    """``fn(seed, **kw)`` for every seed, on ``workers`` processes (1: in this process)."""
    call = partial(fn, **kw)
    if workers <= 1:
        return [call(s) for s in seeds]
    # spawn, not fork: a forked child of a process whose polars (Rayon) or BLAS thread pools
    # already ran can deadlock on their locks (seen inside the test suite).
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_one_thread) as pool:
        return list(pool.map(call, seeds, chunksize=max(1, len(seeds) // (4 * workers))))


@dataclass(frozen=True)
class SuiteResult:
    """What the calibration suite measured (one line each in ``docs/screening.md``)."""

    false_beats: dict[str, Rate]
    """Null scenario -> share of runs with any false "beats baselines"."""
    false_survives: dict[str, Rate]
    """Null scenario -> share of runs with any false "survives residualisation"."""
    detection: Rate
    """Planted signal: "beats baselines" for cleanliness."""
    coverage: dict[str, tuple[Rate, float]]
    """Scenario -> (95% CI of the primary delta contains the population delta, that delta)."""
    payoff_noise: Rate
    """Noise: the held-out payoff CI (vs random) contains 0."""
    conformal: dict[str, tuple[float, float]]
    """Outcome -> (mean coverage of the 90% conformal intervals, its MC standard error)."""
    n: int
    """Steered features per synthetic run."""
    lin: dict[str, Rate] = field(default_factory=dict)
    """With ``lin_trials``: lin mode -> share of runs with "lin adds to full" (any outcome for
    ``noise``, a false claim; cleanliness for ``signal``, a detection)."""


NULLS = ("noise", "freq_mag", "mag_explained")


def suite(*, n: int = 400, verdict_trials: int = 100, coverage_trials: int = 300,
          conformal_trials: int = 20, workers: int = 2, cfg: FitConfig | None = None,
          lin_trials: int = 0) -> SuiteResult:
    """The calibration suite at ``fit``'s default configuration (about 3 minutes on 2 cores
    at the defaults). ``lin_trials``: also that many runs with ``lin_*`` columns per lin mode
    (planted v1 signal; none by default, which leaves the rest of the suite as it was)."""
    from steerscreen.screening.simulate import population_delta

    cfg = cfg or FitConfig()
    seeds = range(verdict_trials)
    fb, fs = {}, {}
    for sc in NULLS:
        res = trials(verdict_trial, seeds, workers, scenario=sc, n=n, cfg=cfg)
        fb[sc] = rate([r["any beats baselines"] for r in res])
        fs[sc] = rate([r["any survives residualisation"] for r in res])
    res = trials(verdict_trial, seeds, workers, scenario="planted", n=n, cfg=cfg)
    detection = rate([r["cleanliness: beats baselines"] for r in res])
    coverage = {}
    for sc in ("noise", "planted", "freq_mag", "mag_explained"):
        target = 0.0 if sc == "noise" else population_delta(sc, n, n_splits=cfg.n_splits)
        res = trials(coverage_trial, range(coverage_trials), workers, scenario=sc, n=n,
                     cfg=cfg, target=target)
        if not all(r["contains_estimate"] for r in res):
            raise AssertionError(f"an interval missed its own estimate ({sc})")
        coverage[sc] = (rate([r["covered"] for r in res]), target)
    res = trials(payoff_trial, seeds, workers, scenario="noise", n=n, cfg=cfg)
    payoff = rate([r["covers_0_vs_random"] for r in res])
    res = trials(conformal_trial, range(conformal_trials), workers, scenario="planted", n=n,
                 cfg=cfg)
    conformal = {o: (float(np.mean([r[o] for r in res])),
                     float(np.std([r[o] for r in res], ddof=1) / math.sqrt(len(res))))
                 for o in res[0]}
    lin = {}
    for mode in ("noise", "signal") if lin_trials else ():
        res = trials(verdict_trial, range(lin_trials), workers, scenario="planted", n=n,
                     cfg=cfg, lin=mode)
        lin[mode] = rate([r["any lin adds to full"] if mode == "noise"
                          else r["cleanliness: lin adds to full"] for r in res])
    return SuiteResult(fb, fs, detection, coverage, payoff, conformal, n, lin)


def suite_table(s: SuiteResult) -> list[str]:
    """The suite as Markdown rows: check, scenario, measured rate [MC 95% interval], target."""
    rows = ["| check | scenario | measured [Monte-Carlo 95% interval] | target |",
            "|---|---|---|---|"]
    for sc in NULLS:
        rows.append(f"| false \"beats baselines\" (any outcome) | {sc} | {s.false_beats[sc]} "
                    "| ≤ 0.05 |")
        rows.append(f"| false \"survives residualisation\" (any outcome) | {sc} | "
                    f"{s.false_survives[sc]} | ≤ 0.05 |")
    rows.append(f"| detects \"beats baselines\" (cleanliness) | planted | {s.detection} | "
                "≥ 0.9 |")
    for sc, (r, target) in s.coverage.items():
        want = "0.92–0.98" if sc in ("noise", "planted") else "≥ 0.92 (a nested null)"
        rows.append(f"| 95% CI of the primary Δρ covers the population Δρ = {target:+.3f} | "
                    f"{sc} | {r} | {want} |")
    rows.append(f"| 95% CI of the held-out payoff covers 0 | noise | {s.payoff_noise} | "
                "≥ 0.92 |")
    for o, (m, se) in s.conformal.items():
        rows.append(f"| 90% conformal interval covers an unseen feature ({o}) | planted | "
                    f"{m:.3f} ± {1.96 * se:.3f} | 0.87–0.93 |")
    if "noise" in s.lin:
        rows.append(f"| false \"lin adds to full\" (any outcome) | planted, lin noise | "
                    f"{s.lin['noise']} | ≤ 0.05 |")
    if "signal" in s.lin:
        rows.append(f"| detects \"lin adds to full\" (cleanliness) | planted, lin signal | "
                    f"{s.lin['signal']} | ≥ 0.9 |")
    return rows
