"""The cost model of a study on a named GPU (``steerscreen plan``): work, memory and time per stage,
and how they split over N workers. Nothing loads: shapes come from :mod:`.sizes`.

Work is counted in three kinds, each timed against its own peak:

- ``matmul``: FLOPs of the model's forwards in its dtype (2 per weight and token for the layers
  actually run, QK^T and AV over the causal span, the unembedding where logits are taken);
- ``fp32``: float32 matmuls (SAE encodes and decodes, the passthrough directions, the all-pairs
  decoder geometry and the direct-logit tables);
- ``bytes``: float32 element-wise passes that are bound by memory bandwidth, not FLOPs (the
  steering engine's vocabulary-side sums, the accumulators, base_pass).

``time = matmul / (peak_dtype * e_mm) + fp32 / (peak_fp32 * e_mm) + bytes / (bandwidth * e_bw)``.
The two efficiencies are calibrated on one measured run (docs/benchmarks.md, steering engine on
an NVIDIA H200): ``e_mm`` from the bare forward (b), ``e_bw`` from what the engine adds (a) - (b).
The model reproduces that run by construction; the all-pairs geometry of 131,072 features (5.3 s
measured on the H200, 3.8 s of it the cosines) is a second, independent check. docs/scaling.md
gives the formulas and the limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from steerscreen.config import SAEEntry, StudyConfig
from steerscreen.errors import SpecError
from steerscreen.models.hooks import HookPoint
from steerscreen.pipeline.plan import fit_seconds, format_duration
from steerscreen.pipeline.sizes import KNOWN_MODELS, ModelDims, model_dims, sae_width
from steerscreen.stats.accumulators import StatsOptions
from steerscreen.steering.engine import aligned_rows, cache_bytes

GiB = 1 << 30
# float32 passes over a steered row's [T-1, V] logits: log-softmax, dlogp, Fisher, KL, sums
# (docs/benchmarks.md: "about 9 passes"); over [T-1, G] downstream activations: encode output,
# activity, sums, targets; per accumulated token over its [F] dense activations.
VOCAB_PASSES, DOWN_PASSES, ACC_PASSES, LOGIT_TABLE_PASSES, PASS_PASSES = 9, 6, 8, 6, 3
CALIBRATION_EVALUATIONS = 4  # the dose bisection typically ends in 3-5 (at most 16)
LOAD_BYTES_PER_S = 2e9  # assumed: model weights from a local disk / page cache
LOAD_FIXED_S = 10.0  # assumed: imports, tokenizer, CUDA context
MERGE_BYTES_PER_S = 1e9  # assumed: accumulator shards shipped to the driver and merged
STATS_TOKEN_OVERHEAD = 1.13  # measured on CPU: the stats pass vs forward + encode (benchmarks)


@dataclass(frozen=True)
class Device:
    """Datasheet peaks (dense, no sparsity) of one accelerator, or of the 2-core reference CPU."""

    key: str
    name: str
    tflops_bf16: float
    tflops_fp32: float
    memory_gib: float
    bandwidth_tbs: float

    def peak(self, dtype: str) -> float:
        return 1e12 * (self.tflops_bf16 if dtype == "bfloat16" else self.tflops_fp32)


DEVICES: dict[str, Device] = {
    "h100": Device("h100", "NVIDIA H100 SXM 80GB", 989.0, 67.0, 80.0, 3.35),
    "h200": Device("h200", "NVIDIA H200 141GB", 989.0, 67.0, 141.0, 4.8),
    "a100": Device("a100", "NVIDIA A100 SXM 80GB", 312.0, 19.5, 80.0, 2.04),
    "a10g": Device("a10g", "NVIDIA A10G 24GB", 70.0, 31.2, 24.0, 0.6),
    "l4": Device("l4", "NVIDIA L4 24GB", 121.0, 30.3, 24.0, 0.3),
    # 2 cores x 2 FMA units x 8 float32 lanes x 2 FLOPs x ~2.5 GHz; no faster in bfloat16.
    "cpu": Device("cpu", "2-core CPU (the reference machine)", 0.16, 0.16, 24.0, 0.02),
}


@dataclass(frozen=True)
class Work:
    """Additive counts of one piece of work."""

    tokens: float = 0.0  # tokens run through the model (full and partial forwards)
    full: float = 0.0  # sequences run from the embedding
    partial: float = 0.0  # steered rows started at the hook
    matmul: float = 0.0  # FLOPs in the model's dtype
    fp32: float = 0.0  # float32 matmul FLOPs
    bytes: float = 0.0  # float32 memory traffic of bandwidth-bound passes

    def __add__(self, o: Work) -> Work:
        return Work(*(a + b for a, b in zip(self._t(), o._t(), strict=True)))

    def __mul__(self, k: float) -> Work:
        return Work(*(a * k for a in self._t()))

    def _t(self) -> tuple[float, ...]:
        return (self.tokens, self.full, self.partial, self.matmul, self.fp32, self.bytes)

    @property
    def flops(self) -> float:
        return self.matmul + self.fp32


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the datasheet peaks that steerscreen's kernels reach, and from what."""

    matmul: float
    memory: float
    source: str


@dataclass(frozen=True)
class Benchmark:
    """One measured steering-engine run (docs/benchmarks.md): 256 directions x 32 contexts..."""

    device: str
    model: str
    hook: str
    down_width: int
    directions: int
    contexts: int
    context_len: int
    batch_rows: int
    engine_s: float  # (a): clean cache + steered rows + every outcome
    bare_s: float  # (b): layers above the hook + logits for the same rows

    @property
    def features_per_hour(self) -> float:
        return self.directions / self.engine_s * 3600


H200_RUN = Benchmark("h200", "smollm2-135m", "blocks.12.hook_resid_post", 4096, 256, 32, 64, 512,
                     3.79, 2.49)
CPU_RUN = Benchmark("cpu", "smollm2-135m", "blocks.12.hook_resid_post", 4096, 64, 32, 64, 32,
                    274.6, 220.7)


def calibrate(run: Benchmark) -> Efficiency:
    """Solve the efficiencies from a float32 run: (b) sets e_mm, (a) - (b) then sets e_bw."""
    dev, dims = DEVICES[run.device], KNOWN_MODELS[run.model]
    above = _layers(dims, run.hook)[1]
    rows = run.directions * run.contexts
    bare = _steered(dims, above, run.context_len, 0, rows)
    bare = Work(matmul=bare.matmul)
    e_mm = bare.matmul / (run.bare_s * dev.peak("float32"))
    engine = (_steered(dims, above, run.context_len, run.down_width, rows)
              + _clean(dims, above, run.contexts, run.context_len, run.batch_rows)
              + _targets(dims, run.down_width, run.directions, run.contexts, run.context_len))
    extra_flops = engine.flops - bare.matmul
    bw_s = run.engine_s - run.bare_s - extra_flops / (dev.peak("float32") * e_mm)
    e_bw = engine.bytes / (bw_s * dev.bandwidth_tbs * 1e12)
    return Efficiency(e_mm, e_bw, f"the {run.device.upper()} run of docs/benchmarks.md "
                      f"({run.model}, {run.directions} x {run.contexts} x {run.context_len}, "
                      f"float32: (a) {run.engine_s} s, (b) {run.bare_s} s)")


def seconds(w: Work, dev: Device, dtype: str) -> float:
    eff = EFFICIENCY["cpu" if dev.key == "cpu" else "gpu"]
    return (w.matmul / (dev.peak(dtype) * eff.matmul) + w.fp32 / (dev.peak("float32") * eff.matmul)
            + w.bytes / (dev.bandwidth_tbs * 1e12 * eff.memory))


# --- the pieces of work -------------------------------------------------------------------------
def _layers(dims: ModelDims, hook: str) -> tuple[int, int]:
    """(layers run to read the hook, layers run from the hook to the end)."""
    hp = HookPoint.parse(hook, dims.n_layers)
    below = hp.layer if hp.kind == "resid_pre" else hp.layer + 1
    return below, dims.n_layers - below


def forward_work(dims: ModelDims, n_layers: int, contexts: float, t: int,
                 logits: bool = False) -> Work:
    """``contexts`` sequences of ``t`` tokens from the embedding through ``n_layers`` layers
    (and, with ``logits``, the unembedding at positions >= 1)."""
    tok = contexts * t
    mm = n_layers * dims.layer_flops(tok, t)
    if logits:
        mm += dims.unembed_flops(contexts * (t - 1))
    return Work(tokens=tok, full=contexts, matmul=mm)


def _steered(dims: ModelDims, above: int, t: int, g: int, rows: float, kl_only: bool = False
             ) -> Work:
    """Rows started at the hook: layers above it, logits at t >= 1, the vocabulary sums, and
    (with S' of width g) its float32 encode and sums."""
    pos = rows * (t - 1)
    per_pos = VOCAB_PASSES * 4 * dims.vocab + (0 if kl_only else DOWN_PASSES * 4 * g)
    return Work(tokens=rows * t, partial=rows,
                matmul=above * dims.layer_flops(rows * t, t) + dims.unembed_flops(pos),
                fp32=0.0 if kl_only else 2.0 * pos * dims.d_model * g, bytes=pos * per_pos)


def _clean(dims: ModelDims, above: int, contexts: int, t: int, b: int) -> Work:
    """A context set's clean pass: below the hook once per context, then from the hook at the
    steered rows' shape (b rows, tiling the contexts when b > C: exactness, see the engine)."""
    below = dims.n_layers - above
    rows = max(b, contexts)
    return (forward_work(dims, below, contexts, t)
            + Work(tokens=rows * t, partial=rows,
                   matmul=above * dims.layer_flops(rows * t, t)
                   + dims.unembed_flops(rows * (t - 1))))


def _targets(dims: ModelDims, g: int, directions: int, contexts: int, t: int) -> Work:
    """The passthrough target sets: one d x G product per direction, passes over [C, T-1, G]."""
    return Work(fp32=2.0 * directions * dims.d_model * g,
                bytes=directions * contexts * (t - 1) * g * 4 * PASS_PASSES)


def linear_work(dims: ModelDims, above: int, contexts: int, t: int) -> Work:
    """The linear response (``steerscreen.stats.linear``): d tangents per context through the
    layers above the hook (forward-mode: about one forward's FLOPs each, the primal once), then
    per position two d x D x V products and a few passes over [d, V]."""
    d, pos = dims.d_model, contexts * (t - 1)
    return Work(tokens=contexts * t * (d + 1), partial=contexts * (d + 1),
                matmul=above * dims.layer_flops(contexts * t * (d + 1), t),
                fp32=4.0 * pos * d * d * dims.vocab, bytes=pos * d * dims.vocab * 4 * 8)


def table_work(dims: ModelDims, f: int) -> Work:
    """All-pairs decoder cosines and the direct-logit columns of every feature (float32)."""
    return Work(fp32=2.0 * f * f * dims.d_model + 2.0 * f * dims.d_model * dims.vocab,
                bytes=f * dims.vocab * 4 * LOGIT_TABLE_PASSES)


# Every accelerator gets the H200 run's efficiencies; the CPU its own measured run's.
EFFICIENCY = {"gpu": calibrate(H200_RUN), "cpu": calibrate(CPU_RUN)}


# --- stages -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageCost:
    """One stage of one run: the work that splits over workers, the work every worker repeats,
    the work done once, and the device memory one worker needs."""

    stage: str  # train | stats | calibrate | steer | fit | report
    target: str  # the run (SAE) or "study"
    parallel: Work  # split over workers (corpus or feature shards)
    per_worker: Work  # repeated by each worker (the clean passes)
    serial: Work  # once, on one worker (merge, tables, calibration, dose stats)
    units: int  # shards the parallel part splits into (0: it does not split)
    memory_bytes: float  # device memory per worker
    load_bytes: float = 0.0  # weights a worker loads before it starts
    merge_bytes: float = 0.0  # state each shard ships to the driver's merge (split runs only)
    host_s: float = 0.0  # CPU-only time (fit, report), not on the GPU
    note: str = ""

    @property
    def work(self) -> Work:
        return self.parallel + self.per_worker + self.serial


@dataclass(frozen=True)
class StageTime:
    cost: StageCost
    gpu_s: float  # device time summed over the workers it occupies
    wall_s: float  # wall clock on the planned workers


@dataclass(frozen=True)
class CostPlan:
    """``steerscreen plan``'s answer: every stage's cost and time on ``workers`` x ``device``."""

    study: str
    preset: str
    spec: str  # the config's model spec
    model: ModelDims
    dtype: str
    device: Device
    workers: int
    batch_rows: int
    stages: list[StageTime]
    features_per_hour: float  # steering throughput of one worker (first run, one strength)
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> Work:
        return sum((s.cost.work for s in self.stages), Work())

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_s for s in self.stages) / 3600

    @property
    def wall_s(self) -> float:
        return sum(s.wall_s for s in self.stages)

    @property
    def peak_memory_bytes(self) -> float:
        return max(s.cost.memory_bytes for s in self.stages)

    def rows(self) -> list[list[str]]:
        """The printed table: one row per stage and run, then the totals."""
        def row(name: str, target: str, w: Work, mem: float, gpu_s: float, wall_s: float,
                note: str) -> list[str]:
            fwd = f"{w.full:,.0f} / {w.partial:,.0f}" if w.tokens else "-"
            return [name, target, _count(w.tokens) if w.tokens else "-", fwd,
                    f"{w.flops / 1e12:,.1f}" if w.flops else "-",
                    f"{mem / GiB:.1f}" if mem else "-", f"{gpu_s / 3600:.2f}",
                    format_duration(wall_s), note]

        out = [row(s.cost.stage, s.cost.target, s.cost.work, s.cost.memory_bytes, s.gpu_s,
                   s.wall_s, s.cost.note) for s in self.stages]
        out.append(row("total", "", self.total, self.peak_memory_bytes, self.gpu_hours * 3600,
                       self.wall_s, ""))
        return out

    def footer(self) -> list[str]:
        m, eff = self.model, EFFICIENCY["cpu" if self.device.key == "cpu" else "gpu"]
        lines = [
            f"model: {m.n_layers} layers, d_model {m.d_model}, d_ff {m.d_ff}, vocabulary "
            f"{m.vocab:,}, {m.n_params / 1e9:.2f}B parameters ({m.source})",
            f"steering: {self.features_per_hour:,.0f} features/hour per worker (steering + "
            f"fresh contexts, one strength), {self.batch_rows} rows per forward",
            f"efficiency: {eff.matmul:.2f} of peak FLOP/s, {eff.memory:.2f} of peak bandwidth",
            f"  calibrated on {eff.source}",
            "an estimate, not a measurement: see docs/scaling.md for the model and its limits",
        ]
        return lines + [f"warning: {w}" for w in self.warnings]


def _count(n: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def time_stage(c: StageCost, dev: Device, dtype: str, workers: int) -> StageTime:
    """Wall clock: load, repeated work, the parallel part in ceil(units / N) rounds of shards,
    then the serial part and the merge; device time counts every worker's share."""
    load = LOAD_FIXED_S + c.load_bytes / LOAD_BYTES_PER_S if c.load_bytes else 0.0
    par, rep, ser = (seconds(w, dev, dtype) for w in (c.parallel, c.per_worker, c.serial))
    n = min(workers, c.units) if c.units else 1
    rounds = math.ceil(c.units / n) / c.units if c.units else 1.0
    # Split over Ray, every shard's state travels to the driver, which merges them in order.
    merge = c.merge_bytes * c.units / MERGE_BYTES_PER_S if n > 1 else 0.0
    wall = load + rep + par * rounds + ser + merge + c.host_s
    gpu = (n * (load + rep) + par + ser + merge) if (c.load_bytes or c.work.flops) else 0.0
    return StageTime(c, gpu, wall)


@dataclass
class _Setup:
    """What every stage's cost of one study on one device shares."""

    cfg: StudyConfig
    dev: Device
    dims: ModelDims
    g: int
    """Width of S'."""
    down_hook: str
    widths: list[int]
    b: int = 0
    """Steered rows per forward."""
    per_row: float = 0.0
    cache: float = 0.0

    @property
    def wbytes(self) -> float:
        return self.dims.n_params * (2 if self.cfg.dtype == "bfloat16" else 4)

    @property
    def unembed32(self) -> float:  # the float32 W_U copy (tables, engine)
        return 4.0 * self.dims.d_model * self.dims.vocab

    def sae_bytes(self, f: int) -> float:
        return 4.0 * (2 * self.dims.d_model * f + f + self.dims.d_model)


def plan_cost(cfg: StudyConfig, device: str = "h100", workers: int = 1) -> CostPlan:
    """The cost of ``cfg`` on ``workers`` x ``device`` (a key of :data:`DEVICES`)."""
    if device not in DEVICES:
        raise SpecError(f"unknown GPU {device!r}", f"use one of {', '.join(DEVICES)}")
    if workers < 1:
        raise SpecError(f"workers must be at least 1, got {workers}", "pass --workers 1 or more")
    su = _setup(cfg, DEVICES[device])
    stages = [*_train_costs(su), *_calibration_cost(su)]
    features_per_hour = 0.0
    for e, f in zip(cfg.saes, su.widths, strict=True):
        stages.append(_stats_cost(su, e, f))
        stages.append(_steer_cost(su, e, f))
        if not features_per_hour:
            features_per_hour = _features_per_hour(su, e)
    ft, n = cfg.resolved("fit"), cfg.resolved("steer")["features"]
    for e in cfg.saes:  # measured on the 2-core reference machine
        stages.append(StageCost("fit", e.name, Work(), Work(), Work(), 0, 0.0,
                                host_s=fit_seconds(n, ft["n_repeats"], ft["n_permutations"]),
                                note="CPU (scikit-learn)"))
    stages.append(StageCost("report", "study", Work(), Work(), Work(), 0, 0.0,
                            host_s=10.0 * (1 + (len(cfg.saes) > 1)), note="CPU"))
    timed = [time_stage(s, su.dev, cfg.dtype, workers) for s in stages]
    warnings = [f"{s.cost.stage} {s.cost.target}: needs {s.cost.memory_bytes / GiB:.1f} GiB, "
                f"the {su.dev.name} has {su.dev.memory_gib:.0f}" for s in timed
                if s.cost.memory_bytes > su.dev.memory_gib * GiB]
    return CostPlan(cfg.name, cfg.preset, cfg.model, su.dims, cfg.dtype, su.dev, workers, su.b,
                    timed, features_per_hour, warnings)


def _setup(cfg: StudyConfig, dev: Device) -> _Setup:
    dims = model_dims(cfg.model)
    assert cfg.downstream is not None
    for e in cfg.saes:
        if e.hook is None:
            raise SpecError(f"SAE {e.name!r} has no hook in the config",
                            "add hook = \"blocks.L.hook_resid_post\" to its [[sae]] table (the "
                            "plan does not load SAEs to read it)")
    g, _ = sae_width(cfg.downstream, dims.d_model)
    su = _Setup(cfg, dev, dims, g, cfg.downstream.hook or cfg.saes[-1].hook or "",
                [sae_width(e, dims.d_model)[0] for e in cfg.saes])
    sr = cfg.resolved("steer")
    t_sr, c, cf = sr["context_len"], sr["contexts"], sr["fresh_contexts"]
    su.per_row = 4.0 * (3 * (t_sr - 1) * dims.vocab + t_sr * (dims.d_ff + 4 * dims.d_model)
                        + 2 * (t_sr - 1) * g)
    fixed = su.wbytes + su.unembed32 + su.sae_bytes(max(su.widths)) + su.sae_bytes(g)
    su.cache = float(cache_bytes(c + cf, t_sr, dims.vocab, dims.d_model, g))  # the engine's
    b_cap = 32 if dev.key == "cpu" else 512
    b = sr["batch_rows"] or max(1, min(b_cap, int(0.5 * (dev.memory_gib * GiB - fixed
                                                         - su.cache) // su.per_row)))
    su.b = aligned_rows(b, c)
    return su


def _train_costs(su: _Setup) -> list[StageCost]:
    cfg, dims = su.cfg, su.dims
    assert cfg.downstream is not None
    trained = [e for e in [*cfg.saes, cfg.downstream] if e.trained]
    if not trained:
        return []
    tr = cfg.resolved("train")
    depth = max(_layers(dims, e.hook or "")[0] for e in trained)
    n_tok = tr["tokens"] + tr["heldout_tokens"]
    t = tr["context_len"]
    hooks = len({e.hook for e in trained})
    out = [StageCost(
        "train", "study", Work(), Work(), forward_work(dims, depth, n_tok / t, t), 0,
        su.wbytes + 16 * tr["batch_size"] * t * dims.d_model, su.wbytes,
        note=f"activations on the host: {n_tok * dims.d_model * 4 * hooks / GiB:.1f} GiB")]
    for e in trained:
        f = int(e.width or 0)
        samples = tr["tokens"] * (e.epochs or tr["epochs"])
        out.append(StageCost(  # forward + backward of encoder and decoder: 12 d F
            "train", e.name, Work(), Work(), Work(fp32=12.0 * samples * dims.d_model * f), 0,
            4 * su.sae_bytes(f) + 4.0 * tr["batch_size"] * (3 * f + 4 * dims.d_model)))
    return out


def _calibration_cost(su: _Setup) -> list[StageCost]:
    sr = su.cfg.resolved("steer")
    if sr["strengths"] is not None:  # explicit strengths: nothing to calibrate
        return []
    cc, cd, t_sr = sr["calibration_contexts"], sr["calibration_directions"], sr["context_len"]
    above = _layers(su.dims, su.cfg.saes[0].hook or "")[1]
    w = (_clean(su.dims, above, cc, t_sr, su.b)
         + _steered(su.dims, above, t_sr, 0, CALIBRATION_EVALUATIONS * cd * cc, kl_only=True))
    fixed = su.wbytes + su.unembed32 + su.sae_bytes(max(su.widths)) + su.sae_bytes(su.g)
    return [StageCost("calibrate", "study", Work(), Work(), w, 0, fixed + su.b * su.per_row,
                      su.wbytes, note=f"{CALIBRATION_EVALUATIONS} doses x {cd} x {cc} rows")]


def _stats_cost(su: _Setup, e: SAEEntry, f: int) -> StageCost:
    st, dims = su.cfg.resolved("stats"), su.dims
    t_st = st["context_len"]
    below, _ = _layers(dims, e.hook or "")
    n_ctx = st["tokens"] / t_st
    opts = StatsOptions(st["reservoir_size"], st["coact_size"], st["max_partners"],
                        st["n_examples"], st["example_window"])
    acc = opts.memory_bytes(f, dims.d_model)
    tok = forward_work(dims, below, n_ctx, t_st) * STATS_TOKEN_OVERHEAD
    par = tok + Work(fp32=4.0 * st["tokens"] * dims.d_model * f,
                     bytes=st["tokens"] * f * 4 * ACC_PASSES)
    ser = (forward_work(dims, dims.n_layers, st["final_norm_contexts"], t_st)
           + table_work(dims, f))
    first_at_hook = next(x for x in su.cfg.saes if x.hook == e.hook) is e
    n_lin = min(st["linear_contexts"], math.ceil(n_ctx))
    if n_lin >= 2 and first_at_hook:  # the SAEs at one hook share the forms (one process)
        ser = ser + linear_work(dims, _layers(dims, e.hook or "")[1], n_lin,
                                min(st["linear_len"] or t_st, t_st))
    mem = (su.wbytes + su.unembed32 + su.sae_bytes(f) + acc
           + 4.0 * st["batch_size"] * t_st * (2 * f + 4 * dims.d_model)
           + 2 * 4.0 * 512 * dims.vocab)
    shards = math.ceil(n_ctx / st["shard_contexts"])
    return StageCost("stats", e.name, par, Work(), ser, shards, mem, su.wbytes + su.sae_bytes(f),
                     acc, note=f"state {acc / GiB:.1f} GiB, {shards} shard"
                               + ("s" if shards > 1 else ""))


def _steer_cost(su: _Setup, e: SAEEntry, f: int) -> StageCost:
    sr, st, dims, g, b = su.cfg.resolved("steer"), su.cfg.resolved("stats"), su.dims, su.g, su.b
    t_sr, t_st = sr["context_len"], st["context_len"]
    c, cf, k = sr["contexts"], sr["fresh_contexts"], sr["features"] + sr["random_directions"]
    n_str = 1 if sr["strengths"] is None else len(sr["strengths"])
    above = _layers(dims, e.hook or "")[1]
    rows = math.ceil(k * c / b) * b + (math.ceil(k * cf / b) * b if cf else 0)
    par = (_steered(dims, above, t_sr, g, rows * n_str)
           + _targets(dims, g, k * n_str, c + cf, t_sr))
    rep = _clean(dims, above, c, t_sr, b) + (_clean(dims, above, cf, t_sr, b) if cf else Work())
    pass_ctx = math.ceil(sr["pass_positions"] / (t_st - 1))
    dose = (forward_work(dims, _layers(dims, su.down_hook)[0], pass_ctx, t_st)
            + Work(fp32=2.0 * f * dims.d_model * (g + dims.vocab),  # base_pass, logit_*
                   bytes=4.0 * f * (sr["pass_positions"] * g * PASS_PASSES
                                    + dims.vocab * LOGIT_TABLE_PASSES)))
    mem = (su.wbytes + su.unembed32 + su.sae_bytes(f) + su.sae_bytes(g) + su.cache
           + b * su.per_row)
    return StageCost("steer", e.name, par, rep, dose, math.ceil(k / sr["shard_directions"]), mem,
                     su.wbytes + su.sae_bytes(f) + su.sae_bytes(g), note=f"{b} rows per forward")


def _features_per_hour(su: _Setup, e: SAEEntry) -> float:
    """One direction on both context sets, one strength."""
    sr = su.cfg.resolved("steer")
    t_sr, c, cf = sr["context_len"], sr["contexts"], sr["fresh_contexts"]
    above = _layers(su.dims, e.hook or "")[1]
    one = _steered(su.dims, above, t_sr, su.g, c + cf) + _targets(su.dims, su.g, 1, c + cf, t_sr)
    return 3600 / seconds(one, su.dev, su.cfg.dtype)


__all__ = ["DEVICES", "EFFICIENCY", "H200_RUN", "Benchmark", "CostPlan", "Device", "Efficiency",
           "StageCost", "StageTime", "Work", "calibrate", "forward_work", "linear_work",
           "plan_cost", "seconds", "table_work", "time_stage"]


def print_cost(cost: CostPlan) -> None:
    """The cost plan as a table (stage by stage) and its footer, on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"plan {escape(cost.study)}: {escape(cost.spec)} ({cost.dtype}), preset "
                  f"{cost.preset}, {cost.workers} x {cost.device.name}")
    for col in ("stage", "run", "tokens", "forwards full / from h", "TFLOP", "GiB/worker",
                "GPU-h", "wall", "note"):
        table.add_column(col, justify="left" if col in ("stage", "run", "note") else "right")
    for r in cost.rows():
        table.add_row(*(escape(x) for x in r))
    out = Console(width=140)
    out.print(table)
    for line in cost.footer():
        out.print(escape(line))
