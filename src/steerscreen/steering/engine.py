"""The steering engine: cached clean runs, steered runs started at the hook, streamed reduction.

docs/method.md §2 steers ``x' = x + alpha * v`` at the hook h at every position >= 1 and compares
the steered run with the clean one. A loop of hooked forward passes would recompute, per feature,
the clean run and every layer below h. Here:

1. :meth:`SteeringEngine.clean` runs each context once, up to the logits, and caches what every
   steered row needs: the raw residual at h (all positions), the clean log-probs and ``sqrt(p)``
   at positions >= 1, and the clean residual and downstream-SAE activations at h'.
2. :meth:`SteeringEngine.run` batches (direction, context) rows, adds ``alpha * v`` to the
   cached residual in float32, and runs only layers above h (``start_at``) to the logits, reading
   h' on the way. Each row is reduced at once to :class:`~steerscreen.steering.outcomes.RowSums`,
   and a direction's outcomes are yielded as soon as its C rows are in; memory is bounded by the
   batch, never by directions x contexts x vocabulary.

Rows are direction-major, so the rows of a batch form a few runs of consecutive contexts, and
each run reads the cache through views (no gathers over the vocabulary).

Strength 0 reproduces the clean run exactly (``tests/steering``). A matrix kernel may round a row
differently depending on the batch's shape and the row's slot in it, so the engine never lets
that vary: every forward, clean or steered, has exactly ``b`` rows (the last batch is padded),
``b`` is a divisor or a multiple of C, and context c always sits in slot ``c mod b`` (clean
batches of ``b > C`` rows tile the contexts). Same shape, same slot, same bits in -> same bits
out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from steerscreen.memory import available_bytes
from steerscreen.models.hooks import HookedModel, HookPoint, check_finite
from steerscreen.saes.io import LoadedSAE, encode
from steerscreen.steering.outcomes import (
    N_OUT,
    N_TARGET_TOKENS,
    N_TARGETS,
    DirectionOutcome,
    RowSums,
    active,
    clean_terms,
    downstream_sums,
    kl_sums,
    log_probs,
    logit_sums,
    passthrough_response,
    reduce_directions,
    target_set,
)
from steerscreen.steering.passthrough import split_encoder


@dataclass
class CleanCache:
    """One context set's clean run (positions >= 1 unless said otherwise)."""

    token_ids_CT: torch.Tensor  # int64 [C, T], BOS first
    resid_CTD: torch.Tensor  # raw residual at h, ALL positions, model dtype
    logp_CTV: torch.Tensor  # clean log-probs, float32
    terms: dict[str, torch.Tensor]  # per-context constants of logit_sums (clean_terms)
    down_resid_CTD: torch.Tensor | None  # clean residual at h', float32
    down_act_CTG: torch.Tensor | None  # downstream-SAE activations at h', float32
    batch_rows: int  # rows per forward; steered rows on this cache use the same (exactness)
    down_pre_CTG: torch.Tensor | None = None  # S' pre-activations there (affine encoders)
    down_on_CTG: torch.Tensor | None = None  # 1.0 where the clean S' activation is on

    @property
    def n_contexts(self) -> int:
        return int(self.token_ids_CT.shape[0])

    @property
    def positions(self) -> int:
        """Scored positions per context (T - 1)."""
        return int(self.token_ids_CT.shape[1]) - 1

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (
            self.token_ids_CT, self.resid_CTD, self.logp_CTV, *self.terms.values(),
            self.down_resid_CTD, self.down_act_CTG, self.down_pre_CTG, self.down_on_CTG)
            if t is not None)

    def terms_at(self, c0: int, c1: int) -> dict[str, torch.Tensor]:
        return {k: v[c0:c1] for k, v in self.terms.items()}


def row_bytes(context_len: int, vocab: int, d_model: int, d_sae_down: int,
              d_ff: int | None = None) -> int:
    """Peak working memory of one steered row (float32): the logits and ~4 vocabulary-sized
    temporaries, ~5 downstream-SAE-sized ones, and the model's own activations (``d_ff``
    unknown: 4 d_model)."""
    ffn = d_ff or 4 * d_model
    return 4 * context_len * (6 * vocab + 6 * d_sae_down + 16 * d_model + 4 * ffn)


def cache_bytes(n_contexts: int, context_len: int, vocab: int, d_model: int,
                d_sae_down: int) -> int:
    """Memory of one context set's :class:`CleanCache` (float32): log-probs and sqrt(p), the
    residuals at h and h', and the downstream activations."""
    return 4 * n_contexts * context_len * (2 * vocab + 2 * d_model + d_sae_down)


def auto_batch_rows(model: HookedModel, context_len: int, d_sae_down: int,
                    reserved: int = 0) -> int:
    """Rows per steered batch from free memory: a quarter of it on CPU (capped at 32: larger
    batches do not run faster there), half on CUDA (capped at 512)."""
    dev = model.device
    share, cap = (0.5, 512) if dev.type == "cuda" else (0.25, 32)
    free = available_bytes(str(dev))
    if free is None:  # unknown: fall back to the free physical pages
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    budget = max(0, free - reserved) * share
    ffn = getattr(model.model.config, "intermediate_size", None)
    row = row_bytes(context_len, model.vocab_size, model.d_model, d_sae_down, ffn)
    return int(max(1, min(cap, budget // row)))


class SteeringEngine:
    """Steer directions at ``hook`` and measure docs/method.md §3 outcomes (``down``: the S' at
    ``down_hook``; without it the downstream columns are NaN)."""

    def __init__(self, model: HookedModel, hook: str | HookPoint, down: LoadedSAE | None = None,
                 down_hook: str | HookPoint | None = None, *, batch_rows: int | None = None,
                 n_targets: int = N_TARGETS, n_out: int = N_OUT,
                 n_target_tokens: int = N_TARGET_TOKENS) -> None:
        self.model = model
        self.hook = model.hook_point(hook)
        if self.hook.kind not in ("resid_pre", "resid_post"):
            raise ValueError(f"steering needs a residual hook, got {self.hook.name}")
        self.down = down
        self.down_hook = model.hook_point(down_hook) if down_hook is not None else None
        if (down is None) != (self.down_hook is None):
            raise ValueError("give both the downstream SAE and its hook, or neither")
        if self.down_hook is not None and self.down_hook.depth <= self.hook.depth:
            raise ValueError(f"the downstream hook {self.down_hook.name} must lie after the "
                             f"steering hook {self.hook.name}")
        self._batch_rows = batch_rows
        self.n_targets, self.n_out, self.n_target_tokens = n_targets, n_out, n_target_tokens
        self.unembed = model.unembed()
        self.dec_norm_G = (down.sae.W_dec.detach().float().norm(dim=1)
                           if down is not None else None)
        self.split = split_encoder(down) if down is not None else None

    # --- sizes --------------------------------------------------------------------------------
    def batch_rows(self, n_contexts: int, context_len: int, reserved: int = 0) -> int:
        """Rows per forward: the requested or memory-derived size, rounded down to a multiple
        or a divisor of ``n_contexts`` (see the module docstring)."""
        b = self._batch_rows
        if b is None:
            g = self.down.d_sae if self.down is not None else 0
            b = auto_batch_rows(self.model, context_len, g, reserved)
        return aligned_rows(b, n_contexts)

    def _reads(self) -> list[HookPoint]:
        return [self.down_hook] if self.down_hook is not None else []

    # --- the clean run ------------------------------------------------------------------------
    @torch.no_grad()
    def clean(self, token_ids_CT: np.ndarray | torch.Tensor,
              batch_rows: int | None = None) -> CleanCache:
        """Run each context once and cache what the steered rows need.

        ``batch_rows`` overrides the engine's rows per forward for this cache (a resumed run
        reuses the recorded size, so its rows round exactly as the finished ones did)."""
        ids = torch.as_tensor(np.asarray(token_ids_CT), dtype=torch.long)
        c, t = ids.shape
        g = self.down.d_sae if self.down is not None else 0
        reserved = cache_bytes(c, t, self.model.vocab_size, self.model.d_model, g)
        b = (aligned_rows(batch_rows, c) if batch_rows is not None
             else self.batch_rows(c, t, reserved=reserved))
        dev = self.model.device
        resid, logp, dres, dact = [], [], [], []
        for i in range(0, c, b):
            n = min(b, c - i)
            # The layers below h run once per context; the clean logits take the same start_at
            # path as the steered rows, at their shape: b rows, tiling the contexts if b > C.
            h = self.model.forward(ids[i:i + n].to(dev), read=[self.hook],
                                   logits=False).acts[self.hook.name]
            batch = f" (clean pass, contexts {i}..{i + n - 1})"
            check_finite(h, self.hook.name, batch)
            tile = torch.arange(b) % n
            out = self.model.forward(ids[i + tile].to(dev), read=self._reads(),
                                     start_at=(self.hook, h[tile.to(dev)]), logits_from=1)
            resid.append(h[:n])
            z = out.logits[:n].float()  # type: ignore[index]
            check_finite(z, "the logits", batch)
            logp.append(log_probs(z, torch.empty(z.shape, device=z.device)))
            if self.down is not None:
                xr = out.acts[self.down_hook.name][:n, 1:].float()  # type: ignore[union-attr]
                check_finite(xr, self.down_hook.name, batch)  # type: ignore[union-attr]
                dres.append(xr)
                dact.append(encode(self.down, xr))
        cat = torch.cat
        lp_all = cat(logp)
        x_down = cat(dres) if dres else None
        pre = self.split.pre(x_down) if self.split is not None and x_down is not None else None
        a_down = cat(dact) if dact else None
        return CleanCache(ids.to(dev), cat(resid), lp_all, clean_terms(lp_all), x_down, a_down,
                          b, pre, active(a_down) if a_down is not None else None)

    # --- steered rows -------------------------------------------------------------------------
    def target_tokens(self, dirs_KD: torch.Tensor) -> torch.Tensor:
        """The top-``n_target_tokens`` direct-logit tokens of each direction -> [K, n]."""
        dl = self.unembed.direct_logits(dirs_KD.float().to(self.unembed.W_U.device))
        return torch.topk(dl, min(self.n_target_tokens, dl.shape[1]), dim=1).indices

    def _steered(self, cache: CleanCache, ctx: torch.Tensor, shift_RD: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Steered logits at t >= 1 [R, T-1, V] and residual at h' (t >= 1) of rows."""
        x = cache.resid_CTD[ctx].float()
        x[:, 1:] += shift_RD.unsqueeze(1)  # x' = x + alpha v at every position >= 1, float32
        # Position 0 is never steered and never scored: no logits for it.
        out = self.model.forward(cache.token_ids_CT[ctx], read=self._reads(),
                                 start_at=(self.hook, x.to(self.model.dtype)), logits_from=1)
        logits = out.logits
        down = out.acts[self.down_hook.name][:, 1:] if self.down_hook is not None else None
        return logits, down

    @torch.no_grad()
    def run(self, cache: CleanCache, dirs_KD: torch.Tensor, alpha: float | Sequence[float],
            progress: Callable[[int], None] | None = None
            ) -> Iterator[tuple[int, DirectionOutcome]]:
        """Steer every direction (unit rows of ``dirs_KD``) by ``alpha`` on every context of
        ``cache``; yields ``(k, outcome)`` as each direction completes, in order of k.

        ``alpha``: one dose for every direction, or one per direction (``--dose equal-kl``):
        direction k's outcome is then what steering it alone at ``alpha[k]`` gives (the shift,
        the passthrough target set and the target tokens all use its own alpha)."""
        dev = self.model.device
        dirs = dirs_KD.to(dev, torch.float32)
        k_all, c = dirs.shape[0], cache.n_contexts
        per_dir = not isinstance(alpha, int | float)
        alphas = [float(a) for a in alpha] if per_dir else []  # type: ignore[union-attr]
        if per_dir and len(alphas) != k_all:
            raise ValueError(f"{len(alphas)} alphas for {k_all} directions")
        alpha_K = torch.tensor(alphas, dtype=torch.float32, device=dev) if per_dir else None
        tokens_K = self.target_tokens(dirs).to(dev)
        b = cache.batch_rows
        targets: dict[int, torch.Tensor] = {}
        pending: dict[int, list[RowSums]] = {}
        work = _work_buffers(b, cache)
        g = cache.down_act_CTG.shape[-1] if cache.down_act_CTG is not None else 0
        for batch, kk, ctx in _batches(k_all, c, b, dev):
            ks = sorted({k for k, _ in batch if k not in targets})
            if self.down is not None and ks:
                if alpha_K is None:
                    targets |= self._targets(cache, dirs, ks, alpha)  # type: ignore[arg-type]
                else:  # each direction's own alpha (a python float, as for one dose)
                    for k in ks:
                        targets |= self._targets(cache, dirs, [k], alphas[k])
            shift = (alpha * dirs[kk] if alpha_K is None  # type: ignore[operator]
                     else alpha_K[kk].unsqueeze(1) * dirs[kk])
            logits, down = self._steered(cache, ctx, shift)
            for j0, j1 in _runs(batch):
                k, c0 = batch[j0]
                c1 = c0 + (j1 - j0)
                ls = logit_sums(logits[j0:j1], cache.logp_CTV[c0:c1], cache.terms_at(c0, c1),
                                tokens_K[k].expand(j1 - j0, -1), work)
                ds = self._down_sums(cache, down, j0, j1, c0, c1, targets.get(k))
                pending.setdefault(k, []).append(RowSums.of(ls, ds, g))
            del logits, down
            if progress is not None:
                progress(len(batch))
            done = [k for k in sorted(pending) if sum(p.n for p in pending[k]) == c]
            if done:  # reduced together: one device-to-host copy per batch, not per direction
                outs = reduce_directions(
                    [pending.pop(k) for k in done],
                    [targets.pop(k, np.zeros(0, np.int64)) for k in done], cache.positions,
                    n_out=self.n_out, n_target_tokens=tokens_K.shape[1])
                yield from zip(done, outs, strict=True)

    def _targets(self, cache: CleanCache, dirs: torch.Tensor, ks: list[int], alpha: float
                 ) -> dict[int, torch.Tensor]:
        assert cache.down_resid_CTD is not None and cache.down_act_CTG is not None
        d, g = cache.down_resid_CTD.shape[-1], cache.down_act_CTG.shape[-1]
        pre = cache.down_pre_CTG.reshape(-1, g) if cache.down_pre_CTG is not None else None
        P = passthrough_response(lambda x: encode(self.down, x),  # type: ignore[arg-type]
                                 cache.down_resid_CTD.reshape(-1, d),
                                 cache.down_act_CTG.reshape(-1, g), dirs[ks], alpha,
                                 self.dec_norm_G.to(dirs.device),  # type: ignore[union-attr]
                                 split=self.split, pre_NG=pre)
        sets = target_set(P, self.n_targets)
        return {k: sets[i] for i, k in enumerate(ks)}

    def _down_sums(self, cache: CleanCache, down: torch.Tensor | None, j0: int, j1: int,
                   c0: int, c1: int, tgt: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
        if down is None or tgt is None:
            return None
        assert cache.down_act_CTG is not None and self.dec_norm_G is not None
        g = cache.down_act_CTG.shape[-1]
        mask = torch.zeros(j1 - j0, g, dtype=torch.bool, device=down.device)
        mask[:, tgt] = True
        a = encode(self.down, down[j0:j1].float())  # type: ignore[arg-type]
        on = cache.down_on_CTG[c0:c1] if cache.down_on_CTG is not None else None
        return downstream_sums(a, cache.down_act_CTG[c0:c1], self.dec_norm_G.to(a.device), mask,
                               on)

    @torch.no_grad()
    def mean_kl(self, cache: CleanCache, dirs_KD: torch.Tensor, alpha: float) -> float:
        """Mean over directions, contexts and positions of KL(p || p') (dose calibration)."""
        dev = self.model.device
        dirs = dirs_KD.to(dev, torch.float32)
        c = cache.n_contexts
        b = cache.batch_rows
        total = torch.zeros((), dtype=torch.float64, device=dev)
        work = _work_buffers(b, cache)
        for batch, kk, ctx in _batches(dirs.shape[0], c, b, dev):
            logits, _ = self._steered(cache, ctx, alpha * dirs[kk])
            for j0, j1 in _runs(batch):
                c0, c1 = batch[j0][1], batch[j0][1] + j1 - j0
                total += kl_sums(logits[j0:j1], cache.logp_CTV[c0:c1], cache.terms_at(c0, c1),
                                 work).sum()
        return float(total) / (dirs.shape[0] * c * cache.positions)


def _work_buffers(b: int, cache: CleanCache) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The vocabulary sums' reused buffers (None on CPU, where they work in small blocks)."""
    dev = cache.logp_CTV.device
    if dev.type == "cpu":
        return None
    shape = (b, cache.positions, cache.logp_CTV.shape[-1])
    return torch.empty(shape, device=dev), torch.empty(shape, device=dev)


def aligned_rows(b: int, n_contexts: int) -> int:
    """``b`` rounded down to a multiple of ``n_contexts`` (when ``b >= n_contexts``) or to a
    divisor of it, so every context keeps one batch slot."""
    b, c = max(1, int(b)), max(1, int(n_contexts))
    if b >= c:
        return b // c * c
    return max(d for d in range(1, b + 1) if c % d == 0)


def _batches(n_dirs: int, c: int, b: int, dev: torch.device
             ) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]]:
    """Direction-major (k, context) rows in batches of exactly ``b`` (the last one padded by
    repeating its last row): yields the real rows and the padded index tensors (views of two
    tensors copied to ``dev`` once: a copy per batch would wait for the GPU's queue)."""
    rows = [(k, ci) for k in range(n_dirs) for ci in range(c)]
    n_batches = -(-len(rows) // b)
    padded = rows + [rows[-1]] * (n_batches * b - len(rows)) if rows else []
    # [2, n_batches * b]: directions, contexts
    idx = torch.tensor(padded, dtype=torch.long).reshape(-1, 2).T.contiguous().to(dev)
    for i in range(n_batches):
        yield rows[i * b:(i + 1) * b], idx[0, i * b:(i + 1) * b], idx[1, i * b:(i + 1) * b]


def _runs(batch: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Split batch rows into [j0, j1) runs of one direction over consecutive contexts."""
    out, j0 = [], 0
    for j in range(1, len(batch) + 1):
        if j == len(batch) or batch[j][0] != batch[j0][0] or batch[j][1] != batch[j - 1][1] + 1:
            out.append((j0, j))
            j0 = j
    return out
