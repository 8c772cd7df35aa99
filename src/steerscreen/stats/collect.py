"""The streaming stats pass: model up to the hook, SAE encode, every accumulator from one batch.

Each batch of contexts runs the model only up to the hook (``logits=False`` stops there), the SAE
encodes the residual, and :meth:`StatsAccumulator.update` takes activations, token ids, the
SAE's input-normalisation scale and the residual together. ``sigma_fin`` needs the residual at
the final norm, which lies past the hook: only the first ``final_norm_contexts`` contexts run
to the end of the model (reading both hooks in one forward), so its cost is bounded.

The raw residual's L2 norm at every position >= 1 is recorded too: its median r is the dose unit
of docs/method.md §2 (``alpha = s * r``).

Shards. A pass is cut into fixed shards of ``shard_contexts`` contexts (no batch straddles two)
and the accumulator folds its float64 sums at every shard boundary
(:meth:`StatsAccumulator.fold`), so the same shards run one per worker and merged in order give
the same state bit for bit (:mod:`steerscreen.pipeline.stats_ray`). ``start`` / ``stop`` select
contexts of the pass (a shard, or the rest after a checkpoint); context i keeps its pass index
for its id (``ctx_id_offset + i``) and for the final-norm choice. ``into`` continues an existing
accumulator, and ``after_batch`` sees the state after every batch
(:mod:`steerscreen.pipeline.checkpoint` saves it there).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from steerscreen.corpus import Contexts
from steerscreen.models.hooks import HookedModel, HookPoint, check_finite
from steerscreen.saes.io import LoadedSAE, encode
from steerscreen.stats.accumulators import StatsAccumulator, StatsOptions
from steerscreen.stats.table import FeatureTables, TableOptions, feature_tables

_SCALE_FREE = ("none", "expected_average_only_in")  # no runtime rescaling in SAELens


def sae_input(loaded: LoadedSAE, resid_BTD: torch.Tensor) -> torch.Tensor:
    """The residual as the SAE reads it before its own normalisation (steerscreen's centring)."""
    x = resid_BTD.to(device=loaded.sae.W_enc.device, dtype=torch.float32)
    if loaded.input.centre:
        x = x - x.mean(dim=-1, keepdim=True)
    return x


def input_scale(loaded: LoadedSAE, x_BTD: torch.Tensor) -> torch.Tensor:
    """Per-position factor that takes SAE-space writes to raw residual units -> [B, T].

    SAELens decodes ``layer_norm`` SAEs as ``x_hat * std + mu`` (std of the centred input,
    unbiased, as SAELens computes it) and ``constant_norm_rescale`` ones as ``x_hat * ||x|| /
    sqrt(d_in)``; a feature's raw-unit write is therefore ``a * scale * W_dec[f]``.
    """
    norm = loaded.sae.cfg.normalize_activations
    x = x_BTD.float()
    if norm in _SCALE_FREE:
        return torch.ones(x.shape[:-1], device=x.device)
    if norm == "layer_norm":
        return (x - x.mean(-1, keepdim=True)).std(dim=-1)
    if norm == "constant_norm_rescale":
        return x.norm(dim=-1) / loaded.d_in**0.5
    raise ValueError(f"input normalisation {norm!r} is not supported by the stats pass")


def collect_stats(model: HookedModel, loaded: LoadedSAE, contexts: Contexts,
                  hook: str | HookPoint, *, options: StatsOptions | None = None,
                  batch_size: int = 16, final_norm_contexts: int = 64,
                  ctx_id_offset: int = 0, into: StatsAccumulator | None = None,
                  start: int = 0, stop: int | None = None, shard_contexts: int | None = None,
                  after_batch: Callable[[int, StatsAccumulator], None] | None = None,
                  progress: Callable[[int], None] | None = None) -> StatsAccumulator:
    """Contexts ``start..stop`` of the pass over ``contexts``; context i gets the id
    ``ctx_id_offset + i``, and the first ``final_norm_contexts`` of the pass run to the end.

    ``into``: an accumulator to continue (its options win over ``options``), holding the
    contexts before ``start``; ``shard_contexts``: the shard length (None: one shard), whose
    boundaries batches never straddle and where the sums fold; ``after_batch`` is called with
    the next context and the accumulator after each batch; ``progress`` with the number of
    tokens of each finished batch. The sums are folded when ``stop`` ends a shard or the pass.
    """
    hp = model.hook_point(hook)
    last = HookPoint(model.n_layers - 1, "resid_post")
    unembed = model.unembed()
    acc = into if into is not None else StatsAccumulator(
        loaded.d_sae, loaded.d_in, options, device=loaded.sae.W_enc.device)
    n = len(contexts) if stop is None else min(int(stop), len(contexts))
    shard = int(shard_contexts) if shard_contexts else max(len(contexts), 1)
    ids_all = torch.as_tensor(contexts.token_ids)
    i0 = start
    while i0 < n:
        i1 = min(i0 + batch_size, n, (i0 // shard + 1) * shard)
        ids_BT = ids_all[i0:i1]
        ctx_ids = torch.arange(i0, i1) + ctx_id_offset
        n_final = max(0, min(i1 - i0, final_norm_contexts - i0))
        reads = [hp, last] if n_final else [hp]
        out = model.forward(ids_BT, read=reads, logits=False)
        resid_BTD = out.acts[hp.name]
        batch = f" (contexts {i0}..{i1 - 1} of the pass)"
        check_finite(resid_BTD, hp.name, batch)
        x_BTD = sae_input(loaded, resid_BTD)
        acc.update(encode(loaded, resid_BTD), ids_BT, ctx_ids,
                   input_scale_BT=input_scale(loaded, x_BTD), resid_BTD=x_BTD,
                   resid_norm_BT=resid_BTD.float().norm(dim=-1))
        if n_final:  # only the contexts that ran to the end
            final_BTD = out.acts[last.name][:n_final].to(unembed.W_U.device)
            check_finite(final_BTD, last.name, batch)
            acc.add_final_scales(unembed.norm_scale(final_BTD))
        if i1 % shard == 0 or i1 == len(contexts):
            acc.fold()  # a shard ends here (before after_batch: checkpoints hold folded sums)
        if progress is not None:
            progress(int(ids_BT.numel()))
        if after_batch is not None:
            after_batch(i1, acc)
        i0 = i1
    return acc


def stats_table(acc: StatsAccumulator, loaded: LoadedSAE, model: HookedModel,
                options: TableOptions | None = None):
    """``feature_stats`` for a loaded SAE on ``model`` (weights and unembedding taken from them)."""
    return stats_tables(acc, loaded, model, options).stats


def stats_tables(acc: StatsAccumulator, loaded: LoadedSAE, model: HookedModel,
                 options: TableOptions | None = None) -> FeatureTables:
    """``feature_stats`` and the top direct-logit tokens for a loaded SAE on ``model``."""
    return feature_tables(acc, loaded.sae.W_enc.detach(), loaded.sae.W_dec.detach(),
                          model.unembed(), options)
