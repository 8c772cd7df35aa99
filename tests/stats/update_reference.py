"""The straightforward batch update the optimized ``StatsAccumulator.update`` must equal.

This is the original, unoptimized update: every touched feature gets a full ``R``-slot candidate
block (and a full ``[R_co, P]`` partner block) and a full ``K``-slot example block, merged with
``Reservoir.merged`` / ``Examples.merged``-style sorts over ``R + R`` and ``K + K`` slots and
written back row by row. It reads and writes the accumulator's public (canonical) reservoir, so
it can drive the same state as the optimized update, batch by batch.
"""

from __future__ import annotations

import torch

from steerscreen.stats.accumulators import (
    INT64_MAX,
    Examples,
    Reservoir,
    StatsAccumulator,
    firing_keys,
    make_uid,
)


def _empty_reservoir(n: int, acc: StatsAccumulator) -> Reservoir:
    opts, dev = acc.options, acc.device
    r, rc, p = opts.reservoir_size, opts.coact_slots, opts.max_partners
    return Reservoir(
        key=torch.full((n, r), INT64_MAX, dtype=torch.int64, device=dev),
        value=torch.zeros((n, r), dtype=torch.float32, device=dev),
        token=torch.full((n, r), -1, dtype=torch.int32, device=dev),
        uid=torch.full((n, r), -1, dtype=torch.int64, device=dev),
        partners=torch.full((n, rc, p), -1, dtype=torch.int32, device=dev),
        truncated=torch.zeros((n, rc), dtype=torch.bool, device=dev),
    )


def merge_reservoir(a: Reservoir, b: Reservoir) -> Reservoir:
    """Row-wise union keeping the R smallest keys (the original ``Reservoir.merged``)."""
    r, rc = a.key.shape[1], a.partners.shape[1]
    key = torch.cat([a.key, b.key], 1)
    order = torch.sort(key, dim=1, stable=True).indices[:, :r]
    take = {f: torch.gather(torch.cat([getattr(a, f), getattr(b, f)], 1), 1, order)
            for f in ("key", "value", "token", "uid")}
    src = order[:, :rc]
    psrc = torch.where(src < r, src, src - r + rc)
    ok = (src < rc) | ((src >= r) & (src - r < rc))
    psrc = torch.where(ok, psrc, 0)
    parts = torch.cat([a.partners, b.partners], 1)
    p = parts.shape[2]
    partners = torch.gather(parts, 1, psrc[..., None].expand(-1, -1, p))
    partners = torch.where(ok[..., None], partners, -1)
    trunc = torch.gather(torch.cat([a.truncated, b.truncated], 1), 1, psrc) & ok
    return Reservoir(take["key"], take["value"], take["token"], take["uid"], partners, trunc)


def merge_examples(a: Examples, b: Examples) -> Examples:
    """Row-wise top-K by (value desc, uid asc) (the original ``Examples.merged``)."""
    k = a.value.shape[1]
    value = torch.cat([a.value, b.value], 1)
    uid = torch.cat([a.uid, b.uid], 1)
    o1 = torch.sort(uid, dim=1, stable=True).indices
    o2 = torch.sort(torch.gather(value, 1, o1), dim=1, descending=True, stable=True).indices
    order = torch.gather(o1, 1, o2)[:, :k]
    window = torch.cat([a.window, b.window], 1)
    w = window.shape[2]
    return Examples(torch.gather(value, 1, order), torch.gather(uid, 1, order),
                    torch.gather(window, 1, order[..., None].expand(-1, -1, w)))


def _rank_in_group(group: torch.Tensor, n_groups: int) -> torch.Tensor:
    counts = torch.bincount(group, minlength=n_groups)
    start = torch.cumsum(counts, 0) - counts
    return torch.arange(group.numel(), device=group.device) - start[group]


def _partners(acc: StatsAccumulator, a_BTF, active, b, t, f):
    p = acc.options.max_partners
    k = min(p + 1, acc.n_features)
    top = torch.topk(a_BTF.reshape(-1, acc.n_features), k, dim=-1)
    pos = b * a_BTF.shape[1] + t
    idx, val = top.indices[pos], top.values[pos]
    ok = (val > 0) & (idx != f[:, None])
    rank = torch.cumsum(ok, 1) - 1
    ok &= rank < p
    out = torch.full((f.numel(), p + 1), acc.n_features, dtype=torch.int64, device=acc.device)
    rr, cc = ok.nonzero(as_tuple=True)
    out[rr, rank[rr, cc]] = idx[rr, cc]
    out = torch.sort(out[:, :p], dim=1).values
    out = torch.where(out == acc.n_features, -1, out).to(torch.int32)
    n_co = active.sum(-1)[b, t] - 1
    return out, n_co > p


@torch.no_grad()
def reference_update(acc: StatsAccumulator, acts_BTF: torch.Tensor, ids_BT: torch.Tensor,
                     ctx_ids_B: torch.Tensor, *, input_scale_BT: torch.Tensor | None = None,
                     resid_BTD: torch.Tensor | None = None,
                     final_scale_BT: torch.Tensor | None = None,
                     resid_norm_BT: torch.Tensor | None = None) -> StatsAccumulator:
    """``acc.update(...)`` as originally written (dense candidate blocks, full-row merges)."""
    opts, dev, nf = acc.options, acc.device, acc.n_features
    a_BTF = acts_BTF[:, 1:].to(dev, torch.float32)
    b_sz, t_sz, f_sz = a_BTF.shape
    if f_sz != nf:
        raise ValueError(f"acts have {f_sz} features, the accumulator {nf}")
    ids_BT = ids_BT.to(dev, torch.int64)
    ctx_ids_B = ctx_ids_B.to(dev, torch.int64)
    active = a_BTF > 0
    acc.n_positions += b_sz * t_sz
    acc.n_contexts_by_len[t_sz] = acc.n_contexts_by_len.get(t_sz, 0) + b_sz
    acc.n_fire += active.sum((0, 1))
    acc.n_ctx_fire += active.any(1).sum(0)
    acc.shard_sums["sum_act"] += a_BTF.sum((0, 1), dtype=torch.float64)
    if input_scale_BT is None:
        acc.shard_sums["sum_act_raw"] += a_BTF.sum((0, 1), dtype=torch.float64)
    else:
        s_BT = input_scale_BT[:, 1:].to(dev, torch.float64)
        acc.shard_sums["sum_act_raw"] += (a_BTF.double() * s_BT[..., None]).sum((0, 1))
    if resid_BTD is not None:
        x_ND = resid_BTD[:, 1:].reshape(-1, resid_BTD.shape[-1]).to(dev, torch.float64)
        acc.n_resid += x_ND.shape[0]
        acc.shard_sums["sum_resid"] += x_ND.sum(0)
        acc.shard_sums["sum_resid_sq"] += x_ND.T @ x_ND
    if final_scale_BT is not None:
        acc.add_final_scales(final_scale_BT)
    if resid_norm_BT is not None:
        acc.add_resid_norms(resid_norm_BT)

    b, t, f = active.nonzero(as_tuple=True)
    if f.numel() == 0:
        return acc
    val = a_BTF[b, t, f]
    pos = t + 1
    uid = make_uid(ctx_ids_B[b], pos)
    key = firing_keys(uid, f, opts.seed)
    tok = ids_BT[b, pos].to(torch.int32)
    rows = torch.unique(f)
    row_of = torch.full((nf,), -1, dtype=torch.int64, device=dev)
    row_of[rows] = torch.arange(rows.numel(), device=dev)

    res = acc.reservoir
    o = torch.sort(key, stable=True).indices
    o = o[torch.sort(f[o], stable=True).indices]
    rank = _rank_in_group(f[o], nf)
    keep = rank < opts.reservoir_size
    o, rank = o[keep], rank[keep]
    cand = _empty_reservoir(rows.numel(), acc)
    r_i = row_of[f[o]]
    cand.key[r_i, rank] = key[o]
    cand.value[r_i, rank] = val[o]
    cand.token[r_i, rank] = tok[o]
    cand.uid[r_i, rank] = uid[o]
    co = rank < opts.coact_slots
    partners, trunc = _partners(acc, a_BTF, active, b[o[co]], t[o[co]], f[o[co]])
    cand.partners[r_i[co], rank[co]] = partners
    cand.truncated[r_i[co], rank[co]] = trunc
    old = Reservoir(*(x[rows] for x in (res.key, res.value, res.token, res.uid, res.partners,
                                         res.truncated)))
    new = merge_reservoir(old, cand)
    res.key[rows], res.value[rows], res.token[rows] = new.key, new.value, new.token
    res.uid[rows], res.partners[rows], res.truncated[rows] = new.uid, new.partners, new.truncated

    ex_all = acc.examples
    o = torch.sort(uid, stable=True).indices
    o = o[torch.sort(val[o], descending=True, stable=True).indices]
    o = o[torch.sort(f[o], stable=True).indices]
    rank = _rank_in_group(f[o], nf)
    keep = rank < opts.n_examples
    o, rank = o[keep], rank[keep]
    k, w = opts.n_examples, opts.example_window
    n = rows.numel()
    ex = Examples(torch.full((n, k), float("-inf"), dtype=torch.float32, device=dev),
                  torch.full((n, k), INT64_MAX, dtype=torch.int64, device=dev),
                  torch.full((n, k, w), -1, dtype=torch.int32, device=dev))
    r_i = row_of[f[o]]
    ex.value[r_i, rank] = val[o]
    ex.uid[r_i, rank] = uid[o]
    pad = torch.full((b_sz, w - 1), -1, dtype=torch.int64, device=dev)
    windows_BTW = torch.cat([pad, ids_BT], 1).unfold(1, w, 1)
    ex.window[r_i, rank] = windows_BTW[b[o], pos[o]].to(torch.int32)
    old_ex = Examples(ex_all.value[rows], ex_all.uid[rows], ex_all.window[rows])
    new_ex = merge_examples(old_ex, ex)
    ex_all.value[rows], ex_all.uid[rows], ex_all.window[rows] = (new_ex.value, new_ex.uid,
                                                                 new_ex.window)
    return acc
