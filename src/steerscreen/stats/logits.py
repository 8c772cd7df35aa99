"""Direct-logit footprint (METHOD §1, ``logit_*``, and ``base_direct``).

``DL_f = W_U^T (gamma * v_f)`` through the adapter's :class:`~steerscreen.models.Unembed`
(final-norm effective gain, Gemma's ``1 + w`` included; ``v_f`` mean-centred for LayerNorm
models); logit softcaps are ignored (the caller records that). At the applied dose the push on
the output distribution is ``q_f = softmax(alpha * DL_f / sigma_fin)``: adding ``alpha v_f`` to
the final residual moves the normed output by ``gamma * alpha v_f / sigma_fin``.

Features are processed ``chunk`` at a time on the unembedding's device, so memory is
``chunk x V`` floats.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from steerscreen.models.hooks import Unembed
from steerscreen.stats.geometry import unit_rows

TOP_TOKENS = 10


@torch.no_grad()
def logit_columns(W_dec_FD: torch.Tensor, unembed: Unembed, *, alpha: float, sigma_fin: float,
                  trigger_tokens_FK: np.ndarray | None = None, chunk: int = 256,
                  top: int = TOP_TOKENS) -> dict[str, np.ndarray]:
    """``base_direct`` and every ``logit_*`` column.

    ``trigger_tokens_FK``: each feature's most frequent triggering tokens (-1 pad; see
    ``steerscreen.stats.activation.trigger_tokens``); without it, or for a feature with none
    (dead), ``logit_trigger_overlap`` is NaN.
    """
    if not (math.isfinite(sigma_fin) and sigma_fin > 0):
        raise ValueError(f"sigma_fin must be a positive number, got {sigma_fin}")
    v = unit_rows(W_dec_FD).to(unembed.W_U.device)
    f = v.shape[0]
    cols = {k: np.full(f, np.nan) for k in ("base_direct", "logit_entropy", "logit_top10_mass",
                                            "logit_kurtosis", "logit_trigger_overlap")}
    scale = alpha / sigma_fin
    for f0 in range(0, f, chunk):
        sl = slice(f0, min(f, f0 + chunk))
        dl = unembed.direct_logits(v[sl]).double()  # [n, V]
        cols["base_direct"][sl] = torch.log(dl.norm(dim=1)).cpu().numpy()
        logq = torch.log_softmax(scale * dl, dim=1)
        q = logq.exp()
        cols["logit_entropy"][sl] = (-(q * logq).sum(1)).cpu().numpy()
        k = min(top, dl.shape[1])
        cols["logit_top10_mass"][sl] = torch.topk(q, k, dim=1).values.sum(1).cpu().numpy()
        c = dl - dl.mean(1, keepdim=True)
        m2 = (c**2).mean(1)
        cols["logit_kurtosis"][sl] = ((c**4).mean(1) / m2**2 - 3).cpu().numpy()
        if trigger_tokens_FK is not None:
            top_ids = torch.topk(dl, k, dim=1).indices.cpu().numpy()  # [n, k]
            trig = trigger_tokens_FK[sl]
            hit = (top_ids[:, :, None] == trig[:, None, :]) & (trig[:, None, :] >= 0)
            has = (trig >= 0).any(1)
            cols["logit_trigger_overlap"][sl] = np.where(has, hit.any(2).sum(1) / top, np.nan)
    return cols
