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
  exact list of raw residual norms at the hook (``r`` = median, the dose unit of METHOD §2).

Position 0 (BOS) is dropped here, so callers pass whole contexts.

**Exact merging.** Counts add; sums add (float64, so a merge equals a whole run up to rounding);
the reservoir of f is the ``R`` firings with the smallest keys ``splitmix64(splitmix64(uid ^
seed') + f)``, ``uid = ctx_id << 20 | t``: the key depends only on the firing, and the mix is a
bijection, so keys never tie within a feature and ``merge(run(A), run(B))`` equals ``run(A + B)``
bit for bit, whatever the batch order or sharding. Examples are ordered by (value desc, uid asc),
a total order, so they merge exactly too. Context ids must be unique across shards.

**Memory** (bytes, F features, D model width, P = ``max_partners``)::

    F * (32 + 24 R + R_co (4 P + 1) + K (12 + 4 W)) + 8 D (D + 1) + 4 N_fin + 4 N_norm

(N_fin = positions with a final-norm scale, N_norm = positions with a residual norm: 4 bytes each,
so the exact medians cost 4 MB per million positions; one copy, a batch update or merge transiently
needs about twice the touched rows). It does not depend on L0 except through the choice of P: the
co-activation columns are exact when P >= L0_max - 1 (a TopK SAE: P = k - 1), and otherwise keep
each firing's P largest co-active features (``coact_truncated_share`` says how often that bit). With
the defaults (R = R_co = 200, P = 64, K = 10, W = 16) that is 57 KB per feature: 7.5 GB for F =
131,072, never an F x F matrix (a dense float32 one would be 69 GB); R_co = 50 brings it to 2.4 GB.
Per batch the dense ``acts_BTF`` (as the SAE returns it), a top-(P+1) per position and the firing
lists (``~B T L0`` entries, a few int64 each) are needed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

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
    """R: firings sampled per feature for the shape and co-activation statistics (METHOD: 200)."""
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
        per_f = 32 + 24 * r + rc * (4 * p + 1) + k * (12 + 4 * w)
        return n_features * per_f + 8 * d_model * (d_model + 1) + 4 * (n_final + n_norms)


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


def _rank_in_group(group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Rank of each element inside its group, for ``group`` sorted ascending."""
    counts = torch.bincount(group, minlength=n_groups)
    start = torch.cumsum(counts, 0) - counts
    return torch.arange(group.numel(), device=group.device) - start[group]


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
        self.sum_act = torch.zeros(f, dtype=torch.float64, device=dev)
        self.sum_act_raw = torch.zeros(f, dtype=torch.float64, device=dev)
        self.reservoir = Reservoir.empty(f, self.options, dev)
        self.examples = Examples.empty(f, self.options, dev)
        self.n_resid = 0
        self.sum_resid = torch.zeros(d_model, dtype=torch.float64, device=dev)
        self.sum_resid_sq = torch.zeros((d_model, d_model), dtype=torch.float64, device=dev)
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
        active = a_BTF > 0
        self.n_positions += b_sz * t_sz
        self.n_contexts_by_len[t_sz] = self.n_contexts_by_len.get(t_sz, 0) + b_sz
        self.n_fire += active.sum((0, 1))
        self.n_ctx_fire += active.any(1).sum(0)
        self.sum_act += a_BTF.sum((0, 1), dtype=torch.float64)
        if input_scale_BT is None:
            self.sum_act_raw += a_BTF.sum((0, 1), dtype=torch.float64)
        else:
            s_BT = input_scale_BT[:, 1:].to(dev, torch.float64)
            self.sum_act_raw += (a_BTF.double() * s_BT[..., None]).sum((0, 1))
        if resid_BTD is not None:
            x_ND = resid_BTD[:, 1:].reshape(-1, resid_BTD.shape[-1]).to(dev, torch.float64)
            self.n_resid += x_ND.shape[0]
            self.sum_resid += x_ND.sum(0)
            self.sum_resid_sq += x_ND.T @ x_ND
        if final_scale_BT is not None:
            self.add_final_scales(final_scale_BT)
        if resid_norm_BT is not None:
            self.add_resid_norms(resid_norm_BT)

        b, t, f = active.nonzero(as_tuple=True)
        if f.numel() == 0:
            return self
        val = a_BTF[b, t, f]
        pos = t + 1
        uid = make_uid(ctx_ids_B[b], pos)
        key = firing_keys(uid, f, opts.seed)
        tok = ids_BT[b, pos].to(torch.int32)
        rows = torch.unique(f)
        row_of = torch.full((nf,), -1, dtype=torch.int64, device=dev)
        row_of[rows] = torch.arange(rows.numel(), device=dev)

        # Reservoir candidates: per feature, the batch's R smallest keys.
        o = torch.sort(key, stable=True).indices
        o = o[torch.sort(f[o], stable=True).indices]
        rank = _rank_in_group(f[o], nf)
        keep = rank < opts.reservoir_size
        o, rank = o[keep], rank[keep]
        cand = Reservoir.empty(rows.numel(), opts, dev)
        r_i = row_of[f[o]]
        cand.key[r_i, rank] = key[o]
        cand.value[r_i, rank] = val[o]
        cand.token[r_i, rank] = tok[o]
        cand.uid[r_i, rank] = uid[o]
        co = rank < opts.coact_slots
        partners, trunc = self._partners(a_BTF, active, b[o[co]], t[o[co]], f[o[co]])
        cand.partners[r_i[co], rank[co]] = partners
        cand.truncated[r_i[co], rank[co]] = trunc
        self.reservoir.set_rows(rows, self.reservoir.rows(rows).merged(cand))

        # Example candidates: per feature, the batch's K largest values (ties: smaller uid).
        o = torch.sort(uid, stable=True).indices
        o = o[torch.sort(val[o], descending=True, stable=True).indices]
        o = o[torch.sort(f[o], stable=True).indices]
        rank = _rank_in_group(f[o], nf)
        keep = rank < opts.n_examples
        o, rank = o[keep], rank[keep]
        ex = Examples.empty(rows.numel(), opts, dev)
        r_i = row_of[f[o]]
        ex.value[r_i, rank] = val[o]
        ex.uid[r_i, rank] = uid[o]
        w = opts.example_window
        pad = torch.full((b_sz, w - 1), -1, dtype=torch.int64, device=dev)
        windows_BTW = torch.cat([pad, ids_BT], 1).unfold(1, w, 1)  # [B, T+1, W], ends at t
        ex.window[r_i, rank] = windows_BTW[b[o], pos[o]].to(torch.int32)
        self.examples.set_rows(rows, self.examples.rows(rows).merged(ex))
        return self

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

    def _partners(self, a_BTF: torch.Tensor, active: torch.Tensor, b: torch.Tensor,
                  t: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Co-active features (ascending, -1 padded) of the firings (b, t, f), and truncation."""
        p = self.options.max_partners
        k = min(p + 1, self.n_features)
        # One top-k per position (B T k entries), gathered per firing: never [firings, F].
        top = torch.topk(a_BTF.reshape(-1, self.n_features), k, dim=-1)
        pos = b * a_BTF.shape[1] + t
        idx, val = top.indices[pos], top.values[pos]
        ok = (val > 0) & (idx != f[:, None])
        rank = torch.cumsum(ok, 1) - 1
        ok &= rank < p
        out = torch.full((f.numel(), p + 1), self.n_features, dtype=torch.int64,
                         device=self.device)
        rr, cc = ok.nonzero(as_tuple=True)
        out[rr, rank[rr, cc]] = idx[rr, cc]
        out = torch.sort(out[:, :p], dim=1).values
        out = torch.where(out == self.n_features, -1, out).to(torch.int32)
        n_co = active.sum(-1)[b, t] - 1  # per-position L0, never a [firings, F] copy
        return out, n_co > p

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
        for name in ("n_fire", "n_ctx_fire", "sum_act", "sum_act_raw", "sum_resid",
                     "sum_resid_sq"):
            setattr(out, name, getattr(self, name) + o[name])
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
        for name in ("n_fire", "n_ctx_fire", "sum_act", "sum_act_raw", "sum_resid",
                     "sum_resid_sq", "final_scales", "resid_norms"):
            d[name] = getattr(self, name)
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
        for name in ("n_fire", "n_ctx_fire", "sum_act", "sum_act_raw", "sum_resid",
                     "sum_resid_sq", "final_scales"):
            setattr(acc, name, d[name].to(acc.device))
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
