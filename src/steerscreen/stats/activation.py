"""Activation statistics (docs/method.md §1, ``act_*``) from the reservoir and the firing counts.

Shape statistics use the reservoir (R firings per feature, a uniform sample) rather than all
firings so that they do not track frequency; with fewer than R firings they are NaN and
``act_low_count`` is set. Burstiness uses every context.

Also here: the grouped counting and Miller–Madow entropy that co-activation shares, and the
features' most frequent triggering tokens (for ``logit_trigger_overlap``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from steerscreen.stats.accumulators import POS_BITS, StatsAccumulator

EARLY_POSITIONS = 3  # act_early_share counts firings at positions 1..3
DENSE_FACTOR = 4  # grouped_counts: count on the dense grid when it has <= 4 cells per pair
DENSE_MIN_CELLS = 1 << 16  # ... or when it is this small anyway


class GroupedCounts(NamedTuple):
    """Distinct (group, value) pairs of a multiset, sorted by group then value, with counts."""

    group: np.ndarray  # int64 [M]
    value: np.ndarray  # int64 [M]
    count: np.ndarray  # int64 [M]


def grouped_counts(group: np.ndarray, value: np.ndarray,
                   n_values: int | None = None) -> GroupedCounts:
    """Count each (group, value) pair; values must lie in ``0 .. n_values - 1`` (default: up to
    their maximum).

    Pairs are counted on the combined key ``group * span + value``: by one ``bincount`` over
    the whole group x value grid when that grid is small next to the number of pairs (at most
    ``DENSE_FACTOR`` cells per pair: co-activation of F features), else by sorting the keys
    (trigger tokens: a vocabulary-wide grid). Both give the same sorted pairs and counts.
    """
    group, value = np.asarray(group), np.asarray(value)
    if group.size == 0:
        e = np.zeros(0, np.int64)
        return GroupedCounts(e, e, e)
    span = int(value.max()) + 1 if n_values is None else int(n_values)
    key = np.multiply(group, span, dtype=np.int64)
    key += value
    cells = (int(group.max()) + 1) * span
    if cells <= max(DENSE_FACTOR * key.size, DENSE_MIN_CELLS):
        count = np.bincount(key, minlength=cells)
        pair = np.flatnonzero(count)
        count = count[pair]
    else:
        pair, count = np.unique(key, return_counts=True)
    g, v = np.divmod(pair, span)
    return GroupedCounts(g, v, count.astype(np.int64, copy=False))


def miller_madow(gc: GroupedCounts, n_groups: int) -> np.ndarray:
    """Miller–Madow entropy (nats) of each group's value distribution; NaN for empty groups.

    ``H = ln n - sum_i c_i ln c_i / n + (K - 1) / (2 n)``, n = sum of counts, K = distinct values.
    """
    c = gc.count.astype(np.float64)
    n = np.bincount(gc.group, weights=c, minlength=n_groups)
    k = np.bincount(gc.group, minlength=n_groups).astype(np.float64)
    clogc = np.bincount(gc.group, weights=c * np.log(np.maximum(c, 1)), minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.log(n) - clogc / n + (k - 1) / (2 * n)
    return np.where(n > 0, h, np.nan)


def top_by_count(gc: GroupedCounts, n_groups: int, k: int) -> np.ndarray:
    """Per group, the k values with the largest counts (ties: smaller value) -> [G, k], -1 pad.

    One sort of the packed keys ``(group, max_count - count, value)`` (distinct, as the pairs
    are) when they fit in 63 bits, else a ``lexsort`` of the three columns: the same order.
    """
    out = np.full((n_groups, k), -1, dtype=np.int64)
    if gc.group.size == 0:
        return out
    c_max = int(gc.count.max())
    c_bits, v_bits = c_max.bit_length(), int(gc.value.max()).bit_length()
    if (n_groups - 1).bit_length() + c_bits + v_bits <= 63:
        key = (gc.group << (c_bits + v_bits)) | ((c_max - gc.count) << v_bits) | gc.value
        key.sort()
        g, value = key >> (c_bits + v_bits), key & ((1 << v_bits) - 1)
    else:
        order = np.lexsort((gc.value, -gc.count, gc.group))
        g, value = gc.group[order], gc.value[order]
    start = np.searchsorted(g, np.arange(n_groups))
    rank = np.arange(g.size) - start[g]
    keep = rank < k
    out[g[keep], rank[keep]] = value[keep]
    return out


class ReservoirArrays(NamedTuple):
    """The reservoir on the host; slot j of feature f is filled iff ``j < min(R, n_f)``."""

    value: np.ndarray  # float64 [F, R]
    token: np.ndarray  # int64 [F, R]
    position: np.ndarray  # int64 [F, R]
    filled: np.ndarray  # bool [F, R]


def reservoir_arrays(acc: StatsAccumulator) -> ReservoirArrays:
    res = acc.reservoir
    r = acc.options.reservoir_size
    filled = np.arange(r)[None, :] < acc.n_reservoir.cpu().numpy()[:, None]
    pos = res.uid.cpu().numpy() & ((1 << POS_BITS) - 1)
    return ReservoirArrays(res.value.cpu().numpy().astype(np.float64),
                           res.token.cpu().numpy().astype(np.int64), pos, filled)


def trigger_tokens(acc: StatsAccumulator, k: int = 10) -> np.ndarray:
    """Each feature's k most frequent token ids in its reservoir (ties: lower id) -> [F, k]."""
    ra = reservoir_arrays(acc)
    rows = np.nonzero(ra.filled)[0]
    return top_by_count(grouped_counts(rows, ra.token[ra.filled]), acc.n_features, k)


def activation_columns(acc: StatsAccumulator) -> dict[str, np.ndarray]:
    """All ``act_*`` columns (see ``steerscreen.stats.registry`` for the formulas)."""
    r = acc.options.reservoir_size
    nf = acc.n_features
    n_res = acc.n_reservoir.cpu().numpy()
    low = n_res < r
    val, tok, pos, _ = reservoir_arrays(acc)
    full = ~low  # every slot filled: the statistics are over exactly R values

    nan = np.full(nf, np.nan)
    cols = {name: nan.copy() for name in ("act_cv", "act_skew", "act_kurtosis", "act_p50_rel",
                                          "act_p99_rel", "act_early_share", "act_token_entropy")}
    if full.any():
        x = val[full]
        m = x.mean(1)
        c = x - m[:, None]
        var = (c**2).mean(1)
        sd = np.sqrt(var)
        with np.errstate(divide="ignore", invalid="ignore"):
            cols["act_cv"][full] = sd / m
            cols["act_skew"][full] = np.where(var > 0, (c**3).mean(1) / sd**3, np.nan)
            cols["act_kurtosis"][full] = np.where(var > 0, (c**4).mean(1) / var**2 - 3, np.nan)
            cols["act_p50_rel"][full] = np.quantile(x, 0.5, axis=1) / m
            cols["act_p99_rel"][full] = np.quantile(x, 0.99, axis=1) / m
        p = pos[full]
        cols["act_early_share"][full] = ((p >= 1) & (p <= EARLY_POSITIONS)).mean(1)
        rows = np.repeat(np.nonzero(full)[0], r)
        h = miller_madow(grouped_counts(rows, tok[full].reshape(-1)), nf)
        cols["act_token_entropy"][full] = h[full]

    cols["act_burstiness"] = burstiness(acc)
    cols["act_n_reservoir"] = n_res.astype(np.int64)
    cols["act_low_count"] = low
    return cols


def burstiness(acc: StatsAccumulator) -> np.ndarray:
    """P(context has a firing) / mean_c(1 - (1 - p)^T_c), p = n_f / N (NaN when dead)."""
    n_f = acc.n_fire.cpu().numpy().astype(np.float64)
    p = n_f / max(acc.n_positions, 1)
    n_ctx = max(acc.n_contexts, 1)
    expected = np.zeros_like(p)
    with np.errstate(divide="ignore"):  # p = 1: log(0) = -inf, expected share 1
        log1m = np.log1p(-np.minimum(p, 1.0))
    for length, count in acc.n_contexts_by_len.items():
        expected += count * -np.expm1(length * log1m)
    expected /= n_ctx
    observed = acc.n_ctx_fire.cpu().numpy() / n_ctx
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_f > 0, observed / expected, np.nan)
