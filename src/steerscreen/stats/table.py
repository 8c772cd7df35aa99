"""Assemble the per-feature table (``feature_stats``) and the examples table from merged state.

Every column written is looked up in :data:`steerscreen.stats.registry.COLUMNS` (name, order,
dtype): a computed statistic that is not registered is an error, never a silent extra column.
Integer and boolean columns are null where the statistic is undefined; float columns are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch

from steerscreen.corpus import Contexts
from steerscreen.models.hooks import HookedModel, Unembed
from steerscreen.stats.accumulators import POS_BITS, StatsAccumulator
from steerscreen.stats.activation import activation_columns, trigger_tokens
from steerscreen.stats.baselines import baseline_columns
from steerscreen.stats.coactivation import coactivation_columns
from steerscreen.stats.geometry import N_COMPONENTS, NEIGHBOUR_THRESHOLD, geometry_columns
from steerscreen.stats.logits import TOP_TOKENS, LogitColumns, logit_columns
from steerscreen.stats.registry import COLUMNS, LINEAR_GROUP, columns_in_group

_PL = {"int64": pl.Int64, "float64": pl.Float64, "bool": pl.Boolean}


@dataclass(frozen=True)
class TableOptions:
    """Options of the column computations (the accumulator's own live in ``StatsOptions``)."""

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
    if unembed is not None:  # dose-free (METHOD v2): no alpha, no sigma_fin
        lc = logit_columns(W_dec_FD, unembed, trigger_tokens_FK=trigger_tokens(acc, TOP_TOKENS),
                           chunk=opts.logit_chunk)
        cols |= lc.columns
        tokens = logit_token_table(lc)
    else:
        cols |= {name: np.full(f, np.nan) for name in logit_names}
    for c in columns_in_group(LINEAR_GROUP):  # computed by stats.linear (the stats stage)
        cols.setdefault(c.name, np.full(f, np.nan))
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


def example_rows(acc: StatsAccumulator, contexts: Contexts, model: HookedModel,
                 decode: bool = True) -> pl.DataFrame:
    """The examples table plus each example's whole context and (optionally) decoded text.

    Columns: feature, rank, value, context_id, position, token_ids (the window ending at the
    firing), context_token_ids (the whole context, BOS first), text (the window decoded) and
    token (the firing token decoded); text/token are null without a decoding tokenizer.
    """
    ex = examples_table(acc)
    ctx_ids = ex["context_id"].to_numpy()
    whole = contexts.token_ids[ctx_ids].astype(np.int32)
    ex = ex.with_columns(pl.Series("context_token_ids", whole).cast(pl.List(pl.Int32)))
    tok = getattr(model, "tokenizer", None)
    text: list[str | None] = [None] * ex.height
    token: list[str | None] = [None] * ex.height
    if decode and ex.height and callable(getattr(tok, "batch_decode", None)):
        windows = example_windows(acc)
        text = decode_rows(tok, windows)
        token = decode_rows(tok, windows[:, -1:])
    return ex.with_columns(pl.Series("text", text, dtype=pl.String),
                           pl.Series("token", token, dtype=pl.String))


def decode_rows(tok: Any, ids_NW: np.ndarray) -> list[str]:
    """``tok.batch_decode`` of each row's token ids (a -1 prefix is padding) -> N strings.

    The same strings as one ``batch_decode`` of every row's ids, faster: each distinct row is
    decoded once, rows with the same padding in one call. A Hugging Face tokenizer gets a 2-D
    array through ``decode`` (batched since transformers 5; ``batch_decode`` type-checks every
    id of a list of lists, ~1 s for 40K windows); any other tokenizer gets ``batch_decode`` of
    lists.
    """
    x = np.ascontiguousarray(ids_NW)
    if x.shape[0] == 0:
        return []
    rows = x.view(np.dtype((np.void, x.itemsize * x.shape[1]))).ravel()
    uniq_v, inverse = np.unique(rows, return_inverse=True)
    uniq = uniq_v.view(x.dtype).reshape(-1, x.shape[1])
    n_pad = (uniq < 0).sum(1)
    if not np.array_equal(uniq >= 0, np.arange(x.shape[1]) >= n_pad[:, None]):
        raise ValueError("token rows may only be padded (-1) before their first id")
    as_array = _is_hf_tokenizer(tok)
    out = np.empty(uniq.shape[0], dtype=object)
    for pad in np.unique(n_pad):
        sel = np.flatnonzero(n_pad == pad)
        ids = uniq[sel, pad:].astype(np.int64)
        out[sel] = _hf_decode(tok, ids) if as_array else tok.batch_decode(ids.tolist())
    return out[inverse.reshape(-1)].tolist()


def _hf_decode(tok: Any, ids_NW: np.ndarray) -> list[str]:
    text = tok.decode(ids_NW)
    if isinstance(text, list) and len(text) == ids_NW.shape[0]:
        return text
    return tok.batch_decode(ids_NW)  # a tokenizer whose decode is not batched


def _is_hf_tokenizer(tok: Any) -> bool:
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(tok, PreTrainedTokenizerBase)


def logit_token_rows(tokens: pl.DataFrame | None, model: HookedModel) -> pl.DataFrame:
    """``feature_logit_tokens``: the top direct-logit tokens (``steerscreen.stats.table.
    logit_token_table``) with each token decoded on its own (null without a decoding tokenizer).

    Columns: feature, rank (0 = the largest DL_f entry), token_id, token, dl.
    """
    if tokens is None:  # the stage always has an unembedding; this keeps the schema anyway
        tokens = pl.DataFrame(schema={"feature": pl.Int64, "rank": pl.Int64,
                                      "token_id": pl.Int64, "dl": pl.Float64})
    tok = getattr(model, "tokenizer", None)
    text: list[str | None] = [None] * tokens.height
    if tokens.height and callable(getattr(tok, "batch_decode", None)):
        text = decode_rows(tok, tokens["token_id"].to_numpy()[:, None])
    return tokens.select("feature", "rank", "token_id",
                         pl.Series("token", text, dtype=pl.String), "dl")
