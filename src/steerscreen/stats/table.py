"""Assemble the per-feature table (``feature_stats``) and the examples table from merged state.

Every column written is looked up in :data:`steerscreen.stats.registry.COLUMNS` (name, order,
dtype): a computed statistic that is not registered is an error, never a silent extra column.
Integer and boolean columns are null where the statistic is undefined; float columns are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import polars as pl
import torch

from steerscreen.models.hooks import Unembed
from steerscreen.stats.accumulators import POS_BITS, StatsAccumulator
from steerscreen.stats.activation import activation_columns, trigger_tokens
from steerscreen.stats.baselines import baseline_columns
from steerscreen.stats.coactivation import coactivation_columns
from steerscreen.stats.geometry import N_COMPONENTS, NEIGHBOUR_THRESHOLD, geometry_columns
from steerscreen.stats.logits import TOP_TOKENS, LogitColumns, logit_columns
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
    logit_chunk: int = 512
    """Features per direct-logit chunk (memory: two chunk x vocabulary float32 blocks)."""


class FeatureTables(NamedTuple):
    """What :func:`feature_tables` returns."""

    stats: pl.DataFrame
    """``feature_stats``: one row per feature, registered columns in registry order."""
    logit_tokens: pl.DataFrame | None
    """Each feature's top ``TOP_TOKENS`` direct-logit tokens (:func:`logit_token_table`: feature,
    rank, token_id, dl); None without an unembedding."""


def feature_stats(acc: StatsAccumulator, W_enc_DF: torch.Tensor, W_dec_FD: torch.Tensor,
                  unembed: Unembed | None = None,
                  options: TableOptions | None = None) -> pl.DataFrame:
    """One row per feature, columns in registry order; logit columns need ``unembed``."""
    return feature_tables(acc, W_enc_DF, W_dec_FD, unembed, options).stats


def feature_tables(acc: StatsAccumulator, W_enc_DF: torch.Tensor, W_dec_FD: torch.Tensor,
                   unembed: Unembed | None = None,
                   options: TableOptions | None = None) -> FeatureTables:
    """``feature_stats`` and (with ``unembed``) the top direct-logit tokens, from one pass of
    the direct-logit work."""
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
    tokens = None
    if unembed is not None:
        sigma = acc.sigma_fin()
        alpha = opts.alpha if opts.alpha is not None else float("nan")
        dosed = bool(np.isfinite(alpha) and np.isfinite(sigma))
        lc = logit_columns(W_dec_FD, unembed, alpha=alpha if dosed else 0.0,
                           sigma_fin=sigma if dosed else 1.0,
                           trigger_tokens_FK=trigger_tokens(acc, TOP_TOKENS),
                           chunk=opts.logit_chunk)
        cols |= lc.columns
        if not dosed:  # no dose or no sigma_fin: only the dose-free columns
            cols["logit_entropy"] = np.full(f, np.nan)
            cols["logit_top10_mass"] = np.full(f, np.nan)
        tokens = logit_token_table(lc)
    else:
        cols |= {name: np.full(f, np.nan) for name in logit_names}
    return FeatureTables(to_frame(cols), tokens)


def logit_token_table(lc: LogitColumns) -> pl.DataFrame:
    """Each feature's top direct-logit tokens, one row per (feature, rank): feature, rank (0 =
    the largest DL_f entry), token_id, dl (DL_f of that token)."""
    f, k = lc.top_ids.shape
    return pl.DataFrame({
        "feature": np.repeat(np.arange(f, dtype=np.int64), k),
        "rank": np.tile(np.arange(k, dtype=np.int64), f),
        "token_id": lc.top_ids.reshape(-1).astype(np.int64),
        "dl": lc.top_dl.reshape(-1).astype(np.float64),
    })


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
    window = example_windows(acc)
    # The window's -1 pad dropped, in polars (a python list per row took ~1.5 s at 40K rows).
    token_ids = pl.Series("token_ids", window.astype(np.int64)).arr.to_list().list.eval(
        pl.element().filter(pl.element() >= 0))
    return pl.DataFrame({
        "feature": f.astype(np.int64),
        "rank": rank.astype(np.int64),
        "value": value[f, rank].astype(np.float32),
        "context_id": (uid >> POS_BITS).astype(np.int64),
        "position": (uid & ((1 << POS_BITS) - 1)).astype(np.int64),
        "token_ids": token_ids,
    })


def example_windows(acc: StatsAccumulator) -> np.ndarray:
    """The examples' token windows in :func:`examples_table`'s row order -> int32 [N, W].

    Each window ends at the firing; positions before the context start hold -1 (a prefix)."""
    f, rank = np.nonzero(np.isfinite(acc.examples.value.cpu().numpy()))
    return acc.examples.window.cpu().numpy()[f, rank]
