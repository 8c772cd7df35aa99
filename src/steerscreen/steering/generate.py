"""Greedy steered continuations: what steering a direction does to generated text.

The intervention is exactly the steer engine's (docs/method.md §2, :mod:`.engine`): ``alpha v``
(``v`` the unit decoder row, the shift computed in float32) added at the hook h to every
position >= 1 in float32 and cast back to the model dtype; position 0 (BOS) is never steered.
Generation is greedy with a KV cache: the prompt runs once, then one token per step, with the
same edit at h on every new position, so a continuation of N tokens costs about one forward of
the prompt plus N one-token steps. Rows of a batch share the prompt length (the prompts are
cuts of equal-length contexts), so nothing is padded.

For each generated token the *log-probability rise* ``log p_steered(token) - log p_clean(token)``
on the same (steered) prefix tells which tokens the steering pushed: the steered side comes from
the generation's own logits, the clean side from one unhooked pass over the generated tokens on
the clean prompt's KV cache (each distinct prompt runs once).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from steerscreen.models.hooks import HookedModel, HookPoint
from steerscreen.stats.geometry import unit_rows


@dataclass(frozen=True)
class Continuations:
    """Greedy continuations of R prompts."""

    token_ids: torch.Tensor
    """int64 [R, N]: the generated tokens."""
    logprob: torch.Tensor
    """float32 [R, N]: each token's log-probability under the model that generated it."""


def unit_direction(W_dec_FD: torch.Tensor, feature: int) -> torch.Tensor:
    """``v_f``: feature ``feature``'s decoder row scaled to unit norm (float32), as steered."""
    return unit_rows(W_dec_FD[feature : feature + 1].detach().float())[0]


def steering_edit(shift_RD: torch.Tensor, position: list[int]
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The edit at h: ``x + shift`` at absolute positions >= 1 (float32, cast back); a chunk's
    first absolute position is ``position[0]``, which the caller advances between calls."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        shift = shift_RD.to(x.device).unsqueeze(1)
        if position[0] >= 1:
            return (x.float() + shift).to(x.dtype)
        y = x.clone()
        y[:, 1:] = (x[:, 1:].float() + shift).to(x.dtype)
        return y

    return edit


@torch.no_grad()
def greedy(model: HookedModel, hook: str | HookPoint, prompts_RP: torch.Tensor,
           shift_RD: torch.Tensor | None, new_tokens: int) -> Continuations:
    """Greedy continuation of each row of ``prompts_RP`` (BOS first, equal lengths) by
    ``new_tokens`` tokens, steered by ``shift_RD`` (``alpha v`` per row; None: clean)."""
    ids = prompts_RP.to(model.device, torch.long)
    r, p = ids.shape
    position = [0]
    write = {} if shift_RD is None else {hook: steering_edit(shift_RD.float(), position)}
    out_ids = torch.empty(r, new_tokens, dtype=torch.long, device=model.device)
    out_lp = torch.empty(r, new_tokens, dtype=torch.float32, device=model.device)
    past = None
    step = ids
    with model.editing(write):
        for i in range(new_tokens):
            out = model.model(step, **_cache_kw(model, past), use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            z = out.logits[:, -1:].float()
            out_ids[:, i] = z[:, 0].argmax(-1)
            out_lp[:, i] = token_logprobs(z, out_ids[:, i : i + 1])[:, 0]
            position[0] = p + i
            step = out_ids[:, i : i + 1]
    return Continuations(out_ids, out_lp)


def _cache_kw(model: HookedModel, past: object) -> dict[str, object]:
    """The KV cache argument: ``cache`` where the model takes it (``past_key_values`` is
    deprecated from transformers 5.x on), else ``past_key_values``."""
    if past is None:
        return {}
    params = inspect.signature(model.model.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": past}


@torch.no_grad()
def clean_logprobs(model: HookedModel, prompts_RP: torch.Tensor, generated_RN: torch.Tensor
                   ) -> torch.Tensor:
    """log p_clean of each generated token given the prompt and the tokens before it ->
    float32 [R, N]: each distinct prompt runs once (rows repeat a few prompts), its KV cache
    is copied to its rows, and the generated tokens run on it in one unhooked pass."""
    dev = model.device
    prompts, gen = prompts_RP.to(dev, torch.long), generated_RN.to(dev)
    uniq, row_of = torch.unique(prompts, dim=0, return_inverse=True)
    first = model.model(uniq, use_cache=True, logits_to_keep=1)
    z0 = first.logits[row_of, -1:].float()  # scores generated token 0
    if gen.shape[1] == 1:
        return token_logprobs(z0, gen)
    past = first.past_key_values
    past.reorder_cache(row_of)  # one cache row per generated row
    z = model.model(gen[:, :-1], **_cache_kw(model, past), use_cache=True,
                    logits_to_keep=gen.shape[1] - 1).logits.float()
    return token_logprobs(torch.cat([z0, z], 1), gen)


def token_logprobs(z_RNV: torch.Tensor, ids_RN: torch.Tensor) -> torch.Tensor:
    """log softmax of ``z`` at ``ids`` -> [R, N], without a vocabulary-sized copy (the steered
    and the clean side both go through it; they differ only by the KV cache's rounding, ~1e-6,
    at alpha = 0)."""
    return z_RNV.gather(2, ids_RN.unsqueeze(-1))[..., 0] - torch.logsumexp(z_RNV, -1)


def logprob_rise(model: HookedModel, prompts_RP: torch.Tensor, steered: Continuations
                 ) -> torch.Tensor:
    """``log p_steered(token) - log p_clean(token)`` on the steered prefix -> [R, N]."""
    return steered.logprob - clean_logprobs(model, prompts_RP, steered.token_ids)


__all__ = ["Continuations", "clean_logprobs", "greedy", "logprob_rise", "steering_edit",
           "token_logprobs", "unit_direction"]
