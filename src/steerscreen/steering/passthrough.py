"""The dose-dependent predictor ``base_pass``, computed at the steering dose.

``base_pass`` (docs/method.md §1) = ln participation ratio of the passthrough response
``P_g = mean_n |a'_g(x'_n + alpha v_f) - a'_g(x'_n)| * ||W'_dec[g]||`` over clean stats-split
positions ``x'_n`` at the downstream hook: what adding the steering vector straight at h' would
do to S'. It needs S' and alpha, which the steer stage owns, so that stage computes it for every
feature of S and writes ``feature_dose_stats.parquet`` (with the diagnostics ``logit_entropy``
and ``logit_top10_mass`` at the same alpha, which are not predictors since METHOD v2).

For every feature this is F x N encodes of S'. When S' encodes affinely before its activation
(ReLU, JumpReLU and TopK SAEs without runtime input normalisation; centring is linear too), the
pre-activation of ``x + alpha v`` is ``pre(x) + alpha * lin(v)``: one [F, D] x [D, G] product
replaces the F x N encoder matmuls, and only the activation runs per (feature, position).
Other SAEs fall back to plain ``encode`` (exact, slower).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from steerscreen.saes.io import LoadedSAE, encode

_LINEAR_NORMS = ("none", "expected_average_only_in")


@dataclass(frozen=True)
class SplitEncoder:
    """``encode(x) == act(pre(x))`` with ``pre(x + v) == pre(x) + lin(v)``."""

    pre: Callable[[torch.Tensor], torch.Tensor]
    lin: Callable[[torch.Tensor], torch.Tensor]
    act: Callable[[torch.Tensor], torch.Tensor]


def split_encoder(loaded: LoadedSAE) -> SplitEncoder | None:
    """The affine/activation split of ``loaded``'s encoder, or None where it has none."""
    sae = loaded.sae
    arch = type(sae).__name__
    if arch not in ("StandardSAE", "JumpReLUSAE", "TopKSAE"):
        return None
    if getattr(sae.cfg, "normalize_activations", "none") not in _LINEAR_NORMS:
        return None
    W_enc = sae.W_enc.detach().float()
    b_enc = sae.b_enc.detach().float()
    b_dec = sae.b_dec.detach().float() * float(getattr(sae.cfg, "apply_b_dec_to_input", True))
    scale = (sae.W_dec.detach().float().norm(dim=-1)
             if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False) else None)

    def prep(x: torch.Tensor) -> torch.Tensor:
        x = x.to(W_enc.device, torch.float32)
        return x - x.mean(-1, keepdim=True) if loaded.input.centre else x

    def lin(v: torch.Tensor) -> torch.Tensor:
        out = prep(v) @ W_enc
        return out * scale if scale is not None else out

    def pre(x: torch.Tensor) -> torch.Tensor:
        out = (prep(x) - b_dec) @ W_enc + b_enc
        return out * scale if scale is not None else out

    if arch == "JumpReLUSAE":
        threshold = sae.threshold.detach().float()

        def act(p: torch.Tensor) -> torch.Tensor:
            return sae.activation_fn(p) * (p > threshold).to(p.dtype)
    else:
        def act(p: torch.Tensor) -> torch.Tensor:
            return sae.activation_fn(p)

    return SplitEncoder(pre, lin, act)


def _log_pr(P_KG: torch.Tensor) -> torch.Tensor:
    s1, s2 = P_KG.sum(1), P_KG.square().sum(1)
    return torch.where(s2 > 0, torch.log(s1.square() / s2.clamp_min(1e-300)),
                       torch.full_like(s1, float("nan")))


@torch.no_grad()
def passthrough_pr(down: LoadedSAE, x_ND: torch.Tensor, dirs_FD: torch.Tensor, alpha: float,
                   *, budget_elems: int = 1 << 25,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``base_pass`` for each direction: ln PR of its passthrough response on ``x_ND`` -> [F]."""
    dev = down.sae.W_enc.device
    x = x_ND.to(dev, torch.float32)
    dirs = dirs_FD.to(dev, torch.float32)
    n, g = x.shape[0], down.d_sae
    dec_norm = down.sae.W_dec.detach().float().norm(dim=1)
    split = split_encoder(down)
    out = torch.empty(dirs.shape[0], device=dev)
    step = max(1, budget_elems // max(1, n * g))
    if split is not None:
        pre_clean = split.pre(x)  # [N, G]
        a_clean = split.act(pre_clean)
    else:
        a_clean = encode(down, x)
    for f0 in range(0, dirs.shape[0], step):
        d = dirs[f0:f0 + step]
        if split is not None:
            a = split.act(pre_clean.unsqueeze(0) + alpha * split.lin(d).unsqueeze(1))
        else:
            a = encode(down, x.unsqueeze(0) + alpha * d.unsqueeze(1))
        P = (a - a_clean.unsqueeze(0)).abs_().mean(1) * dec_norm  # [f, G]
        out[f0:f0 + d.shape[0]] = _log_pr(P)
        if progress is not None:
            progress(d.shape[0])
    return out.double().cpu().numpy()


@torch.no_grad()
def transported_pr(down: LoadedSAE, x_ND: torch.Tensor, K_NdD: torch.Tensor,
                   dirs_FD: torch.Tensor, alpha: float, *, budget_elems: int = 1 << 25
                   ) -> np.ndarray:
    """``lin_pass`` for each direction (docs/method.md §1): ``base_pass`` with ``alpha v_f``
    replaced at each position n by ``alpha v_f K_n``, the direction transported from h to h' by
    the clean Jacobian ``K_NdD`` (:func:`steerscreen.stats.linear.downstream_tangents`)."""
    dev = down.sae.W_enc.device
    x = x_ND.to(dev, torch.float32)
    K = K_NdD.to(dev, torch.float32)
    v = dirs_FD.to(dev, torch.float32)  # as given: unit rows for v_f (or scaled per dose)
    n, g = x.shape[0], down.d_sae
    dec_norm = down.sae.W_dec.detach().float().norm(dim=1)
    split = split_encoder(down)
    out = torch.empty(v.shape[0], device=dev)
    step = max(1, budget_elems // max(1, n * max(g, K.shape[-1])))
    pre_clean = split.pre(x) if split is not None else None
    a_clean = split.act(pre_clean) if split is not None else encode(down, x)
    for f0 in range(0, v.shape[0], step):
        w = torch.einsum("fi,nid->fnd", v[f0:f0 + step], K)  # transported: [f, N, D]
        if split is not None:
            a = split.act(pre_clean.unsqueeze(0) + alpha * split.lin(w))
        else:
            a = encode(down, x.unsqueeze(0) + alpha * w)
        P = (a - a_clean.unsqueeze(0)).abs_().mean(1) * dec_norm
        out[f0:f0 + w.shape[0]] = _log_pr(P)
    return out.double().cpu().numpy()
