"""SAE training: SAELens's ``SAETrainer`` fed by steerscreen's own activation stream.

Public SAEs for the embedded models do not exist, so steerscreen trains its own: ReLU (standard,
L1 penalty), JumpReLU (DeepMind's L0 loss with a straight-through threshold) and TopK. One model
pass collects the residual at every requested hook; every SAE (any architecture, any hook) then
trains on those same activations. Inputs are scaled to norm sqrt(d_in) during training
(``expected_average_only_in``) and the scale is folded into the saved weights, so saved SAEs work
on raw residuals.

Evaluation is on held-out documents: explained variance, mean L0, dead fraction. The job around
these (one activation pass for many SAEs, the cache keyed by the full config, output folders)
is ``steerscreen.pipeline.train``; the config is :class:`steerscreen.config.TrainConfig`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator

import torch

from steerscreen.config import TrainConfig
from steerscreen.corpus import Contexts
from steerscreen.files import cache_dir
from steerscreen.models import HookedModel
from steerscreen.models.hooks import check_finite

SPLITS = {"train": 0.9, "heldout": 0.1}  # documents: training vs held-out evaluation


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
    tmp = cache_dir("tmp") / f"fit-{cfg.arch}-{cfg.width}-{os.getpid()}-{time.time_ns()}"
    try:
        trained.save_inference_model(tmp)
        return SAE.load_from_disk(str(tmp), device=cfg.device).eval()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["SPLITS", "collect_activations", "evaluate_sae", "fit_sae"]
