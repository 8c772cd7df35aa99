"""Steering outcomes (METHOD §3): per-row partial sums and the per-direction reduction.

A *row* is one (direction, context) pair of a steered run. Its outcomes need the full next-token
distributions and the downstream SAE's activations at every position, which are large
(``T x V`` and ``T x G``), so each row is reduced on the spot to :class:`RowSums`: vectors of
length V or G and a handful of scalars. A direction's outcomes follow from the ``C`` rows of its
contexts (:func:`reduce_direction`); nothing larger than ``C x V`` is ever held per direction.

Notation (positions ``t = 1..T-1``, BOS excluded; ``T'`` = their count):

- ``p``/``p'``: clean / steered next-token distribution; ``dlogp = log p' - log p``.
- Fisher effect ``g_ct = sqrt(p) * (dlogp - E_p[dlogp])``, ``d_c = mean_t g_ct``; note
  ``E_p[dlogp] = -KL(p || p')``, so ``g_ct = sqrt(p) * (dlogp + KL_ct)``.
- Logit effect: ``dz`` centred over the vocabulary equals ``dlogp`` centred over the vocabulary
  (the log-normaliser is one constant per position), so ``e_c = mean_t (dlogp - mean_v dlogp)``.
- Downstream: ``w_ctg = |a'_g(steered) - a'_g(clean)| * ||W'_dec[g]||``, g outside the target set
  ``T_f`` (the ``n_targets`` largest passthrough responses, see :func:`passthrough_response`).

Shapes use name suffixes: R rows, C contexts, T positions (``t >= 1``), V vocabulary, G
downstream features, D model width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

N_TARGETS = 8  # |T_f|: downstream features counted as the intended effect
N_OUT = 20  # collateral_out: entries of mean_c d_c counted as the main effect
N_TARGET_TOKENS = 10  # target_gain: top direct-logit tokens


@dataclass(frozen=True)
class OutcomeColumn:
    """One documented column of ``steering_outcomes.parquet``."""

    name: str
    formula: str
    units: str
    primary: bool = False


OUTCOME_COLUMNS: dict[str, OutcomeColumn] = {c.name: c for c in (
    OutcomeColumn("effect_stability", "(||sum_c d_c||^2 - sum_c ||d_c||^2) / ((C - 1) "
                  "sum_c ||d_c||^2); NaN when sum_c ||d_c||^2 = 0", "share", primary=True),
    OutcomeColumn("collateral_spread", "mean over (c, t) with w_ct != 0 of ln PR_ct, PR_ct = "
                  "(sum_g w_ctg)^2 / sum_g w_ctg^2 over g outside T_f; NaN if no such "
                  "position", "ln count", primary=True),
    OutcomeColumn("collateral_out", "1 - (sum of the 20 largest m_v^2) / ||m||^2, m = mean_c "
                  "d_c", "share", primary=True),
    OutcomeColumn("effect_kl", "mean over (c, t) of KL(p || p')", "nats", primary=True),
    OutcomeColumn("target_gain", "mean over (c, t) and the 10 largest entries of DL of "
                  "dlogp", "nats", primary=True),
    OutcomeColumn("effect_stability_logit", "the effect_stability estimator on e_c = mean_t of "
                  "the vocabulary-centred logit change", "share"),
    OutcomeColumn("collateral_spread_union", "ln PR of wbar_g = sum_(c,t) w_ctg (g outside "
                  "T_f); NaN if all zero", "ln count"),
    OutcomeColumn("collateral_mass", "sum_(c,t,g outside T_f) w_ctg / sum_(c,t,all g) w_ctg",
                  "share"),
    OutcomeColumn("n_recruited", "mean over (c, t) of #{g: a'_g clean = 0, steered > 0}",
                  "count"),
    OutcomeColumn("n_suppressed", "mean over (c, t) of #{g: a'_g clean > 0, steered = 0}",
                  "count"),
    OutcomeColumn("n_spread_positions", "positions (c, t) where w_ct is not all zero", "count"),
    OutcomeColumn("n_positions", "C * (T - 1)", "count"),
)}


@dataclass
class RowSums:
    """One row's contribution, reduced over positions (tensors stay on the engine's device)."""

    d_V: torch.Tensor  # mean_t g_ct: the context's Fisher effect vector
    e_V: torch.Tensor  # mean_t of the vocabulary-centred dlogp
    kl: float  # sum_t KL(p || p')
    target: float  # sum over t and target tokens of dlogp
    log_pr: float  # sum over positions with w != 0 of ln PR
    n_spread: int  # number of such positions
    w_G: torch.Tensor  # sum_t w_tg (zero on T_f)
    w_out: float  # sum_(t, g outside T_f) w
    w_all: float  # sum_(t, all g) w
    recruited: int
    suppressed: int


@torch.no_grad()
def logit_sums(logits_RTV: torch.Tensor, logp_RTV: torch.Tensor, sqrtp_RTV: torch.Tensor,
               targets_RK: torch.Tensor) -> dict[str, torch.Tensor]:
    """Vocabulary-side sums of R rows: ``d`` [R, V], ``e`` [R, V], ``kl`` [R], ``target`` [R].

    ``logits_RTV`` are the steered logits at positions ``t >= 1`` (consumed: overwritten in
    place to save memory); ``logp``/``sqrtp`` the clean log-probs and ``sqrt(p)`` there.
    """
    t = logits_RTV.shape[1]
    dlogp = torch.log_softmax(logits_RTV.float(), dim=-1)
    dlogp.sub_(logp_RTV)  # dlogp = log p' - log p
    u = dlogp * sqrtp_RTV
    kl_RT = -(u * sqrtp_RTV).sum(-1)  # -E_p[dlogp]
    d = u.sum(1)
    del u
    d.add_(torch.bmm(kl_RT.unsqueeze(1), sqrtp_RTV).squeeze(1)).div_(t)  # + sqrt(p) * KL
    e = dlogp.mean(1)
    e.sub_(e.mean(-1, keepdim=True))
    k = targets_RK.shape[1]
    tgt = torch.gather(dlogp, 2, targets_RK.unsqueeze(1).expand(-1, t, k)).sum((1, 2))
    return {"d": d, "e": e, "kl": kl_RT.sum(1), "target": tgt}


@torch.no_grad()
def downstream_sums(a_steer_RTG: torch.Tensor, a_clean_RTG: torch.Tensor,
                    dec_norm_G: torch.Tensor, target_mask_RG: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
    """Downstream-SAE sums of R rows; ``target_mask_RG`` is True on each row's T_f."""
    diff = (a_steer_RTG - a_clean_RTG).abs_().mul_(dec_norm_G)  # w over all g
    w_all = diff.sum((1, 2))
    on_s, on_c = a_steer_RTG > 0, a_clean_RTG > 0
    recruited = (on_s & ~on_c).sum((1, 2))
    suppressed = (on_c & ~on_s).sum((1, 2))
    diff.masked_fill_(target_mask_RG.unsqueeze(1), 0.0)  # w: outside T_f only
    s1 = diff.sum(-1)  # [R, T]
    s2 = diff.square().sum(-1)
    nz = s2 > 0
    log_pr = torch.where(nz, torch.log(s1.square() / s2.clamp_min(1e-300)), 0.0)
    return {"w": diff.sum(1), "w_out": s1.sum(1), "w_all": w_all, "log_pr": log_pr.sum(1),
            "n_spread": nz.sum(1), "recruited": recruited, "suppressed": suppressed}


@torch.no_grad()
def passthrough_response(down_encode, down_resid_ND: torch.Tensor, a_clean_NG: torch.Tensor,
                         dirs_KD: torch.Tensor, alpha: float, dec_norm_G: torch.Tensor,
                         chunk_rows: int = 8192) -> torch.Tensor:
    """P_g per direction -> [K, G]: mean over the N clean positions at h' of
    ``|a'_g(x' + alpha v) - a'_g(x')| * ||W'_dec[g]||`` (``down_encode`` maps [n, D] -> [n, G])."""
    n = down_resid_ND.shape[0]
    out = torch.zeros(dirs_KD.shape[0], a_clean_NG.shape[1], device=a_clean_NG.device)
    step = max(1, chunk_rows)
    for k in range(dirs_KD.shape[0]):
        shift = alpha * dirs_KD[k].to(down_resid_ND)
        for i in range(0, n, step):
            a = down_encode(down_resid_ND[i:i + step] + shift)
            out[k] += (a - a_clean_NG[i:i + step]).abs_().sum(0)
    return out.div_(n).mul_(dec_norm_G)


def target_set(P_KG: torch.Tensor, n_targets: int = N_TARGETS) -> torch.Tensor:
    """T_f: indices of the ``n_targets`` largest responses per row (ties: lower index) ->
    [K, n]."""
    n = min(n_targets, P_KG.shape[1])
    order = torch.sort(-P_KG, dim=1, stable=True).indices
    return order[:, :n]


def _stability(gram: np.ndarray) -> float:
    c = gram.shape[0]
    tr = float(np.trace(gram))
    if c < 2 or not tr > 0:
        return math.nan
    return (float(gram.sum()) - tr) / ((c - 1) * tr)


def _log_pr(w: np.ndarray) -> float:
    s2 = float(np.square(w).sum())
    return math.log(float(w.sum()) ** 2 / s2) if s2 > 0 else math.nan


@dataclass
class DirectionOutcome:
    """The §3 values of one direction on one context set at one strength."""

    values: dict[str, float]  # every OUTCOME_COLUMNS name
    gram: np.ndarray  # [C, C] float64, d_c . d_c'
    targets: np.ndarray  # T_f


def reduce_direction(rows: list[RowSums], targets: np.ndarray, positions_per_row: int, *,
                     n_out: int = N_OUT, n_target_tokens: int = N_TARGET_TOKENS
                     ) -> DirectionOutcome:
    """The outcomes of one direction from the :class:`RowSums` of its C contexts (in order)."""
    n_pos = len(rows) * positions_per_row
    d = torch.stack([r.d_V for r in rows]).double().cpu().numpy()  # [C, V]
    e = torch.stack([r.e_V for r in rows]).double().cpu().numpy()
    gram = d @ d.T
    m2 = np.square(d.mean(0))
    tot = float(m2.sum())
    top = float(np.sort(m2)[-min(n_out, m2.size):].sum())
    w = torch.stack([r.w_G for r in rows]).double().sum(0).cpu().numpy()
    n_spread = sum(r.n_spread for r in rows)
    w_all = sum(r.w_all for r in rows)
    values = {
        "effect_stability": _stability(gram),
        "collateral_spread": (sum(r.log_pr for r in rows) / n_spread) if n_spread else math.nan,
        "collateral_out": 1.0 - top / tot if tot > 0 else math.nan,
        "effect_kl": sum(r.kl for r in rows) / n_pos,
        "target_gain": sum(r.target for r in rows) / (n_pos * n_target_tokens),
        "effect_stability_logit": _stability(e @ e.T),
        "collateral_spread_union": _log_pr(w),
        "collateral_mass": (sum(r.w_out for r in rows) / w_all) if w_all > 0 else math.nan,
        "n_recruited": sum(r.recruited for r in rows) / n_pos,
        "n_suppressed": sum(r.suppressed for r in rows) / n_pos,
        "n_spread_positions": float(n_spread),
        "n_positions": float(n_pos),
    }
    return DirectionOutcome(values, gram, targets)
