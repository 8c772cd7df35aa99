"""Decoder geometry (docs/method.md §1, ``geom_*``), blockwise on the decoder's device.

Nearest-neighbour cosines are computed in ``block x block`` tiles of ``V V^T`` with a running
top-k per row, so for F = 131,072 the working memory is ``block^2 + F (k + 1)`` floats (64 MB of
tiles at block = 4096), never F x F. Cosines are signed (an antipodal decoder row is not a
neighbour).

The principal subspace and the mean residual come from the stats pass's residual moments (the
residual as the SAE reads it, after any centring steerscreen applies, before the SAE's own
normalisation, whose per-token scalar does not change directions).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from steerscreen.stats.accumulators import StatsAccumulator

NEIGHBOUR_THRESHOLD = 0.3
TOP_K = 10
N_COMPONENTS = 10


class Neighbours(NamedTuple):
    """Nearest other decoder rows by cosine."""

    max_cos: torch.Tensor  # float32 [F]
    top_mean_cos: torch.Tensor  # float32 [F], mean of the min(k, F - 1) largest cosines
    n_above: torch.Tensor  # int64 [F], cosines > threshold (self excluded)
    top_idx: torch.Tensor  # int64 [F, min(k, F - 1)], neighbours by decreasing cosine


def unit_rows(W_FD: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (zero rows stay zero) in float32."""
    W = W_FD.detach().float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-30)


@torch.no_grad()
def decoder_neighbours(W_dec_FD: torch.Tensor, *, k: int = TOP_K,
                       threshold: float = NEIGHBOUR_THRESHOLD, block: int = 4096,
                       query: tuple[int, int] | None = None) -> Neighbours:
    """Top-k cosine neighbours and threshold counts of every decoder row, tile by tile.

    ``query = (q0, q1)``: only rows q0..q1-1 (against every row), e.g. to time a slice of a
    very wide SAE; the result then covers those rows only.
    """
    v = unit_rows(W_dec_FD)
    n = v.shape[0]
    kk = min(k, n - 1)
    if kk < 1:
        raise ValueError("decoder geometry needs at least two features")
    q0, q1 = query if query is not None else (0, n)
    max_c, mean_c, cnt, idx = [], [], [], []
    for i0 in range(q0, q1, block):
        rows = v[i0:min(i0 + block, q1)]
        nb = rows.shape[0]
        best_v = torch.full((nb, kk), float("-inf"), device=v.device)
        best_i = torch.zeros((nb, kk), dtype=torch.int64, device=v.device)
        above = torch.zeros(nb, dtype=torch.int64, device=v.device)
        for j0 in range(0, n, block):
            cos = rows @ v[j0:j0 + block].T  # [nb, nc]
            r = torch.arange(nb, device=v.device)
            c = r + i0 - j0
            diag = (c >= 0) & (c < cos.shape[1])
            cos[r[diag], c[diag]] = float("-inf")  # never one's own neighbour
            above += (cos > threshold).sum(1)
            cand_v = torch.cat([best_v, cos], 1)
            cand_i = torch.cat([best_i, torch.arange(j0, j0 + cos.shape[1],
                                                     device=v.device).expand(nb, -1)], 1)
            top = torch.topk(cand_v, kk, dim=1)
            best_v, best_i = top.values, torch.gather(cand_i, 1, top.indices)
        max_c.append(best_v[:, 0])
        mean_c.append(best_v.mean(1))
        cnt.append(above)
        idx.append(best_i)
    return Neighbours(torch.cat(max_c), torch.cat(mean_c), torch.cat(cnt), torch.cat(idx))


def principal_basis(acc: StatsAccumulator, n_components: int = N_COMPONENTS) -> torch.Tensor:
    """Top ``n_components`` eigenvectors of the residual covariance -> float64 [D, k]."""
    if acc.n_resid == 0:
        raise ValueError("the accumulator saw no residuals (pass resid_BTD to update)")
    evals, evecs = torch.linalg.eigh(acc.resid_cov())
    k = min(n_components, evecs.shape[1])
    return evecs[:, torch.argsort(evals, descending=True)[:k]]


def geometry_columns(acc: StatsAccumulator | None, W_enc_DF: torch.Tensor,
                     W_dec_FD: torch.Tensor, *, threshold: float = NEIGHBOUR_THRESHOLD,
                     n_components: int = N_COMPONENTS, block: int = 4096) -> dict[str, np.ndarray]:
    """All ``geom_*`` columns; the residual ones are NaN without residual moments."""
    nb = decoder_neighbours(W_dec_FD, k=TOP_K, threshold=threshold, block=block)
    v = unit_rows(W_dec_FD)
    e = unit_rows(W_enc_DF.T.to(v.device))
    out = {
        "geom_max_cos": nb.max_cos.double().cpu().numpy(),
        "geom_top10_cos": nb.top_mean_cos.double().cpu().numpy(),
        "geom_n_neighbours": nb.n_above.cpu().numpy(),
        "geom_enc_dec_cos": (e * v).sum(1).double().cpu().numpy(),
    }
    f = v.shape[0]
    if acc is None or acc.n_resid == 0:
        out["geom_pc_share"] = np.full(f, np.nan)
        out["geom_mean_resid_cos"] = np.full(f, np.nan)
        return out
    vd = v.double()
    basis = principal_basis(acc, n_components).to(vd.device)
    out["geom_pc_share"] = ((vd @ basis) ** 2).sum(1).cpu().numpy()
    mu = acc.resid_mean().to(vd.device)
    out["geom_mean_resid_cos"] = (vd @ (mu / mu.norm().clamp_min(1e-300))).cpu().numpy()
    return out
