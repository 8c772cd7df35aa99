"""The ``stats`` stage: one streaming pass over the stats split -> ``feature_stats.parquet``.

:func:`run_stats` loads the model, SAE and corpus, checks that the SAE fits the model and hook,
splits the corpus by document (``DEFAULT_SPLITS``, seeded) and cuts contexts from the **stats
split only**, runs :func:`~steerscreen.stats.collect.collect_stats` (model up to the hook, SAE
encode, every accumulator) and writes, in the run folder (docs/method.md §5):

- ``feature_stats.parquet``: one row per feature, every registered column (``docs/
  statistics.md``), dead features flagged with NaN statistics;
- ``feature_examples.parquet``: each feature's top activating firings (value, context, position,
  the token window ending there, the whole context's token ids, decoded text);
- ``feature_logit_tokens.parquet``: each feature's top-10 direct-logit tokens (the tokens with
  the largest ``DL_f`` entries: feature, rank, token_id, the decoded token, dl), from the top-k
  the ``logit_*`` columns already take;
- ``manifest.json``: environment, inputs and their hashes, the stage config, timings, output
  hashes, and the dose unit.

The dose. ``r`` = the median L2 norm of the raw residual at the hook over positions >= 1 of
the stats split, measured in the same pass (the exact lower median). The manifest records the
dose ``alpha = s * r`` with ``s = strength`` (default 0.25) until the steering stage calibrates
its own; no ``feature_stats`` column depends on it (the ``logit_*`` columns are scale-free,
METHOD v2; the dose-dependent ``logit_entropy`` / ``logit_top10_mass`` are diagnostics the steer
stage writes to ``feature_dose_stats.parquet``). Logit softcaps are ignored for direct-logit
work, and the manifest says so.

Interrupted, it resumes: the pass checkpoints its accumulators every ``checkpoint_s`` seconds
(:mod:`~steerscreen.pipeline.checkpoint`, recorded in the manifest), and a rerun with the same
config and inputs continues from the last checkpoint, giving tables bit-identical to an
uninterrupted pass. ``resume=True`` (``--resume``) only adds the check that the folder records
a stats stage at all.

With ``backend="ray"`` the pass runs as one Ray task per shard of ``shard_contexts`` contexts
(:mod:`~steerscreen.pipeline.stats_ray`; finished shards are saved and recorded, so a rerun
resumes there instead) and gives the same tables bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from steerscreen.config import StatsConfig
from steerscreen.corpus import (
    DEFAULT_SPLITS,
    Contexts,
    Corpus,
    load_corpus,
    make_contexts,
    split_documents,
)
from steerscreen.corpus import describe as describe_corpus
from steerscreen.errors import CorpusError
from steerscreen.files import sha256_json
from steerscreen.layout import (
    CHECKPOINT,
    FEATURE_LOGIT_TOKENS,
    LINEAR_CONTEXTS,
    LINEAR_FORMS,
    STATS_SHARDS,
)
from steerscreen.memory import check_fits
from steerscreen.models import HookedModel, HookPoint, ModelSpec, load_model, model_sha256
from steerscreen.models import describe as describe_model
from steerscreen.models.shape import read_model_shape
from steerscreen.pipeline import checkpoint, linear, stats_ray
from steerscreen.pipeline.checks import (
    check_corpus_fits,
    check_first_batch,
    check_writable,
    forward_bytes,
    header_d_sae,
    model_bytes,
)
from steerscreen.pipeline.runs import RunDir, StageCheck, environment
from steerscreen.pipeline.stage import StageResult, StageRun, progress, stage
from steerscreen.saes.io import (
    LoadedSAE,
    check_sae_spec,
    check_weights_finite,
    load_sae,
    read_sae_header,
)
from steerscreen.saes.pairing import SAELike, check_layer, validate_pairing
from steerscreen.stats.accumulators import StatsAccumulator, StatsOptions
from steerscreen.stats.collect import collect_stats, stats_tables
from steerscreen.stats.logits import logit_columns
from steerscreen.stats.table import (
    TableOptions,
    example_rows,
    logit_token_rows,
    logit_token_table,
)

STAGE = "stats"
OUTPUTS = (RunDir.FEATURE_STATS, RunDir.FEATURE_EXAMPLES, FEATURE_LOGIT_TOKENS, LINEAR_CONTEXTS,
           LINEAR_FORMS)


@dataclass(frozen=True, kw_only=True)
class StatsResult(StageResult):
    """What :func:`run_stats` did (also readable back from the manifest when skipped)."""

    n_features: int
    n_alive: int
    n_dead: int
    n_contexts: int
    n_positions: int
    """Scored positions (>= 1) in the pass."""
    residual_norm: float
    """r: median L2 norm of the raw residual at the hook (positions >= 1, stats split)."""
    alpha: float
    """strength * residual_norm: the dose of the logit columns."""
    sigma_fin: float

    @property
    def stats_path(self) -> Path:
        return self.run.file(RunDir.FEATURE_STATS)

    @property
    def examples_path(self) -> Path:
        return self.run.file(RunDir.FEATURE_EXAMPLES)

    @property
    def logit_tokens_path(self) -> Path:
        return self.run.file(FEATURE_LOGIT_TOKENS)


def check_stats(cfg: StatsConfig, out: str | Path | None, *, model: HookedModel | None = None,
                sae: SAELike | None = None) -> HookPoint | None:
    """Before a stats stage loads anything: output folder (unless None), SAE/model/hook pairing
    from their configs, and memory. Returns the hook when it could be resolved."""
    if out is not None:
        check_writable(out)
    header = sae if sae is not None else read_sae_header(cfg.sae)  # a local folder: checked
    if header is None and sae is None:
        check_sae_spec(cfg.sae)  # an unknown scheme, a release typo: before the model loads
    shape = model if model is not None else read_model_shape(cfg.model)
    hp = None
    if shape is not None and header is not None:
        hp = validate_pairing(header, shape, cfg.hook)
    elif shape is not None and cfg.hook is not None:
        hp = check_layer(HookPoint.parse(cfg.hook), shape)
    if shape is not None and header is not None:
        n_ctx = -(-cfg.tokens // (cfg.context_len - 1))
        acc = StatsOptions.of(cfg).memory_bytes(header_d_sae(header), shape.d_model,
                                         cfg.final_norm_contexts * (cfg.context_len - 1),
                                         n_ctx * (cfg.context_len - 1))
        check_fits("the stats pass", {"accumulators": acc, **model_bytes(shape, cfg.dtype),
                                      "batch": forward_bytes(shape, cfg.batch_size,
                                                             cfg.context_len)},
                   cfg.device, "lower --reservoir-size, --max-partners, --n-examples or "
                   "--batch-size, or use a smaller SAE or model")
    return hp


def check_stats_corpus(cfg: StatsConfig, corpus: Corpus) -> None:
    """Refuse a stats split that cannot hold ``cfg.tokens`` for any tokenizer (no model yet)."""
    splits = split_documents(len(corpus.documents), DEFAULT_SPLITS, cfg.seed)
    docs = [corpus.documents[i] for i in splits["stats"]]
    need = -(-cfg.tokens // (cfg.context_len - 1))
    check_corpus_fits(docs, cfg.context_len, need, f"the stats split ({len(docs)} of "
                      f"{len(corpus.documents)} documents of {corpus.spec!r})",
                      f"--tokens {cfg.tokens}")


def run_stats(cfg: StatsConfig, out: str | Path, force: bool = False, *,
              model: HookedModel | None = None, sae: LoadedSAE | None = None,
              progress: bool = True, resume: bool = False,
              log: Callable[[str], None] | None = None) -> StatsResult:
    """Run the stats stage into the run folder ``out`` (see the module docstring).

    ``model`` / ``sae``: already-loaded objects to use instead of loading ``cfg.model`` /
    ``cfg.sae`` (tests, notebooks; with ``backend="ray"`` the workers load the specs, which
    must hold the same weights). ``force`` recomputes over a recorded stage with another
    config. Nothing is written before every input has been loaded and checked. ``resume``:
    fail unless ``out`` already records a stats stage (``--resume``).
    """
    with stage(STAGE, out, cfg.record(), force=force, resume=resume, log=log,
               outputs=OUTPUTS) as st:
        ModelSpec.parse(cfg.model)
        hook = check_stats(cfg, out, model=model, sae=sae)  # configs, --out, memory: cheap too
        st.cluster(cfg, cfg.device)
        inp = _load(st, cfg, model, sae, hook)
        check = st.check(inp.hashes)
        if check.action == "skip":
            return _skipped(st, check, inp)
        if check.record is not None:
            st.say(check.reason)
        acc = _pass(st, cfg, inp, check, inp.contexts, inp.split_info, progress)
        return _finish(st, cfg, inp, inp.contexts, acc, progress)


@dataclass
class _Inputs:
    corpus: Corpus
    sae: LoadedSAE
    model: HookedModel
    hook: HookPoint
    hashes: dict[str, Any]
    contexts: Contexts
    split_info: dict[str, Any]


def _load(st: StageRun, cfg: StatsConfig, model: HookedModel | None, sae: LoadedSAE | None,
          hook: HookPoint | None) -> _Inputs:
    """Corpus, model, contexts and SAE, each checked as it comes. A hub SAE loads before the
    model (a failed download costs no model load); a local one is checked from its file, and
    the model runs its first batch before SAELens is even imported when the preflight
    resolved the hook (``hook``): NaN weights or activations are answered in seconds."""
    corpus = st.timed("load_corpus", lambda: load_corpus(cfg.corpus))
    check_stats_corpus(cfg, corpus)
    loaded = sae
    if loaded is None and not check_weights_finite(cfg.sae):
        loaded = st.timed("load_sae", lambda: load_sae(cfg.sae, device=cfg.device))
    model = model if model is not None else st.timed(
        "load_model", lambda: load_model(cfg.model, cfg.device, cfg.dtype,
                                         trust_remote_code=cfg.trust_remote_code))
    contexts, split_info = st.timed("contexts", lambda: stats_contexts(cfg, corpus, model))
    first = contexts.token_ids[: cfg.batch_size]
    if hook is not None:
        check_first_batch(model, first, hook)
    if loaded is None:
        loaded = st.timed("load_sae", lambda: load_sae(cfg.sae, device=cfg.device))
    hp = validate_pairing(loaded, model, cfg.hook)
    if hook is None or hp.name != hook.name:
        check_first_batch(model, first, hp)
    hashes = {"model_sha256": st.timed("hash_model", lambda: model_sha256(model)),
              "sae_sha256": loaded.sha256, "corpus_sha256": corpus.sha256, "hook": hp.name}
    return _Inputs(corpus, loaded, model, hp, hashes, contexts, split_info)


def _skipped(st: StageRun, check: StageCheck, inp: _Inputs) -> StatsResult:
    st.say(check.reason)
    record = check.record or {}
    if FEATURE_LOGIT_TOKENS not in (record.get("outputs") or {}):
        st.say(f"adding {FEATURE_LOGIT_TOKENS} to the recorded stats stage")
        record = _add_logit_tokens(st.run, record, inp.sae, inp.model)
    return _result_from_record(st.run, record, skipped=True)


def _resume_state(st: StageRun, cfg: StatsConfig, inp: _Inputs, check: StageCheck, key: str,
                  n_contexts: int) -> tuple[Any, dict[str, Any]]:
    """(checkpoint to resume the local pass from, finished Ray shards) of a running record."""
    ckpt_dir, shard_dir = st.run.file(CHECKPOINT), st.run.file(STATS_SHARDS)
    rec = check.record or {}
    if not (rec.get("status") == "running" and rec.get("config_sha256") == key):
        checkpoint.discard(ckpt_dir)  # a new stage: no progress of either backend counts
        stats_ray.discard(shard_dir)
        return None, {}
    if cfg.backend == "ray":  # a local run's checkpoint stays for a local rerun, and back
        return None, stats_ray.reconcile(shard_dir, key, rec.get("shards"),
                                         stats_ray.shard_bounds(n_contexts, cfg.shard_contexts),
                                         st.say)
    resumed = checkpoint.load(ckpt_dir, key, rec.get("checkpoint"), inp.sae.sae.W_enc.device,
                              st.say)
    if resumed is None:
        checkpoint.discard(ckpt_dir)
    if shard_dir.is_dir():
        st.say("the shards of an interrupted --backend ray run are kept for a --backend ray "
               "rerun; the local backend resumes only from its own checkpoints")
    return resumed, {}


def _begin(st: StageRun, cfg: StatsConfig, inp: _Inputs, split_info: dict[str, Any]) -> None:
    st.run.begin_stage(STAGE, cfg.record(), inp.hashes, extra={
        "environment": environment(cfg.device, cfg.dtype),
        "model": {**describe_model(inp.model, cfg.model), "sha256": inp.hashes["model_sha256"],
                  "trust_remote_code": cfg.trust_remote_code},
        "hook": inp.hook.name,
        "sae": describe_sae(inp.sae),
        "sae_path": str(inp.sae.path) if inp.sae.path is not None else inp.sae.spec,
        "corpus": {**describe_corpus(inp.corpus), "splits": split_info},
        "seeds": {"splits": cfg.seed, "reservoir": cfg.seed},
    })


def _pass(st: StageRun, cfg: StatsConfig, inp: _Inputs, check: StageCheck, contexts: Contexts,
          split_info: dict[str, Any], show: bool) -> StatsAccumulator:
    """The streaming pass (local or Ray), resumed from recorded progress -> the accumulators."""
    key = sha256_json({"config": cfg.record(), "inputs": inp.hashes})
    resumed, shards = _resume_state(st, cfg, inp, check, key, len(contexts))
    _begin(st, cfg, inp, split_info)
    if resumed is not None:  # begin_stage replaced the record: the checkpoint stays recorded
        st.run.update_stage(STAGE, checkpoint=resumed[2])
        st.say(f"resuming the stats pass from its checkpoint: context {resumed[1]:,} of "
               f"{len(contexts):,} already accumulated")
    if shards:
        st.run.update_stage(STAGE, shards=shards)
        st.say(f"resuming the stats pass: {len(shards)} finished shard(s) reused")
    st.say(f"stats pass: {len(contexts):,} contexts x {cfg.context_len} tokens of the stats "
           f"split, {inp.sae.d_sae:,} features at {inp.hook.name}")
    start = resumed[1] if resumed else 0
    device = inp.sae.sae.W_enc.device
    with st.span("pass"), progress(show, contexts.n_tokens, label="stats pass", unit="tokens",
                                   completed=int(contexts.token_ids[:start].size)) as advance:
        if cfg.backend == "ray":
            acc = stats_ray.ray_pass(cfg, st.run, contexts, inp.hook.name, inp.hashes, key,
                                     shards, st.say, advance)
            return acc if acc.device == device else StatsAccumulator.from_state_dict(
                acc.state_dict(), device)  # merged on the host; the tables go with W
        saver = checkpoint.Checkpointer(st.run.file(CHECKPOINT), key, len(contexts),
                                        cfg.checkpoint_s,
                                        lambda rec: st.run.update_stage(STAGE, checkpoint=rec))
        return collect_stats(inp.model, inp.sae, contexts, inp.hook, options=StatsOptions.of(cfg),
                             batch_size=cfg.batch_size, shard_contexts=cfg.shard_contexts,
                             final_norm_contexts=cfg.final_norm_contexts,
                             into=resumed[0] if resumed else None, start=start,
                             after_batch=saver, progress=advance)


def _finish(st: StageRun, cfg: StatsConfig, inp: _Inputs, contexts: Contexts,
            acc: StatsAccumulator, show: bool = False) -> StatsResult:
    """Tables from the accumulators, written and recorded."""
    r = acc.residual_norm()
    alpha = cfg.strength * r
    opts = TableOptions(neighbour_threshold=cfg.neighbour_threshold,
                        n_components=cfg.n_components)
    tables = st.timed("table", lambda: stats_tables(acc, inp.sae, inp.model, opts))
    examples = st.timed("examples", lambda: example_rows(acc, contexts, inp.model,
                                                          cfg.decode_examples))
    tokens = st.timed("logit_tokens", lambda: logit_token_rows(tables.logit_tokens, inp.model))
    stats_table, lin_outputs, lin_record = tables.stats, {}, None
    if cfg.linear_contexts > 0:
        with st.span("linear"):
            cols, lin_outputs, lin_record = linear.linear_step(
                st.run, cfg, inp.model, inp.hook, contexts, inp.hashes["model_sha256"],
                inp.sae.sae.W_dec, _top_ids(tables.logit_tokens, inp.sae.d_sae), st.say,
                show=show)
        stats_table = stats_table.with_columns(
            [pl.Series(name, values, dtype=pl.Float64) for name, values in cols.items()])
    with st.span("write"):
        outputs = {**lin_outputs,
                   RunDir.FEATURE_STATS: st.run.write_table(RunDir.FEATURE_STATS, stats_table),
                   RunDir.FEATURE_EXAMPLES: st.run.write_table(RunDir.FEATURE_EXAMPLES,
                                                               examples),
                   FEATURE_LOGIT_TOKENS: st.run.write_table(FEATURE_LOGIT_TOKENS, tokens)}
    extra: dict[str, Any] = {"residual_norm": r, "sigma_fin": acc.sigma_fin()}
    if st.run.read_manifest().get("dose_mode") in (None, "stats-fixed"):  # steer owns these
        extra |= {"dose_mode": "stats-fixed", "strengths": [cfg.strength], "alpha": alpha}
    results = _results(st, cfg, inp, contexts, acc, int(tables.stats["dead"].sum()))
    results["linear"] = lin_record
    record = st.run.complete_stage(STAGE, outputs=outputs, timings=st.total(),
                                   results=results, extra=extra)["stages"][STAGE]
    checkpoint.discard(st.run.file(CHECKPOINT))
    stats_ray.discard(st.run.file(STATS_SHARDS))
    linear.discard(st.run)
    return _result_from_record(st.run, record, skipped=False)


def _top_ids(logit_tokens: pl.DataFrame | None, n_features: int) -> np.ndarray | None:
    """Each feature's top direct-logit token ids [F, K] (lin_target_gain's tokens)."""
    if logit_tokens is None or logit_tokens.height == 0:
        return None
    t = logit_tokens.sort(["feature", "rank"])
    return t["token_id"].to_numpy().reshape(n_features, -1)


def _results(st: StageRun, cfg: StatsConfig, inp: _Inputs, contexts: Contexts,
             acc: StatsAccumulator, n_dead: int) -> dict[str, Any]:
    r = acc.residual_norm()
    d_sae = inp.sae.d_sae
    return {
        "n_features": d_sae, "n_alive": d_sae - n_dead, "n_dead": n_dead,
        "n_contexts": len(contexts), "n_positions": int(acc.n_positions),
        "contexts_sha256": hashlib.sha256(np.ascontiguousarray(
            contexts.token_ids, dtype=np.int64).tobytes()).hexdigest(),
        "sigma_fin": acc.sigma_fin(), "sigma_fin_positions": int(acc.final_scales.numel()),
        "dose": {"mode": "fixed", "strength": cfg.strength, "residual_norm": r,
                 "alpha": cfg.strength * r,
                 "residual_norm_positions": int(acc.resid_norms.numel()),
                 "median": "lower median over positions >= 1 of the stats split",
                 "logit_softcap": inp.model.unembed().softcap, "softcap_ignored": True,
                 "note": "no feature_stats column depends on this alpha (the logit_* columns "
                         "are scale-free, METHOD v2); the steering stage calibrates s and "
                         "writes the dose-dependent columns to feature_dose_stats"},
        "accumulator_bytes": StatsOptions.of(cfg).memory_bytes(
            d_sae, inp.sae.d_in, int(acc.final_scales.numel()), int(acc.resid_norms.numel())),
        "pass_tokens_per_s": contexts.n_tokens / max(st.timings["pass"], 1e-9),
        "runtime": {"device": cfg.device, "batch_size": cfg.batch_size,
                    "shard_contexts": cfg.shard_contexts,
                    "trust_remote_code": cfg.trust_remote_code, **cfg.describe()},
    }


def stats_contexts(cfg: StatsConfig, corpus: Corpus, model: HookedModel
                   ) -> tuple[Contexts, dict[str, Any]]:
    """Contexts of the stats split (seeded document split), enough for ``cfg.tokens``."""
    splits = split_documents(len(corpus.documents), DEFAULT_SPLITS, cfg.seed)
    docs = [corpus.documents[i] for i in splits["stats"]]
    n_contexts = -(-cfg.tokens // (cfg.context_len - 1))
    info = {"fractions": dict(DEFAULT_SPLITS), "seed": cfg.seed,
            "n_documents": {k: len(v) for k, v in splits.items()}}
    try:
        ctx = make_contexts(docs, model.tokenize, model.bos_id, cfg.context_len,
                            n_contexts=n_contexts)
    except CorpusError as e:
        raise CorpusError(
            f"the stats split ({len(docs)} of {len(corpus.documents)} documents of "
            f"{corpus.spec!r}) is too small for --tokens {cfg.tokens}: {e.what}",
            "lower --tokens or --context-len, or use a larger corpus") from e
    return ctx, info


def _add_logit_tokens(run: RunDir, record: dict[str, Any], loaded: LoadedSAE,
                      model: HookedModel) -> dict[str, Any]:
    """Write ``feature_logit_tokens.parquet`` for a complete stats stage recorded before the
    stage wrote it (it needs only the decoder and the unembedding) -> the updated record."""
    lc = logit_columns(loaded.sae.W_dec.detach(), model.unembed())
    info = run.write_table(FEATURE_LOGIT_TOKENS,
                           logit_token_rows(logit_token_table(lc), model))
    record = {**record, "outputs": {**(record.get("outputs") or {}), FEATURE_LOGIT_TOKENS: info}}
    return run.update_manifest({"stages": {STAGE: record}})["stages"][STAGE]


def describe_sae(loaded: LoadedSAE) -> dict[str, Any]:
    """The SAE's record for manifests."""
    cfg = loaded.sae.cfg
    return {
        "spec": loaded.spec, "path": str(loaded.path) if loaded.path is not None else None,
        "sha256": loaded.sha256, "architecture": loaded.architecture,
        "d_in": loaded.d_in, "d_sae": loaded.d_sae, "hook_name": loaded.hook_name,
        "model_name": loaded.model_name,
        "normalize_activations": getattr(cfg, "normalize_activations", None),
        "k": getattr(cfg, "k", None),
        "input": {"centre": loaded.input.centre, "prepend_bos": loaded.input.prepend_bos},
    }


def _result_from_record(run: RunDir, record: dict[str, Any], *, skipped: bool) -> StatsResult:
    res = record.get("results", {})
    tim = record.get("timings_s", {})
    dose = res.get("dose", {})
    nan = float("nan")
    return StatsResult(
        run=run, skipped=skipped, n_features=int(res.get("n_features", 0)),
        n_alive=int(res.get("n_alive", 0)), n_dead=int(res.get("n_dead", 0)),
        n_contexts=int(res.get("n_contexts", 0)), n_positions=int(res.get("n_positions", 0)),
        residual_norm=float(dose.get("residual_norm", nan)), alpha=float(dose.get("alpha", nan)),
        sigma_fin=float(res.get("sigma_fin", nan)), seconds=float(tim.get("total", nan)),
        timings={k: float(v) for k, v in tim.items()},
    )


__all__ = ["FEATURE_LOGIT_TOKENS", "StatsConfig", "StatsResult", "describe_sae", "run_stats",
           "stats_contexts"]
