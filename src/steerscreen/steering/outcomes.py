"""Steering outcomes (docs/method.md §3): per-row partial sums and the per-direction reduction.

A *row* is one (direction, context) pair of a steered run. Its outcomes need the full next-token
distributions and the downstream SAE's activations at every position, which are large
(``T x V`` and ``T x G``), so each row is reduced on the spot to :class:`RowSums`: vectors of
length V or G and a handful of scalars. A direction's outcomes follow from the ``C`` rows of its
contexts (:func:`reduce_direction`); nothing larger than ``C x V`` is ever held per direction.

Notation (positions ``t = 1..T-1``, BOS excluded; ``T'`` = their count):

- ``p``/``p'``: clean / steered next-token distribution; ``dlogp = log p' - log p``.
- Fisher effect ``g_ct = sqrt(p) * (dlogp - E_p[dlogp])``, ``d_c = mean_t g_ct``; note
  ``E_p[dlogp] = -KL(p || p')``, so ``g_ct = sqrt(p) * (dlogp + KL_ct)``.
- Logit effect: ``dz`` centred over the vocabulary equals ``dlogp`` centred over the vocabulary
  (the log-normaliser is one constant per position), so ``e_c = mean_t (dlogp - mean_v dlogp)``.
- Downstream: ``w_ctg = |a'_g(steered) - a'_g(clean)| * ||W'_dec[g]||``, g outside the target set
  ``T_f`` (the ``n_targets`` largest passthrough responses, see :func:`passthrough_response`).

Shapes use name suffixes: R rows, C contexts, T positions (``t >= 1``), V vocabulary, G
downstream features, D model width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from steerscreen.config.stages import N_OUT, N_TARGET_TOKENS, N_TARGETS
from steerscreen.exact import matmul, total


@dataclass(frozen=True)
class OutcomeColumn:
    """One documented column of ``steering_outcomes.parquet``."""

    name: str
    formula: str
    units: str
    primary: bool = False


OUTCOME_COLUMNS: dict[str, OutcomeColumn] = {c.name: c for c in (
    OutcomeColumn("effect_stability", "(||sum_c d_c||^2 - sum_c ||d_c||^2) / ((C - 1) "
                  "sum_c ||d_c||^2); NaN when sum_c ||d_c||^2 = 0", "share", primary=True),
    OutcomeColumn("collateral_spread", "mean over (c, t) with w_ct != 0 of ln PR_ct, PR_ct = "
                  "(sum_g w_ctg)^2 / sum_g w_ctg^2 over g outside T_f; NaN if no such "
                  "position", "ln count", primary=True),
    OutcomeColumn("collateral_out", "1 - (sum of the 20 largest m_v^2) / ||m||^2, m = mean_c "
                  "d_c", "share", primary=True),
    OutcomeColumn("effect_kl", "mean over (c, t) of KL(p || p')", "nats", primary=True),
    OutcomeColumn("target_gain", "mean over (c, t) and the 10 largest entries of DL of "
                  "dlogp", "nats", primary=True),
    OutcomeColumn("effect_stability_logit", "the effect_stability estimator on e_c = mean_t of "
                  "the vocabulary-centred logit change", "share"),
    OutcomeColumn("collateral_spread_union", "ln PR of wbar_g = sum_(c,t) w_ctg (g outside "
                  "T_f); NaN if all zero", "ln count"),
    OutcomeColumn("collateral_mass", "sum_(c,t,g outside T_f) w_ctg / sum_(c,t,all g) w_ctg",
                  "share"),
    OutcomeColumn("n_recruited", "mean over (c, t) of #{g: a'_g clean = 0, steered > 0}",
                  "count"),
    OutcomeColumn("n_suppressed", "mean over (c, t) of #{g: a'_g clean > 0, steered = 0}",
                  "count"),
    OutcomeColumn("n_spread_positions", "positions (c, t) where w_ct is not all zero", "count"),
    OutcomeColumn("n_positions", "C * (T - 1)", "count"),
)}


@dataclass
class RowSums:
    """The contributions of n consecutive rows (contexts) of one direction, each reduced over
    positions: leading dimension n. Every field stays on the engine's device, so collecting
    rows never waits for it."""

    d_nV: torch.Tensor  # mean_t g_ct: each context's Fisher effect vector
    e_nV: torch.Tensor  # mean_t of the vocabulary-centred dlogp
    kl_n: torch.Tensor  # sum_t KL(p || p')
    target_n: torch.Tensor  # sum over t and target tokens of dlogp
    log_pr_n: torch.Tensor  # sum over positions with w != 0 of ln PR
    n_spread_n: torch.Tensor  # number of such positions
    w_nG: torch.Tensor  # sum_t w_tg (zero on T_f)
    w_out_n: torch.Tensor  # sum_(t, g outside T_f) w
    w_all_n: torch.Tensor  # sum_(t, all g) w
    recruited_n: torch.Tensor
    suppressed_n: torch.Tensor

    @classmethod
    def of(cls, ls: dict[str, torch.Tensor], ds: dict[str, torch.Tensor] | None,
           d_sae_down: int) -> RowSums:
        """From :func:`logit_sums` and :func:`downstream_sums` of the same rows (``ds`` None:
        no downstream SAE, so its sums are NaN)."""
        if ds is None:
            n, dev = ls["kl"].shape[0], ls["kl"].device
            nan = torch.full((n,), math.nan, device=dev)
            return cls(ls["d"], ls["e"], ls["kl"], ls["target"], nan, nan,
                       torch.zeros(n, d_sae_down, device=dev), nan, nan, nan, nan)
        return cls(ls["d"], ls["e"], ls["kl"], ls["target"], ds["log_pr"], ds["n_spread"],
                   ds["w"], ds["w_out"], ds["w_all"], ds["recruited"], ds["suppressed"])

    @property
    def n(self) -> int:
        return int(self.kl_n.shape[0])


@torch.no_grad()
def clean_terms(logp_CTV: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-context constants of :func:`logit_sums`, computed once per clean run: ``sqrtp``."""
    return {"sqrtp": logp_CTV.mul(0.5).exp_()}


Work = tuple[torch.Tensor, torch.Tensor]


def _work(shape: tuple[int, ...], device: torch.device, work: Work | None) -> Work:
    if work is None:
        return torch.empty(shape, device=device), torch.empty(shape, device=device)
    return work[0][: shape[0]], work[1][: shape[0]]


def log_probs(z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """log softmax over the last dim into ``out`` (contiguous, ``z``'s shape). The clean
    log-probs and the steered ones go through this same function, so equal logits give a
    log-prob change of exactly 0 (strength 0 reproduces the clean run).

    One fused ``log_softmax`` per leading index: a row's ``[T, V]`` block of logits is
    contiguous even where ``z`` is the ``t >= 1`` slice of a batch's logits, and the fused kernel
    runs ~3x slower on the strided whole (and ~2x faster than max, subtract, exp, sum and
    subtract as separate passes)."""
    if z.dim() != 3:
        return torch.log_softmax(z, -1, out=out)
    for i in range(z.shape[0]):
        torch.log_softmax(z[i], -1, out=out[i])
    return out


def _sum_over_positions(x_RTV: torch.Tensor, ones_R1T: torch.Tensor) -> torch.Tensor:
    """sum_t x -> [R, V] as a batched product with ones (one read of x; ``x.sum(1)``, a strided
    reduction, takes about twice as long)."""
    return torch.bmm(ones_R1T, x_RTV).squeeze(1)


def _neg_row_dots(u_RTV: torch.Tensor, s_RTV: torch.Tensor) -> torch.Tensor:
    """``-sum_v u * s`` -> [R, T], one row at a time through a ``[T, V]`` scratch that stays in
    cache (~40% faster than the einsum, a batched product of 1 x V by V x 1 matrices)."""
    r, t, v = u_RTV.shape
    out = torch.empty(r, t, device=u_RTV.device)
    scratch = torch.empty(t, v, device=u_RTV.device)
    for i in range(r):
        torch.sum(torch.mul(u_RTV[i], s_RTV[i], out=scratch), -1, out=out[i])
    return out.neg_()


# CPU: the vocabulary sums run over blocks of positions of about this many bytes, so each
# block's ~8 passes hit the cache instead of memory (the passes are memory-bound there).
_BLOCK_BYTES = 1 << 21


def _use_blocks(logits: torch.Tensor, blocked: bool | None) -> bool:
    return logits.device.type == "cpu" if blocked is None else blocked


def _blocked_sums(z_RTV: torch.Tensor, logp_RTV: torch.Tensor, sqrtp_RTV: torch.Tensor,
                  targets_RK: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The CPU path of :func:`logit_sums` (``targets_RK`` None: only ``kl_RT``), one row and
    one block of positions at a time. Each position's log p' comes from the same fused
    ``log_softmax`` kernel as the clean log-probs, so equal logits still give exact zeros."""
    r, t, v = z_RTV.shape
    tc = max(1, min(t, _BLOCK_BYTES // (4 * v)))
    dev = z_RTV.device
    a_buf, b_buf, c_buf = (torch.empty(tc, v, device=dev) for _ in range(3))
    kl = torch.empty(r, t, device=dev)
    full = targets_RK is not None
    d, e = torch.zeros(r, v, device=dev), torch.zeros(r, v, device=dev)
    tgt = torch.zeros(r, device=dev)
    for i in range(r):
        for t0 in range(0, t, tc):
            t1 = min(t, t0 + tc)
            a, b, c = a_buf[: t1 - t0], b_buf[: t1 - t0], c_buf[: t1 - t0]
            sq = sqrtp_RTV[i, t0:t1]
            torch.log_softmax(z_RTV[i, t0:t1], -1, out=a).sub_(logp_RTV[i, t0:t1])  # dlogp
            u = torch.mul(a, sq, out=b)
            neg_kl = torch.sum(torch.mul(u, sq, out=c), -1, out=kl[i, t0:t1])  # E_p[dlogp]
            if full:
                d[i] += u.sum(0)
                d[i].addmv_(sq.t(), neg_kl, alpha=-1.0)  # + sqrt(p) * KL
                e[i] += a.sum(0)
                tgt[i] += a.index_select(1, targets_RK[i]).sum()  # type: ignore[index]
    kl.neg_()
    if not full:
        return {"kl_RT": kl}
    e.div_(t)
    return {"d": d.div_(t), "e": e.sub_(e.mean(-1, keepdim=True)), "kl": kl.sum(1),
            "target": tgt}


@torch.no_grad()
def kl_sums(logits_RTV: torch.Tensor, logp_RTV: torch.Tensor, terms: dict[str, torch.Tensor],
            work: Work | None = None, blocked: bool | None = None) -> torch.Tensor:
    """KL(p || p') = -E_p[dlogp] per row and position -> [R, T] (``blocked``: as in
    :func:`logit_sums`)."""
    if _use_blocks(logits_RTV, blocked):
        return _blocked_sums(logits_RTV.float(), logp_RTV, terms["sqrtp"], None)["kl_RT"]
    a, b = _work(tuple(logits_RTV.shape), logits_RTV.device, work)
    dlogp = log_probs(logits_RTV.float(), a).sub_(logp_RTV)
    u = torch.mul(dlogp, terms["sqrtp"], out=b)
    return _neg_row_dots(u, terms["sqrtp"])


@torch.no_grad()
def logit_sums(logits_RTV: torch.Tensor, logp_RTV: torch.Tensor, terms: dict[str, torch.Tensor],
               targets_RK: torch.Tensor, work: Work | None = None,
               blocked: bool | None = None) -> dict[str, torch.Tensor]:
    """Vocabulary-side sums of R rows: ``d`` [R, V], ``e`` [R, V], ``kl`` [R], ``target`` [R].

    ``logits_RTV``: steered logits at positions ``t >= 1``; ``logp_RTV`` and ``terms``
    (:func:`clean_terms`): the clean side at the rows' contexts.

    ``blocked`` (default: on CPU) runs the passes block by block in cache
    (:func:`_blocked_sums`). Otherwise ``work``
    holds two float32 buffers of at least [R, T, V] that every step writes into in place (a
    fresh vocabulary-sized tensor per step costs page faults; never reallocate them). Passes
    over [R, T, V]: log p' (fused, per row), dlogp, u = sqrt(p) dlogp, KL = -sum_v u sqrt(p),
    and the sums over positions as batched products.
    """
    if _use_blocks(logits_RTV, blocked):
        return _blocked_sums(logits_RTV.float(), logp_RTV, terms["sqrtp"], targets_RK)
    r, t = logits_RTV.shape[:2]
    a, b = _work(tuple(logits_RTV.shape), logits_RTV.device, work)
    sqrtp = terms["sqrtp"]
    dlogp = log_probs(logits_RTV.float(), a).sub_(logp_RTV)  # log p' - log p
    u = torch.mul(dlogp, sqrtp, out=b)
    kl_RT = _neg_row_dots(u, sqrtp)  # -E_p[dlogp] = KL(p || p')
    ones = torch.ones(r, 1, t, device=u.device)
    d = _sum_over_positions(u, ones)
    d.add_(torch.bmm(kl_RT.unsqueeze(1), sqrtp).squeeze(1)).div_(t)  # + sqrt(p) * KL
    e = _sum_over_positions(dlogp, ones).div_(t)
    e.sub_(e.mean(-1, keepdim=True))
    k = targets_RK.shape[1]
    tgt = torch.gather(dlogp, 2, targets_RK.unsqueeze(1).expand(-1, t, k)).sum((1, 2))
    return {"d": d, "e": e, "kl": kl_RT.sum(1), "target": tgt}


def active(a: torch.Tensor) -> torch.Tensor:
    """1.0 where an SAE activation is on (> 0), else 0.0 (activations are >= 0).

    One comparison written straight as float32 (``sign`` + ``clamp`` took ~5x longer)."""
    return torch.gt(a, 0.0, out=torch.empty(a.shape, dtype=torch.float32, device=a.device))


@torch.no_grad()
def downstream_sums(a_steer_RTG: torch.Tensor, a_clean_RTG: torch.Tensor,
                    dec_norm_G: torch.Tensor, target_mask_RG: torch.Tensor,
                    on_clean_RTG: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Downstream-SAE sums of R rows; ``target_mask_RG`` is True on each row's T_f;
    ``on_clean_RTG``: :func:`active` of the clean activations, if cached.

    ``a_steer_RTG`` is consumed (overwritten in place)."""
    # Activity counts as float32 sums and a contraction over g: reducing bool tensors is
    # ~5x slower on CPU.
    on_s = active(a_steer_RTG)
    on_c = active(a_clean_RTG) if on_clean_RTG is None else on_clean_RTG
    both = torch.einsum("rtg,rtg->rt", on_s, on_c).sum(1)
    recruited = on_s.sum((1, 2)) - both
    suppressed = on_c.sum((1, 2)) - both
    del on_s
    diff = a_steer_RTG.sub_(a_clean_RTG).abs_()  # |a'_s - a'_c|
    # sum_(t, all g) w = sum_g (sum_t diff) ||W'_dec[g]||; then w outside T_f in one multiply
    # by the decoder norms zeroed on T_f (no separate masking pass).
    w_all = diff.sum(1) @ dec_norm_G
    keep_RG = torch.where(target_mask_RG, 0.0, dec_norm_G)
    w = diff.mul_(keep_RG.unsqueeze(1))  # w outside T_f
    s1 = w.sum(-1)  # [R, T]
    s2 = torch.einsum("rtg,rtg->rt", w, w)
    nz = s2 > 0
    log_pr = torch.where(nz, torch.log(s1.square() / s2.clamp_min(1e-300)), 0.0)
    return {"w": w.sum(1), "w_out": s1.sum(1), "w_all": w_all, "log_pr": log_pr.sum(1),
            "n_spread": nz.sum(1), "recruited": recruited, "suppressed": suppressed}


@torch.no_grad()
def passthrough_response(down_encode, down_resid_ND: torch.Tensor, a_clean_NG: torch.Tensor,
                         dirs_KD: torch.Tensor, alpha: float, dec_norm_G: torch.Tensor,
                         chunk_rows: int = 8192, split=None, pre_NG: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """P_g per direction -> [K, G]: mean over the N clean positions at h' of
    ``|a'_g(x' + alpha v) - a'_g(x')| * ||W'_dec[g]||`` (``down_encode`` maps [n, D] -> [n, G]).

    With ``split`` (:func:`~steerscreen.steering.passthrough.split_encoder`) and the clean
    pre-activations ``pre_NG``, ``a'(x' + alpha v) = act(pre + alpha lin(v))``: no encoder
    matmul per direction."""
    n = down_resid_ND.shape[0]
    out = torch.zeros(dirs_KD.shape[0], a_clean_NG.shape[1], device=a_clean_NG.device)
    step = max(1, chunk_rows)
    for k in range(dirs_KD.shape[0]):
        v = dirs_KD[k].to(down_resid_ND)
        lin = alpha * split.lin(v[None])[0] if split is not None and pre_NG is not None else None
        for i in range(0, n, step):
            if lin is not None:
                a = split.act(pre_NG[i:i + step] + lin)
            else:
                a = down_encode(down_resid_ND[i:i + step] + alpha * v)
            out[k] += (a - a_clean_NG[i:i + step]).abs_().sum(0)
    return out.div_(n).mul_(dec_norm_G)


def target_set(P_KG: torch.Tensor, n_targets: int = N_TARGETS) -> torch.Tensor:
    """T_f: indices of the ``n_targets`` largest responses per row (ties: lower index) ->
    [K, n]."""
    n = min(n_targets, P_KG.shape[1])
    order = torch.sort(-P_KG, dim=1, stable=True).indices
    return order[:, :n]


def _stability(gram: torch.Tensor) -> torch.Tensor:
    c = gram.shape[0]
    tr = torch.trace(gram)
    nan = torch.full_like(tr, math.nan)
    if c < 2:
        return nan
    return torch.where(tr > 0, (gram.sum() - tr) / ((c - 1) * tr), nan)


def _log_pr(w: torch.Tensor) -> torch.Tensor:
    s2 = total(w.square())
    return torch.where(s2 > 0, torch.log(total(w).square() / s2.clamp_min(1e-300)),
                       torch.full_like(s2, math.nan))


N_EFFECT_TOKENS = 10
"""Tokens kept per end of the mean Fisher effect ``m = mean_c d_c`` (the report's cards)."""


@dataclass
class EffectTokens:
    """The ``N_EFFECT_TOKENS`` largest (promoted, descending) and smallest (suppressed,
    ascending) entries of one direction's mean Fisher effect ``m``: token ids and values."""

    promoted_ids: np.ndarray  # int64 [k]
    promoted: np.ndarray  # float64 [k]
    suppressed_ids: np.ndarray
    suppressed: np.ndarray

    @classmethod
    def empty(cls) -> EffectTokens:
        i, v = np.zeros(0, np.int64), np.zeros(0, np.float64)
        return cls(i, v, i, v)


@dataclass
class DirectionOutcome:
    """The §3 values of one direction on one context set at one strength."""

    values: dict[str, float]  # every OUTCOME_COLUMNS name
    gram: np.ndarray  # [C, C] float64, d_c . d_c'
    targets: np.ndarray  # T_f
    tokens: EffectTokens = field(default_factory=EffectTokens.empty)


@torch.no_grad()
def reduce_direction(parts: list[RowSums], targets: np.ndarray, positions_per_row: int, *,
                     n_out: int = N_OUT, n_target_tokens: int = N_TARGET_TOKENS
                     ) -> DirectionOutcome:
    """The outcomes of one direction from the :class:`RowSums` of its C contexts (in context
    order, in one or more parts); see :func:`reduce_directions`."""
    return reduce_directions([parts], [targets], positions_per_row, n_out=n_out,
                             n_target_tokens=n_target_tokens)[0]


@torch.no_grad()
def reduce_directions(parts: list[list[RowSums]], targets: list[np.ndarray | torch.Tensor],
                      positions_per_row: int, *, n_out: int = N_OUT,
                      n_target_tokens: int = N_TARGET_TOKENS) -> list[DirectionOutcome]:
    """The outcomes of several directions (``parts[i]``: direction i's RowSums, in context
    order; ``targets[i]``: its T_f). Runs on the rows' device in float64 and copies back only
    the scalars, the top effect tokens, the C x C Gram matrices and the targets, once for all
    the directions: on a GPU each copy waits for the queue to drain, so one per direction
    would stall it."""
    vals, grams = [], []
    for p in parts:
        v, g = _direction_values(p, positions_per_row, n_out, n_target_tokens)
        vals.append(v)
        grams.append(g)
    # One copy: the values and the top tokens (ids as float64, exact below 2^53) side by side.
    packed_all = torch.stack(vals).cpu().numpy()
    packed, top = packed_all[:, :len(_VALUE_NAMES)], packed_all[:, len(_VALUE_NAMES):]
    k = top.shape[1] // 4
    gram_np = torch.stack(grams).cpu().numpy() if len({g.shape for g in grams}) == 1 else [
        g.cpu().numpy() for g in grams]
    tgt_np = [t.cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
              for t in targets]
    out = []
    for i, p in enumerate(parts):
        n_pos = sum(x.n for x in p) * positions_per_row
        values = dict(zip(_VALUE_NAMES, packed[i].tolist(), strict=True))
        t = top[i].reshape(4, k)
        tokens = EffectTokens(t[0].astype(np.int64), t[1], t[2].astype(np.int64), t[3])
        out.append(DirectionOutcome(values | {"n_positions": float(n_pos)}, gram_np[i],
                                    tgt_np[i], tokens))
    return out


_VALUE_NAMES = ("effect_stability", "collateral_spread", "collateral_out", "effect_kl",
                "target_gain", "effect_stability_logit", "collateral_spread_union",
                "collateral_mass", "n_recruited", "n_suppressed", "n_spread_positions")


def _direction_values(parts: list[RowSums], positions_per_row: int, n_out: int,
                      n_target_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction's values (in ``_VALUE_NAMES`` order, then the top effect tokens: ids and
    values of the largest entries of m, ids and values of the smallest) and Gram matrix, on
    its device."""

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(p, name) for p in parts]).double()

    d, e = cat("d_nV"), cat("e_nV")  # [C, V]
    n_pos = d.shape[0] * positions_per_row
    gram = matmul(d, d.T)  # thread-count free (steerscreen.exact), as the sums below
    m = d.mean(0)
    m2 = m.square()
    tot = total(m2)
    top = torch.topk(m2, min(n_out, m2.numel())).values.sum()
    w = cat("w_nG").sum(0)
    n_spread, w_all = cat("n_spread_n").sum(), cat("w_all_n").sum()
    nan = torch.full_like(tot, math.nan)
    vals = {
        "effect_stability": _stability(gram),
        "collateral_spread": torch.where(n_spread > 0, cat("log_pr_n").sum() / n_spread, nan),
        "collateral_out": torch.where(tot > 0, 1.0 - top / tot, nan),
        "effect_kl": cat("kl_n").sum() / n_pos,
        "target_gain": cat("target_n").sum() / (n_pos * n_target_tokens),
        "effect_stability_logit": _stability(matmul(e, e.T)),
        "collateral_spread_union": _log_pr(w),
        "collateral_mass": torch.where(w_all > 0, cat("w_out_n").sum() / w_all, nan),
        "n_recruited": cat("recruited_n").sum() / n_pos,
        "n_suppressed": cat("suppressed_n").sum() / n_pos,
        "n_spread_positions": n_spread,
    }
    assert tuple(vals) == _VALUE_NAMES
    k = min(N_EFFECT_TOKENS, m.numel())
    hi, lo = torch.topk(m, k), torch.topk(m, k, largest=False)
    top = torch.cat([hi.indices.double(), hi.values, lo.indices.double(), lo.values])
    return torch.cat([torch.stack(list(vals.values())), top]), gram
