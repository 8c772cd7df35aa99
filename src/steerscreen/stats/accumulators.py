"""Mergeable streaming accumulators: one batch of SAE activations updates every statistic.

:class:`StatsAccumulator` is fed ``acts_BTF`` (SAE activations of whole contexts, BOS at position
0), ``ids_BT`` (their token ids) and ``ctx_ids_B`` (a corpus-wide id per context) and keeps:

- firing counts and sums per feature (frequency, mean activation when active, in SAE and raw
  residual units) and per-context "any firing" counts (burstiness);
- a **reservoir** of ``R`` firings per feature (value, token id, context id, position), and, for
  its first ``R_co`` slots, the co-active feature set of each firing;
- the ``K`` top activating firings per feature with a window of ``W`` token ids ending there;
- the first two moments of the SAE's input residual (mean and ``D x D`` second moment: the
  principal subspace), the exact list of final-norm scales seen (``sigma_fin`` = median) and the
  exact list of raw residual norms at the hook (``r`` = median, the dose unit of docs/method.md §2).

Position 0 (BOS) is dropped here, so callers pass whole contexts.

**Exact merging.** Counts add. The float64 sums are kept per *shard* (a fixed run of contexts,
``collect_stats``'s ``shard_contexts``): each shard sums its own batches from zero and ``fold``
adds that to the totals in shard order, so a pass over shards 0..n in one process and a merge,
in shard order, of states computed one shard each anywhere give the same bits (other shard or
batch boundaries change only the sums' last bits). The reservoir of f is the ``R`` firings
with the smallest keys ``splitmix64(splitmix64(uid ^ seed') + f)``, ``uid = ctx_id << 20 | t``:
the key depends only on the firing, and the mix is a bijection, so keys never tie within a
feature and ``merge(run(A), run(B))`` equals ``run(A + B)`` bit for bit, whatever the batch
order or sharding. Examples are ordered by (value desc, uid asc),
a total order, so they merge exactly too. Context ids must be unique across shards.

**Memory** (bytes, F features, D model width, P = ``max_partners``)::

    F * (48 + 24 R + R_co (4 P + 1) + K (12 + 4 W)) + 16 D (D + 1) + 4 N_fin + 4 N_norm

(N_fin = positions with a final-norm scale, N_norm = positions with a residual norm: 4 bytes each,
so the exact medians cost 4 MB per million positions; one copy, a merge transiently needs about
twice the state). During a pass the update also keeps a ``2 F R_co``-byte slot index: it never
moves partner sets, so they are put back in key order (in place) when ``reservoir`` is read.
The state does not depend on L0 except through the choice of P: the co-activation columns are
exact when P >= L0_max - 1 (a TopK SAE: P = k - 1), and otherwise keep each firing's P largest
co-active features (``coact_truncated_share`` says how often that bit). With
the defaults (R = R_co = 200, P = 64, K = 10, W = 16) that is 57 KB per feature: 7.5 GB for F =
131,072, never an F x F matrix (a dense float32 one would be 69 GB); R_co = 50 brings it to 2.4 GB.
Per batch the dense ``acts_BTF`` (as the SAE returns it), its float64 copy (the exact sums) and the
firing lists (``~B T L0`` entries, a few int64 each) are needed; a top-(P+1) only at positions with
more than P + 1 firings. Only firings that beat a row's current R-th key (K-th example) go past
the firing lists, and only the slots they shift are rewritten (``update``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from steerscreen.exact import matmul

POS_BITS = 20  # uid = ctx_id << POS_BITS | t: contexts up to ~1M tokens
INT64_MAX = torch.iinfo(torch.int64).max
_U64 = 1 << 64


def _s64(c: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    return c - _U64 if c >= 1 << 63 else c


_GOLDEN = _s64(0x9E3779B97F4A7C15)
_M1 = _s64(0xBF58476D1CE4E5B9)
_M2 = _s64(0x94D049BB133111EB)


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 mixer on int64 bits (wrapping arithmetic): a bijection of 64-bit words."""
    z = x.to(torch.int64) + _GOLDEN
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


def firing_keys(uid: torch.Tensor, feature: torch.Tensor, seed: int) -> torch.Tensor:
    """Reservoir priority of firings (smaller = kept): a bijection of ``uid`` for each feature."""
    salt = int(splitmix64(torch.tensor([seed], dtype=torch.int64))[0])
    return splitmix64(splitmix64(uid ^ salt) + feature.to(torch.int64))


def make_uid(ctx_ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return (ctx_ids.to(torch.int64) << POS_BITS) | pos.to(torch.int64)


@dataclass(frozen=True)
class StatsOptions:
    """What the accumulators keep; two accumulators merge only with equal options."""

    reservoir_size: int = 200
    """R: firings sampled per feature for the shape and co-activation statistics (docs/method.md
    §1: 200)."""
    coact_size: int | None = None
    """R_co <= R: reservoir slots (the smallest keys) that also keep their co-active set;
    None = R. Smaller saves 4 P bytes per feature and slot."""
    max_partners: int = 64
    """P: co-active features kept per firing (the largest activations; beyond P the firing is
    counted as truncated)."""
    n_examples: int = 10
    """K: top activating firings kept per feature."""
    example_window: int = 16
    """W: token ids kept per example, ending at the firing position (-1 before the context)."""
    seed: int = 0
    """Seeds the reservoir keys."""

    @classmethod
    def of(cls, cfg: Any) -> StatsOptions:
        """The options a stats config (``steerscreen.config.StatsConfig``) asks for."""
        return cls(reservoir_size=cfg.reservoir_size, coact_size=cfg.coact_size,
                   max_partners=cfg.max_partners, n_examples=cfg.n_examples,
                   example_window=cfg.example_window, seed=cfg.seed)

    @property
    def coact_slots(self) -> int:
        return self.reservoir_size if self.coact_size is None else self.coact_size

    def __post_init__(self) -> None:
        if self.reservoir_size < 1 or self.n_examples < 1 or self.example_window < 1:
            raise ValueError("reservoir_size, n_examples and example_window must be >= 1")
        if not 1 <= self.coact_slots <= self.reservoir_size:
            raise ValueError("coact_size must lie in 1..reservoir_size")
        if self.max_partners < 1:
            raise ValueError("max_partners must be >= 1")

    def memory_bytes(self, n_features: int, d_model: int, n_final: int = 0,
                     n_norms: int = 0) -> int:
        """The accumulator state's size in bytes (the module docstring's formula)."""
        r, rc, p = self.reservoir_size, self.coact_slots, self.max_partners
        k, w = self.n_examples, self.example_window
        per_f = 48 + 24 * r + rc * (4 * p + 1) + k * (12 + 4 * w)  # sums: totals + shard's
        return n_features * per_f + 16 * d_model * (d_model + 1) + 4 * (n_final + n_norms)


@dataclass
class Reservoir:
    """Per-feature bottom-R firings by key; slots sorted by key, empty slots last."""

    key: torch.Tensor  # int64 [F, R], INT64_MAX = empty
    value: torch.Tensor  # float32 [F, R], SAE activation
    token: torch.Tensor  # int32 [F, R], token id at the firing
    uid: torch.Tensor  # int64 [F, R], ctx_id << 20 | position
    partners: torch.Tensor  # int32 [F, R_co, P], co-active features ascending, -1 padded
    truncated: torch.Tensor  # bool [F, R_co], the co-active set held more than P features

    @classmethod
    def empty(cls, n: int, opts: StatsOptions, device: torch.device | str) -> Reservoir:
        r, rc, p = opts.reservoir_size, opts.coact_slots, opts.max_partners
        return cls(
            key=torch.full((n, r), INT64_MAX, dtype=torch.int64, device=device),
            value=torch.zeros((n, r), dtype=torch.float32, device=device),
            token=torch.full((n, r), -1, dtype=torch.int32, device=device),
            uid=torch.full((n, r), -1, dtype=torch.int64, device=device),
            partners=torch.full((n, rc, p), -1, dtype=torch.int32, device=device),
            truncated=torch.zeros((n, rc), dtype=torch.bool, device=device),
        )

    def rows(self, idx: torch.Tensor) -> Reservoir:
        return Reservoir(*(getattr(self, f.name)[idx] for f in fields(self)))

    def set_rows(self, idx: torch.Tensor, other: Reservoir) -> None:
        for f in fields(self):
            getattr(self, f.name)[idx] = getattr(other, f.name)

    def merged(self, other: Reservoir) -> Reservoir:
        """Row-wise union keeping the R smallest keys (keys are distinct within a row)."""
        r, rc = self.key.shape[1], self.partners.shape[1]
        key = torch.cat([self.key, other.key], 1)
        order = torch.sort(key, dim=1, stable=True).indices[:, :r]
        take = {f: torch.gather(torch.cat([getattr(self, f), getattr(other, f)], 1), 1, order)
                for f in ("key", "value", "token", "uid")}
        # A slot's rank never falls in a merge, so the first R_co merged slots all come from
        # the first R_co slots of one side, which hold their partner sets.
        src = order[:, :rc]
        psrc = torch.where(src < r, src, src - r + rc)
        ok = (src < rc) | ((src >= r) & (src - r < rc))
        psrc = torch.where(ok, psrc, 0)
        parts = torch.cat([self.partners, other.partners], 1)
        p = parts.shape[2]
        partners = torch.gather(parts, 1, psrc[..., None].expand(-1, -1, p))
        partners = torch.where(ok[..., None], partners, -1)
        trunc = torch.gather(torch.cat([self.truncated, other.truncated], 1), 1, psrc) & ok
        return Reservoir(take["key"], take["value"], take["token"], take["uid"], partners, trunc)


@dataclass
class Examples:
    """Per-feature top-K firings ordered by (value desc, uid asc); empty slots last."""

    value: torch.Tensor  # float32 [F, K], -inf = empty
    uid: torch.Tensor  # int64 [F, K], INT64_MAX = empty
    window: torch.Tensor  # int32 [F, K, W], token ids ending at the firing, -1 padded

    @classmethod
    def empty(cls, n: int, opts: StatsOptions, device: torch.device | str) -> Examples:
        k, w = opts.n_examples, opts.example_window
        return cls(
            value=torch.full((n, k), float("-inf"), dtype=torch.float32, device=device),
            uid=torch.full((n, k), INT64_MAX, dtype=torch.int64, device=device),
            window=torch.full((n, k, w), -1, dtype=torch.int32, device=device),
        )

    def rows(self, idx: torch.Tensor) -> Examples:
        return Examples(self.value[idx], self.uid[idx], self.window[idx])

    def set_rows(self, idx: torch.Tensor, other: Examples) -> None:
        self.value[idx], self.uid[idx], self.window[idx] = other.value, other.uid, other.window

    def merged(self, other: Examples) -> Examples:
        k = self.value.shape[1]
        value = torch.cat([self.value, other.value], 1)
        uid = torch.cat([self.uid, other.uid], 1)
        o1 = torch.sort(uid, dim=1, stable=True).indices
        o2 = torch.sort(torch.gather(value, 1, o1), dim=1, descending=True, stable=True).indices
        order = torch.gather(o1, 1, o2)[:, :k]
        window = torch.cat([self.window, other.window], 1)
        w = window.shape[2]
        return Examples(torch.gather(value, 1, order), torch.gather(uid, 1, order),
                        torch.gather(window, 1, order[..., None].expand(-1, -1, w)))


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the True entries of a 1-D bool tensor.

    Sparse masks are scanned 8 bytes at a time: only the non-zero 8-byte words are expanded
    (the same result as ``nonzero``, at a fraction of the cost for SAE activations).
    """
    if mask.numel() % 8 or mask.storage_offset() % 8:
        return torch.nonzero(mask).squeeze(1)
    word = torch.nonzero(mask.view(torch.int64)).squeeze(1)
    w, c = torch.nonzero(mask.view(-1, 8)[word], as_tuple=True)
    return word[w] * 8 + c


def _slot_dtype(n: int) -> torch.dtype:
    return torch.int16 if n <= torch.iinfo(torch.int16).max + 1 else torch.int32


class StatsAccumulator:
    """The mergeable state of one streaming stats pass over an SAE's activations."""

    def __init__(self, n_features: int, d_model: int, options: StatsOptions | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.options = options or StatsOptions()
        self.n_features = int(n_features)
        self.d_model = int(d_model)
        self.device = torch.device(device)
        f, dev = self.n_features, self.device
        self.n_positions = 0
        self.n_contexts_by_len: dict[int, int] = {}  # positions >= 1 per context -> count
        self.n_fire = torch.zeros(f, dtype=torch.int64, device=dev)
        self.n_ctx_fire = torch.zeros(f, dtype=torch.int64, device=dev)
        self.reservoir = Reservoir.empty(f, self.options, dev)
        self.examples = Examples.empty(f, self.options, dev)
        self.n_resid = 0
        # The float64 sums, as totals of the shards folded so far plus the current shard's own
        # sums (see ``fold``): the per-batch sums always go to the latter.
        shapes = {"sum_act": (f,), "sum_act_raw": (f,), "sum_resid": (d_model,),
                  "sum_resid_sq": (d_model, d_model)}
        self.sums = {k: torch.zeros(v, dtype=torch.float64, device=dev)
                     for k, v in shapes.items()}
        self.shard_sums = {k: torch.zeros_like(v) for k, v in self.sums.items()}
        self.final_scales = torch.zeros(0, dtype=torch.float32, device=dev)  # sorted
        self._resid_norms = torch.zeros(0, dtype=torch.float32, device=dev)  # sorted
        self._resid_norm_parts: list[torch.Tensor] = []  # not yet sorted in (lazy)

    # --- updating -------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, acts_BTF: torch.Tensor, ids_BT: torch.Tensor, ctx_ids_B: torch.Tensor, *,
               input_scale_BT: torch.Tensor | None = None,
               resid_BTD: torch.Tensor | None = None,
               final_scale_BT: torch.Tensor | None = None,
               resid_norm_BT: torch.Tensor | None = None) -> StatsAccumulator:
        """Add one batch of whole contexts (position 0 is dropped).

        ``input_scale_BT``: the SAE's input-normalisation scale per position (raw units =
        ``a * scale``; None = 1). ``resid_BTD``: the residual as the SAE reads it, before its
        own normalisation (moments). ``final_scale_BT``: the final norm's scale, when this batch
        ran to the end of the model (``sigma_fin``). ``resid_norm_BT``: the L2 norm of the raw
        residual at the hook (``residual_norm``, the dose unit r).
        """
        opts, dev, nf = self.options, self.device, self.n_features
        a_BTF = acts_BTF[:, 1:].to(dev, torch.float32)
        b_sz, t_sz, f_sz = a_BTF.shape
        if f_sz != nf:
            raise ValueError(f"acts have {f_sz} features, the accumulator {nf}")
        ids_BT = ids_BT.to(dev, torch.int64)
        ctx_ids_B = ctx_ids_B.to(dev, torch.int64)
        self.n_positions += b_sz * t_sz
        self.n_contexts_by_len[t_sz] = self.n_contexts_by_len.get(t_sz, 0) + b_sz
        # The firings, row-major (position q = b T + t, then f): the counts come from them
        # (exact integers), never from another [B, T, F] pass.
        i = _flat_nonzero((a_BTF > 0).reshape(-1))
        q, f = i // nf, i % nf
        b, t = q // t_sz, q % t_sz
        self.n_fire += torch.bincount(f, minlength=nf)
        self.n_ctx_fire += torch.bincount(torch.unique(b * nf + f) % nf, minlength=nf)
        # The float64 sums stay the same dense reductions (``sum(dtype=float64)`` reduces
        # ``a.to(float64)``, bit for bit, without the float64 copy, whose fresh pages cost more
        # than the sum; a scale of exactly 1 leaves every term, so the sum, unchanged).
        sums = self.shard_sums
        sum_a = a_BTF.sum((0, 1), dtype=torch.float64)
        sums["sum_act"] += sum_a
        if input_scale_BT is None or bool((input_scale_BT[:, 1:] == 1).all()):
            sums["sum_act_raw"] += sum_a
        else:
            s_BT = input_scale_BT[:, 1:].to(dev, torch.float64)
            sums["sum_act_raw"] += a_BTF.double().mul_(s_BT[..., None]).sum((0, 1))
        if resid_BTD is not None:
            x_ND = resid_BTD[:, 1:].reshape(-1, resid_BTD.shape[-1]).to(dev, torch.float64)
            self.n_resid += x_ND.shape[0]
            sums["sum_resid"] += x_ND.sum(0)
            sums["sum_resid_sq"] += matmul(x_ND.T, x_ND)  # thread-count free: exact.py
        if final_scale_BT is not None:
            self.add_final_scales(final_scale_BT)
        if resid_norm_BT is not None:
            self.add_resid_norms(resid_norm_BT)

        if f.numel() == 0:
            return self
        val = a_BTF[b, t, f]
        pos = t + 1
        uid = make_uid(ctx_ids_B[b], pos)
        key = firing_keys(uid, f, opts.seed)
        self._update_reservoir(a_BTF, ids_BT, q, b, t, f, val, uid, key)
        self._update_examples(ids_BT, b, pos, f, val, uid)
        return self

    def fold(self) -> StatsAccumulator:
        """End the current shard: add its float64 sums to the totals and start the next at 0.

        A pass folds at every shard boundary (``collect_stats``'s ``shard_contexts``) and a
        merge folds both sides, so the sums are always ``((s_0 + s_1) + s_2) + ...`` over the
        shards' own sums, in shard order: the same bits whether one process ran the shards one
        after another or many processes ran one each and their states were merged in order.
        """
        for k, v in self.shard_sums.items():
            self.sums[k] += v
            v.zero_()
        return self

    @property
    def sum_act(self) -> torch.Tensor:
        """Sum of each feature's activations (SAE units) -> float64 [F]."""
        return self._sum("sum_act")

    @property
    def sum_act_raw(self) -> torch.Tensor:
        """Sum of each feature's activations in raw residual units -> float64 [F]."""
        return self._sum("sum_act_raw")

    @property
    def sum_resid(self) -> torch.Tensor:
        """Sum of the SAE's input residual over positions >= 1 -> float64 [D]."""
        return self._sum("sum_resid")

    @property
    def sum_resid_sq(self) -> torch.Tensor:
        """Sum of its outer products -> float64 [D, D]."""
        return self._sum("sum_resid_sq")

    def _sum(self, name: str) -> torch.Tensor:
        # What fold() would make of it (total + 0 is the total, bit for bit), without folding.
        return self.sums[name] + self.shard_sums[name]

    def add_final_scales(self, final_scale_BT: torch.Tensor) -> None:
        """Record final-norm scales of whole contexts (position 0 dropped), kept sorted."""
        s = final_scale_BT[:, 1:].reshape(-1).to(self.device, torch.float32)
        self.final_scales = torch.sort(torch.cat([self.final_scales, s])).values

    def add_resid_norms(self, resid_norm_BT: torch.Tensor) -> None:
        """Record raw residual norms of whole contexts (position 0 dropped); sorted lazily."""
        self._resid_norm_parts.append(resid_norm_BT[:, 1:].reshape(-1).to(self.device,
                                                                           torch.float32))

    @property
    def resid_norms(self) -> torch.Tensor:
        """Every recorded raw residual norm, sorted ascending -> float32 [N_norm]."""
        if self._resid_norm_parts:
            self._resid_norms = torch.sort(torch.cat([self._resid_norms,
                                                      *self._resid_norm_parts])).values
            self._resid_norm_parts = []
        return self._resid_norms

    # --- the reservoir and the examples, per batch -----------------------------------------------
    # Both only ever take a firing that beats the row's current last held entry (the R-th key,
    # the K-th example): that is tested first, on the firing list, and only the survivors (all
    # firings while the rows fill, a few per row per batch once they are full) are sorted,
    # placed and written. Candidate blocks are as wide as the largest per-row survivor count.

    def _update_reservoir(self, a_BTF: torch.Tensor, ids_BT: torch.Tensor, q: torch.Tensor,
                          b: torch.Tensor, t: torch.Tensor, f: torch.Tensor, val: torch.Tensor,
                          uid: torch.Tensor, key: torch.Tensor) -> None:
        """Merge the batch's firings into the bottom-R reservoirs (== ``Reservoir.merged``).

        The merged row is the stable sort of (held slots, then the batch's firings in (key,
        firing) order) by key, cut at R. A firing whose key is >= the row's R-th held key (an
        empty slot is INT64_MAX; no held entry has that key, as no firing with it ever enters)
        has at least R entries before it and never enters, so it is dropped first. An entering
        firing's slot is the number of held keys <= its key plus its rank among the entering
        ones; held entries shift right past them. Only the slots from a row's first entering
        firing to its last filled slot change, and only those are rewritten. Partner sets are
        not moved at all: ``_slot`` maps each co-activation slot to the physical ``[P]`` block
        that holds its set, so a batch writes only the sets of firings entering the first R_co.
        """
        r, rc = self.options.reservoir_size, self.options.coact_slots
        dev, res = self.device, self._reservoir
        sel = torch.nonzero(key < res.key[f, r - 1]).squeeze(1)
        if sel.numel() == 0:
            return
        sel = sel[torch.sort(key[sel], stable=True).indices]
        sel = sel[torch.sort(f[sel], stable=True).indices]  # by feature, then key, then firing
        rows, counts = torch.unique_consecutive(f[sel], return_counts=True)
        n_rows = rows.numel()
        row_i = torch.repeat_interleave(torch.arange(n_rows, device=dev), counts)
        rank = torch.arange(sel.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[row_i]
        width = int(counts.max())
        if width > r:  # rank >= R never enters
            keep = rank < r
            sel, row_i, rank, width = sel[keep], row_i[keep], rank[keep], r
        cand_key = torch.full((n_rows, width), INT64_MAX, dtype=torch.int64, device=dev)
        cand_key[row_i, rank] = key[sel]
        held_key = res.key[rows]
        slot = torch.searchsorted(held_key, cand_key, right=True)[row_i, rank] + rank
        ok = slot < r
        sel, row_i, slot = sel[ok], row_i[ok], slot[ok]  # (row, slot) ascending
        if sel.numel() == 0:
            return
        n_new = torch.bincount(row_i, minlength=n_rows)
        before = torch.cumsum(n_new, 0) - n_new  # entering firings in earlier rows
        lo = slot[before.clamp_max(slot.numel() - 1)]  # the row's first entering slot
        hi = torch.clamp((held_key != INT64_MAX).sum(1) + n_new, max=r)  # filled after
        # The changed slots lo .. hi - 1 of each row, flat (the state's own flat positions).
        span = torch.where(n_new > 0, hi - lo, 0)
        start = torch.cumsum(span, 0) - span
        er = torch.repeat_interleave(torch.arange(n_rows, device=dev), span)
        dst = torch.arange(er.numel(), device=dev) + (rows * r + lo - start)[er]
        is_new = torch.zeros(er.numel(), dtype=torch.bool, device=dev)
        is_new[start[row_i] + slot - lo[row_i]] = True
        n_at = torch.cumsum(is_new, 0) - before[er]  # entering firings at or before each slot
        # A held entry moves right by the entering firings before it (an entering firing's
        # slot reads a stand-in here and is written next).
        src = (dst - n_at).clamp_min_(0)
        new_at = rows[row_i] * r + slot
        for name, x in (("key", key[sel]), ("value", val[sel]), ("uid", uid[sel]),
                        ("token", ids_BT[b[sel], t[sel] + 1])):
            flat = getattr(res, name).view(-1)
            flat.index_copy_(0, dst, flat.index_select(0, src))
            flat.index_copy_(0, new_at, x.to(flat.dtype))

        co = slot < rc
        if not bool(co.any()):
            return
        if self._slot is None:
            self._slot = torch.arange(rc, dtype=_slot_dtype(rc), device=dev).repeat(
                self.n_features, 1)
        # The first R_co slots: of the first c = min(R_co, filled) slots after the merge, the
        # n_in entering firings take the physical blocks of the held slots c - n_in .. c - 1
        # (pushed out, or empty); the other slots keep the block of the held entry they hold.
        n_in = torch.bincount(row_i[co], minlength=n_rows)
        top = rows * rc + torch.clamp(hi, max=rc) - n_in - 1  # + n_at: an entering block
        if rc < r:
            m = torch.nonzero(dst - (rows * r)[er] < rc).squeeze(1)
            er, is_new, n_at = er[m], is_new[m], n_at[m]
            dst = dst[m] - (rows * (r - rc))[er]
            src = dst - n_at
        src = torch.where(is_new, top[er] + n_at, src)
        flat = self._slot.view(-1)
        flat.index_copy_(0, dst, flat.index_select(0, src))
        row_c = rows[row_i[co]]
        phys = flat.index_select(0, row_c * rc + slot[co]).long()
        parts, trunc = self._partner_sets(a_BTF, q, f, sel[co])
        res.partners[row_c, phys] = parts
        res.truncated[row_c, phys] = trunc

    def _partner_sets(self, a_BTF: torch.Tensor, q: torch.Tensor, f: torch.Tensor,
                      i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Co-active features (ascending, -1 padded) of firings ``i``, and truncation -> [n, P].

        The firings are row-major, so a position's (``q``) firings are one ascending run of
        ``f``: a firing's set is its run without itself, unless the position fired more than
        P + 1 features; those firings keep the P largest others (``topk`` per position).
        """
        p, nf, dev = self.options.max_partners, self.n_features, self.device
        l0 = torch.bincount(q, minlength=a_BTF.shape[0] * a_BTF.shape[1])
        start = torch.cumsum(l0, 0) - l0
        qi = q[i]
        first, n_co = start[qi], l0[qi] - 1
        out = torch.full((i.numel(), p), -1, dtype=torch.int32, device=dev)
        width = min(p, int(n_co.max()))
        if width > 0:
            j = torch.arange(width, device=dev)
            src = first[:, None] + j + (j >= (i - first)[:, None])  # skip the firing itself
            src.clamp_max_(f.numel() - 1)
            out[:, :width] = torch.where(j < n_co[:, None], f[src], -1)
        trunc = n_co > p
        if bool(trunc.any()):
            t_sz = a_BTF.shape[1]
            tr = trunc.nonzero().squeeze(1)
            qs, inv = torch.unique(qi[tr], return_inverse=True)
            top = torch.topk(a_BTF[qs // t_sz, qs % t_sz], min(p + 1, nf), dim=-1)
            idx, v = top.indices[inv], top.values[inv]
            ok = (v > 0) & (idx != f[i[tr]][:, None])
            rank = torch.cumsum(ok, 1) - 1
            ok &= rank < p
            kept = torch.full((tr.numel(), p + 1), nf, dtype=torch.int64, device=dev)
            rr, cc = ok.nonzero(as_tuple=True)
            kept[rr, rank[rr, cc]] = idx[rr, cc]
            kept = torch.sort(kept[:, :p], dim=1).values
            out[tr] = torch.where(kept == nf, -1, kept).to(torch.int32)
        return out, trunc

    def _update_examples(self, ids_BT: torch.Tensor, b: torch.Tensor, pos: torch.Tensor,
                         f: torch.Tensor, val: torch.Tensor, uid: torch.Tensor) -> None:
        """Merge the batch's firings into the top-K examples (== ``Examples.merged``).

        Only firings ordered before the row's K-th held example (value desc, uid asc; an empty
        slot is (-inf, INT64_MAX)) can enter; the rest are dropped before any sorting.
        """
        k, w, dev = self.options.n_examples, self.options.example_window, self.device
        ex = self.examples
        v_k, u_k = ex.value[f, k - 1], ex.uid[f, k - 1]
        o = torch.nonzero((val > v_k) | ((val == v_k) & (uid < u_k))).squeeze(1)
        if o.numel() == 0:
            return
        o = o[torch.sort(uid[o], stable=True).indices]
        o = o[torch.sort(val[o], descending=True, stable=True).indices]
        o = o[torch.sort(f[o], stable=True).indices]
        rows, counts = torch.unique_consecutive(f[o], return_counts=True)
        n_rows = rows.numel()
        row_i = torch.repeat_interleave(torch.arange(n_rows, device=dev), counts)
        rank = torch.arange(o.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[row_i]
        keep = rank < k
        o, row_i, rank = o[keep], row_i[keep], rank[keep]
        width = min(int(counts.max()), k)
        cand = Examples(
            value=torch.full((n_rows, width), float("-inf"), dtype=torch.float32, device=dev),
            uid=torch.full((n_rows, width), INT64_MAX, dtype=torch.int64, device=dev),
            window=torch.full((n_rows, width, w), -1, dtype=torch.int32, device=dev))
        cand.value[row_i, rank] = val[o]
        cand.uid[row_i, rank] = uid[o]
        pad = torch.full((ids_BT.shape[0], w - 1), -1, dtype=torch.int64, device=dev)
        windows_BTW = torch.cat([pad, ids_BT], 1).unfold(1, w, 1)  # [B, T+1, W], ends at t
        cand.window[row_i, rank] = windows_BTW[b[o], pos[o]].to(torch.int32)
        ex.set_rows(rows, ex.rows(rows).merged(cand))

    # --- the reservoir's partner sets -------------------------------------------------------------
    @property
    def reservoir(self) -> Reservoir:
        """The reservoir, slots in key order (partner sets included)."""
        self._canonicalize()
        return self._reservoir

    @reservoir.setter
    def reservoir(self, res: Reservoir) -> None:
        self._reservoir = Reservoir(*(getattr(res, f.name).contiguous() for f in fields(res)))
        self._slot = None  # [F, R_co] physical partner block of each slot; None = identity

    def _canonicalize(self) -> None:
        """Move partner sets into slot order (in place, a bounded number of rows at a time)."""
        slot = self._slot
        if slot is None:
            return
        res = self._reservoir
        rc, p = slot.shape[1], res.partners.shape[2]
        ident = torch.arange(rc, dtype=slot.dtype, device=slot.device)
        moved = torch.nonzero((slot != ident).any(1)).squeeze(1)
        step = max(1, (1 << 24) // (rc * p))  # ~64 MB of partner blocks per step
        for i0 in range(0, moved.numel(), step):
            idx = moved[i0:i0 + step]
            s = slot[idx].long()
            res.partners[idx] = torch.gather(res.partners[idx], 1, s[..., None].expand(-1, -1, p))
            res.truncated[idx] = torch.gather(res.truncated[idx], 1, s)
            slot[idx] = ident
        self._slot = None

    # --- merging --------------------------------------------------------------------------------
    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        """A new accumulator holding both states (context ids must not overlap)."""
        if (other.options, other.n_features, other.d_model) != (
                self.options, self.n_features, self.d_model):
            raise ValueError("only accumulators with equal options and shapes merge")
        out = StatsAccumulator(self.n_features, self.d_model, self.options, self.device)
        out.n_positions = self.n_positions + other.n_positions
        lens = dict(self.n_contexts_by_len)
        for k, v in other.n_contexts_by_len.items():
            lens[k] = lens.get(k, 0) + v
        out.n_contexts_by_len = dict(sorted(lens.items()))
        o = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
             for k, v in other.state_dict().items()}
        for name in ("n_fire", "n_ctx_fire"):
            setattr(out, name, getattr(self, name) + o[name])
        for name in out.sums:  # both sides folded (x + 0 = x): the sums of ``fold``
            out.sums[name] = self._sum(name) + (o[name] + o[f"shard.{name}"])
        out.n_resid = self.n_resid + other.n_resid
        out.final_scales = torch.sort(torch.cat([self.final_scales, o["final_scales"]])).values
        out._resid_norms = torch.sort(torch.cat([self.resid_norms, o["resid_norms"]])).values
        out.reservoir = self.reservoir.merged(Reservoir(*(o[f"reservoir.{f.name}"]
                                                          for f in fields(Reservoir))))
        out.examples = self.examples.merged(Examples(*(o[f"examples.{f.name}"]
                                                       for f in fields(Examples))))
        return out

    # --- saving ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the state (``torch.save``-able; shards travel so)."""
        d: dict[str, Any] = {
            "options": self.options.__dict__.copy(), "n_features": self.n_features,
            "d_model": self.d_model, "n_positions": self.n_positions,
            "n_contexts_by_len": dict(self.n_contexts_by_len), "n_resid": self.n_resid,
        }
        for name in ("n_fire", "n_ctx_fire", "final_scales", "resid_norms"):
            d[name] = getattr(self, name)
        for name, v in self.sums.items():  # the split is kept: a resumed shard folds the same
            d[name] = v
            d[f"shard.{name}"] = self.shard_sums[name]
        for part in ("reservoir", "examples"):
            obj = getattr(self, part)
            for f in fields(obj):
                d[f"{part}.{f.name}"] = getattr(obj, f.name)
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any],
                        device: torch.device | str = "cpu") -> StatsAccumulator:
        acc = cls(d["n_features"], d["d_model"], StatsOptions(**d["options"]), device)
        acc.n_positions, acc.n_resid = int(d["n_positions"]), int(d["n_resid"])
        acc.n_contexts_by_len = {int(k): int(v) for k, v in d["n_contexts_by_len"].items()}
        for name in ("n_fire", "n_ctx_fire", "final_scales"):
            setattr(acc, name, d[name].to(acc.device))
        for name in acc.sums:  # states saved before shards existed hold only the totals
            acc.sums[name] = d[name].to(acc.device, torch.float64)
            if f"shard.{name}" in d:
                acc.shard_sums[name] = d[f"shard.{name}"].to(acc.device, torch.float64)
        if "resid_norms" in d:  # states saved before the dose unit was measured lack it
            acc._resid_norms = d["resid_norms"].to(acc.device, torch.float32)
        acc.reservoir = Reservoir(*(d[f"reservoir.{f.name}"].to(acc.device)
                                    for f in fields(Reservoir)))
        acc.examples = Examples(*(d[f"examples.{f.name}"].to(acc.device)
                                  for f in fields(Examples)))
        return acc

    # --- derived quantities ---------------------------------------------------------------------
    @property
    def n_contexts(self) -> int:
        return sum(self.n_contexts_by_len.values())

    @property
    def n_reservoir(self) -> torch.Tensor:
        """Filled reservoir slots per feature, ``min(R, n_f)`` -> int64 [F]."""
        return torch.clamp(self.n_fire, max=self.options.reservoir_size)

    def sigma_fin(self) -> float:
        """Median final-norm scale over the positions that ran to the end (NaN if none).

        The lower median for an even count (an actual observed scale, and exactly mergeable).
        """
        n = self.final_scales.numel()
        return float("nan") if n == 0 else float(self.final_scales[(n - 1) // 2])

    def residual_norm(self) -> float:
        """r: the median L2 norm of the raw residual at the hook, positions >= 1 (NaN if none).

        The lower median of every recorded norm (exact, and exactly mergeable), as for
        ``sigma_fin``.
        """
        norms = self.resid_norms
        n = norms.numel()
        return float("nan") if n == 0 else float(norms[(n - 1) // 2])

    def resid_mean(self) -> torch.Tensor:
        return self.sum_resid / max(self.n_resid, 1)

    def resid_cov(self) -> torch.Tensor:
        """Population covariance of the SAE's input residual -> float64 [D, D]."""
        n = max(self.n_resid, 1)
        mu = self.sum_resid / n
        return self.sum_resid_sq / n - torch.outer(mu, mu)
