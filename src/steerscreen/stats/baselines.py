"""Baseline columns (docs/method.md §1): firing frequency and magnitude, from the merged counts.

``base_direct`` needs the unembedding and lives with the other direct-logit work
(``steerscreen.stats.logits``); ``base_pass`` needs a downstream SAE (docs/method.md §3) and is not
part of the stats pass.
"""

from __future__ import annotations

import numpy as np
import torch

from steerscreen.stats.accumulators import StatsAccumulator


def baseline_columns(acc: StatsAccumulator, W_dec_FD: torch.Tensor) -> dict[str, np.ndarray]:
    """``dead``, ``base_freq`` and ``base_mag`` per feature (NaN for dead features).

    ``base_mag`` uses the activation times the SAE's input-normalisation scale (accumulated in
    ``sum_act_raw``), so it is in raw residual units whatever the SAE's normalisation.
    """
    n_f = acc.n_fire.cpu().numpy().astype(np.float64)
    dead = n_f == 0
    n_pos = max(acc.n_positions, 1)
    dec_norm = W_dec_FD.detach().double().norm(dim=1).cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        freq = np.where(dead, np.nan, np.log10(n_f / n_pos))
        mean_raw = acc.sum_act_raw.cpu().numpy() / n_f
        mag = np.where(dead, np.nan, np.log10(mean_raw * dec_norm))
    return {"dead": dead, "base_freq": freq, "base_mag": mag}
