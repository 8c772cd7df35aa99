"""The ``stats`` stage: one streaming pass over the stats split -> ``feature_stats.parquet``.

:func:`run_stats` loads the model, SAE and corpus, checks that the SAE fits the model and hook,
splits the corpus by document (``DEFAULT_SPLITS``, seeded) and cuts contexts from the **stats
split only**, runs :func:`~steerscreen.stats.collect.collect_stats` (model up to the hook, SAE
encode, every accumulator) and writes, in the run folder (METHOD §5):

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
the stats split, measured in the same pass (the exact lower median). The ``logit_*`` columns use
``alpha = s * r`` with ``s = strength`` (default 0.25; the steering stage calibrates s later and
can recompute them from W_dec, the unembedding and ``sigma_fin``). Logit softcaps are ignored
for direct-logit work, and the manifest says so.

Interrupted, it resumes: the pass checkpoints its accumulators every ``checkpoint_s`` seconds
(:mod:`~steerscreen.stats.checkpoint`, recorded in the manifest), and a rerun with the same
config and inputs continues from the last checkpoint, giving tables bit-identical to an
uninterrupted pass. ``resume=True`` (``--resume``) only adds the check that the folder records
a stats stage at all.

With ``backend="ray"`` the pass runs as one Ray task per shard of ``shard_contexts`` contexts
(:mod:`~steerscreen.stats.distributed`; finished shards are saved and recorded, so a rerun
resumes there instead) and gives the same tables bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.progress import ProgressColumn, Task
from rich.text import Text

from steerscreen import cluster, preflight
from steerscreen.cluster import CLUSTER_FIELDS, ClusterOptions
from steerscreen.corpus import (
    DEFAULT_SPEC,
    DEFAULT_SPLITS,
    Contexts,
    load_corpus,
    make_contexts,
    split_documents,
)
from steerscreen.corpus import describe as describe_corpus
from steerscreen.errors import CorpusError, SpecError, check_seed
from steerscreen.files import sha256_json
from steerscreen.models import (
    DEFAULT_MODEL,
    HookedModel,
    HookPoint,
    ModelSpec,
    load_model,
    model_sha256,
)
from steerscreen.models import describe as describe_model
from steerscreen.runs import RunDir, environment
from steerscreen.saes.io import LoadedSAE, load_sae
from steerscreen.saes.pairing import validate_pairing
from steerscreen.stats import checkpoint, distributed
from steerscreen.stats.accumulators import StatsAccumulator, StatsOptions
from steerscreen.stats.collect import collect_stats, stats_tables
from steerscreen.stats.logits import logit_columns
from steerscreen.stats.table import (
    TableOptions,
    example_windows,
    examples_table,
    logit_token_table,
)

STAGE = "stats"
FEATURE_LOGIT_TOKENS = "feature_logit_tokens.parquet"
# Fields that change how fast the pass runs, never what it computes: recorded, not compared.
_RUNTIME_FIELDS = ("batch_size", "device", "trust_remote_code", "checkpoint_s",
                   "shard_contexts", *CLUSTER_FIELDS)


@dataclass
class StatsConfig(ClusterOptions):
    """Everything that defines a stats stage; the CLI's options mirror these fields (where it
    runs: :class:`~steerscreen.cluster.ClusterOptions`)."""

    sae: str
    """SAE spec: a SAELens folder (PATH or local:PATH), saelens:RELEASE/SAE_ID, hf:OWNER/REPO."""
    model: str = DEFAULT_MODEL
    """Model spec (see ``steerscreen.models.load_model``)."""
    hook: str | None = None
    """Hook point; None = the one the SAE records (metadata.hook_name)."""
    corpus: str = DEFAULT_SPEC
    """Corpus spec (see ``steerscreen.corpus.load_corpus``)."""
    tokens: int = 100_000
    """Scored tokens (positions >= 1) of stats-split contexts: ceil(tokens / (context_len - 1))
    contexts."""
    context_len: int = 64
    """Tokens per context, BOS included."""
    batch_size: int = 16
    """Contexts per forward pass (speed and memory only)."""
    seed: int = 0
    """Seeds the document split and the reservoir sampling."""
    strength: float = 0.25
    """s of the logit dose alpha = s * r (METHOD §2)."""
    final_norm_contexts: int = 32
    """Contexts run to the end of the model for sigma_fin (the rest stop at the hook); 32 x
    (T - 1) positions fix a median well."""
    reservoir_size: int = 200
    """R: firings sampled per feature for the shape and co-activation statistics."""
    coact_size: int | None = None
    """R_co <= R: reservoir slots that keep their co-active set (None = R)."""
    max_partners: int = 64
    """P: co-active features kept per firing (exact when P >= L0 - 1)."""
    n_examples: int = 10
    """K: top activating firings kept per feature."""
    example_window: int = 16
    """W: token ids kept per example, ending at the firing."""
    neighbour_threshold: float = 0.3
    """Decoder cosine above which another feature counts as a neighbour."""
    n_components: int = 10
    """k of the residual principal subspace (geom_pc_share)."""
    decode_examples: bool = True
    """Decode the examples' token windows to text (needs a tokenizer with batch_decode)."""
    device: str = "cpu"
    dtype: str = "float32"
    """Model dtype: float32 or bfloat16 (the SAE and all statistics run in float32)."""
    checkpoint_s: float = 60.0
    """Seconds between checkpoints of the pass (0: after every batch); a rerun resumes there."""
    shard_contexts: int = 256
    """Contexts per shard: the unit of work of --backend ray (one task each) and where the
    float64 sums fold (either backend), so both give the same bits for the same value."""
    trust_remote_code: bool = False
    """Run Python code shipped with a hub model (transformers' trust_remote_code); off unless
    asked for, since that code runs with the user's rights."""

    def __post_init__(self) -> None:
        check_seed(self.seed)
        self.check_cluster()
        for name in ("tokens", "batch_size", "reservoir_size", "max_partners", "n_examples",
                     "example_window", "n_components", "shard_contexts"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be positive, got {getattr(self, name)}",
                                f"pass a positive --{name.replace('_', '-')}")
        if self.context_len < 2:
            raise SpecError(f"context_len must be >= 2, got {self.context_len}",
                            "a context is BOS plus at least one token")
        if self.final_norm_contexts < 1:
            raise SpecError("final_norm_contexts must be >= 1 (sigma_fin needs some positions)",
                            "pass --final-norm-contexts 32")
        if not (math.isfinite(self.strength) and self.strength > 0):
            raise SpecError(f"strength must be a positive number, got {self.strength}",
                            "pass e.g. --strength 0.25")
        if not self.sae or not str(self.sae).strip():
            raise SpecError("no SAE given", "pass --sae PATH (a folder from train-sae)")
        if self.hook is not None:
            HookPoint.parse(self.hook)  # fail in a second, before anything is loaded
        ModelSpec.parse(self.model)
        self.options()

    def options(self) -> StatsOptions:
        try:
            return StatsOptions(reservoir_size=self.reservoir_size, coact_size=self.coact_size,
                                max_partners=self.max_partners, n_examples=self.n_examples,
                                example_window=self.example_window, seed=self.seed)
        except ValueError as e:
            raise SpecError(f"invalid stats options: {e}",
                            "check --reservoir-size, --coact-size and --max-partners") from e

    def table_options(self, alpha: float) -> TableOptions:
        return TableOptions(alpha=alpha, neighbour_threshold=self.neighbour_threshold,
                            n_components=self.n_components)

    def record(self) -> dict[str, Any]:
        """The result-defining part of the config (what the run-folder guard compares)."""
        return {k: v for k, v in asdict(self).items() if k not in _RUNTIME_FIELDS}


@dataclass(frozen=True)
class StatsResult:
    """What :func:`run_stats` did (also readable back from the manifest when skipped)."""

    run: RunDir
    skipped: bool
    """True when a complete stats stage with the same config and inputs was already there."""
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
    seconds: float
    """Wall time of this call (of the original run when skipped)."""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def stats_path(self) -> Path:
        return self.run.file(RunDir.FEATURE_STATS)

    @property
    def examples_path(self) -> Path:
        return self.run.file(RunDir.FEATURE_EXAMPLES)

    @property
    def logit_tokens_path(self) -> Path:
        return self.run.file(FEATURE_LOGIT_TOKENS)


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
    with contextlib.ExitStack() as hold:
        return _run_stats(cfg, out, force, model=model, sae=sae, progress=progress,
                          resume=resume, log=log, hold=hold)


def _run_stats(cfg: StatsConfig, out: str | Path, force: bool, *, model: HookedModel | None,
               sae: LoadedSAE | None, progress: bool, resume: bool,
               log: Callable[[str], None] | None, hold: contextlib.ExitStack) -> StatsResult:
    say = log or (lambda _m: None)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    run = RunDir(out)
    if resume:
        run.require_resumable(STAGE, force=force)
    run.check_stage(STAGE, cfg.record(), force=force)  # cheap: before anything is loaded
    preflight.check_stats(cfg, out, model=model, sae=sae)  # configs, --out, memory: cheap too
    if cfg.backend == "ray":  # Ray up and able to run a task before anything heavy loads
        hold.enter_context(cluster.session(cfg, cfg.device, "stats"))

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - t
        return value

    corpus = timed("load_corpus", lambda: load_corpus(cfg.corpus))
    preflight.check_stats_corpus(cfg, corpus)
    loaded = sae if sae is not None else timed(
        "load_sae", lambda: load_sae(cfg.sae, device=cfg.device))
    model = model if model is not None else timed(
        "load_model", lambda: load_model(cfg.model, cfg.device, cfg.dtype,
                                         trust_remote_code=cfg.trust_remote_code))
    hp = validate_pairing(loaded, model, cfg.hook)
    inputs = {"model_sha256": timed("hash_model", lambda: model_sha256(model)),
              "sae_sha256": loaded.sha256, "corpus_sha256": corpus.sha256, "hook": hp.name}
    check = run.check_stage(STAGE, cfg.record(), force=force, inputs=inputs)
    if check.action == "skip":
        say(check.reason)
        record = check.record or {}
        if FEATURE_LOGIT_TOKENS not in (record.get("outputs") or {}):
            say(f"adding {FEATURE_LOGIT_TOKENS} to the recorded stats stage")
            record = _add_logit_tokens(run, record, loaded, model)
        return _result_from_record(run, record, skipped=True)
    if check.record is not None:
        say(check.reason)

    contexts, split_info = timed("contexts", lambda: stats_contexts(cfg, corpus, model))
    preflight.check_first_batch(model, contexts.token_ids[: cfg.batch_size], hp)
    unembed = model.unembed()
    key = sha256_json({"config": cfg.record(), "inputs": inputs})
    ckpt_dir = run.file(checkpoint.CHECKPOINT_DIR)
    shard_dir = run.file(distributed.SHARD_DIR)
    continuing = check.record is not None and check.record.get("status") == "running" and (
        check.record.get("config_sha256") == key)
    resumed, shards = None, {}
    if not continuing:  # a new stage: no progress of either backend counts
        checkpoint.discard(ckpt_dir)
        distributed.discard(shard_dir)
    elif cfg.backend == "ray":  # a local run's checkpoint stays for a local rerun, and back
        shards = distributed.reconcile(
            shard_dir, key, check.record.get("shards"),
            distributed.shard_bounds(len(contexts), cfg.shard_contexts), say)
    else:
        resumed = checkpoint.load(ckpt_dir, key, check.record.get("checkpoint"),
                                  loaded.sae.W_enc.device, say)
        if resumed is None:
            checkpoint.discard(ckpt_dir)
        if shard_dir.is_dir():
            say("the shards of an interrupted --backend ray run are kept for a --backend ray "
                "rerun; the local backend resumes only from its own checkpoints")
    run.begin_stage(STAGE, cfg.record(), inputs, extra={
        "environment": environment(cfg.device, cfg.dtype),
        "model": {**describe_model(model, cfg.model), "sha256": inputs["model_sha256"],
                  "trust_remote_code": cfg.trust_remote_code},
        "hook": hp.name,
        "sae": describe_sae(loaded),
        "sae_path": str(loaded.path) if loaded.path is not None else loaded.spec,
        "corpus": {**describe_corpus(corpus), "splits": split_info},
        "seeds": {"splits": cfg.seed, "reservoir": cfg.seed},
    })
    if resumed is not None:  # begin_stage replaced the record: the checkpoint stays recorded
        run.update_stage(STAGE, checkpoint=resumed[2])
        say(f"resuming the stats pass from its checkpoint: context {resumed[1]:,} of "
            f"{len(contexts):,} already accumulated")
    if shards:
        run.update_stage(STAGE, shards=shards)
        say(f"resuming the stats pass: {len(shards)} finished shard(s) reused")

    say(f"stats pass: {len(contexts):,} contexts x {cfg.context_len} tokens of the stats split, "
        f"{loaded.d_sae:,} features at {hp.name}")
    t = time.perf_counter()
    start = resumed[1] if resumed else 0
    with _bar(progress, contexts.n_tokens, int(contexts.token_ids[:start].size)) as advance:
        if cfg.backend == "ray":
            acc = distributed.ray_pass(cfg, run, contexts, hp.name, inputs, key, shards, say,
                                       advance)
            if acc.device != loaded.sae.W_enc.device:  # merged on the host; tables go with W
                acc = StatsAccumulator.from_state_dict(acc.state_dict(), loaded.sae.W_enc.device)
        else:
            saver = checkpoint.Checkpointer(ckpt_dir, key, len(contexts), cfg.checkpoint_s,
                                            lambda rec: run.update_stage(STAGE, checkpoint=rec))
            acc = collect_stats(model, loaded, contexts, hp, options=cfg.options(),
                                batch_size=cfg.batch_size, shard_contexts=cfg.shard_contexts,
                                final_norm_contexts=cfg.final_norm_contexts,
                                into=resumed[0] if resumed else None, start=start,
                                after_batch=saver, progress=advance)
    timings["pass"] = time.perf_counter() - t
    r = acc.residual_norm()
    alpha = cfg.strength * r
    tables = timed("table", lambda: stats_tables(acc, loaded, model, cfg.table_options(alpha)))
    table = tables.stats
    examples = timed("examples", lambda: example_rows(acc, contexts, model, cfg.decode_examples))
    logit_tokens = timed("logit_tokens", lambda: logit_token_rows(tables.logit_tokens, model))
    t = time.perf_counter()
    outputs = {RunDir.FEATURE_STATS: run.write_table(RunDir.FEATURE_STATS, table),
               RunDir.FEATURE_EXAMPLES: run.write_table(RunDir.FEATURE_EXAMPLES, examples),
               FEATURE_LOGIT_TOKENS: run.write_table(FEATURE_LOGIT_TOKENS, logit_tokens)}
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    n_dead = int(table["dead"].sum())
    dose = {"mode": "fixed", "strength": cfg.strength, "residual_norm": r, "alpha": alpha,
            "residual_norm_positions": int(acc.resid_norms.numel()),
            "median": "lower median over positions >= 1 of the stats split",
            "logit_softcap": unembed.softcap, "softcap_ignored": True,
            "note": "logit_* columns use this alpha; the steering stage calibrates s and may "
                    "recompute them from W_dec, the unembedding and sigma_fin"}
    results = {
        "n_features": loaded.d_sae, "n_alive": loaded.d_sae - n_dead, "n_dead": n_dead,
        "n_contexts": len(contexts), "n_positions": int(acc.n_positions),
        "contexts_sha256": hashlib.sha256(np.ascontiguousarray(
            contexts.token_ids, dtype=np.int64).tobytes()).hexdigest(),
        "sigma_fin": acc.sigma_fin(), "sigma_fin_positions": int(acc.final_scales.numel()),
        "dose": dose,
        "accumulator_bytes": cfg.options().memory_bytes(
            loaded.d_sae, loaded.d_in, int(acc.final_scales.numel()),
            int(acc.resid_norms.numel())),
        "pass_tokens_per_s": contexts.n_tokens / max(timings["pass"], 1e-9),
        "runtime": {"device": cfg.device, "batch_size": cfg.batch_size,
                    "shard_contexts": cfg.shard_contexts,
                    "trust_remote_code": cfg.trust_remote_code, **cfg.describe()},
    }
    manifest = run.read_manifest()
    extra: dict[str, Any] = {"residual_norm": r, "sigma_fin": acc.sigma_fin()}
    if manifest.get("dose_mode") in (None, "stats-fixed"):  # the steering stage owns these
        extra |= {"dose_mode": "stats-fixed", "strengths": [cfg.strength], "alpha": alpha}
    record = run.complete_stage(STAGE, outputs=outputs, timings=timings, results=results,
                                extra=extra)["stages"][STAGE]
    checkpoint.discard(ckpt_dir)
    distributed.discard(shard_dir)
    return _result_from_record(run, record, skipped=False)


def stats_contexts(cfg: StatsConfig, corpus, model: HookedModel) -> tuple[Contexts, dict]:
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


@contextlib.contextmanager
def _bar(enabled: bool, total: int, completed: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over the pass's tokens (rate and ETA) -> its advance, or nothing."""
    if not enabled:
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("[bold]stats pass"), BarColumn(), MofNCompleteColumn(),
               TextColumn("tokens"), _RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("stats", total=total, completed=completed)
        yield lambda n: bar.advance(task, n)


class _RateColumn(ProgressColumn):
    """Tokens per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("? tok/s" if speed is None else f"{speed:,.0f} tok/s", style="cyan")


def example_rows(acc: StatsAccumulator, contexts: Contexts, model: HookedModel,
                 decode: bool = True) -> pl.DataFrame:
    """The examples table plus each example's whole context and (optionally) decoded text.

    Columns: feature, rank, value, context_id, position, token_ids (the window ending at the
    firing), context_token_ids (the whole context, BOS first), text (the window decoded) and
    token (the firing token decoded); text/token are null without a decoding tokenizer.
    """
    ex = examples_table(acc)
    ctx_ids = ex["context_id"].to_numpy()
    whole = contexts.token_ids[ctx_ids].astype(np.int32)
    ex = ex.with_columns(pl.Series("context_token_ids", whole).cast(pl.List(pl.Int32)))
    tok = getattr(model, "tokenizer", None)
    text: list[str | None] = [None] * ex.height
    token: list[str | None] = [None] * ex.height
    if decode and ex.height and callable(getattr(tok, "batch_decode", None)):
        windows = example_windows(acc)
        text = decode_rows(tok, windows)
        token = decode_rows(tok, windows[:, -1:])
    return ex.with_columns(pl.Series("text", text, dtype=pl.String),
                           pl.Series("token", token, dtype=pl.String))


def decode_rows(tok: Any, ids_NW: np.ndarray) -> list[str]:
    """``tok.batch_decode`` of each row's token ids (a -1 prefix is padding) -> N strings.

    The same strings as one ``batch_decode`` of every row's ids, faster: each distinct row is
    decoded once, rows with the same padding in one call. A Hugging Face tokenizer gets a 2-D
    array through ``decode`` (batched since transformers 5; ``batch_decode`` type-checks every
    id of a list of lists, ~1 s for 40K windows); any other tokenizer gets ``batch_decode`` of
    lists.
    """
    x = np.ascontiguousarray(ids_NW)
    if x.shape[0] == 0:
        return []
    rows = x.view(np.dtype((np.void, x.itemsize * x.shape[1]))).ravel()
    uniq_v, inverse = np.unique(rows, return_inverse=True)
    uniq = uniq_v.view(x.dtype).reshape(-1, x.shape[1])
    n_pad = (uniq < 0).sum(1)
    if not np.array_equal(uniq >= 0, np.arange(x.shape[1]) >= n_pad[:, None]):
        raise ValueError("token rows may only be padded (-1) before their first id")
    as_array = _is_hf_tokenizer(tok)
    out = np.empty(uniq.shape[0], dtype=object)
    for pad in np.unique(n_pad):
        sel = np.flatnonzero(n_pad == pad)
        ids = uniq[sel, pad:].astype(np.int64)
        out[sel] = _hf_decode(tok, ids) if as_array else tok.batch_decode(ids.tolist())
    return out[inverse.reshape(-1)].tolist()


def _hf_decode(tok: Any, ids_NW: np.ndarray) -> list[str]:
    text = tok.decode(ids_NW)
    if isinstance(text, list) and len(text) == ids_NW.shape[0]:
        return text
    return tok.batch_decode(ids_NW)  # a tokenizer whose decode is not batched


def _is_hf_tokenizer(tok: Any) -> bool:
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(tok, PreTrainedTokenizerBase)


def logit_token_rows(tokens: pl.DataFrame | None, model: HookedModel) -> pl.DataFrame:
    """``feature_logit_tokens``: the top direct-logit tokens (``steerscreen.stats.table.
    logit_token_table``) with each token decoded on its own (null without a decoding tokenizer).

    Columns: feature, rank (0 = the largest DL_f entry), token_id, token, dl.
    """
    if tokens is None:  # the stage always has an unembedding; this keeps the schema anyway
        tokens = pl.DataFrame(schema={"feature": pl.Int64, "rank": pl.Int64,
                                      "token_id": pl.Int64, "dl": pl.Float64})
    tok = getattr(model, "tokenizer", None)
    text: list[str | None] = [None] * tokens.height
    if tokens.height and callable(getattr(tok, "batch_decode", None)):
        text = decode_rows(tok, tokens["token_id"].to_numpy()[:, None])
    return tokens.select("feature", "rank", "token_id",
                         pl.Series("token", text, dtype=pl.String), "dl")


def _add_logit_tokens(run: RunDir, record: dict[str, Any], loaded: LoadedSAE,
                      model: HookedModel) -> dict[str, Any]:
    """Write ``feature_logit_tokens.parquet`` for a complete stats stage recorded before the
    stage wrote it (it needs only the decoder and the unembedding) -> the updated record."""
    lc = logit_columns(loaded.sae.W_dec.detach(), model.unembed(), alpha=0.0, sigma_fin=1.0)
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


__all__ = ["FEATURE_LOGIT_TOKENS", "StatsConfig", "StatsResult", "decode_rows", "example_rows",
           "logit_token_rows", "model_sha256", "run_stats", "stats_contexts"]
