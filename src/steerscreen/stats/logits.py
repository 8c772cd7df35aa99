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
    k = min(top, unembed.W_U.shape[1])
    for f0 in range(0, f, chunk):
        sl = slice(f0, min(f, f0 + chunk))
        # float32 vocabulary passes (float64 took ~25 s for 4096 x 49152), few of them; the
        # per-row results are combined in float64.
        dl = unembed.direct_logits(v[sl])  # [n, V]
        cols["base_direct"][sl] = torch.log(dl.norm(dim=1)).double().cpu().numpy()
        # H(q) = ln Z - E_q[z] for z = scale * dl, from one exponential pass (shifted by the
        # row max for stability): e = exp(scale (dl - max)), Z = e^(scale max) sum(e).
        mx = dl.amax(1)
        e = (dl - mx[:, None]).mul_(scale).exp_()
        s_e = e.sum(1).double()
        log_z = scale * mx.double() + torch.log(s_e)
        e_qz = scale * torch.linalg.vecdot(e, dl).double() / s_e
        cols["logit_entropy"][sl] = (log_z - e_qz).cpu().numpy()
        del e
        top_z, top_ids = torch.topk(dl, k, dim=1)  # q's top tokens too, for alpha > 0
        if scale > 0:
            mass = torch.exp(scale * top_z.double() - log_z[:, None]).sum(1)
        else:  # alpha = 0: q is uniform
            mass = torch.full((dl.shape[0],), k / dl.shape[1], dtype=torch.float64)
        cols["logit_top10_mass"][sl] = mass.cpu().numpy()
        c = dl - dl.mean(1, keepdim=True)
        c.square_()
        m2 = c.mean(1).double()
        m4 = torch.linalg.vector_norm(c, 2, dim=1).double().square() / c.shape[1]
        cols["logit_kurtosis"][sl] = (m4 / m2**2 - 3).cpu().numpy()
        del c
        if trigger_tokens_FK is not None:
            ids = top_ids.cpu().numpy()  # [n, k]
            trig = trigger_tokens_FK[sl]
            hit = (ids[:, :, None] == trig[:, None, :]) & (trig[:, None, :] >= 0)
            has = (trig >= 0).any(1)
            cols["logit_trigger_overlap"][sl] = np.where(has, hit.any(2).sum(1) / top, np.nan)
    return cols
