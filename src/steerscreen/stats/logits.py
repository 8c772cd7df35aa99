"""Direct-logit footprint (docs/method.md §1, ``logit_*``, and ``base_direct``).

``DL_f = W_U^T (gamma * v_f)`` through the adapter's :class:`~steerscreen.models.Unembed`
(final-norm effective gain, Gemma's ``1 + w`` included; ``v_f`` mean-centred for LayerNorm
models); logit softcaps are ignored (the caller records that).

The predictors are **scale-free** (METHOD v2): with ``z = DL_f - mean_v DL_f``,
``logit_pr = ln((sum z^2)^2 / sum z^4)`` (the participation ratio of the centred footprint),
``logit_top10_energy`` = the share of ``sum z^2`` in the 10 largest ``|z|``, ``logit_kurtosis``
and ``logit_trigger_overlap``. Multiplying ``DL_f`` by any positive factor leaves them unchanged;
its size is ``base_direct`` alone.

The v1 dose-dependent columns are diagnostics now (the steer stage writes them into
``feature_dose_stats.parquet``; they are not registered predictors): at the applied dose the push
on the output distribution is ``q_f = softmax(alpha * DL_f / sigma_fin)`` (adding ``alpha v_f``
to the final residual moves the normed output by ``gamma * alpha v_f / sigma_fin``), and
``logit_entropy`` / ``logit_top10_mass`` are its entropy and top-10 mass. At a calibrated dose
q_f is almost uniform and they track ``base_direct``.

Features are processed ``chunk`` at a time on the unembedding's device (one ``chunk x d x V``
matmul each; memory: two ``chunk x V`` float32 blocks, the logits and one reused buffer), with
few passes over each block: the norm, one top-k of DL (which also gives the row max), the
centred squares ``z^2`` in the reused buffer (their sum, their norm and one top-k), and, with a
dose, one exponential. Smaller blocks that stay in cache were slower on a 2-core machine (many
small parallel regions).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from steerscreen.models.hooks import Unembed
from steerscreen.stats.geometry import unit_rows

TOP_TOKENS = 10
LOGIT_COLUMNS = ("base_direct", "logit_pr", "logit_top10_energy", "logit_kurtosis",
                 "logit_trigger_overlap")
"""The registered columns :func:`logit_columns` computes (``feature_stats``)."""
DOSE_LOGIT_COLUMNS = ("logit_entropy", "logit_top10_mass")
"""The dose diagnostics :func:`logit_columns` computes when given a dose (``feature_dose_stats``;
not registered, not predictors)."""


@dataclass(frozen=True, eq=False)
class LogitColumns(Mapping[str, np.ndarray]):
    """What :func:`logit_columns` returns: the columns, the dose diagnostics and each feature's
    top DL tokens.

    It reads as the mapping of its (registered) columns (``result["logit_pr"]``,
    ``cols |= result``); the dose diagnostics are in :attr:`dose`.
    """

    columns: dict[str, np.ndarray]
    """``base_direct`` and every ``logit_*`` predictor column (:data:`LOGIT_COLUMNS`) -> float64
    [F]."""
    top_ids: np.ndarray
    """int64 [F, k]: the k tokens with the largest ``DL_f`` entries, largest first (the top-k
    of ``torch.topk``; k = ``min(top, V)``)."""
    top_dl: np.ndarray
    """float64 [F, k]: ``DL_f`` at those tokens (computed in float32)."""
    dose: dict[str, np.ndarray] = field(default_factory=dict)
    """The dose diagnostics (:data:`DOSE_LOGIT_COLUMNS`) -> float64 [F]; empty without a dose."""

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)


@torch.no_grad()
def logit_columns(W_dec_FD: torch.Tensor, unembed: Unembed, *, alpha: float | None = None,
                  sigma_fin: float | None = None, trigger_tokens_FK: np.ndarray | None = None,
                  chunk: int = 512, top: int = TOP_TOKENS) -> LogitColumns:
    """``base_direct``, every ``logit_*`` predictor column and the top DL tokens of every
    feature; with a dose (``alpha`` and ``sigma_fin``) also the dose diagnostics
    ``logit_entropy`` and ``logit_top10_mass`` of ``q_f = softmax(alpha * DL_f / sigma_fin)``.

    ``trigger_tokens_FK``: each feature's most frequent triggering tokens (-1 pad; see
    ``steerscreen.stats.activation.trigger_tokens``); without it, or for a feature with none
    (dead), ``logit_trigger_overlap`` is NaN. ``chunk``: features per matmul (speed and memory
    only). A feature whose ``DL_f`` is constant over the vocabulary (``z = 0``) gets NaN shape
    columns.
    """
    dosed = alpha is not None
    if dosed:
        if sigma_fin is None or not (math.isfinite(sigma_fin) and sigma_fin > 0):
            raise ValueError(f"sigma_fin must be a positive number, got {sigma_fin}")
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number, got {alpha}")
    v = unit_rows(W_dec_FD).to(unembed.W_U.device)
    f, n_vocab = v.shape[0], unembed.W_U.shape[1]
    dev = v.device
    scale = alpha / sigma_fin if dosed else 0.0
    k = min(top, n_vocab)
    f64 = dict(dtype=torch.float64, device=dev)
    base = torch.empty(f, **f64)
    s2 = torch.empty(f, **f64)  # sum_v z^2
    s4 = torch.empty(f, **f64)  # sum_v z^4
    top_e = torch.empty(f, **f64)  # the k largest z^2, summed
    if dosed:
        entropy = torch.empty(f, **f64)
        mass = torch.full((f,), k / n_vocab, **f64)  # alpha = 0: q is uniform
    top_dl = torch.empty((f, k), dtype=torch.float32, device=dev)
    top_ids = torch.empty((f, k), dtype=torch.int64, device=dev)
    buf = torch.empty((min(chunk, f), n_vocab), dtype=torch.float32, device=dev)
    for f0 in range(0, f, chunk):
        g = slice(f0, min(f, f0 + chunk))
        dl = unembed.direct_logits(v[g])  # [n, V]
        e = buf[:dl.shape[0]]
        # float32 vocabulary passes (float64 took ~25 s for 4096 x 49152); the per-row results
        # are combined in float64.
        base[g] = torch.log(dl.norm(dim=1)).double()
        top_z, ids = torch.topk(dl, k, dim=1)  # q's top tokens too, for alpha > 0
        top_dl[g], top_ids[g] = top_z, ids
        if dosed:
            # H(q) = ln Z - E_q[s dl] for s = scale, from one exponential pass (shifted by the
            # row max, top_z[:, 0], for stability): e = exp(s (dl - max)), Z = e^(s max) sum(e).
            mx = top_z[:, 0]
            torch.sub(dl, mx[:, None], out=e).mul_(scale).exp_()
            s_e = e.sum(1).double()
            log_z = scale * mx.double() + torch.log(s_e)
            entropy[g] = log_z - scale * torch.linalg.vecdot(e, dl).double() / s_e
            if scale > 0:
                mass[g] = torch.exp(scale * top_z.double() - log_z[:, None]).sum(1)
        # The centred squares in the same buffer: e = z^2, z = dl - mean_v dl. sum z^2, sum z^4
        # (= ||e||^2) and the k largest z^2 (= the k largest |z|).
        torch.sub(dl, dl.mean(1, keepdim=True), out=e).square_()
        s2[g] = e.sum(1).double()
        s4[g] = torch.linalg.vector_norm(e, 2, dim=1).double().square()
        top_e[g] = torch.topk(e, k, dim=1, sorted=False).values.double().sum(1)
        del dl
    cols = {"base_direct": base.cpu().numpy(),
            "logit_pr": torch.log(s2.square() / s4).cpu().numpy(),
            "logit_top10_energy": (top_e / s2).cpu().numpy(),
            "logit_kurtosis": (n_vocab * s4 / s2.square() - 3).cpu().numpy(),
            "logit_trigger_overlap": np.full(f, np.nan)}
    ids_np = top_ids.cpu().numpy()
    if trigger_tokens_FK is not None:
        trig = trigger_tokens_FK
        hit = (ids_np[:, :, None] == trig[:, None, :]) & (trig[:, None, :] >= 0)
        has = (trig >= 0).any(1)
        cols["logit_trigger_overlap"] = np.where(has, hit.any(2).sum(1) / top, np.nan)
    dose = ({"logit_entropy": entropy.cpu().numpy(), "logit_top10_mass": mass.cpu().numpy()}
            if dosed else {})
    return LogitColumns(cols, ids_np, top_dl.double().cpu().numpy(), dose)
