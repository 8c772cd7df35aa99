"""SAE training: SAELens's ``SAETrainer`` fed by steerscreen's own activation stream.

Public SAEs for the embedded models do not exist, so steerscreen trains its own: ReLU (standard,
L1 penalty), JumpReLU (DeepMind's L0 loss with a straight-through threshold) and TopK. One model
pass collects the residual at every requested hook; every SAE (any architecture, any hook) then
trains on those same activations. Inputs are scaled to norm sqrt(d_in) during training
(``expected_average_only_in``) and the scale is folded into the saved weights, so saved SAEs work
on raw residuals.

A trained SAE is cached in the user cache keyed by its full config (model, hook, corpus hash,
architecture, every hyperparameter, versions): a second identical request is instant.
Evaluation is on held-out documents: explained variance, mean L0, dead fraction.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from steerscreen import __version__, preflight
from steerscreen.corpus import Contexts, load_corpus, make_contexts, split_documents
from steerscreen.errors import SpecError, check_seed
from steerscreen.files import atomic_dir, cache_dir, sha256_json, write_json
from steerscreen.models import DEFAULT_MODEL, HookedModel, HookPoint, ModelSpec, load_model
from steerscreen.models.hooks import check_finite
from steerscreen.saes.io import load_sae, save_sae

Arch = Literal["topk", "relu", "jumprelu"]
SPLITS = {"train": 0.9, "heldout": 0.1}  # documents: training vs held-out evaluation
ARCHS: tuple[Arch, ...] = ("topk", "relu", "jumprelu")


@dataclass
class TrainConfig:
    """Everything that defines a trained SAE (the cache key) plus where to put it."""

    model: str = DEFAULT_MODEL
    """Model spec (see ``steerscreen.models.load_model``)."""
    hook: str = "blocks.12.hook_resid_post"
    """Hook point the SAE reads (TransformerLens name)."""
    arch: Arch = "topk"
    """SAE architecture: topk, relu (standard, L1) or jumprelu."""
    width: int = 4096
    """Number of features (d_sae)."""
    k: int = 32
    """TopK: active features per token."""
    l1_coefficient: float = 4.0
    """ReLU: L1 penalty weight (on activations scaled to norm sqrt(d_in))."""
    target_l0: float = 40.0
    """JumpReLU: the L0 its quadratic sparsity loss pulls towards (Gemma Scope 2's loss)."""
    l0_coefficient: float = 5.0
    """JumpReLU: weight of that sparsity loss."""
    jumprelu_loss: Literal["quadratic", "tanh", "step"] = "quadratic"
    """JumpReLU sparsity loss: quadratic around target_l0 (Gemma Scope 2), tanh (Anthropic) or
    step (plain L0, DeepMind)."""
    jumprelu_ste_to_input: bool = False
    """JumpReLU: let the sparsity gradient reach the encoder, not only the thresholds."""
    jumprelu_bandwidth: float = 0.1
    """JumpReLU: bandwidth of the straight-through threshold gradient's kernel."""
    jumprelu_warmup: float = 0.25
    """JumpReLU: share of training over which the sparsity loss ramps up from 0 (a full-strength
    quadratic loss at the dense start kills most features at once)."""
    pre_act_loss_coefficient: float | None = None
    """JumpReLU: weight of Anthropic's pre-activation loss (None = off)."""
    tokens: int = 200_000
    """Training tokens (positions >= 1 of contexts from the training documents)."""
    corpus: str = "embedded"
    """Corpus spec (see ``steerscreen.corpus.load_corpus``)."""
    context_len: int = 128
    """Tokens per training context, BOS included (BOS positions are not trained on)."""
    epochs: int = 4
    """Passes over the training tokens."""
    batch_size: int = 1024
    """Tokens per optimiser step."""
    lr: float | None = None
    """Peak learning rate; default 1e-3, and 3e-3 for JumpReLU (its thresholds move ~lr per
    step, so 1e-3 is too slow for a short budget)."""
    heldout_tokens: int = 20_000
    """Tokens from held-out documents for the evaluation."""
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    """Run Python code shipped with a hub model (transformers' trust_remote_code); off unless
    asked for. Not part of the cache key: it decides whether a model loads, not what it is."""

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
        HookPoint.parse(self.hook)  # fail in a second, before any model is loaded
        ModelSpec.parse(self.model)
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

    def key(self, corpus_sha: str) -> str:
        import sae_lens

        cfg = {k: v for k, v in asdict(self).items()
               if k not in ("device", "trust_remote_code")}
        return sha256_json({**cfg, "corpus_sha": corpus_sha, "steerscreen": __version__,
                            "sae_lens": sae_lens.__version__})[:20]


@dataclass
class TrainSummary:
    """The saved record of one training run (``training_summary.json``)."""

    config: dict
    explained_variance: float
    mean_l0: float
    dead_fraction: float
    heldout_tokens: int
    train_tokens: int
    train_seconds: float
    collect_seconds: float
    cache_key: str
    sae_path: str
    cached: bool = False
    versions: dict = field(default_factory=dict)


# --- activation stream ----------------------------------------------------------------------
@torch.no_grad()
def collect_activations(
    model: HookedModel,
    contexts: Contexts,
    hooks: list[str],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Residuals at ``hooks`` for positions >= 1 of every context -> ``{hook: [N*(T-1), D]}``.

    The forward stops after the deepest hook. Values are float32 on the CPU.
    """
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    ids = torch.as_tensor(contexts.token_ids)
    for i in range(0, len(ids), batch_size):
        res = model.forward(ids[i:i + batch_size], read=hooks, logits=False)
        for h in hooks:
            a = res.acts[h][:, 1:].float().reshape(-1, model.d_model).cpu()
            check_finite(a, h, f" (contexts {i}..{i + len(a) // (ids.shape[1] - 1) - 1})")
            out[h].append(a)
        if progress is not None:
            progress(min(batch_size, len(ids) - i))
    return {h: torch.cat(v) for h, v in out.items()}


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled mini-batches, a fresh permutation each epoch (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(acts), generator=gen)
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            yield acts[perm[i:i + batch_size]]


def _training_sae(cfg: TrainConfig, d_in: int, steps: int):
    from sae_lens import (
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    common = dict(d_in=d_in, d_sae=cfg.width, dtype="float32", device=cfg.device,
                  normalize_activations="none")
    if cfg.arch == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=cfg.k, **common))
    if cfg.arch == "relu":
        return StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient,
                                                             **common))
    return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        l0_coefficient=cfg.l0_coefficient, jumprelu_sparsity_loss_mode=cfg.jumprelu_loss,
        target_l0=cfg.target_l0 if cfg.jumprelu_loss == "quadratic" else None,
        jumprelu_ste_to_input=cfg.jumprelu_ste_to_input,
        pre_act_loss_coefficient=cfg.pre_act_loss_coefficient,
        l0_warm_up_steps=int(cfg.jumprelu_warmup * steps),
        jumprelu_bandwidth=cfg.jumprelu_bandwidth, **common))


@torch.no_grad()
def evaluate_sae(sae, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Explained variance (1 - SSE/SST about the mean), mean L0 and the share of features that
    never fire, on ``acts`` ``[N, D]`` (raw residuals)."""
    mean = acts.mean(0)
    sse = sst = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for i in range(0, len(acts), batch_size):
        x = acts[i:i + batch_size].to(sae.device)
        f = sae.encode(x)
        x_hat = sae.decode(f)
        sse += (x - x_hat).pow(2).sum().item()
        sst += (x - mean.to(x.device)).pow(2).sum().item()
        l0 += (f > 0).sum().item()
        fired |= (f > 0).any(0).cpu()
    return {"explained_variance": 1.0 - sse / sst, "mean_l0": l0 / len(acts),
            "dead_fraction": 1.0 - fired.float().mean().item()}


def fit_sae(cfg: TrainConfig, acts: torch.Tensor, model_name: str, hook: str):
    """Train one SAE on ``acts`` ``[N, D]`` with SAELens's trainer -> inference SAE (SAELens)."""
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(cfg.seed)
    # Scale inputs to mean norm sqrt(d_in) so hyperparameters transfer across models and layers;
    # the scale is folded into the weights afterwards, so the saved SAE reads raw residuals.
    scale = acts.shape[1] ** 0.5 / acts[: 100_000].norm(dim=-1).mean().item()
    acts = acts * scale
    total = cfg.epochs * (len(acts) // cfg.batch_size) * cfg.batch_size
    steps = total // cfg.batch_size
    sae = _training_sae(cfg, acts.shape[1], steps)
    with torch.no_grad():
        # b_dec at the data mean: residual streams have a large mean (massive dimensions), and a
        # zero b_dec lets a few features absorb it while the rest die.
        sae.b_dec.copy_(acts[: 100_000].mean(0))
        if cfg.arch == "jumprelu":
            # Start every feature at the target firing rate: thresholds at the (1 - L0/F)
            # quantile of its own pre-activations. A shared threshold either leaves the SAE
            # dense or silences most features for good within a short training budget.
            sample = acts[: 20_000] - sae.b_dec
            pre = sample @ sae.W_enc + sae.b_enc
            q = 1.0 - cfg.target_l0 / cfg.width
            sae.threshold.copy_(torch.quantile(pre, q, dim=0).clamp_min(1e-3))
    window = max(steps // 16, 1)  # a feature silent for 1/16 of training counts as dead (AuxK)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total, train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
        lr_end=cfg.lr / 10, lr_scheduler_name="cosineannealing", lr_warm_up_steps=steps // 20,
        lr_decay_steps=0, device=cfg.device, dead_feature_window=window,
        feature_sampling_window=window, logger=LoggingConfig(log_to_wandb=False),
    )
    data = _batches(acts, cfg.batch_size, cfg.seed)
    trained = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data).fit()
    trained.fold_activation_norm_scaling_factor(scale)
    trained.cfg.metadata.model_name = model_name
    trained.cfg.metadata.hook_name = hook
    trained.cfg.metadata.context_size = cfg.context_len
    trained.cfg.metadata.prepend_bos = True
    # The trainer folds the input scale into the weights; reload as an inference SAE.
    tmp = cache_dir("tmp") / f"fit-{cfg.key('')}-{time.time_ns()}"
    try:
        trained.save_inference_model(tmp)
        return SAE.load_from_disk(str(tmp), device=cfg.device).eval()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the train-sae job ----------------------------------------------------------------------
def train_saes(
    configs: list[TrainConfig],
    out: str | Path | None = None,
    model: HookedModel | None = None,
    log: Callable[[str], None] = print,
) -> list[TrainSummary]:
    """Train every config, sharing one activation pass per (model, corpus, tokens, context_len).

    Each SAE lands in the cache (``$STEERSCREEN_CACHE/saes/KEY``) and, when ``out`` is given, in
    ``out`` (one config) or ``out/<arch>-<width>-L<layer>`` (several).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    if not configs:
        return []
    base = configs[0]
    shared = ("model", "corpus", "tokens", "context_len", "heldout_tokens", "seed", "device",
              "dtype")
    for c in configs[1:]:
        if any(getattr(c, f) != getattr(base, f) for f in shared):
            raise SpecError("configs trained together must share model, corpus, tokens, "
                            "context_len, heldout_tokens, seed, device and dtype",
                            "train them in separate calls")
    preflight.check_train(configs, out, model=model)  # before the corpus or model loads
    corpus = load_corpus(base.corpus)
    preflight.check_train_corpus(base, corpus)
    keys = [c.key(corpus.sha256) for c in configs]
    summaries: list[TrainSummary | None] = [_cached(k) for k in keys]
    todo = [i for i, s in enumerate(summaries) if s is None]
    if todo:
        model = model or load_model(base.model, base.device, base.dtype,
                                    trust_remote_code=base.trust_remote_code)
        hooks = sorted({model.hook_point(configs[i].hook).name for i in todo})
        splits = split_documents(len(corpus.documents), SPLITS, base.seed)
        tr_docs = [corpus.documents[j] for j in splits["train"]]
        ho_docs = [corpus.documents[j] for j in splits["heldout"]]
        per_ctx = base.context_len - 1
        train_ctx = make_contexts(tr_docs, model.tokenize, model.bos_id, base.context_len,
                                  n_contexts=-(-base.tokens // per_ctx))
        ho_ctx = make_contexts(ho_docs, model.tokenize, model.bos_id, base.context_len,
                               n_contexts=-(-base.heldout_tokens // per_ctx))
        t0 = time.perf_counter()
        with Progress(TextColumn("[bold]collecting activations"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} contexts"),
                      TimeRemainingColumn()) as bar:
            task = bar.add_task("collect", total=len(train_ctx) + len(ho_ctx))
            adv = lambda n: bar.advance(task, n)  # noqa: E731
            train_acts = collect_activations(model, train_ctx, hooks, progress=adv)
            ho_acts = collect_activations(model, ho_ctx, hooks, progress=adv)
        collect_s = time.perf_counter() - t0
        for i in todo:
            c, hook = configs[i], model.hook_point(configs[i].hook).name
            acts = train_acts[hook][: c.tokens]
            log(f"training {c.arch} SAE, width {c.width}, at {hook} on {len(acts):,} tokens "
                f"x {c.epochs} epochs")
            t1 = time.perf_counter()
            sae = fit_sae(c, acts, model.name, hook)
            train_s = time.perf_counter() - t1
            metrics = evaluate_sae(sae, ho_acts[hook])
            summaries[i] = _store(c, keys[i], sae, metrics, len(ho_acts[hook]), len(acts),
                                  train_s, collect_s)
    result = [s for s in summaries if s is not None]
    if out is not None:
        for c, s in zip(configs, result, strict=True):
            dest = Path(out) if len(configs) == 1 else Path(out) / (
                f"{c.arch}-{c.width}-L{HookPoint.parse(c.hook).layer}")
            with atomic_dir(dest) as tmp:
                shutil.copytree(s.sae_path, tmp, dirs_exist_ok=True)
                s.sae_path = str(dest)
                write_json(tmp / "training_summary.json", asdict(s))
    return result


def _cached(key: str) -> TrainSummary | None:
    path = cache_dir("saes") / key / "training_summary.json"
    if not path.is_file():
        return None
    import json

    try:
        data = json.loads(path.read_text())
        summary = TrainSummary(**data)
        load_sae(str(path.parent))  # a corrupt cache entry is retrained, not trusted
    except Exception:
        return None
    summary.cached = True
    summary.sae_path = str(path.parent)
    return summary


def _store(cfg: TrainConfig, key: str, sae, metrics: dict, n_ho: int, n_train: int,
           train_s: float, collect_s: float) -> TrainSummary:
    import sae_lens

    folder = cache_dir("saes") / key
    summary = TrainSummary(
        config=asdict(cfg), explained_variance=metrics["explained_variance"],
        mean_l0=metrics["mean_l0"], dead_fraction=metrics["dead_fraction"], heldout_tokens=n_ho,
        train_tokens=n_train, train_seconds=train_s, collect_seconds=collect_s, cache_key=key,
        sae_path=str(folder),
        versions={"steerscreen": __version__, "sae_lens": sae_lens.__version__,
                  "torch": torch.__version__},
    )
    save_sae(sae, folder, extra_metadata={"steerscreen_training": asdict(cfg)})
    write_json(folder / "training_summary.json", asdict(summary))
    return summary


def config_variants(archs: list[str], **fields: object) -> list[TrainConfig]:
    """One config per architecture, sharing every other field (per-architecture defaults, such
    as JumpReLU's learning rate, are resolved for each)."""
    return [TrainConfig(arch=a, **fields) for a in archs]  # type: ignore[arg-type]


__all__ = ["ARCHS", "TrainConfig", "TrainSummary", "collect_activations", "config_variants",
           "evaluate_sae", "fit_sae", "train_saes"]
