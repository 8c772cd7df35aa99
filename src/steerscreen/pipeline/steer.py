"""The ``steer`` stage: docs/method.md §2 interventions on a sample -> §3 outcomes in the run.

:func:`run_steer` reads the model, SAE, hook, corpus and residual norm from the run's completed
``stats`` stage, then

1. draws the context sets (``calibration``, ``steering``, ``fresh``;
   :mod:`steerscreen.steering.sampling`) and writes ``contexts.parquet``;
2. samples features (stratified by ``base_freq`` decile) or takes the given ids, and adds the
   seeded random null directions (``feature = -1 - i``);
3. fixes the dose: explicit ``strengths``, or calibrated (:mod:`steerscreen.steering.dose`) so
   that random directions cost ``target_kl`` nats on the calibration contexts;
4. steers every direction on both context sets at every strength with :class:`SteeringEngine`,
   writing finished directions to shards (``steering_shards/``) as they complete (with
   ``backend="ray"``, one Ray task per shard: :mod:`.steer_ray`, the same rows bit for bit);
5. gathers the shards into ``steering_outcomes.parquet`` and ``steering_gram.parquet``.

At the (first) dose it also writes ``feature_dose_stats.parquet`` for every feature of S:
``base_pass`` (needs S' and alpha; :func:`base_pass`, which ``screen`` uses too), which the fit
takes over the stats table's NaN column, and the diagnostics ``logit_entropy`` /
``logit_top10_mass`` of ``q_f = softmax(alpha * DL_f / sigma_fin)`` at the steering alpha (not
predictors since METHOD v2).

Interrupted (Ctrl-C, kill, crash), it resumes: a rerun with the same config and inputs
reconciles the shards with the manifest's shard record (:mod:`.shards`: hashes checked, a shard
written but not yet recorded adopted, a damaged one redone), never recomputes a finished
direction, and reuses the recorded calibration and rows per forward (so the resumed rows round
exactly as the finished ones did: the outcomes equal an uninterrupted run's bit for bit).
``resume=True`` (``--resume``) only adds the check that the folder records a steer stage at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from steerscreen.config import StatsConfig, SteerConfig
from steerscreen.config.stages import EQUAL_KL
from steerscreen.corpus import Contexts, Corpus, load_corpus
from steerscreen.errors import SpecError, SteerscreenError
from steerscreen.files import sha256_file, sha256_json
from steerscreen.layout import (
    FEATURE_DOSE_STATS,
    LINEAR_FORMS,
    STEER_SHARDS,
    STEERING_TOKENS,
    analysed_strength,
    equal_kl_alpha,
)
from steerscreen.memory import check_fits
from steerscreen.models import HookedModel, HookPoint, load_model, model_sha256
from steerscreen.models.shape import read_model_shape
from steerscreen.pipeline import shards, steer_ray
from steerscreen.pipeline.checks import header_d_sae, model_bytes
from steerscreen.pipeline.runs import RunDir, StageCheck, environment
from steerscreen.pipeline.stage import StageResult, StageRun, progress, stage
from steerscreen.pipeline.stats import describe_sae, stats_contexts
from steerscreen.saes.io import LoadedSAE, load_sae, read_sae_header
from steerscreen.saes.pairing import SAELike, validate_pairing
from steerscreen.stats.geometry import unit_rows
from steerscreen.stats.linear import downstream_tangents
from steerscreen.stats.logits import logit_columns
from steerscreen.stats.table import decode_rows
from steerscreen.steering.dose import Calibration, calibrate
from steerscreen.steering.engine import SteeringEngine, cache_bytes, row_bytes
from steerscreen.steering.passthrough import passthrough_pr, split_encoder, transported_pr
from steerscreen.steering.sampling import (
    context_sets,
    parse_feature_ids,
    random_directions,
    stratified_features,
)

STAGE = "steer"
SETS = ("steering", "fresh")
DOSE_STATS = FEATURE_DOSE_STATS
OUTPUTS = (RunDir.CONTEXTS, RunDir.STEERING_OUTCOMES, RunDir.STEERING_GRAM, STEERING_TOKENS,
           DOSE_STATS)


@dataclass(frozen=True, kw_only=True)
class SteerResult(StageResult):
    """What :func:`run_steer` did (also readable back from the manifest when skipped)."""

    n_features: int
    n_random: int
    strengths: list[float]
    alpha: list[float]
    residual_norm: float
    computed_directions: int
    """(direction, strength, set) triples computed by this call (0 when all were resumed)."""
    dose_mode: str = "calibrated"
    """calibrated, fixed (explicit strengths) or equal-kl (``strengths`` then holds the dose's
    label, target_kl, and ``alpha`` is empty: each direction has its own)."""
    target_kl: float | None = None
    alpha_range: dict[str, float] | None = None
    """equal-kl: min, median and max of the steered directions' own alpha."""

    @property
    def outcomes_path(self) -> Path:
        return self.run.file(RunDir.STEERING_OUTCOMES)


def check_steer(cfg: SteerConfig, stats: dict[str, Any], n_features: int, *,
                model: HookedModel | None = None, down: SAELike | None = None) -> None:
    """Before a steer stage loads anything: :func:`check_steer_inputs` for the model and hook
    the stats stage recorded."""
    sc = stats["config"]
    check_steer_inputs(cfg, sc["model"], sc.get("dtype", "float32"), stats["inputs"]["hook"],
                       n_features, model=model, down=down)


def check_steer_inputs(cfg: SteerConfig, model_spec: str, dtype: str, hook: str | None,
                       n_features: int, *, model: HookedModel | None = None,
                       down: SAELike | None = None) -> None:
    """The feature ids and count against the SAE's width, the downstream SAE against the model
    and the steering hook (None: not known yet), and the steered batch against memory."""
    if cfg.feature_ids is not None:
        parse_feature_ids(cfg.feature_ids, n_features)
    elif cfg.features > n_features:
        raise SpecError(f"asked to steer {cfg.features} features, but the SAE has only "
                        f"{n_features}", f"pass --features {n_features} or fewer")
    shape = model if model is not None else read_model_shape(model_spec)
    header = down if down is not None else read_sae_header(cfg.downstream_sae)
    if shape is None:
        return
    if header is not None:
        dhp = validate_pairing(header, shape, cfg.downstream_hook)
        hp = HookPoint.parse(hook) if hook is not None else None
        if hp is not None and dhp.depth <= hp.depth:
            raise SpecError(f"the downstream hook {dhp.name} does not lie after the steering "
                            f"hook {hp.name}", "pick a downstream SAE at a later layer")
    if cfg.batch_rows is not None:
        g = header_d_sae(header) if header is not None else 0
        t, v, d = cfg.context_len, shape.vocab_size, shape.d_model
        n_ctx = max(cfg.contexts, cfg.fresh_contexts, cfg.calibration_contexts)
        check_fits("the steer stage", {
            "steered batch": cfg.batch_rows * row_bytes(t, v, d, g),
            "clean cache": cache_bytes(n_ctx, t, v, d, g),
            **model_bytes(shape, dtype)},
            cfg.device, "lower --batch-rows (or leave it out: it is then sized from free "
            "memory), --context-len or --contexts")


def run_steer(cfg: SteerConfig, run_dir: str | Path, force: bool = False, *,
              model: HookedModel | None = None, sae: LoadedSAE | None = None,
              down: LoadedSAE | None = None, progress: bool = True,
              calibrations: dict[str, Calibration] | None = None, resume: bool = False,
              log: Callable[[str], None] | None = None) -> SteerResult:
    """Run the steer stage in ``run_dir`` (which must hold a complete stats stage).

    ``model`` / ``sae`` / ``down``: already-loaded objects to use instead of the recorded model
    and SAE specs and ``cfg.downstream_sae`` (tests, notebooks). ``calibrations``: a dict shared
    between runs; the dose calibration depends only on the model, hook, residual norm and
    calibration contexts and directions (not on the SAE), so runs that share those reuse it.
    ``resume``: fail unless ``run_dir`` already records a steer stage (``--resume``). With
    ``backend="ray"`` the workers load the recorded model and ``cfg.downstream_sae`` by spec."""
    with stage(STAGE, run_dir, cfg.record(), force=force, resume=resume, log=log,
               outputs=OUTPUTS) as st:
        stats = _stats_record(st.run)
        n_features = (stats.get("results") or {}).get("n_features")
        check_steer(cfg, stats, int(n_features) if n_features is not None else
                    st.run.read_table(RunDir.FEATURE_STATS).height, model=model, down=down)
        if cfg.dose == EQUAL_KL:
            check_equal_kl(st.run)
        st.cluster(cfg, cfg.device)
        inp = st.timed("load", lambda: _load(cfg, st.run, stats, model, sae, down))
        check = st.check(inp.hashes)
        if check.action == "skip":
            st.say(check.reason)
            return _result(st.run, check.record or {}, skipped=True)
        work = _prepare(st, cfg, inp, check)
        engine = SteeringEngine(inp.model, inp.hook, inp.down, inp.down_hook,
                                batch_rows=cfg.batch_rows, n_targets=cfg.n_targets,
                                n_out=cfg.n_out, n_target_tokens=cfg.n_target_tokens)
        cal = st.timed("calibration", lambda: _dose(
            cfg, st.run, engine, work.sets, work.r, inp.model.d_model, st.say,
            calibrations if calibrations is not None else {},
            _calibration_key(cfg, inp.hashes["model_sha256"], inp.hook.name, work.r,
                             work.sets)))
        work.strengths = ([cal.strength] if cal is not None else list(cfg.strengths)
                          if cfg.strengths is not None else [cfg.target_kl])  # equal-kl: label
        dose_info = st.timed("dose_stats", lambda: _dose_stats(cfg, st.run, inp, work))
        with st.span("steer"):
            computed = _steer(st, cfg, engine, inp, work, progress)
        return _finish(st, cfg, inp, work, cal, dose_info, computed)


@dataclass
class _Inputs:
    corpus: Corpus
    model: HookedModel
    sae: LoadedSAE
    hook: HookPoint
    down: LoadedSAE
    down_hook: HookPoint
    stats_config: dict[str, Any]
    hashes: dict[str, Any]


@dataclass
class _Work:
    """What one steer stage steers: context sets, directions, dose, and its shard record."""

    sets: dict[str, Contexts]
    features: np.ndarray
    dirs: torch.Tensor
    ids: np.ndarray
    r: float
    shard_dir: Path
    recorded: dict[str, dict[str, Any]]
    """shard name -> {sha256, rows}"""
    strengths: list[float] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    """Rows per forward, per context set (recorded, so a resume batches alike)."""
    alphas: np.ndarray | None = None
    """--dose equal-kl: each direction's own alpha (rows of ``dirs``); None: s * r."""


def _load(cfg: SteerConfig, run: RunDir, stats: dict[str, Any], model: HookedModel | None,
          sae: LoadedSAE | None, down: LoadedSAE | None) -> _Inputs:
    sc = stats["config"]
    corpus = load_corpus(sc["corpus"])
    model = model or load_model(sc["model"], cfg.device, sc.get("dtype", "float32"),
                                trust_remote_code=cfg.trust_remote_code)
    sae = sae or load_sae(sc["sae"], device=cfg.device)
    hp = validate_pairing(sae, model, stats["inputs"]["hook"])
    down = down or load_sae(cfg.downstream_sae, device=cfg.device)
    dhp = validate_pairing(down, model, cfg.downstream_hook)
    if dhp.depth <= hp.depth:
        raise SpecError(f"the downstream hook {dhp.name} does not lie after the steering hook "
                        f"{hp.name}", "pick a downstream SAE at a later layer")
    hashes = {"model_sha256": model_sha256(model), "sae_sha256": sae.sha256,
              "downstream_sae_sha256": down.sha256, "corpus_sha256": corpus.sha256,
              "hook": hp.name, "downstream_hook": dhp.name,
              "feature_stats_sha256": stats["outputs"][RunDir.FEATURE_STATS]["sha256"]}
    if cfg.dose == EQUAL_KL:  # the random directions' doses come from the forms
        hashes["linear_forms_sha256"] = (stats["outputs"].get(LINEAR_FORMS) or {}).get("sha256")
    return _Inputs(corpus, model, sae, hp, down, dhp, sc, hashes)


def _prepare(st: StageRun, cfg: SteerConfig, inp: _Inputs, check: StageCheck) -> _Work:
    """Contexts and directions; the stage record begun (or the shards of a running one
    reconciled); ``contexts.parquet`` written."""
    rec = check.record or {}
    continuing = (rec.get("status") == "running" and _same(rec.get("config"), cfg.record())
                  and _same(rec.get("inputs"), inp.hashes))
    shard_dir = st.run.file(STEER_SHARDS)
    if not continuing:
        shutil.rmtree(shard_dir, ignore_errors=True)
        st.say(check.reason)
    model = inp.model
    sets = context_sets(inp.corpus, model.tokenize, model.bos_id, context_len=cfg.context_len,
                        n_steering=cfg.contexts, n_fresh=cfg.fresh_contexts,
                        n_calibration=cfg.calibration_contexts
                        if cfg.strengths is None and cfg.dose != EQUAL_KL else 0,
                        seed=cfg.seed)
    table = st.run.read_table(RunDir.FEATURE_STATS, ("feature", "dead", "base_freq"))
    feats = _features(cfg, table, inp.sae.d_sae)
    dead = table["dead"].to_numpy()[feats]
    if dead.any():
        st.say(f"{int(dead.sum())} of the requested features never fired in the stats split")
    dirs = torch.cat([unit_rows(inp.sae.sae.W_dec.detach().float().cpu()[torch.as_tensor(
        feats)]), random_directions(cfg.random_directions, model.d_model, cfg.seed)])
    ids = np.concatenate([feats, -1 - np.arange(cfg.random_directions)])
    work = _Work(sets, feats, dirs, ids, float(st.run.read_manifest()["residual_norm"]),
                 shard_dir, {})
    if cfg.dose == EQUAL_KL:
        work.alphas = _equal_kl_alphas(st.run, feats, dirs[len(feats):], cfg.target_kl)
    if continuing:
        st.run.discard_temp_files()
        work.recorded, notes = shards.reconcile(shard_dir, rec.get("shards") or {})
        for note in notes:
            st.say(note)
        st.run.update_stage(STAGE, shards=work.recorded)
        st.say(f"resuming the steer stage: {len(work.recorded)} finished shard(s) reused "
               f"({sum(v['rows'] for v in work.recorded.values())} direction-sets)")
    else:
        st.run.begin_stage(STAGE, cfg.record(), inp.hashes, depends_on=["stats"], extra={
            "environment": environment(cfg.device, inp.stats_config.get("dtype", "float32")),
            "downstream_hook": inp.down_hook.name, "downstream_sae": describe_sae(inp.down),
            "downstream_sae_path": str(inp.down.path) if inp.down.path is not None
            else inp.down.spec})
    st.run.write_table(RunDir.CONTEXTS, contexts_frame(sets))
    return work


def _steer(st: StageRun, cfg: SteerConfig, engine: SteeringEngine, inp: _Inputs, work: _Work,
           show: bool) -> int:
    """Steer every direction not yet in a finished shard (local or Ray) -> directions done."""
    done = shards.done_keys(work.shard_dir)
    n_s = len(work.strengths)
    todo = {(name, si): [i for i, d in enumerate(work.ids) if (int(d), si, name) not in done]
            for name in SETS if name in work.sets for si in range(n_s)}
    n_rows = sum(len(v) * len(work.sets[name]) for (name, _), v in todo.items())
    where = ", ".join(f"{len(work.sets[s])} {s}" for s in SETS if s in work.sets)
    st.say(f"steering {len(work.features)} features + {cfg.random_directions} random "
           f"directions x {n_s} strength(s) on {where} contexts of {cfg.context_len} tokens "
           f"at {inp.hook.name}; S' at {inp.down_hook.name}"
           + (f" ({len(done)} direction-sets already done)" if done else ""))

    def save_shard(rows: list[dict[str, Any]]) -> None:
        name, info = shards.write_shard(work.shard_dir, rows)
        work.recorded[name] = info
        st.run.update_stage(STAGE, shards=work.recorded)

    work.sizes = dict((st.run.stage(STAGE) or {}).get("batch_rows") or {})

    def record_rows(name: str, rows: int) -> None:
        if work.sizes.get(name) != rows:
            if name in work.sizes:
                st.say(f"{name}: {rows} rows per forward instead of the recorded "
                       f"{work.sizes[name]} (--batch-rows): resumed outcomes may differ from "
                       "the finished shards' in the last bits")
            work.sizes[name] = rows
            st.run.update_stage(STAGE, batch_rows=work.sizes)

    # The recorded size unless the user set one: free memory may differ after a restart.
    batch_rows = {name: cfg.batch_rows or work.sizes.get(name) for name in work.sets}
    args = (work.sets, todo, work.dirs, work.ids, work.strengths, work.r)
    target_kl = cfg.target_kl if work.alphas is not None else None
    with progress(show, n_rows, label="steering", unit="rows") as advance:
        if cfg.backend != "ray":
            return _steer_local(cfg, engine, *args, batch_rows, record_rows, save_shard,
                                advance, work.alphas, target_kl)
        sc = inp.stats_config
        setup = steer_ray.Setup(
            model=sc["model"], dtype=sc.get("dtype", "float32"), device=cfg.device,
            trust_remote_code=cfg.trust_remote_code, hook=inp.hook.name,
            down_sae=cfg.downstream_sae, down_hook=inp.down_hook.name,
            model_sha256=inp.hashes["model_sha256"], down_sha256=inp.down.sha256,
            n_targets=cfg.n_targets, n_out=cfg.n_out, n_target_tokens=cfg.n_target_tokens,
            task_cpus=cfg.task_cpus)
        return steer_ray.ray_steer(cfg, setup, *args, cfg.shard_directions, batch_rows,
                                   record_rows, save_shard, advance, work.alphas, target_kl)


def _finish(st: StageRun, cfg: SteerConfig, inp: _Inputs, work: _Work,
            cal: Calibration | None, dose_info: dict[str, Any], computed: int) -> SteerResult:
    """Gather the shards into the outcome tables, write and record them."""
    with st.span("write"):
        got = shards.gather(work.shard_dir, work.ids, work.strengths,
                            [s for s in SETS if s in work.sets])
        outcomes = got.outcomes
        outputs = {
            RunDir.STEERING_OUTCOMES: st.run.write_table(RunDir.STEERING_OUTCOMES, outcomes),
            RunDir.STEERING_GRAM: st.run.write_table(RunDir.STEERING_GRAM, got.gram),
            STEERING_TOKENS: st.run.write_table(STEERING_TOKENS,
                                                token_rows(got.tokens, inp.model)),
            RunDir.CONTEXTS: {"sha256": sha256_file(st.run.file(RunDir.CONTEXTS))},
            DOSE_STATS: {"sha256": sha256_file(st.run.file(DOSE_STATS))}}
    mode = EQUAL_KL if work.alphas is not None else "calibrated" if cal is not None else "fixed"
    # equal-kl: strengths holds the dose's label (target_kl), each row its own s and alpha.
    alphas = [] if work.alphas is not None else [s * work.r for s in work.strengths]
    dose: dict[str, Any] = {"dose_mode": mode}
    if work.alphas is not None:
        a = work.alphas
        dose |= {"target_kl": cfg.target_kl, "alpha_range": {
            "min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())}}
    results = {"n_features": len(work.features), "n_random": cfg.random_directions,
               "features": work.features.tolist(), "strengths": work.strengths,
               "alpha": alphas, "residual_norm": work.r, "n_rows": outcomes.height,
               "computed": computed, "rows_per_forward": work.sizes, "runtime": cfg.describe(),
               "calibration": _cal_record(cal), "dose_stats": dose_info, **dose}
    record = st.run.complete_stage(STAGE, outputs=outputs, timings=st.total(), results=results,
                                   extra={
        **dose, "strengths": work.strengths, "alpha": alphas, "residual_norm": work.r,
        "hook": inp.hook.name, "downstream_hook": inp.down_hook.name,
    })["stages"][STAGE]
    shutil.rmtree(work.shard_dir, ignore_errors=True)
    return _result(st.run, record, skipped=False)


def _stats_record(run: RunDir) -> dict[str, Any]:
    rec = run.stage("stats") if run.manifest_path.is_file() else None
    if rec is None or rec.get("status") != "complete":
        raise SteerscreenError(f"{str(run.path)!r} holds no complete stats stage",
                               f"run `steerscreen stats --out {run.path} ...` first")
    return rec


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _features(cfg: SteerConfig, table: pl.DataFrame, n_features: int) -> np.ndarray:
    if cfg.feature_ids is not None:
        return parse_feature_ids(cfg.feature_ids, n_features)
    return stratified_features(table["base_freq"].to_numpy(), table["dead"].to_numpy(),
                               cfg.features, cfg.seed)


def _calibration_key(cfg: SteerConfig, model_sha: str, hook: str, r: float,
                     sets: dict[str, Contexts]) -> str:
    """Everything a calibrated dose depends on (the SAE is not among it)."""
    cal = sets.get("calibration")
    ids = None if cal is None else hashlib.sha256(
        np.ascontiguousarray(cal.token_ids, dtype=np.int64).tobytes()).hexdigest()
    return sha256_json({"model": model_sha, "hook": hook, "r": r, "contexts": ids,
                        "config": [cfg.calibration_directions, cfg.seed, cfg.target_kl,
                                   cfg.kl_tolerance]})


def _dose(cfg: SteerConfig, run: RunDir, engine: SteeringEngine, sets: dict[str, Contexts],
          r: float, d_model: int, say: Callable[[str], None],
          calibrations: dict[str, Calibration], key: str) -> Calibration | None:
    if cfg.strengths is not None or cfg.dose == EQUAL_KL:
        return None
    rec = (run.stage(STAGE) or {}).get("calibration")
    if rec is not None:  # resumed: the calibration is part of the recorded stage
        say(f"reusing the recorded dose calibration: s = {rec['strength']:.4g}")
        return Calibration(rec["strength"], rec["kl"], rec["target_kl"], rec["tolerance"],
                           rec["converged"], [tuple(e) for e in rec["evaluations"]])
    if key in calibrations:
        cal = calibrations[key]
        say(f"reusing the dose calibration of another run on the same model, hook and "
            f"contexts: s = {cal.strength:.4g}")
    else:
        cache = engine.clean(sets["calibration"].token_ids)
        cal_dirs = random_directions(cfg.calibration_directions, d_model, cfg.seed + 7919)
        cal = calibrate(lambda s: engine.mean_kl(cache, cal_dirs, s * r),
                        target_kl=cfg.target_kl, tolerance=cfg.kl_tolerance, log=say)
        calibrations[key] = cal
    run.update_manifest({"stages": {STAGE: {**(run.stage(STAGE) or {}),
                                            "calibration": _cal_record(cal)}}})
    return cal


def _lin_kl(run: RunDir) -> np.ndarray:
    """feature_stats' lin_kl (NaN for every feature when the column is missing)."""
    table = run.read_table(RunDir.FEATURE_STATS)
    if "lin_kl" not in table.columns:
        return np.full(table.height, np.nan)
    return table["lin_kl"].cast(pl.Float64).fill_null(np.nan).to_numpy()


def check_equal_kl(run: RunDir) -> None:
    """--dose equal-kl needs the stats stage's linear response: a finite lin_kl and the
    linear_forms (the random directions' dose)."""
    lin = _lin_kl(run)
    if not np.isfinite(lin).any() or not run.file(LINEAR_FORMS).is_file():
        what = ("no finite lin_kl" if not np.isfinite(lin).any()
                else f"no {LINEAR_FORMS}")
        raise SteerscreenError(
            f"--dose equal-kl needs the stats stage's linear response, but "
            f"{str(run.path)!r} has {what} (a stats stage run with --linear-contexts 0, or "
            "by an older steerscreen)",
            f"rerun `steerscreen stats --out {run.path} ... --linear-contexts 16 --force`, or "
            "steer with --dose calibrated")


def _equal_kl_alphas(run: RunDir, features: np.ndarray, random_RD: torch.Tensor,
                     target_kl: float) -> np.ndarray:
    """Each steered direction's own ``alpha = sqrt(target_kl / exp(lin_kl))``: the features'
    from feature_stats, the random directions' from linear_forms (features first, as in
    ``_Work.dirs``)."""
    from steerscreen.pipeline.linear import read_forms

    lin = _lin_kl(run)[features]
    bad = features[~np.isfinite(lin)]
    if bad.size:
        raise SteerscreenError(
            f"--dose equal-kl: {bad.size} of the steered features have no finite lin_kl "
            f"(feature(s) {', '.join(str(int(f)) for f in bad[:8])})",
            "pass --feature-ids without them, or steer with --dose calibrated")
    rate = (read_forms(run.file(LINEAR_FORMS)).kl_rate(random_RD) if random_RD.shape[0]
            else np.zeros(0))
    alphas = np.concatenate([equal_kl_alpha(target_kl, np.exp(lin)),
                             equal_kl_alpha(target_kl, rate)])
    if not np.isfinite(alphas).all():
        raise SteerscreenError(
            "--dose equal-kl: some random directions have no positive predicted KL in "
            f"{str(run.file(LINEAR_FORMS))!r}",
            f"rerun `steerscreen stats --out {run.path} ... --force`, or steer with "
            "--dose calibrated")
    return alphas


def base_pass(model: HookedModel, sae: LoadedSAE, down: LoadedSAE, down_hook: HookPoint,
              stats_cfg: StatsConfig, corpus: Corpus, positions: int, alpha: float,
              scale_F: np.ndarray | None = None) -> np.ndarray:
    """``base_pass`` of every feature of ``sae`` (docs/method.md §1): the passthrough response
    of S' to ``alpha v_f`` added at h', on ``positions`` clean stats-split positions
    (``scale_F``: feature f at ``alpha * scale_F[f]`` instead, the equal-KL dose)."""
    scfg = StatsConfig(**{**asdict(stats_cfg), "tokens": positions})
    ctx, _ = stats_contexts(scfg, corpus, model)
    ids = torch.as_tensor(ctx.token_ids, device=model.device)
    x = model.forward(ids, read=[down_hook], logits=False).acts[down_hook.name][:, 1:]
    x = x.reshape(-1, x.shape[-1])[:positions].float()
    v = unit_rows(sae.sae.W_dec.detach().float())
    if scale_F is not None:
        v = v * torch.as_tensor(scale_F, dtype=torch.float32, device=v.device).unsqueeze(1)
    return passthrough_pr(down, x, v, alpha)


def lin_pass(model: HookedModel, sae: LoadedSAE, hook: HookPoint, down: LoadedSAE,
             down_hook: HookPoint, stats_cfg: StatsConfig, corpus: Corpus, positions: int,
             alpha: float, scale_F: np.ndarray | None = None) -> np.ndarray:
    """``lin_pass`` of every feature of ``sae`` (docs/method.md §1): ``base_pass`` on the same
    clean positions with ``v_f`` transported from h to h' by the clean Jacobian (``scale_F``:
    each feature's dose as a multiple of ``alpha``, as :func:`base_pass`)."""
    scfg = StatsConfig(**{**asdict(stats_cfg), "tokens": positions})
    ctx, _ = stats_contexts(scfg, corpus, model)
    x, K = downstream_tangents(model, hook, down_hook, ctx.token_ids)
    x = x.reshape(-1, x.shape[-1])[:positions]
    K = K.reshape(-1, *K.shape[2:])[:positions]
    v = unit_rows(sae.sae.W_dec.detach().float())
    if scale_F is not None:
        v = v * torch.as_tensor(scale_F, dtype=torch.float32, device=v.device).unsqueeze(1)
    return transported_pr(down, x, K, v, alpha)


def _dose_stats(cfg: SteerConfig, run: RunDir, inp: _Inputs, work: _Work) -> dict[str, Any]:
    """``feature_dose_stats.parquet``: base_pass, lin_pass and the dose-dependent logit
    diagnostics for every feature of S at the analysed strength (skipped when a resumed run
    already wrote them)."""
    f = inp.sae.d_sae
    if work.alphas is not None:
        # equal-kl: base_pass at each feature's own alpha (features without a finite lin_kl
        # at the steered features' median); the logit diagnostics at that median.
        own = equal_kl_alpha(cfg.target_kl, np.exp(_lin_kl(run)))
        alpha = float(np.median(work.alphas[:len(work.features)]))
        alpha_F = np.where(np.isfinite(own), own, alpha)
    else:
        s = analysed_strength(work.strengths)
        strength = work.strengths[0] if s is None else s  # the fit's default, never s = 0
        alpha = strength * work.r
        alpha_F = np.full(f, alpha)
    strength = alpha / work.r
    path = run.file(DOSE_STATS)
    if path.is_file():
        try:
            old = pl.read_parquet(path)
            if old.height == f and np.array_equal(old["alpha"].to_numpy(), alpha_F):
                return {"alpha": alpha, "strength": strength, "reused": True}
        except Exception:  # a damaged file is recomputed
            pass
    bp = base_pass(inp.model, inp.sae, inp.down, inp.down_hook,
                   StatsConfig(**inp.stats_config), inp.corpus, cfg.pass_positions, alpha,
                   scale_F=None if work.alphas is None else alpha_F / alpha)
    lp = lin_pass(inp.model, inp.sae, inp.hook, inp.down, inp.down_hook,
                  StatsConfig(**inp.stats_config), inp.corpus, cfg.pass_positions, alpha,
                  scale_F=None if work.alphas is None else alpha_F / alpha)
    sigma_fin = float(run.read_manifest()["sigma_fin"])
    lc = logit_columns(inp.sae.sae.W_dec.detach().float(), inp.model.unembed(), alpha=alpha,
                       sigma_fin=sigma_fin)
    run.write_table(DOSE_STATS, pl.DataFrame({
        "feature": np.arange(f, dtype=np.int64), "base_pass": bp, "lin_pass": lp,
        "logit_entropy": lc.dose["logit_entropy"],
        "logit_top10_mass": lc.dose["logit_top10_mass"],
        "strength": alpha_F / work.r, "alpha": alpha_F}))
    return {"alpha": alpha, "strength": strength, "positions": cfg.pass_positions,
            "sigma_fin": sigma_fin, "fast_path": split_encoder(inp.down) is not None,
            "reused": False, **({"per_feature": True} if work.alphas is not None else {})}


def _cal_record(cal: Calibration | None) -> dict[str, Any] | None:
    return None if cal is None else {**asdict(cal), "evaluations": [list(e) for e in
                                                                     cal.evaluations]}


def _steer_local(cfg: SteerConfig, engine: SteeringEngine, sets: dict[str, Contexts],
                 todo: dict[tuple[str, int], list[int]], dirs: torch.Tensor, ids: np.ndarray,
                 strengths: list[float], r: float, batch_rows: dict[str, int | None],
                 record_rows: Callable[[str, int], None],
                 save: Callable[[list[dict[str, Any]]], None],
                 advance: Callable[[int], None], alphas: np.ndarray | None = None,
                 target_kl: float | None = None) -> int:
    """Steer every ``todo`` direction in this process, set by set -> directions computed
    (``alphas``: each direction's own, --dose equal-kl; else ``s * r``)."""
    computed = 0
    for name in SETS:
        if name not in sets or not any(todo[(name, si)] for si in range(len(strengths))):
            continue
        cache = engine.clean(sets[name].token_ids, batch_rows=batch_rows[name])
        record_rows(name, cache.batch_rows)
        for si, s in enumerate(strengths):
            idx = todo[(name, si)]
            if not idx:
                continue
            alpha = s * r if alphas is None else [float(a) for a in alphas[idx]]
            for rows in shards.shard_rows(engine, cache, name, dirs[idx], ids[idx], s, si,
                                          alpha, cfg.shard_directions, advance,
                                          r=r, target_kl=target_kl):
                save(rows)
                computed += len(rows)
        del cache
    return computed


def token_rows(tokens: pl.DataFrame, model: HookedModel) -> pl.DataFrame:
    """``steering_tokens.parquet``: the gathered effect tokens with each token decoded on its
    own (null without a decoding tokenizer), ``token`` beside ``token_id``."""
    tok = getattr(model, "tokenizer", None)
    text: list[str | None] = [None] * tokens.height
    if tokens.height and callable(getattr(tok, "batch_decode", None)):
        text = decode_rows(tok, tokens["token_id"].to_numpy()[:, None])
    return tokens.select("feature", "direction", "strength", "context_set", "kind", "rank",
                         "token_id", pl.Series("token", text, dtype=pl.String), "value")


def contexts_frame(sets: dict[str, Contexts]) -> pl.DataFrame:
    """``contexts.parquet``: context_id (row of the set, the gram's order), set, token_ids,
    document index in the corpus and token offset."""
    frames = [pl.DataFrame({
        "context_id": np.arange(len(c), dtype=np.int64), "set": [name] * len(c),
        "token_ids": pl.Series(c.token_ids.astype(np.int32)).cast(pl.List(pl.Int32)),
        "doc_id": c.doc_ids, "start": c.starts}) for name, c in sets.items()]
    return pl.concat(frames)


def _result(run: RunDir, record: dict[str, Any], *, skipped: bool) -> SteerResult:
    res, tim = record.get("results", {}), record.get("timings_s", {})
    return SteerResult(run=run, skipped=skipped, n_features=int(res.get("n_features", 0)),
                       n_random=int(res.get("n_random", 0)),
                       strengths=list(res.get("strengths", [])), alpha=list(res.get("alpha", [])),
                       residual_norm=float(res.get("residual_norm", math.nan)),
                       computed_directions=0 if skipped else int(res.get("computed", 0)),
                       dose_mode=str(res.get("dose_mode") or ("calibrated" if res.get(
                           "calibration") else "fixed")),
                       target_kl=res.get("target_kl"), alpha_range=res.get("alpha_range"),
                       seconds=float(tim.get("total", math.nan)),
                       timings={k: float(v) for k, v in tim.items()})


__all__ = ["SteerConfig", "SteerResult", "base_pass", "check_equal_kl", "check_steer",
           "check_steer_inputs", "contexts_frame", "lin_pass", "run_steer"]
