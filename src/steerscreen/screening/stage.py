"""The ``fit`` stage (METHOD §4 on a run) and ``screen`` (rank every feature, no steering).

``fit`` reads a run with complete stats and steer stages and writes ``RUN/screening/``:

- ``cv_metrics.parquet``: model, set, outcome, context_set, n, rho (mean test-fold Spearman,
  + se, 95% CI, p), R^2;
- ``comparisons.parquet``: delta rho of each set vs ``freq+mag`` and of ``full`` vs the best
  baseline (mean paired fold difference), se, CI, Nadeau–Bengio t and p, detectable effect,
  Holm-adjusted p;
- ``confounds.parquet``: partial Spearman of each predictor with each outcome (+ CI, p, BH q);
- ``heldout.parquet``: cross-fitted selection payoff vs random and vs the baseline selection;
- ``predictions.parquet``: the steered features' outcomes and out-of-fold predictions;
- ``predictor.json``: the fitted predictor (JSON, no pickle; see :mod:`.predictor`);
- ``summary.json``: every headline number with its CI, the six verdict tests (estimate, CI, p,
  Holm p, detectable effect, the test in words), the verdicts, power, the configuration.

``screen`` runs the stats pass for any SAE (into its own folder), applies a predictor and writes
``screen.parquet`` and ``screen.csv``: every feature ranked by predicted cleanliness, with
intervals and drivers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from steerscreen.errors import SpecError, SteerscreenError
from steerscreen.files import write_json
from steerscreen.runs import RunDir, environment
from steerscreen.screening.analysis import FitConfig, analyse
from steerscreen.screening.data import screening_table
from steerscreen.screening.predictor import Predictor, fit_predictor

STAGE = "fit"
SCREENING = "screening"


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
        return self.folder / "predictor.json"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def run_fit(cfg: FitConfig, run_dir: str | Path, force: bool = False,
            log: Callable[[str], None] | None = None, *, resume: bool = False) -> FitResult:
    """Run METHOD §4 on ``run_dir`` and write ``RUN/screening/`` (see the module docstring).

    ``resume``: fail unless ``run_dir`` already records a fit (``--resume``); the fit keeps no
    partial state, so an interrupted one is computed again from the start."""
    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    run = RunDir(run_dir)
    if resume:
        run.require_resumable(STAGE, force=force)
    steer = run.stage("steer") if run.manifest_path.is_file() else None
    if steer is None or steer.get("status") != "complete":
        raise SteerscreenError(f"{str(run.path)!r} holds no complete steer stage",
                               f"run `steerscreen steer --run {run.path} ...` first")
    record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    inputs = {name: (steer.get("outputs") or {}).get(name, {}).get("sha256")
              for name in (RunDir.STEERING_OUTCOMES, "feature_dose_stats.parquet")}
    inputs["feature_stats"] = run.stage("stats")["outputs"][RunDir.FEATURE_STATS]["sha256"]
    check = run.check_stage(STAGE, record, force=force, inputs=inputs)
    if check.action == "skip":
        say(check.reason)
        return FitResult(run, _read_summary(run), 0.0)
    data = screening_table(run, cfg.strength)
    if data.table.height < 3 * cfg.n_splits:
        raise SteerscreenError(
            f"the run has {data.table.height} steered features, too few for {cfg.n_splits}-fold "
            "cross-validation", "steer more features (--features 256 or more is advised)")
    say(f"fitting: {data.table.height} features, {len(data.predictors)} predictors, context "
        f"sets {', '.join(data.context_sets)}, strength {data.strength:g}")
    run.begin_stage(STAGE, record, inputs, depends_on=["stats", "steer"])
    # Hundreds of small fits: HistGradientBoosting's OpenMP threads cost far more than they
    # save on a few hundred rows (a tiny study's fit went 75 s -> a few s on 2 cores).
    with threadpool_limits(limits=1, user_api="openmp"):
        an = analyse(data, cfg)
    manifest = run.read_manifest()
    r = float(manifest.get("residual_norm", math.nan))
    predictor = fit_predictor(
        data, an.residuals, level=cfg.conformal_level,
        dose={"strength": data.strength, "residual_norm": r, "alpha": data.strength * r},
        trained_on={"run": str(run.path), "model": manifest.get("model", {}).get("spec"),
                    "sae": manifest.get("sae_path"), "hook": manifest.get("hook"),
                    "downstream_hook": manifest.get("downstream_hook"),
                    "n_features": data.table.height}, seed=cfg.seed)
    folder = run.file(SCREENING)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for name, df in (("cv_metrics", an.cv), ("comparisons", an.comparisons),
                     ("confounds", an.confounds), ("heldout", an.heldout),
                     ("predictions", an.predictions)):
        outputs[f"{SCREENING}/{name}.parquet"] = run.write_table(f"{SCREENING}/{name}.parquet",
                                                                 df)
    predictor.save(folder / "predictor.json")
    summary = _jsonable({**an.summary, "predictor": "predictor.json",
                         "conformal_q": {k: m.conformal_q for k, m in predictor.models.items()},
                         "environment": environment()})
    write_json(folder / "summary.json", summary)
    from steerscreen.files import sha256_file

    for name in ("predictor.json", "summary.json"):
        outputs[f"{SCREENING}/{name}"] = {"sha256": sha256_file(folder / name)}
    seconds = time.perf_counter() - t0
    run.complete_stage(STAGE, outputs=outputs, timings={"total": seconds},
                       results={"primary_endpoint": summary["primary_endpoint"],
                                "verdicts": summary["verdicts"]})
    return FitResult(run, summary, seconds)


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
    return lines


def _read_summary(run: RunDir) -> dict[str, Any]:
    import json

    return json.loads((run.file(SCREENING) / "summary.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ScreenResult:
    table: pl.DataFrame
    parquet: Path
    csv: Path


def run_screen(predictor_path: str | Path, stats_cfg, out: str | Path, *,
               downstream_sae: str | None = None, downstream_hook: str | None = None,
               pass_positions: int = 256, force: bool = False,
               log: Callable[[str], None] | None = None, model=None, sae=None, down=None
               ) -> ScreenResult:
    """Stats pass for ``stats_cfg`` into ``out`` (at the predictor's strength), then rank.

    ``model`` / ``sae`` / ``down``: already-loaded objects instead of the specs (tests)."""
    from steerscreen.stats.stage import run_stats

    predictor = Predictor.load(predictor_path)
    s = float(predictor.dose["strength"])
    if stats_cfg.strength != s:
        stats_cfg = type(stats_cfg)(**{**asdict(stats_cfg), "strength": s})
    needs_pass = "base_pass" in predictor.columns
    if needs_pass and downstream_sae is None and down is None:
        raise SpecError("the predictor uses base_pass, which needs the downstream SAE",
                        "pass --downstream-sae (and --downstream-hook) as used in training: "
                        f"{predictor.trained_on.get('downstream_hook')}")
    res = run_stats(stats_cfg, out, force=force, log=log, model=model, sae=sae,
                    progress=log is not None)
    run = RunDir(out)
    stats = run.read_table(RunDir.FEATURE_STATS)
    if needs_pass:
        stats = _with_base_pass(stats_cfg, stats, downstream_sae, downstream_hook,
                                s * res.residual_norm, pass_positions, model, sae, down)
    ranked = predictor.predict(stats)
    flat = [o for o, m in predictor.models.items() if m.alpha is None]
    if flat and log is not None:
        log(f"note: the predictor found no signal for {', '.join(flat)} (its ridge chose the "
            "intercept alone), so those scores are the same for every feature")
    key = [pl.col("dead").cast(pl.Int8)] if "dead" in ranked.columns else []
    ranked = ranked.sort([*key, pl.col("pred_cleanliness")], descending=[False] * len(key)
                         + [True], nulls_last=True).with_row_index("rank", offset=1)
    parquet = run.file("screen.parquet")
    run.write_table("screen.parquet", ranked)
    csv = run.file("screen.csv")
    ranked.write_csv(csv)
    return ScreenResult(ranked, parquet, csv)


def _with_base_pass(stats_cfg, stats: pl.DataFrame, down_spec: str | None,
                    down_hook: str | None, alpha: float, positions: int, model=None, sae=None,
                    down=None) -> pl.DataFrame:
    import torch

    from steerscreen.corpus import load_corpus
    from steerscreen.models import load_model
    from steerscreen.saes import load_sae, validate_pairing
    from steerscreen.stats.geometry import unit_rows
    from steerscreen.stats.stage import stats_contexts
    from steerscreen.steering.passthrough import passthrough_pr

    model = model or load_model(stats_cfg.model, stats_cfg.device, stats_cfg.dtype,
                                trust_remote_code=stats_cfg.trust_remote_code)
    sae = sae or load_sae(stats_cfg.sae, device=stats_cfg.device)
    down = down or load_sae(str(down_spec), device=stats_cfg.device)
    dhp = validate_pairing(down, model, down_hook)
    cfg = type(stats_cfg)(**{**asdict(stats_cfg), "tokens": positions})
    ctx, _ = stats_contexts(cfg, load_corpus(cfg.corpus), model)
    ids = torch.as_tensor(ctx.token_ids, device=model.device)
    x = model.forward(ids, read=[dhp], logits=False).acts[dhp.name][:, 1:]
    x = x.reshape(-1, x.shape[-1])[:positions].float()
    bp = passthrough_pr(down, x, unit_rows(sae.sae.W_dec.detach().float()), alpha)
    return stats.with_columns(pl.Series("base_pass", bp))
