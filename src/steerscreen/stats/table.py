"""Assemble the per-feature table (``feature_stats``) and the examples table from merged state.

Every column written is looked up in :data:`steerscreen.stats.registry.COLUMNS` (name, order,
dtype): a computed statistic that is not registered is an error, never a silent extra column.
Integer and boolean columns are null where the statistic is undefined; float columns are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from steerscreen.models.hooks import Unembed
from steerscreen.stats.accumulators import POS_BITS, StatsAccumulator
from steerscreen.stats.activation import activation_columns, trigger_tokens
from steerscreen.stats.baselines import baseline_columns
from steerscreen.stats.coactivation import coactivation_columns
from steerscreen.stats.geometry import N_COMPONENTS, NEIGHBOUR_THRESHOLD, geometry_columns
from steerscreen.stats.logits import TOP_TOKENS, logit_columns
from steerscreen.stats.registry import COLUMNS

_PL = {"int64": pl.Int64, "float64": pl.Float64, "bool": pl.Boolean}


@dataclass(frozen=True)
class TableOptions:
    """Options of the column computations (the accumulator's own live in ``StatsOptions``)."""

    alpha: float | None = None
    """The applied dose (METHOD §2: s * r); None leaves the dose-dependent logit columns NaN."""
    neighbour_threshold: float = NEIGHBOUR_THRESHOLD
    n_components: int = N_COMPONENTS
    """k of the residual principal subspace for ``geom_pc_share``."""
    block: int = 4096
    """Tile size of the decoder cosine computation."""
    logit_chunk: int = 256
    """Features per direct-logit chunk (memory: chunk x vocabulary floats)."""


def feature_stats(acc: StatsAccumulator, W_enc_DF: torch.Tensor, W_dec_FD: torch.Tensor,
                  unembed: Unembed | None = None,
                  options: TableOptions | None = None) -> pl.DataFrame:
    """One row per feature, columns in registry order; logit columns need ``unembed``."""
    opts = options or TableOptions()
    f = acc.n_features
    if W_dec_FD.shape[0] != f or W_enc_DF.shape[1] != f:
        raise ValueError(f"SAE weights have {W_dec_FD.shape[0]} features, the state {f}")
    cols: dict[str, np.ndarray] = {"feature": np.arange(f, dtype=np.int64)}
    cols |= baseline_columns(acc, W_dec_FD)
    cols["base_pass"] = np.full(f, np.nan)  # needs S' and the steering dose: the steer stage
    cols |= geometry_columns(acc, W_enc_DF, W_dec_FD, threshold=opts.neighbour_threshold,
                             n_components=opts.n_components, block=opts.block)
    cols |= activation_columns(acc)
    cols |= coactivation_columns(acc, W_dec_FD)
    logit_names = [c for c in COLUMNS if c.startswith("logit_")] + ["base_direct"]
    if unembed is not None:
        sigma = acc.sigma_fin()
        alpha = opts.alpha if opts.alpha is not None else float("nan")
        if np.isfinite(alpha) and np.isfinite(sigma):
            cols |= logit_columns(W_dec_FD, unembed, alpha=alpha, sigma_fin=sigma,
                                  trigger_tokens_FK=trigger_tokens(acc, TOP_TOKENS),
                                  chunk=opts.logit_chunk)
        else:  # no dose or no sigma_fin: only the dose-free columns
            cols |= logit_columns(W_dec_FD, unembed, alpha=0.0, sigma_fin=1.0,
                                  trigger_tokens_FK=trigger_tokens(acc, TOP_TOKENS),
                                  chunk=opts.logit_chunk)
            cols["logit_entropy"] = np.full(f, np.nan)
            cols["logit_top10_mass"] = np.full(f, np.nan)
    else:
        cols |= {name: np.full(f, np.nan) for name in logit_names}
    return to_frame(cols)


def to_frame(cols: dict[str, np.ndarray]) -> pl.DataFrame:
    """A DataFrame of registered columns, in registry order, with registered dtypes."""
    unknown = sorted(set(cols) - set(COLUMNS))
    if unknown:
        raise KeyError(f"columns {unknown} are not registered in steerscreen.stats.registry")
    series = []
    for name, col in COLUMNS.items():
        if name not in cols:
            continue
        x = np.asarray(cols[name])
        if col.dtype in ("int64", "bool") and x.dtype.kind == "f":  # NaN -> null
            s = pl.Series(name, x, dtype=pl.Float64).fill_nan(None)
        else:
            s = pl.Series(name, x.astype(col.dtype))
        series.append(s.cast(_PL[col.dtype]))
    return pl.DataFrame(series)


def examples_table(acc: StatsAccumulator) -> pl.DataFrame:
    """Top activating firings: feature, rank, value, context_id, position, token_ids (window)."""
    ex = acc.examples
    value = ex.value.cpu().numpy()
    f, rank = np.nonzero(np.isfinite(value))
    uid = ex.uid.cpu().numpy()[f, rank]
    window = ex.window.cpu().numpy()[f, rank]
    return pl.DataFrame({
        "feature": f.astype(np.int64),
        "rank": rank.astype(np.int64),
        "value": value[f, rank].astype(np.float32),
        "context_id": (uid >> POS_BITS).astype(np.int64),
        "position": (uid & ((1 << POS_BITS) - 1)).astype(np.int64),
        "token_ids": [[int(t) for t in w if t >= 0] for w in window],
    })
