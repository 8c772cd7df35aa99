"""The ``steer`` stage: METHOD §2 interventions on a feature sample -> §3 outcomes in the run.

:func:`run_steer` reads the model, SAE, hook, corpus and residual norm from the run's completed
``stats`` stage, then

1. draws the context sets (``calibration``, ``steering``, ``fresh``; :mod:`.sampling`) and writes
   ``contexts.parquet``;
2. samples features (stratified by ``base_freq`` decile) or takes the given ids, and adds the
   seeded random null directions (``feature = -1 - i``);
3. fixes the dose: explicit ``strengths``, or calibrated (:mod:`.dose`) so that random
   directions cost ``target_kl`` nats on the calibration contexts;
4. steers every direction on both context sets at every strength with :class:`SteeringEngine`,
   writing finished directions to shards (``steering_shards/``) as they complete (with
   ``backend="ray"``, one Ray task per shard: :mod:`.distributed`, the same rows bit for bit);
5. gathers the shards into ``steering_outcomes.parquet`` and ``steering_gram.parquet``.

At the (first) dose it also writes ``feature_dose_stats.parquet`` for every feature of S:
``base_pass`` (needs S' and alpha) and ``logit_entropy`` / ``logit_top10_mass`` recomputed at the
steering alpha (:mod:`.passthrough`); the screening stage takes these over the stats table's.

Interrupted (Ctrl-C, kill, crash), it resumes: a rerun with the same config and inputs
reconciles the shards with the manifest's shard record (:mod:`.shards`: hashes checked, a shard
written but not yet recorded adopted, a damaged one redone), never recomputes a finished
direction, and reuses the recorded calibration and rows per forward (so the resumed rows round
exactly as the finished ones did: the outcomes equal an uninterrupted run's bit for bit).
``resume=True`` (``--resume``) only adds the check that the folder records a steer stage at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from steerscreen import cluster, preflight
from steerscreen.cluster import CLUSTER_FIELDS, ClusterOptions
from steerscreen.corpus import Contexts, load_corpus
from steerscreen.errors import SpecError, SteerscreenError, check_seed
from steerscreen.files import sha256_json
from steerscreen.models import HookedModel, HookPoint, load_model
from steerscreen.runs import RunDir, analysed_strength, environment
from steerscreen.saes.io import LoadedSAE, load_sae
from steerscreen.saes.pairing import validate_pairing
from steerscreen.stats.geometry import unit_rows
from steerscreen.stats.logits import logit_columns
from steerscreen.stats.stage import StatsConfig, describe_sae, model_sha256, stats_contexts
from steerscreen.steering import distributed, shards
from steerscreen.steering.dose import Calibration, calibrate
from steerscreen.steering.engine import SteeringEngine
from steerscreen.steering.outcomes import N_OUT, N_TARGET_TOKENS, N_TARGETS
from steerscreen.steering.passthrough import passthrough_pr, split_encoder
from steerscreen.steering.sampling import (
    context_sets,
    parse_feature_ids,
    random_directions,
    stratified_features,
)

STAGE = "steer"
SHARDS = "steering_shards"
DOSE_STATS = "feature_dose_stats.parquet"
SETS = ("steering", "fresh")
_RUNTIME_FIELDS = ("batch_rows", "device", "shard_directions", "trust_remote_code",
                   *CLUSTER_FIELDS)


@dataclass
class SteerConfig(ClusterOptions):
    """Everything that defines a steer stage; the CLI's options mirror these fields (where it
    runs: :class:`~steerscreen.cluster.ClusterOptions`)."""

    downstream_sae: str
    """S': the SAE at the downstream hook (same spec forms as --sae)."""
    downstream_hook: str | None = None
    """h' (after the steering hook); None = the one S' records."""
    features: int = 512
    """N: features sampled, stratified by base_freq decile (ignored with feature_ids)."""
    feature_ids: str | None = None
    """Explicit features: "3,17,40" or a file (one id per line, or CSV/parquet 'feature')."""
    random_directions: int = 64
    """R: seeded random unit directions steered as the null (feature = -1 - i)."""
    contexts: int = 32
    """C: steering contexts."""
    fresh_contexts: int = 32
    """C_fresh: fresh contexts (disjoint documents) for held-out screening; 0 = none."""
    context_len: int = 64
    """T: tokens per context, BOS included."""
    strengths: list[float] | None = None
    """s values (alpha = s * r); None = one calibrated strength."""
    target_kl: float = 0.25
    """Calibration: mean KL (nats) of random directions at the calibrated s."""
    kl_tolerance: float = 0.05
    """Calibration: relative tolerance on target_kl."""
    calibration_contexts: int = 16
    """Calibration-split contexts the dose is calibrated on."""
    calibration_directions: int = 32
    """Random directions the dose is calibrated with (seeded apart from the null's)."""
    n_targets: int = N_TARGETS
    """|T_f|: downstream features with the largest passthrough response, excluded from w."""
    n_out: int = N_OUT
    """collateral_out: largest entries of mean_c d_c that count as the main effect."""
    n_target_tokens: int = N_TARGET_TOKENS
    """target_gain: top direct-logit tokens."""
    pass_positions: int = 256
    """Clean stats-split positions at h' for base_pass (feature_dose_stats.parquet)."""
    seed: int = 0
    """Seeds the feature sample, the random directions and the context draws."""
    batch_rows: int | None = None
    """Steered rows per forward (None: from free memory), rounded to fit C."""
    shard_directions: int = 16
    """Directions per shard file (how much an interruption can lose at most)."""
    device: str = "cpu"
    trust_remote_code: bool = False
    """Run Python code shipped with the run's hub model (as the stats stage was told to)."""

    def __post_init__(self) -> None:
        check_seed(self.seed)
        self.check_cluster()
        for name in ("contexts", "context_len", "random_directions", "n_targets", "n_out",
                     "n_target_tokens", "shard_directions", "calibration_directions",
                     "pass_positions"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be positive, got {getattr(self, name)}",
                                f"pass a positive --{name.replace('_', '-')}")
        if self.contexts < 2:
            raise SpecError("effect_stability needs at least 2 contexts", "pass --contexts 32")
        if self.context_len < 2:
            raise SpecError(f"context_len must be >= 2, got {self.context_len}",
                            "a context is BOS plus at least one token")
        if self.fresh_contexts < 0 or self.calibration_contexts < 0 or self.features < 0:
            raise SpecError("--features, --fresh-contexts and --calibration-contexts cannot be "
                            "negative", "pass 0 or a positive number")
        if self.strengths is not None:
            bad = [s for s in self.strengths if not (math.isfinite(s) and s >= 0)]
            if not self.strengths or bad:
                raise SpecError(f"strengths must be non-negative numbers, got {self.strengths}",
                                "pass e.g. --strengths 0.25 or --strengths 0.125,0.25,0.5")
        elif self.calibration_contexts < 1:
            raise SpecError("a calibrated dose needs calibration contexts",
                            "pass --calibration-contexts 16, or explicit --strengths")
        if not (self.target_kl > 0 and 0 < self.kl_tolerance < 1):
            raise SpecError("target_kl must be > 0 and kl_tolerance in (0, 1)",
                            "pass e.g. --target-kl 0.25 --kl-tolerance 0.05")
        if self.downstream_hook is not None:
            HookPoint.parse(self.downstream_hook)
        if self.features == 0 and self.feature_ids is None:
            raise SpecError("nothing to steer: --features 0 and no --feature-ids",
                            "pass --features N or --feature-ids")

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in _RUNTIME_FIELDS}


@dataclass(frozen=True)
class SteerResult:
    run: RunDir
    skipped: bool
    n_features: int
    n_random: int
    strengths: list[float]
    alpha: list[float]
    residual_norm: float
    computed_directions: int
    """(direction, strength, set) triples computed by this call (0 when all were resumed)."""
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def outcomes_path(self) -> Path:
        return self.run.file(RunDir.STEERING_OUTCOMES)


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
    with contextlib.ExitStack() as hold:
        return _run_steer(cfg, run_dir, force, model=model, sae=sae, down=down,
                          progress=progress, calibrations=calibrations, resume=resume, log=log,
                          hold=hold)


def _run_steer(cfg: SteerConfig, run_dir: str | Path, force: bool, *,
               model: HookedModel | None, sae: LoadedSAE | None, down: LoadedSAE | None,
               progress: bool, calibrations: dict[str, Calibration] | None, resume: bool,
               log: Callable[[str], None] | None, hold: contextlib.ExitStack) -> SteerResult:
    say = log or (lambda _m: None)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    run = RunDir(run_dir)
    if resume:
        run.require_resumable(STAGE, force=force)
    stats = _stats_record(run)
    run.check_stage(STAGE, cfg.record(), force=force)
    n_features = (stats.get("results") or {}).get("n_features")
    preflight.check_steer(cfg, stats, int(n_features) if n_features is not None else
                          run.read_table(RunDir.FEATURE_STATS).height, model=model, down=down)
    if cfg.backend == "ray":  # Ray up and able to run a task before anything heavy loads
        hold.enter_context(cluster.session(cfg, cfg.device, "steer"))
    sc = stats["config"]
    t = time.perf_counter()
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
    timings["load"] = time.perf_counter() - t
    stats_table = run.read_table(RunDir.FEATURE_STATS)
    inputs = {"model_sha256": model_sha256(model), "sae_sha256": sae.sha256,
              "downstream_sae_sha256": down.sha256, "corpus_sha256": corpus.sha256,
              "hook": hp.name, "downstream_hook": dhp.name,
              "feature_stats_sha256": stats["outputs"][RunDir.FEATURE_STATS]["sha256"]}
    check = run.check_stage(STAGE, cfg.record(), force=force, inputs=inputs)
    if check.action == "skip":
        say(check.reason)
        return _result(run, check.record or {}, skipped=True)
    continuing = (check.record is not None and check.record.get("status") == "running"
                  and _same(check.record.get("config"), cfg.record())
                  and _same(check.record.get("inputs"), inputs))
    shard_dir = run.file(SHARDS)
    if not continuing and shard_dir.exists():
        shutil.rmtree(shard_dir)
    if not continuing:
        say(check.reason)

    # Contexts and directions.
    sets = context_sets(corpus, model.tokenize, model.bos_id, context_len=cfg.context_len,
                        n_steering=cfg.contexts, n_fresh=cfg.fresh_contexts,
                        n_calibration=cfg.calibration_contexts if cfg.strengths is None else 0,
                        seed=cfg.seed)
    feats = _features(cfg, stats_table, sae.d_sae)
    dead = stats_table["dead"].to_numpy()[feats]
    if dead.any():
        say(f"{int(dead.sum())} of the requested features never fired in the stats split")
    dirs = torch.cat([unit_rows(sae.sae.W_dec.detach().float().cpu()[torch.as_tensor(feats)]),
                      random_directions(cfg.random_directions, model.d_model, cfg.seed)])
    ids = np.concatenate([feats, -1 - np.arange(cfg.random_directions)])
    r = float(run.read_manifest()["residual_norm"])
    recorded: dict[str, dict[str, Any]] = {}  # shard name -> {sha256, rows}
    if continuing:
        run.discard_temp_files()
        recorded, notes = shards.reconcile(shard_dir, (check.record or {}).get("shards") or {})
        for note in notes:
            say(note)
        run.update_stage(STAGE, shards=recorded)
        say(f"resuming the steer stage: {len(recorded)} finished shard(s) reused "
            f"({sum(v['rows'] for v in recorded.values())} direction-sets)")
    else:
        run.begin_stage(STAGE, cfg.record(), inputs, depends_on=["stats"], extra={
            "environment": environment(cfg.device, sc.get("dtype", "float32")),
            "downstream_hook": dhp.name, "downstream_sae": describe_sae(down),
            "downstream_sae_path": str(down.path) if down.path is not None else down.spec})
    run.write_table(RunDir.CONTEXTS, contexts_frame(sets))

    engine = SteeringEngine(model, hp, down, dhp, batch_rows=cfg.batch_rows,
                            n_targets=cfg.n_targets, n_out=cfg.n_out,
                            n_target_tokens=cfg.n_target_tokens)
    t = time.perf_counter()
    cal = _dose(cfg, run, engine, sets, r, model.d_model, say,
                calibrations if calibrations is not None else {},
                _calibration_key(cfg, inputs["model_sha256"], hp.name, r, sets))
    timings["calibration"] = time.perf_counter() - t
    strengths = [cal.strength] if cal is not None else list(cfg.strengths or [])
    t = time.perf_counter()
    # The dose-dependent columns at the strength the fit analyses by default (not s = 0).
    dose_s = analysed_strength(strengths)
    dose_info = _dose_stats(cfg, run, model, sae, down, dhp, corpus, sc,
                            strengths[0] if dose_s is None else dose_s, r)
    timings["dose_stats"] = time.perf_counter() - t

    done = shards.done_keys(shard_dir)
    todo = {(name, si): [i for i, d in enumerate(ids) if (int(d), si, name) not in done]
            for name in SETS if name in sets for si in range(len(strengths))}
    n_rows = sum(len(v) * len(sets[name]) for (name, _), v in todo.items())
    where = ", ".join(f"{len(sets[s])} {s}" for s in SETS if s in sets)
    say(f"steering {len(feats)} features + {cfg.random_directions} random directions x "
        f"{len(strengths)} strength(s) on {where} contexts of {cfg.context_len} tokens at "
        f"{hp.name}; S' at {dhp.name}"
        + (f" ({len(done)} direction-sets already done)" if done else ""))

    def save_shard(rows: list[dict[str, Any]]) -> None:
        name, info = shards.write_shard(shard_dir, rows)
        recorded[name] = info
        run.update_stage(STAGE, shards=recorded)

    sizes: dict[str, int] = dict((run.stage(STAGE) or {}).get("batch_rows") or {})

    def record_rows(name: str, rows: int) -> None:
        if sizes.get(name) != rows:
            if name in sizes:
                say(f"{name}: {rows} rows per forward instead of the recorded {sizes[name]} "
                    "(--batch-rows): resumed outcomes may differ from the finished shards' in "
                    "the last bits")
            sizes[name] = rows
            run.update_stage(STAGE, batch_rows=sizes)

    # The recorded size unless the user set one: free memory may differ after a restart.
    batch_rows = {name: cfg.batch_rows or sizes.get(name) for name in sets}
    t = time.perf_counter()
    with _bar(progress, n_rows) as advance:
        if cfg.backend == "ray":
            setup = distributed.Setup(
                model=sc["model"], dtype=sc.get("dtype", "float32"), device=cfg.device,
                trust_remote_code=cfg.trust_remote_code, hook=hp.name,
                down_sae=cfg.downstream_sae, down_hook=dhp.name,
                model_sha256=inputs["model_sha256"], down_sha256=down.sha256,
                n_targets=cfg.n_targets, n_out=cfg.n_out, n_target_tokens=cfg.n_target_tokens,
                task_cpus=cfg.task_cpus)
            computed = distributed.ray_steer(cfg, setup, sets, todo, dirs, ids, strengths, r,
                                             cfg.shard_directions, batch_rows, record_rows,
                                             save_shard, advance)
        else:
            computed = _steer_local(cfg, engine, sets, todo, dirs, ids, strengths, r,
                                    batch_rows, record_rows, save_shard, advance)
    timings["steer"] = time.perf_counter() - t

    t = time.perf_counter()
    outcomes, gram = shards.gather(shard_dir, ids, strengths, [s for s in SETS if s in sets])
    outputs = {RunDir.STEERING_OUTCOMES: run.write_table(RunDir.STEERING_OUTCOMES, outcomes),
               RunDir.STEERING_GRAM: run.write_table(RunDir.STEERING_GRAM, gram),
               RunDir.CONTEXTS: {"sha256": _sha(run.file(RunDir.CONTEXTS))},
               DOSE_STATS: {"sha256": _sha(run.file(DOSE_STATS))}}
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    alphas = [s * r for s in strengths]
    results = {"n_features": len(feats), "n_random": cfg.random_directions,
               "features": feats.tolist(), "strengths": strengths, "alpha": alphas,
               "residual_norm": r, "n_rows": outcomes.height, "computed": computed,
               "rows_per_forward": sizes, "runtime": cfg.describe(),
               "calibration": _cal_record(cal), "dose_stats": dose_info}
    record = run.complete_stage(STAGE, outputs=outputs, timings=timings, results=results, extra={
        "dose_mode": "calibrated" if cal is not None else "fixed", "strengths": strengths,
        "alpha": alphas, "residual_norm": r, "hook": hp.name, "downstream_hook": dhp.name,
    })["stages"][STAGE]
    shutil.rmtree(shard_dir, ignore_errors=True)
    return _result(run, record, skipped=False)


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
    if cfg.strengths is not None:
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


def _dose_stats(cfg: SteerConfig, run: RunDir, model: HookedModel, sae: LoadedSAE,
                down: LoadedSAE, dhp: HookPoint, corpus, stats_cfg: dict[str, Any],
                strength: float, r: float) -> dict[str, Any]:
    """``feature_dose_stats.parquet``: base_pass and the dose-dependent logit columns for every
    feature of S at the first strength (skipped when a resumed run already wrote them)."""
    alpha = strength * r
    path = run.file(DOSE_STATS)
    if path.is_file():
        try:
            old = pl.read_parquet(path)
            if old.height == sae.d_sae and float(old["alpha"][0]) == alpha:
                return {"alpha": alpha, "strength": strength, "reused": True}
        except Exception:  # a damaged file is recomputed
            pass
    scfg = StatsConfig(**{**stats_cfg, "tokens": cfg.pass_positions})
    ctx, _ = stats_contexts(scfg, corpus, model)
    ids = torch.as_tensor(ctx.token_ids, device=model.device)
    x = model.forward(ids, read=[dhp], logits=False).acts[dhp.name][:, 1:]
    x = x.reshape(-1, x.shape[-1])[: cfg.pass_positions].float()
    W_dec = sae.sae.W_dec.detach().float()
    base_pass = passthrough_pr(down, x, unit_rows(W_dec), alpha)
    sigma_fin = float(run.read_manifest()["sigma_fin"])
    lc = logit_columns(W_dec, model.unembed(), alpha=alpha, sigma_fin=sigma_fin)
    f = sae.d_sae
    df = pl.DataFrame({"feature": np.arange(f, dtype=np.int64), "base_pass": base_pass,
                       "logit_entropy": lc["logit_entropy"],
                       "logit_top10_mass": lc["logit_top10_mass"],
                       "strength": np.full(f, strength), "alpha": np.full(f, alpha)})
    run.write_table(DOSE_STATS, df)
    return {"alpha": alpha, "strength": strength, "positions": int(x.shape[0]),
            "sigma_fin": sigma_fin, "fast_path": split_encoder(down) is not None,
            "reused": False}


def _cal_record(cal: Calibration | None) -> dict[str, Any] | None:
    return None if cal is None else {**asdict(cal), "evaluations": [list(e) for e in
                                                                     cal.evaluations]}


def _steer_local(cfg: SteerConfig, engine: SteeringEngine, sets: dict[str, Contexts],
                 todo: dict[tuple[str, int], list[int]], dirs: torch.Tensor, ids: np.ndarray,
                 strengths: list[float], r: float, batch_rows: dict[str, int | None],
                 record_rows: Callable[[str, int], None],
                 save: Callable[[list[dict[str, Any]]], None],
                 advance: Callable[[int], None]) -> int:
    """Steer every ``todo`` direction in this process, set by set -> directions computed."""
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
            for rows in shards.shard_rows(engine, cache, name, dirs[idx], ids[idx], s, si,
                                          s * r, cfg.shard_directions, advance):
                save(rows)
                computed += len(rows)
        del cache
    return computed


def contexts_frame(sets: dict[str, Contexts]) -> pl.DataFrame:
    """``contexts.parquet``: context_id (row of the set, the gram's order), set, token_ids,
    document index in the corpus and token offset."""
    frames = [pl.DataFrame({
        "context_id": np.arange(len(c), dtype=np.int64), "set": [name] * len(c),
        "token_ids": pl.Series(c.token_ids.astype(np.int32)).cast(pl.List(pl.Int32)),
        "doc_id": c.doc_ids, "start": c.starts}) for name, c in sets.items()]
    return pl.concat(frames)


def _sha(p: Path) -> str:
    from steerscreen.files import sha256_file

    return sha256_file(p)


class _bar:
    """A rich progress bar over steered rows (rate and ETA), or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda _n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task) -> Text:
                speed = task.finished_speed or task.speed
                return Text("? rows/s" if speed is None else f"{speed:.1f} rows/s", style="cyan")

        self.progress = Progress(TextColumn("[bold]steering"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("rows"), Rate(), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(stderr=True))
        self.progress.start()
        task = self.progress.add_task("steer", total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()


def _result(run: RunDir, record: dict[str, Any], *, skipped: bool) -> SteerResult:
    res, tim = record.get("results", {}), record.get("timings_s", {})
    return SteerResult(run=run, skipped=skipped, n_features=int(res.get("n_features", 0)),
                       n_random=int(res.get("n_random", 0)),
                       strengths=list(res.get("strengths", [])), alpha=list(res.get("alpha", [])),
                       residual_norm=float(res.get("residual_norm", math.nan)),
                       computed_directions=0 if skipped else int(res.get("computed", 0)),
                       seconds=float(tim.get("total", math.nan)),
                       timings={k: float(v) for k, v in tim.items()})


__all__ = ["SteerConfig", "SteerResult", "contexts_frame", "run_steer"]
