"""The stage configs: one dataclass per stage, and the Ray options.

Each field carries its default, its docstring (the string right below it) and its validation
(``__post_init__``). Everything else is derived from these classes: the CLI's options
(``steerscreen.cli`` builds them from the fields; ``field(metadata=...)`` names a flag that
differs or a field the CLI does not expose), a study file's sections, the record a stage
stores in its run folder's manifest (``record()``, without the fields that only change speed),
the Python API, and ``docs/study.md`` (``steerscreen.pipeline.docs``).

The stage configs (:class:`TrainConfig`, :class:`StatsConfig`, :class:`SteerConfig`,
:class:`FitConfig`, :class:`ScreenConfig`) are what one stage needs. A stage's *settings*
(:class:`TrainSettings`, :class:`StatsSettings`, :class:`SteerSettings`) are the part a study
file's ``[train]`` / ``[stats]`` / ``[steer]`` sections may set; the rest (model, corpus, SAE,
hook, seed, device) the study sets for every run itself. ``config.study.StudyConfig`` nests
them.

Torch-free: importing this module and validating a config costs no model library, so a typo in
a command or a study file is answered in a second.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from steerscreen.errors import SpecError, check_seed
from steerscreen.specs import parse_hook

DEFAULT_MODEL = "embedded:smollm2-135m"
DEFAULT_CORPUS = "embedded"
ARCHS = ("topk", "relu", "jumprelu")
Arch = Literal["topk", "relu", "jumprelu"]
BACKENDS = ("local", "ray")
EQUAL_KL = "equal-kl"
DOSES = ("calibrated", EQUAL_KL)
"""--dose: one s for every direction, or each direction at its own equal-KL alpha."""
N_TARGETS = 8
"""|T_f|: downstream features counted as the intended effect (docs/method.md §3)."""
N_OUT = 20
"""collateral_out: entries of mean_c d_c counted as the main effect."""
N_TARGET_TOKENS = 10
"""target_gain: top direct-logit tokens."""


def hidden(default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A field the CLI does not offer (set it from Python or a study file)."""
    return field(default=default, metadata={"cli": False}, **kw)


def flag(name: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A field whose CLI flag is not ``--field-name`` (``parse``: ``floats`` for a list given
    as "0.1,0.25"; ``switch`` for a bool that is only ever turned on)."""
    return field(default=default, metadata={"flag": name, **kw})


def positive(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise SpecError(f"{name} must be positive, got {getattr(cfg, name)}",
                            f"pass a positive --{name.replace('_', '-')}")


def check_hook(name: str | None) -> None:
    if name is not None:
        parse_hook(name)  # fail in a second, before anything is loaded


def check_context_len(n: int) -> None:
    if n < 2:
        raise SpecError(f"context_len must be >= 2, got {n}",
                        "a context is BOS plus at least one token")


# --- where the heavy stages run ---------------------------------------------------------------
@dataclass(kw_only=True)
class ClusterOptions:
    """Where a stage's shards run; part of :class:`StatsSettings` and :class:`SteerSettings`."""

    FIELDS: ClassVar[tuple[str, ...]] = ("backend", "address", "workers", "task_cpus",
                                         "task_gpus", "max_retries")
    backend: str = "local"
    """local (this process) or ray (one Ray task per shard; pip install 'steerscreen[ray]')."""
    address: str | None = None
    """Ray cluster to join: auto, HOST:PORT or ray://HOST:10001; None starts a local Ray
    instance for this run (stopped at the end)."""
    workers: int | None = None
    """CPUs of the local Ray instance (None: all of this machine's); not with address."""
    task_cpus: float = 1.0
    """CPUs per Ray task (also its torch threads)."""
    task_gpus: float | None = None
    """GPUs per Ray task (None: 1 with --device cuda, else 0)."""
    max_retries: int = 3
    """Times Ray reruns a task whose worker died before it gives up."""

    def check_cluster(self) -> None:
        if self.backend not in BACKENDS:
            raise SpecError(f"unknown backend {self.backend!r}",
                            "pass --backend local (this process) or --backend ray")
        if self.workers is not None and self.workers < 1:
            raise SpecError(f"workers must be >= 1, got {self.workers}", "pass --workers 2")
        if not (math.isfinite(self.task_cpus) and self.task_cpus > 0):
            raise SpecError(f"task_cpus must be > 0, got {self.task_cpus}",
                            "pass --task-cpus 1")
        if self.task_gpus is not None and not (math.isfinite(self.task_gpus)
                                                and self.task_gpus >= 0):
            raise SpecError(f"task_gpus must be >= 0, got {self.task_gpus}",
                            "pass --task-gpus 1 (or 0.5 to share a GPU between two tasks)")
        if self.max_retries < 0:
            raise SpecError(f"max_retries must be >= 0, got {self.max_retries}",
                            "pass --max-retries 3")
        if self.backend == "local" and (self.address is not None or self.workers is not None):
            raise SpecError("--address and --workers are Ray options",
                            "add --backend ray, or drop them")
        if self.address is not None and self.workers is not None:
            raise SpecError("--workers sizes a local Ray instance, but --address joins a "
                            "cluster whose size is its own",
                            "drop --workers (or --address to start a local instance)")

    def resources(self, device: str) -> dict[str, float]:
        gpus = self.task_gpus if self.task_gpus is not None else (
            1.0 if str(device).startswith("cuda") else 0.0)
        return {"num_cpus": float(self.task_cpus), "num_gpus": float(gpus)}

    def describe(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}


class Record:
    """``record()``: the result-defining fields, what a run folder's guard compares."""

    RUNTIME: ClassVar[tuple[str, ...]] = ()
    """Fields that change how fast a stage runs, never what it computes: not recorded."""

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items()  # type: ignore[call-overload]
                if k not in self.RUNTIME}


# --- train-sae --------------------------------------------------------------------------------
@dataclass(kw_only=True)
class TrainSettings:
    """What a study's [train] section may set."""

    k: int = 32
    """TopK: active features per token."""
    l1_coefficient: float = 4.0
    """ReLU: L1 penalty weight (on activations scaled to norm sqrt(d_in))."""
    target_l0: float = 40.0
    """JumpReLU: the L0 its quadratic sparsity loss pulls towards (Gemma Scope 2's loss)."""
    l0_coefficient: float = 5.0
    """JumpReLU: weight of that sparsity loss."""
    jumprelu_loss: Literal["quadratic", "tanh", "step"] = hidden("quadratic")
    """JumpReLU sparsity loss: quadratic around target_l0 (Gemma Scope 2), tanh (Anthropic) or
    step (plain L0, DeepMind)."""
    jumprelu_ste_to_input: bool = hidden(False)
    """JumpReLU: let the sparsity gradient reach the encoder, not only the thresholds."""
    jumprelu_bandwidth: float = hidden(0.1)
    """JumpReLU: bandwidth of the straight-through threshold gradient's kernel."""
    jumprelu_warmup: float = hidden(0.25)
    """JumpReLU: share of training over which the sparsity loss ramps up from 0 (a full-strength
    quadratic loss at the dense start kills most features at once)."""
    pre_act_loss_coefficient: float | None = hidden(None)
    """JumpReLU: weight of Anthropic's pre-activation loss (None = off)."""
    tokens: int = 200_000
    """Training tokens (positions >= 1 of contexts from the training documents)."""
    context_len: int = 128
    """Tokens per training context, BOS included (BOS positions are not trained on)."""
    epochs: int = 4
    """Passes over the training tokens."""
    batch_size: int = 1024
    """Tokens per optimiser step."""
    lr: float | None = None
    """Peak learning rate; default 1e-3, and 3e-3 for JumpReLU (its thresholds move ~lr per
    step, so 1e-3 is too slow for a short budget)."""
    heldout_tokens: int = hidden(20_000)
    """Tokens from held-out documents for the evaluation."""


@dataclass
class TrainConfig(TrainSettings):
    """Everything that defines a trained SAE (the cache key) plus where to put it."""

    model: str = DEFAULT_MODEL
    """Model spec: embedded:smollm2-135m, embedded:gemma3-270m, hf:REPO, gguf:PATH or a
    folder."""
    hook: str = "blocks.12.hook_resid_post"
    """Hook point the SAE reads (TransformerLens name), e.g. blocks.12.hook_resid_post."""
    arch: Arch = flag("--arch", "topk", parse="list")
    """SAE architecture: topk, relu (standard, L1) or jumprelu; on the CLI a comma list trains
    several on one activation pass."""
    width: int = 4096
    """Number of SAE features (d_sae)."""
    corpus: str = DEFAULT_CORPUS
    """Corpus spec: embedded, text:PATH, jsonl:PATH[:FIELD], hf:DATASET[:CONFIG]:SPLIT[:FIELD]."""
    seed: int = 0
    """Seed for splits, init and shuffling."""
    device: str = "cpu"
    """cpu or cuda."""
    dtype: str = "float32"
    """Model dtype: float32 or bfloat16."""
    trust_remote_code: bool = flag("--trust-remote-code", False, parse="switch")
    """Run Python code shipped with a hub model (off by default: it runs with your rights;
    read it first). Not part of the cache key: it decides whether a model loads, not what it
    is."""

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.lr is None:
            self.lr = 3e-3 if self.arch == "jumprelu" else 1e-3
        if self.arch not in ARCHS:
            raise SpecError(f"unknown SAE architecture {self.arch!r}",
                            f"use one of {', '.join(ARCHS)}")
        for name in ("width", "k", "tokens", "context_len", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise SpecError(f"{name} must be positive, got {getattr(self, name)}",
                                f"pass a positive --{name.replace('_', '-')}")
        check_hook(self.hook)
        if self.arch == "topk" and self.k >= self.width:
            raise SpecError(f"k={self.k} must be smaller than width={self.width}", "lower --k")
        for name in ("lr", "l1_coefficient", "l0_coefficient"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):  # NaN passes every comparison: ask for finite
                raise SpecError(f"{name} must be a positive number, got {v}",
                                f"pass a positive --{name.replace('_', '-')}")
        if self.arch == "jumprelu" and not 0 < self.target_l0 < self.width:
            raise SpecError(f"target_l0={self.target_l0} must lie between 0 and width="
                            f"{self.width}", "lower --target-l0 or raise --width")


# --- stats ------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class StatsSettings(ClusterOptions):
    """What a study's [stats] section may set."""

    tokens: int = 100_000
    """Scored tokens (positions >= 1) of stats-split contexts: ceil(tokens / (context_len - 1))
    contexts."""
    context_len: int = 64
    """Tokens per context, BOS included."""
    batch_size: int = 16
    """Contexts per forward pass (speed and memory only)."""
    strength: float = 0.25
    """s of the dose alpha = s * r recorded until steer calibrates its own, r = the median
    residual norm at the hook (no feature_stats column depends on it)."""
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
    checkpoint_s: float = flag("--checkpoint-every", 60.0)
    """Seconds between checkpoints of the pass (0: after every batch); an interrupted run
    resumes from the last."""
    shard_contexts: int = 256
    """Contexts per shard: the unit of work of --backend ray (one task each) and where the
    float64 sums fold (either backend), so both give the same bits for the same value."""
    linear_contexts: int = 16
    """Linearisation contexts of the lin_* columns (stats split; 0: no lin_* columns). Their
    cost is that of pushing d_model directions through the layers above the hook, whatever the
    SAE's width, and a study's SAEs at one hook share it."""
    linear_len: int | None = None
    """Tokens per linearisation context, BOS included (None: context_len). They are the stats
    pass's first linear_contexts contexts, cut to this length."""


@dataclass
class StatsConfig(Record, StatsSettings):
    """Everything that defines a stats stage (where it runs: :class:`ClusterOptions`)."""

    RUNTIME: ClassVar[tuple[str, ...]] = ("batch_size", "device", "trust_remote_code",
                                          "checkpoint_s", "shard_contexts",
                                          *ClusterOptions.FIELDS)
    sae: str
    """SAE spec: a folder from train-sae (PATH or local:PATH), saelens:RELEASE/SAE_ID or
    hf:OWNER/REPO or hf:OWNER/REPO/SUBFOLDER."""
    model: str = DEFAULT_MODEL
    """Model spec: embedded:smollm2-135m, embedded:gemma3-270m, hf:REPO, gguf:PATH or a
    folder."""
    hook: str | None = None
    """Hook point, e.g. blocks.12.hook_resid_post (default: the one the SAE records)."""
    corpus: str = DEFAULT_CORPUS
    """Corpus spec: embedded, text:PATH, jsonl:PATH[:FIELD], hf:DATASET[:CONFIG]:SPLIT[:FIELD].
    Only its stats split is read."""
    seed: int = 0
    """Seed for the document split and the reservoirs."""
    device: str = "cpu"
    """cpu or cuda."""
    dtype: str = "float32"
    """Model dtype: float32 or bfloat16 (the SAE and all statistics run in float32)."""
    trust_remote_code: bool = flag("--trust-remote-code", False, parse="switch")
    """Run Python code shipped with a hub model (off by default: it runs with your rights;
    read it first)."""

    def __post_init__(self) -> None:
        check_seed(self.seed)
        self.check_cluster()
        positive(self, "tokens", "batch_size", "reservoir_size", "max_partners", "n_examples",
                 "example_window", "n_components", "shard_contexts")
        check_context_len(self.context_len)
        if self.linear_contexts < 0 or self.linear_contexts == 1:
            raise SpecError(f"linear_contexts must be 0 or at least 2, got "
                            f"{self.linear_contexts}", "pass --linear-contexts 0 (no lin_* "
                            "columns) or 2 or more (lin_stability compares contexts)")
        if self.linear_len is not None and self.linear_len < 2:
            raise SpecError(f"linear_len must be at least 2, got {self.linear_len}",
                            "pass --linear-len 2 or more (BOS plus one token)")
        if self.final_norm_contexts < 1:
            raise SpecError("final_norm_contexts must be >= 1 (sigma_fin needs some positions)",
                            "pass --final-norm-contexts 32")
        if not (math.isfinite(self.strength) and self.strength > 0):
            raise SpecError(f"strength must be a positive number, got {self.strength}",
                            "pass e.g. --strength 0.25")
        if not self.sae or not str(self.sae).strip():
            raise SpecError("no SAE given", "pass --sae PATH (a folder from train-sae)")
        check_hook(self.hook)
        if not (math.isfinite(self.neighbour_threshold) and -1 <= self.neighbour_threshold < 1):
            raise SpecError(f"neighbour_threshold must be a cosine in [-1, 1), got "
                            f"{self.neighbour_threshold}", "pass e.g. --neighbour-threshold 0.3")
        coact = self.reservoir_size if self.coact_size is None else self.coact_size
        if not 1 <= coact <= self.reservoir_size:  # as StatsOptions, before anything loads
            raise SpecError("invalid stats options: coact_size must lie in 1..reservoir_size",
                            "check --reservoir-size, --coact-size and --max-partners")


# --- steer ------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class SteerSettings(ClusterOptions):
    """What a study's [steer] section may set."""

    features: int = 512
    """N: features sampled, stratified by base_freq decile (ignored with feature_ids)."""
    random_directions: int = 64
    """R: seeded random unit directions steered as the null (feature = -1 - i)."""
    contexts: int = 32
    """C: steering contexts."""
    fresh_contexts: int = 32
    """C_fresh: fresh contexts (disjoint documents) for held-out screening; 0 = none."""
    context_len: int = 64
    """T: tokens per context, BOS included."""
    strengths: list[float] | None = flag("--strengths", None, parse="floats")
    """Strengths s (alpha = s x residual norm), comma-separated on the CLI; None = one
    calibrated s."""
    dose: str = "calibrated"
    """calibrated: one s for every direction (--strengths, or calibrated on random directions);
    equal-kl: each direction at its own alpha = sqrt(target_kl / exp(lin_kl)) (needs the stats
    stage's lin_kl)."""
    target_kl: float = 0.25
    """Calibration: mean KL (nats) of random directions at the calibrated s; equal-kl: each
    direction's predicted KL."""
    kl_tolerance: float = 0.05
    """Calibration: relative tolerance on target_kl."""
    calibration_contexts: int = 16
    """Calibration-split contexts the dose is calibrated on."""
    calibration_directions: int = 32
    """Random directions the dose is calibrated with (seeded apart from the null's)."""
    n_targets: int = hidden(N_TARGETS)
    """|T_f|: downstream features with the largest passthrough response, excluded from w."""
    n_out: int = hidden(N_OUT)
    """collateral_out: largest entries of mean_c d_c that count as the main effect."""
    n_target_tokens: int = hidden(N_TARGET_TOKENS)
    """target_gain: top direct-logit tokens."""
    pass_positions: int = hidden(256)
    """Clean stats-split positions at h' for base_pass (feature_dose_stats.parquet)."""
    batch_rows: int | None = None
    """Steered rows per forward (None: from free memory), rounded to fit C."""
    shard_directions: int = 16
    """Directions per shard file (how much an interruption can lose at most)."""


@dataclass
class SteerConfig(Record, SteerSettings):
    """Everything that defines a steer stage (where it runs: :class:`ClusterOptions`)."""

    RUNTIME: ClassVar[tuple[str, ...]] = ("batch_rows", "device", "shard_directions",
                                          "trust_remote_code", *ClusterOptions.FIELDS)
    downstream_sae: str
    """S': the SAE at a later hook (a folder from train-sae, saelens:..., hf:...)."""
    downstream_hook: str | None = None
    """h' (after the steering hook); None = the one S' records."""
    feature_ids: str | None = None
    """Explicit features instead of a sample: "3,17,40" or a file (one id per line, or
    CSV/parquet 'feature')."""
    seed: int = 0
    """Seeds the feature sample, the random directions and the context draws."""
    device: str = "cpu"
    """cpu or cuda."""
    trust_remote_code: bool = flag("--trust-remote-code", False, parse="switch")
    """Run Python code shipped with the run's hub model (as the stats stage was told to)."""

    def __post_init__(self) -> None:
        check_seed(self.seed)
        self.check_cluster()
        positive(self, "contexts", "context_len", "random_directions", "n_targets", "n_out",
                 "n_target_tokens", "shard_directions", "calibration_directions",
                 "pass_positions")
        if self.contexts < 2:
            raise SpecError("effect_stability needs at least 2 contexts", "pass --contexts 32")
        check_context_len(self.context_len)
        if self.fresh_contexts < 0 or self.calibration_contexts < 0 or self.features < 0:
            raise SpecError("--features, --fresh-contexts and --calibration-contexts cannot be "
                            "negative", "pass 0 or a positive number")
        if self.dose not in DOSES:
            raise SpecError(f"unknown dose {self.dose!r}",
                            "pass --dose calibrated (one s for all) or --dose equal-kl")
        if self.dose == EQUAL_KL and self.strengths is not None:
            raise SpecError("--dose equal-kl sets each direction's own dose, so it takes no "
                            "--strengths", "drop --strengths, or drop --dose equal-kl")
        if self.strengths is not None:
            bad = [s for s in self.strengths if not (math.isfinite(s) and s >= 0)]
            if not self.strengths or bad:
                raise SpecError(f"strengths must be non-negative numbers, got {self.strengths}",
                                "pass e.g. --strengths 0.25 or --strengths 0.125,0.25,0.5")
        elif self.dose != EQUAL_KL and self.calibration_contexts < 1:
            raise SpecError("a calibrated dose needs calibration contexts",
                            "pass --calibration-contexts 16, or explicit --strengths")
        if not (self.target_kl > 0 and 0 < self.kl_tolerance < 1):
            raise SpecError("target_kl must be > 0 and kl_tolerance in (0, 1)",
                            "pass e.g. --target-kl 0.25 --kl-tolerance 0.05")
        check_hook(self.downstream_hook)
        if self.batch_rows is not None and self.batch_rows < 1:
            raise SpecError(f"batch_rows must be positive, got {self.batch_rows}",
                            "pass a positive --batch-rows, or leave it out (sized from memory)")
        if self.features == 0 and self.feature_ids is None:
            raise SpecError("nothing to steer: --features 0 and no --feature-ids",
                            "pass --features N or --feature-ids")


# --- fit and screen ---------------------------------------------------------------------------
@dataclass
class FitConfig(Record):
    """Everything that defines a fit stage (docs/method.md §4); a study's [fit] section may set
    every field but the seed."""

    strength: float | None = None
    """Outcomes at this strength (default: the first positive one the steer stage recorded)."""
    n_splits: int = 5
    """K of the repeated K-fold CV (grouped by feature)."""
    n_repeats: int = 5
    """Repeats of the K-fold CV."""
    n_permutations: int = 200
    """Outcome permutations through the whole CV pipeline (primary endpoint)."""
    top_share: float = 0.2
    """Held-out screening: share kept in each test fold."""
    boosting_sets: tuple[str, ...] = hidden(("freq+mag", "baselines", "full"))
    """Sets also fit with gradient boosting (primary context set only)."""
    conformal_level: float = 0.9
    """Coverage of the split-conformal prediction intervals."""
    seed: int = 0
    """Seeds folds, tie-breaks and permutations."""

    def __post_init__(self) -> None:
        check_seed(self.seed)

        def bad(name: str, want: str) -> SpecError:
            return SpecError(f"{name} = {getattr(self, name)!r} must be {want}",
                             f"set --{name.replace('_', '-')} (study config: fit.{name}) to "
                             f"{want}")

        if self.n_splits < 2:
            raise bad("n_splits", "an integer >= 2")
        if self.n_repeats < 1:
            raise bad("n_repeats", "an integer >= 1")
        if self.n_permutations < 0:
            raise bad("n_permutations", "an integer >= 0")
        for name in ("top_share", "conformal_level"):
            if not 0 < getattr(self, name) < 1:  # NaN fails this too
                raise bad(name, "a number between 0 and 1 (exclusive)")
        if self.strength is not None and not (math.isfinite(self.strength)
                                              and self.strength >= 0):
            raise bad("strength", "a recorded strength (a number >= 0)")


@dataclass
class ScreenConfig:
    """``screen``: rank every feature of an SAE with a fitted predictor, no steering."""

    predictor: str
    """predictor.json from `steerscreen fit` (RUN/screening/predictor.json)."""
    sae: str
    """SAE to screen (folder, saelens:..., hf:...)."""
    model: str = DEFAULT_MODEL
    """Model spec."""
    corpus: str = DEFAULT_CORPUS
    """Corpus spec."""
    hook: str | None = None
    """Hook (default: the SAE's)."""
    tokens: int = 50_000
    """Stats-pass tokens."""
    downstream_sae: str | None = None
    """S' for base_pass (needed when the predictor uses it)."""
    downstream_hook: str | None = None
    """h' of S'."""
    pass_positions: int = hidden(256)
    """Clean positions at h' for base_pass."""
    target_kl: float = 0.25
    """KL (nats) of the predicted dose pred_alpha = sqrt(target_kl / exp(lin_kl))."""
    seed: int = 0
    """Seed of the stats pass."""
    device: str = "cpu"
    """cpu or cuda."""
    trust_remote_code: bool = flag("--trust-remote-code", False, parse="switch")
    """Run Python code shipped with a hub model (off by default: it runs with your rights;
    read it first)."""

    def __post_init__(self) -> None:
        check_seed(self.seed)
        positive(self, "tokens", "pass_positions")
        if not (math.isfinite(self.target_kl) and self.target_kl > 0):
            raise SpecError(f"target_kl must be a positive number, got {self.target_kl}",
                            "pass e.g. --target-kl 0.25")
        check_hook(self.hook)
        check_hook(self.downstream_hook)

    def stats_config(self, strength: float) -> StatsConfig:
        """The stats pass the screen runs (at the predictor's strength)."""
        return StatsConfig(sae=self.sae, model=self.model, hook=self.hook, corpus=self.corpus,
                           tokens=self.tokens, seed=self.seed, device=self.device,
                           strength=strength, trust_remote_code=self.trust_remote_code)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right after a field) of a dataclass and of the
    dataclasses it inherits fields from, whitespace-normalised."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or "__dataclass_fields__" not in vars(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for a, b in itertools.pairwise(body):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
                    and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                    and isinstance(b.value.value, str)):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


__all__ = ["ARCHS", "BACKENDS", "DEFAULT_CORPUS", "DEFAULT_MODEL", "DOSES", "EQUAL_KL", "N_OUT",
           "N_TARGETS",
           "N_TARGET_TOKENS", "Arch", "ClusterOptions", "FitConfig", "Record", "ScreenConfig",
           "StatsConfig", "StatsSettings", "SteerConfig", "SteerSettings", "TrainConfig",
           "TrainSettings", "field_docs", "flag", "hidden"]
