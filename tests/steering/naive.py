"""A deliberately naive reference for the METHOD §3 outcomes: the differential-test oracle.

It shares nothing with ``steerscreen.steering``: one context at a time, one clean and one steered
hooked forward each, then every outcome straight from METHOD's formulas in numpy float64 with
plain loops. Slow by design; it only runs on tiny models.

Conventions (METHOD §2-§3, where the text leaves a choice):

- Steering adds ``alpha * direction`` (computed in float64, cast to float32) at every position
  >= 1 of ``hook``, in float32, then casts back to the model dtype; position 0 is untouched.
- Outcome positions are t = 1..T-1 (every position after BOS, the last included).
- Probabilities come from a float64 ``log_softmax`` of the model's logits (softcap included, as
  the model applies it); KL uses the log-probabilities, so an underflowed p contributes 0.
- Passthrough response: ``alpha * direction`` is added to the clean residual at ``down_hook`` in
  float32 (as the steering write is), then encoded; ``||W'_dec[g]||`` is the raw row norm.
- "Off" / "on" and "w not all zero" are exact: a' == 0, a' > 0, w == 0 (no tolerance).
- ``effect_stability`` is NaN when C < 2 (the (C - 1) denominator) or sum_c ||d_c||^2 == 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from steerscreen.saes.io import encode


def _log_softmax64(logits_TV: torch.Tensor) -> np.ndarray:
    return torch.log_softmax(logits_TV.detach().to(torch.float64).cpu(), dim=-1).numpy()


def _stability(d_CV: np.ndarray) -> tuple[float, np.ndarray]:
    """The effect-stability estimator and the C x C Gram matrix of the rows d_c."""
    C = d_CV.shape[0]
    gram = np.zeros((C, C), dtype=np.float64)
    for i in range(C):
        for j in range(C):
            gram[i, j] = float(np.dot(d_CV[i], d_CV[j]))
    total = d_CV.sum(axis=0)
    sum_sq = sum(float(np.dot(d_CV[c], d_CV[c])) for c in range(C))
    if C < 2 or sum_sq == 0.0:
        return math.nan, gram
    stab = (float(np.dot(total, total)) - sum_sq) / ((C - 1) * sum_sq)
    return stab, gram


def _log_pr(w: np.ndarray) -> float:
    """log participation ratio log((sum w)^2 / sum w^2) of non-negative weights w."""
    return math.log(float(np.sum(w)) ** 2 / float(np.sum(w * w)))


def naive_outcomes(model, sae_down, hook: str, down_hook: str, direction: np.ndarray,
                   alpha: float, token_ids: np.ndarray, target_tokens: np.ndarray, *,
                   n_targets: int = 8, n_out: int = 20) -> dict:
    token_ids = np.asarray(token_ids)
    C, T = token_ids.shape
    direction = np.asarray(direction, dtype=np.float64)
    delta32 = torch.tensor(float(alpha) * direction, dtype=torch.float32, device=model.device)
    target_tokens = np.asarray(target_tokens, dtype=np.int64)

    def steer(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[:, 1:] = (x[:, 1:].to(torch.float32) + delta32).to(x.dtype)
        return y

    # --- forwards, one context at a time -------------------------------------------------------
    logp_clean, logp_steer, z_clean, z_steer = [], [], [], []
    resid_clean, resid_steer = [], []
    for c in range(C):
        ids = torch.as_tensor(token_ids[c:c + 1], dtype=torch.long)
        clean = model.forward(ids, read=[down_hook], logits=True)
        steered = model.forward(ids, read=[down_hook], write={hook: steer}, logits=True)
        z_clean.append(clean.logits[0].detach().to(torch.float64).cpu().numpy())
        z_steer.append(steered.logits[0].detach().to(torch.float64).cpu().numpy())
        logp_clean.append(_log_softmax64(clean.logits[0]))
        logp_steer.append(_log_softmax64(steered.logits[0]))
        resid_clean.append(clean.acts[down_hook][0].detach().clone())
        resid_steer.append(steered.acts[down_hook][0].detach().clone())

    V = z_clean[0].shape[-1]
    positions = [(c, t) for c in range(C) for t in range(1, T)]
    n_pos = len(positions)

    # --- Fisher effect vectors, KL, target gain -----------------------------------------------
    d = np.zeros((C, V), dtype=np.float64)
    d_logit = np.zeros((C, V), dtype=np.float64)
    kl_sum = 0.0
    gain_sum = 0.0
    for c, t in positions:
        lp = logp_clean[c][t]
        lq = logp_steer[c][t]
        p = np.exp(lp)
        dlogp = lq - lp
        g = np.sqrt(p) * (dlogp - np.sum(p * dlogp))
        d[c] += g / (T - 1)
        dz = z_steer[c][t] - z_clean[c][t]
        d_logit[c] += (dz - np.mean(dz)) / (T - 1)
        kl_sum += float(np.sum(p * (lp - lq)))
        gain_sum += float(np.mean(dlogp[target_tokens]))
    effect_stability, gram = _stability(d)
    effect_stability_logit, _ = _stability(d_logit)

    m = d.mean(axis=0)
    m_sq = m * m
    m_norm_sq = float(np.sum(m_sq))
    if m_norm_sq == 0.0:
        collateral_out = math.nan
    else:
        top = np.sort(m_sq)[::-1][:n_out]
        collateral_out = 1.0 - float(np.sum(top)) / m_norm_sq

    # --- downstream SAE: passthrough targets, collateral weights, recruitment -----------------
    W_dec = sae_down.sae.W_dec.detach().to(torch.float64).cpu().numpy()
    n_feat = W_dec.shape[0]
    dec_norm = np.array([np.sqrt(np.sum(W_dec[g] ** 2)) for g in range(n_feat)])
    delta_down = delta32.to(resid_clean[0].device)

    a_clean, a_steer, a_pass = [], [], []
    for c in range(C):
        xc = resid_clean[c].to(torch.float32)
        a_clean.append(encode(sae_down, xc).to(torch.float64).cpu().numpy())
        a_steer.append(encode(sae_down, resid_steer[c].to(torch.float32))
                       .to(torch.float64).cpu().numpy())
        a_pass.append(encode(sae_down, xc + delta_down).to(torch.float64).cpu().numpy())

    P = np.zeros(n_feat, dtype=np.float64)
    for c, t in positions:
        P += np.abs(a_pass[c][t] - a_clean[c][t]) * dec_norm / n_pos
    targets = np.argsort(-P, kind="stable")[:n_targets].astype(np.int64)
    outside = np.ones(n_feat, dtype=bool)
    outside[targets] = False

    log_prs = []
    w_union = np.zeros(int(outside.sum()), dtype=np.float64)
    mass_outside = 0.0
    mass_all = 0.0
    recruited = 0
    suppressed = 0
    for c, t in positions:
        w_all = np.abs(a_steer[c][t] - a_clean[c][t]) * dec_norm
        w = w_all[outside]
        if np.any(w != 0.0):
            log_prs.append(_log_pr(w))
        w_union += w
        mass_outside += float(np.sum(w))
        mass_all += float(np.sum(w_all))
        for g in range(n_feat):
            before, after = a_clean[c][t][g], a_steer[c][t][g]
            if before == 0.0 and after > 0.0:
                recruited += 1
            if before > 0.0 and after == 0.0:
                suppressed += 1

    return {
        "effect_stability": effect_stability,
        "gram": gram,
        "effect_stability_logit": effect_stability_logit,
        "collateral_spread": float(np.mean(log_prs)) if log_prs else math.nan,
        "n_spread_positions": len(log_prs),
        "collateral_spread_union": _log_pr(w_union) if np.any(w_union != 0.0) else math.nan,
        "collateral_mass": mass_outside / mass_all if mass_all != 0.0 else math.nan,
        "collateral_out": collateral_out,
        "effect_kl": kl_sum / n_pos,
        "target_gain": gain_sum / n_pos,
        "n_recruited": recruited / n_pos,
        "n_suppressed": suppressed / n_pos,
        "n_positions": n_pos,
        "targets": targets,
        "m": m,
    }
