"""Co-activation structure (docs/method.md §1, ``coact_*``) on the reservoir of firings.

For feature f, ``c_fg`` = number of its reservoir firings (the first ``R_co`` slots, default all
R) at which feature g also fires. No F x F matrix is built: the (f, g) pairs present in the
reservoir's partner lists (at most ``F R_co P``) are counted in feature chunks, so the working
memory is ``O(chunk R_co P)`` on top of the accumulator. Features with fewer than R firings get
NaN (the same rule as ``act_*``); dead features too.
"""

from __future__ import annotations

import numpy as np
import torch

from steerscreen.stats.accumulators import StatsAccumulator
from steerscreen.stats.activation import grouped_counts, miller_madow, top_by_count

PMI_THRESHOLD = 1.0  # natural-log PMI
TOP_PARTNERS = 10


def coactivation_columns(acc: StatsAccumulator, W_dec_FD: torch.Tensor, *,
                         pmi_threshold: float = PMI_THRESHOLD, top_partners: int = TOP_PARTNERS,
                         chunk: int = 256) -> dict[str, np.ndarray]:
    """All ``coact_*`` columns (formulas in ``steerscreen.stats.registry``)."""
    nf, r, rc = acc.n_features, acc.options.reservoir_size, acc.options.coact_slots
    n_f = acc.n_fire.cpu().numpy()
    full = n_f >= r
    n_co = np.minimum(n_f, rc).astype(np.float64)
    p_g = n_f / max(acc.n_positions, 1)
    v_FD = W_dec_FD.detach().float()
    v_FD = v_FD / v_FD.norm(dim=1, keepdim=True).clamp_min(1e-30)

    out = {
        "coact_n_pmi1": np.zeros(nf, np.float64),
        "coact_max_cond": np.zeros(nf, np.float64),
        "coact_partner_entropy": np.full(nf, np.nan),
        "coact_top10_dec_cos": np.full(nf, np.nan),
        "coact_truncated_share": np.full(nf, np.nan),
    }
    for f0 in range(0, nf, chunk):
        f1 = min(nf, f0 + chunk)
        sl = slice(f0, f1)
        parts = acc.reservoir.partners[sl].cpu().numpy()  # [n, R_co, P]
        trunc = acc.reservoir.truncated[sl].cpu().numpy()  # [n, R_co]
        slot_ok = np.arange(rc)[None, :] < n_co[sl, None]
        with np.errstate(invalid="ignore"):
            out["coact_truncated_share"][sl] = (trunc & slot_ok).sum(1) / n_co[sl]
        n = f1 - f0
        # Only full features get these columns (NaN below), and all R_co slots of a full
        # feature are filled: its partner lists are every entry >= 0 of its block.
        ok = parts >= 0
        ok[~full[sl]] = False
        g = parts[ok]  # row-major: rows ascending
        rows = np.repeat(np.arange(n), ok.reshape(n, -1).sum(1))
        del ok
        gc = grouped_counts(rows, g, n_values=nf)
        f_glob = gc.group + f0
        cond = gc.count / n_co[f_glob]
        with np.errstate(divide="ignore"):
            pmi = np.log(cond / p_g[gc.value])
        out["coact_n_pmi1"][sl] = np.bincount(gc.group, weights=(pmi > pmi_threshold),
                                              minlength=n)
        if gc.group.size:  # pairs are sorted by row: the max over each row's run (cond > 0)
            first = np.flatnonzero(np.r_[True, gc.group[1:] != gc.group[:-1]])
            out["coact_max_cond"][sl][gc.group[first]] = np.maximum.reduceat(cond, first)
        out["coact_partner_entropy"][sl] = miller_madow(gc, n)

        top = top_by_count(gc, n, top_partners)  # [n, top] partner ids, -1 pad
        has = top >= 0
        if has.any():
            fr, kc = np.nonzero(has)
            vf = v_FD[torch.as_tensor(fr + f0)]
            vg = v_FD[torch.as_tensor(top[fr, kc])]
            cos = (vf * vg).sum(1).double().cpu().numpy()
            s = np.bincount(fr, weights=cos, minlength=n)
            k = has.sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out["coact_top10_dec_cos"][sl] = np.where(k > 0, s / k, np.nan)

    for name in ("coact_n_pmi1", "coact_max_cond", "coact_partner_entropy",
                 "coact_top10_dec_cos", "coact_truncated_share"):
        out[name] = np.where(full, out[name], np.nan)
    return out
