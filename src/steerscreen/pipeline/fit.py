"""The ``fit`` stage: the screening analysis (docs/method.md §4) on one run's tables.

:func:`run_fit` reads a run with complete stats and steer stages, joins its predictors and
outcomes (:func:`load_screening_data`), runs :func:`~steerscreen.screening.analysis.analyse` and
writes ``RUN/screening/``:

- ``cv_metrics.parquet``: model, set, outcome, context_set, n, rho (mean test-fold Spearman,
  + se, 95% CI, p), R^2;
- ``comparisons.parquet``: delta rho of ``full+lin`` vs ``full`` (with ``lin_*`` columns), of
  each set vs ``freq+mag`` and of ``full`` vs the best baseline (mean paired fold difference),
  se, CI, Nadeau–Bengio t and p, detectable effect, Holm-adjusted p;
- ``confounds.parquet``: partial Spearman of each predictor with each outcome (+ CI, p, BH q);
- ``heldout.parquet``: cross-fitted selection payoff vs random and vs the baseline selection;
- ``predictions.parquet``: the steered features' outcomes and out-of-fold predictions;
- ``predictor.json``: the fitted predictor (JSON, no pickle; see
  :mod:`steerscreen.screening.predictor`);
- ``summary.json``: every headline number with its CI, the verdict tests (estimate, CI, p,
  Holm p, detectable effect, the test in words; six, nine with ``lin_*`` columns), the verdicts,
  power, the configuration, and with ``lin_*`` columns ``linear``: per outcome rho of ``lin``,
  ``full`` and ``full+lin`` and the ``full+lin`` - ``full`` delta (CI, p, Holm p, power,
  verdict).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from steerscreen.config import FitConfig
from steerscreen.errors import ArtifactError, SteerscreenError
from steerscreen.files import sha256_file, write_json
from steerscreen.layout import (
    EQUAL_KL_MODE,
    FEATURE_DOSE_STATS,
    PREDICTOR,
    SCREENING,
    SCREENING_TABLES,
    SUMMARY,
    RunLayout,
    analysed_strength,
    dose_groups,
    screening_file,
)
from steerscreen.pipeline.runs import RunDir, environment
from steerscreen.pipeline.stage import stage
from steerscreen.screening.analysis import Analysis, analyse
from steerscreen.screening.data import (
    BASELINES,
    OUTCOME_COLUMNS,
    ScreeningData,
    screening_data,
    with_dose_stats,
)
from steerscreen.screening.dose_accuracy import dose_accuracy
from steerscreen.screening.predictor import fit_predictor

STAGE = "fit"


@dataclass(frozen=True)
class FitResult:
    run: RunDir
    summary: dict[str, Any]
    seconds: float

    @property
    def folder(self) -> Path:
        return self.run.file(SCREENING)

    @property
    def predictor_path(self) -> Path:
        return self.folder / PREDICTOR


def load_screening_data(run: RunLayout, strength: float | None = None) -> ScreeningData:
    """A run's predictors and outcomes joined (``strength``: default the first positive one
    recorded, which is the calibrated dose when the dose was calibrated)."""
    outcomes = dose_groups(run.read_table(RunDir.STEERING_OUTCOMES, OUTCOME_COLUMNS))
    if strength is None:
        recorded = sorted(set(outcomes["strength"].to_list()))
        strength = analysed_strength(run.read_manifest().get("strengths", recorded))
        if strength is None:
            raise ArtifactError(f"the run was steered only at strength 0 ({recorded}), the "
                                "exactness check, where every outcome is 0 or NaN",
                                "steer at a positive strength (or a calibrated dose)")
    dose = (run.read_table(FEATURE_DOSE_STATS, ("feature", "base_pass"))  # lin_pass optional
            if run.file(FEATURE_DOSE_STATS).is_file() else None)
    stats = with_dose_stats(run.read_table(RunDir.FEATURE_STATS, ("feature", *BASELINES[:3])),
                            dose)
    return screening_data(stats, outcomes, strength)


def run_fit(cfg: FitConfig, run_dir: str | Path, force: bool = False,
            log: Callable[[str], None] | None = None, *, resume: bool = False) -> FitResult:
    """Run the screening analysis on ``run_dir`` and write ``RUN/screening/``.

    ``resume``: fail unless ``run_dir`` already records a fit (``--resume``); the fit keeps no
    partial state, so an interrupted one is computed again from the start."""
    record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.record().items()}
    with stage(STAGE, run_dir, record, force=force, resume=resume, log=log,
               outputs=[screening_file(n) for n in (*SCREENING_TABLES, PREDICTOR, SUMMARY)]
               ) as st:
        run = st.run
        steer = run.stage("steer") if run.manifest_path.is_file() else None
        if steer is None or steer.get("status") != "complete":
            raise SteerscreenError(f"{str(run.path)!r} holds no complete steer stage",
                                   f"run `steerscreen steer --run {run.path} ...` first")
        inputs = {name: (steer.get("outputs") or {}).get(name, {}).get("sha256")
                  for name in (RunDir.STEERING_OUTCOMES, FEATURE_DOSE_STATS)}
        inputs["feature_stats"] = run.stage("stats")["outputs"][RunDir.FEATURE_STATS]["sha256"]
        check = st.check(inputs)
        if check.action == "skip":
            st.say(check.reason)
            return FitResult(run, read_summary(run), 0.0)
        data = load_screening_data(run, cfg.strength)
        if data.table.height < 3 * cfg.n_splits:
            raise SteerscreenError(
                f"the run has {data.table.height} steered features, too few for "
                f"{cfg.n_splits}-fold cross-validation",
                "steer more features (--features 256 or more is advised)")
        st.say(f"fitting: {data.table.height} features, {len(data.predictors)} predictors, "
               f"context sets {', '.join(data.context_sets)}, strength {data.strength:g}")
        run.begin_stage(STAGE, record, inputs, depends_on=["stats", "steer"])
        # Hundreds of small fits: HistGradientBoosting's OpenMP threads cost far more than they
        # save on a few hundred rows (a tiny study's fit went 75 s -> a few s on 2 cores).
        with threadpool_limits(limits=1, user_api="openmp"):
            an = analyse(data, cfg)
        acc = dose_accuracy(run.read_table(RunDir.STEERING_OUTCOMES),
                            run.read_table(RunDir.FEATURE_STATS), data.strength)
        summary, outputs = _write(run, cfg, data, an, acc)
        run.complete_stage(STAGE, outputs=outputs, timings=st.total(),
                           results={"primary_endpoint": summary["primary_endpoint"],
                                    "verdicts": summary["verdicts"]})
        return FitResult(run, summary, st.timings["total"])


def _write(run: RunDir, cfg: FitConfig, data: ScreeningData, an: Analysis,
           dose_acc: dict[str, Any] | None = None
           ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``screening/``: the tables, the predictor and the summary -> (summary, outputs)."""
    manifest = run.read_manifest()
    r = float(manifest.get("residual_norm", math.nan))
    dose = {"strength": data.strength, "residual_norm": r, "alpha": data.strength * r}
    if manifest.get("dose_mode") == EQUAL_KL_MODE:
        # One dose label (target_kl); each feature had its own alpha: the predictor records
        # the features' median s and alpha, and the target (screen's base_pass uses it).
        rows = dose_groups(run.read_table(RunDir.STEERING_OUTCOMES)).filter(
            (pl.col("direction") == "feature") & (pl.col("strength") == data.strength))
        med = float(np.median(rows["alpha"].to_numpy())) if rows.height else math.nan
        dose = {"strength": med / r, "residual_norm": r, "alpha": med,
                "target_kl": float(manifest.get("target_kl", data.strength))}
    predictor = fit_predictor(
        data, an.residuals, level=cfg.conformal_level, dose=dose,
        trained_on={"run": str(run.path), "model": manifest.get("model", {}).get("spec"),
                    "sae": manifest.get("sae_path"), "hook": manifest.get("hook"),
                    "downstream_hook": manifest.get("downstream_hook"),
                    "n_features": data.table.height,
                    "linear": _linear_record(manifest)}, seed=cfg.seed)
    folder = run.file(SCREENING)
    folder.mkdir(parents=True, exist_ok=True)
    tables = dict(zip(SCREENING_TABLES, (an.cv, an.comparisons, an.confounds, an.heldout,
                                         an.predictions), strict=True))
    outputs = {screening_file(name): run.write_table(screening_file(name), df)
               for name, df in tables.items()}
    predictor.save(run.claim(screening_file(PREDICTOR)))
    summary = jsonable({**an.summary, "predictor": PREDICTOR,
                        "dose_mode": manifest.get("dose_mode"), "dose_accuracy": dose_acc,
                        "conformal_q": {k: m.conformal_q for k, m in predictor.models.items()},
                        "environment": environment()})
    write_json(run.claim(screening_file(SUMMARY)), summary)
    for name in (PREDICTOR, SUMMARY):
        outputs[screening_file(name)] = {"sha256": sha256_file(folder / name)}
        run.record_file(screening_file(name), outputs[screening_file(name)]["sha256"])
    return summary, outputs


def jsonable(x: Any) -> Any:
    """Strict JSON of an analysis summary: numpy scalars unwrapped, NaN and inf as null."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def fit_lines(summary: dict[str, Any]) -> list[str]:
    """The fit's closing lines: the primary endpoint with its power, and each verdict."""
    p = summary["primary_endpoint"]

    def f(x: Any, fmt: str) -> str:
        return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    lines = [
        f"fit: primary endpoint ({p['model']}, {p['full']} vs {p['baseline']}, {p['outcome']} "
        f"on {p['context_set']} contexts, n = {p.get('n')}): rho {f(p['rho_full'], '.3f')} vs "
        f"{f(p['rho_baseline'], '.3f')}, delta {f(p['delta_rho'], '+.3f')} "
        f"[{f(p['delta_lo'], '+.3f')}, {f(p['delta_hi'], '+.3f')}], p_NB "
        f"{f(p['p_nadeau_bengio'], '.3g')}, p_perm {f(p['p_permutation'], '.3g')}",
        f"  {p.get('verdict', '')} (detectable delta rho at 80% power: "
        f"{f(p.get('mde'), '.2f')})"]
    lines += [f"  {outcome}: {verdict}" for outcome, verdict in summary["verdicts"].items()]
    lines += [f"  full+lin vs full, {r['outcome']}: rho {f(r.get('rho_full_lin'), '.3f')} vs "
              f"{f(r.get('rho_full'), '.3f')} (lin alone {f(r.get('rho_lin'), '.3f')}), delta "
              f"{f(r.get('delta_rho'), '+.3f')} [{f(r.get('delta_lo'), '+.3f')}, "
              f"{f(r.get('delta_hi'), '+.3f')}], Holm p {f(r.get('p_holm'), '.3g')}: "
              f"{r.get('verdict', '')}" for r in summary.get("linear") or []]
    if summary.get("verdict_tests"):
        lines.append(f"  (a verdict needs a positive estimate with Holm-adjusted p < 0.05 over "
                     f"the {len(summary['verdict_tests'])} verdict tests; "
                     f"{summary['verdict_tests'][0]['method']})")
    return lines


def read_summary(run: RunLayout) -> dict[str, Any]:
    import json

    return json.loads((run.file(SCREENING) / SUMMARY).read_text(encoding="utf-8"))



def _linear_record(manifest: dict[str, Any]) -> dict[str, int] | None:
    """The linearisation the lin_* columns came from (``screen`` repeats it)."""
    rec = ((manifest.get("stages") or {}).get("stats") or {}).get("results", {}).get("linear")
    if not rec or rec.get("skipped"):
        return None
    return {"contexts": int(rec["contexts"]), "context_len": int(rec["context_len"])}

__all__ = ["FitConfig", "FitResult", "fit_lines", "load_screening_data", "read_summary",
           "run_fit"]
