"""Linear response (docs/method.md §1, ``lin_*``): the alpha -> 0 limits of the steering outcomes.

Steering adds ``alpha v`` at the hook h at every position ``t >= 1``. At first order the logits
move by ``alpha u_ct`` with ``u_ct = J_ct v``, where ``J_ct`` is the clean model's Jacobian of the
logits at (c, t) with respect to that shared shift. So every outcome of METHOD §3 has an
``alpha -> 0`` limit that is a quadratic or linear form in ``v``:

- ``A_ct v = sqrt(p) * (u_ct - E_p u_ct)`` is the first-order Fisher effect vector ``g_ct /
  alpha``; ``d_c = mean_t A_ct v``, so ``effect_stability -> (v^T M_sum v - v^T M_ctx v) / ((C -
  1) v^T M_ctx v)`` with ``M_sum = (sum_c A_c)^T (sum_c A_c)`` and ``M_ctx = sum_c A_c^T A_c``;
- ``effect_kl / alpha^2 -> 1/2 mean_ct ||A_ct v||^2 = 1/2 v^T M_pos v``;
- ``collateral_out -> `` the tail share of ``mean_c d_c = Abar v``;
- ``target_gain / alpha -> `` the mean over the top-10 DL tokens of ``B v``, ``B = mean_ct (I -
  1 p^T) J_ct``.

:func:`linearise` computes the three d x d forms and the two d x V maps once per (model, hook,
contexts), from clean forwards and their forward-mode derivatives only: ``torch.func.jvp`` on the
layers above h, vmapped over the d basis directions ``e_i`` (the primal runs once per context,
the d tangents in batches), gives the tangent of the final-normed hidden state ``G_ct`` [d, D];
the unembedding, the softcap and the softmax are then applied analytically, a few positions at a
time. The cost is that of pushing d directions through the upper layers plus two ``d x D x V``
products per position, whatever the number of features F; :func:`linear_columns` then gives
every feature's columns by matrix products (``F x d x d`` and ``F x d x V``). Nothing is
approximated: the tests compare each column with a per-feature ``jvp`` and with steering at a
tiny dose.

Attention runs in its eager form during the pass (PyTorch has no forward-mode derivative of the
fused CPU attention kernel); the model's setting is restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import jvp, vmap

from steerscreen.models.hooks import HookedModel, HookPoint, check_finite

N_OUT = 20
"""collateral_out's head: the 20 largest-magnitude entries (docs/method.md §3)."""
N_TARGET_TOKENS = 10


@dataclass
class LinearForms:
    """Everything the ``lin_*`` columns need, for any direction at h (independent of the SAE).

    While :func:`linearise` runs, the fields hold running sums over the contexts done so far
    (``n_contexts``), so a partial state can be saved and continued; :meth:`finish` turns them
    into the forms below.
    """

    M_sum: torch.Tensor
    """float64 [d, d]: ``(sum_c A_c)^T (sum_c A_c)``."""
    M_ctx: torch.Tensor
    """float64 [d, d]: ``sum_c A_c^T A_c``."""
    M_pos: torch.Tensor
    """float64 [d, d]: ``mean_ct A_ct^T A_ct`` (running: the sum)."""
    A_mean: torch.Tensor
    """float32 [d, V]: row i is ``mean_c d_c`` for ``v = e_i`` (running: ``sum_c A_c``)."""
    B: torch.Tensor
    """float32 [d, V]: row i is ``mean_ct (u_ct - E_p u_ct)`` for ``v = e_i`` (running: the
    sum)."""
    n_contexts: int = 0
    n_positions: int = 0
    finished: bool = False
    meta: dict = field(default_factory=dict)

    @classmethod
    def zeros(cls, d: int, vocab: int, device: torch.device | str = "cpu") -> LinearForms:
        f64 = dict(dtype=torch.float64, device=device)
        return cls(torch.zeros(d, d, **f64), torch.zeros(d, d, **f64), torch.zeros(d, d, **f64),
                   torch.zeros(d, vocab, device=device), torch.zeros(d, vocab, device=device))

    def finish(self) -> LinearForms:
        """The forms from the running sums (idempotent)."""
        if self.finished:
            return self
        if self.n_contexts < 2:
            raise ValueError("the linear response needs at least 2 contexts (lin_stability "
                             f"compares contexts), got {self.n_contexts}")
        s = self.A_mean.double()
        return LinearForms(s @ s.T, self.M_ctx, self.M_pos / self.n_positions,
                           self.A_mean / self.n_contexts, self.B / self.n_positions,
                           self.n_contexts, self.n_positions, True, dict(self.meta))

    def add(self, part: LinearForms) -> None:
        """Add another partial state's running sums (the next contexts) in place."""
        if self.finished or part.finished:
            raise ValueError("only running sums can be added")
        for name in ("M_ctx", "M_pos", "A_mean", "B"):
            getattr(self, name).add_(getattr(part, name).to(getattr(self, name).device))
        self.n_contexts += part.n_contexts
        self.n_positions += part.n_positions

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to save (``safetensors``); :meth:`from_state` reads them back."""
        return {"M_sum": self.M_sum, "M_ctx": self.M_ctx, "M_pos": self.M_pos,
                "A_mean": self.A_mean, "B": self.B,
                "counts": torch.tensor([self.n_contexts, self.n_positions, int(self.finished)])}

    @classmethod
    def from_state(cls, t: dict[str, torch.Tensor]) -> LinearForms:
        n_c, n_p, fin = (int(x) for x in t["counts"])
        return cls(t["M_sum"], t["M_ctx"], t["M_pos"], t["A_mean"], t["B"], n_c, n_p, bool(fin))

    # --- per-direction quantities ---------------------------------------------------------
    def kl_rate(self, dirs_KD: torch.Tensor) -> np.ndarray:
        """``exp(lin_kl)`` of unit directions: the predicted KL per unit ``alpha^2``."""
        v = _unit(dirs_KD, self.M_pos.device)
        return (0.5 * _quad(v, self.M_pos)).cpu().numpy()


def _unit(dirs_KD: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Unit rows in float64 (zero rows stay zero, their columns NaN)."""
    d = dirs_KD.detach().to(device, torch.float64)
    return d / d.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def _quad(v_KD: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``v_k^T M v_k`` for every row (float64)."""
    return ((v_KD @ M) * v_KD).sum(1)


@contextlib.contextmanager
def eager_attention(model: HookedModel) -> Iterator[None]:
    """Run attention in its eager (differentiable in forward mode) form for a while."""
    cfg = model.model.config
    old = getattr(cfg, "_attn_implementation", None)
    try:
        if old not in (None, "eager"):
            cfg._attn_implementation = "eager"
        yield
    finally:
        if old not in (None, "eager"):
            cfg._attn_implementation = old


def _final_fn(model: HookedModel, hook: HookPoint, ids_1T: torch.Tensor,
              reads: list[HookPoint]) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """``x at h -> (final-normed hidden [1, T, D], *reads)`` for one context."""
    from steerscreen.models.hooks import _get

    norm = _get(model.model, model.arch.final_norm)
    last = model.hook_point(f"blocks.{model.n_layers - 1}.hook_resid_post")

    def f(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if hook == last:
            return (norm(x),)
        out = model.forward(ids_1T, read=[last, *reads], logits=False, start_at=(hook, x))
        return (norm(out.acts[last.name]), *(out.acts[r.name] for r in reads))

    return f


def basis_jvp(f: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x_1TD: torch.Tensor,
              tangent_batch: int = 64) -> tuple[torch.Tensor, ...]:
    """Tangents of every output of ``f`` (each [1, T, ...]) at positions ``t >= 1`` for every
    basis direction ``e_i`` added to ``x_1TD`` at every position ``t >= 1`` -> [d, T - 1, ...]
    (float32) per output. The primal runs once per batch of ``tangent_batch`` directions."""
    t, d = x_1TD.shape[1], x_1TD.shape[2]
    mask = torch.ones(1, t, 1, device=x_1TD.device, dtype=x_1TD.dtype)
    mask[:, 0] = 0
    eye = torch.eye(d, device=x_1TD.device, dtype=x_1TD.dtype)
    outs: list[list[torch.Tensor]] = []
    for i0 in range(0, d, tangent_batch):
        tang = (eye[i0:i0 + tangent_batch, None, None, :] * mask).expand(-1, 1, t, d)
        res = vmap(lambda tt: jvp(f, (x_1TD,), (tt,))[1])(tang.contiguous())
        outs.append([r[:, 0, 1:].float() for r in res])
    return tuple(torch.cat(parts) for parts in zip(*outs, strict=True))


def context_tangents(model: HookedModel, hook: HookPoint, ids_1T: torch.Tensor,
                     x_1TD: torch.Tensor, *, tangent_batch: int = 64,
                     reads: tuple[HookPoint, ...] = ()) -> tuple[torch.Tensor, ...]:
    """Tangents of the final-normed hidden state (and of each ``reads`` hook) at positions
    ``t >= 1`` of one context, for every basis direction ``e_i`` added at h at every position
    ``t >= 1`` -> ``G`` [d, T - 1, D] (float32) per output."""
    f = _final_fn(model, hook, ids_1T, list(reads))
    return basis_jvp(f, x_1TD.float().to(model.dtype), tangent_batch)


def downstream_tangents(model: HookedModel, hook: str | HookPoint, down_hook: str | HookPoint,
                        token_ids_CT: np.ndarray | torch.Tensor, *, tangent_batch: int = 64
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean residual at h' and its transport Jacobian, at positions ``t >= 1``:
    (``x'`` [C, T - 1, D], ``K`` [C, T - 1, d, D] with ``K[c, t, i] = d x'_ct / d alpha`` for
    ``e_i`` added at h at every position >= 1). ``v @ K[c, t]`` is ``v`` transported to h'."""
    hp, dp = model.hook_point(hook), model.hook_point(down_hook)
    if dp.depth <= hp.depth:
        raise ValueError(f"{dp.name} must lie after {hp.name}")
    ids = torch.as_tensor(np.asarray(token_ids_CT), dtype=torch.long).to(model.device)
    xs, ks = [], []
    for c in range(ids.shape[0]):
        one = ids[c:c + 1]
        out = model.forward(one, read=[hp, dp], logits=False)
        x, x_down = out.acts[hp.name].to(model.dtype), out.acts[dp.name]

        def f(x_: torch.Tensor, one: torch.Tensor = one) -> tuple[torch.Tensor]:
            return (model.forward(one, read=[dp], logits=False,
                                  start_at=(hp, x_)).acts[dp.name],)

        with eager_attention(model):
            (k,) = basis_jvp(f, x, tangent_batch)
        ks.append(k.transpose(0, 1))  # [T-1, d, D]
        xs.append(x_down[0, 1:].float())
    return torch.stack(xs), torch.stack(ks)


@torch.no_grad()
def _clean_head(model: HookedModel, y_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Clean probabilities [T, V] from the final-normed hidden state, and the softcap's slope
    ``1 - tanh^2(z / cap)`` [T, V] (None without a softcap)."""
    z = model.model.get_output_embeddings()(y_TD.to(model.dtype)).float()
    cap = getattr(model.model.config, "final_logit_softcapping", None)
    slope = None
    if cap:
        th = torch.tanh(z / cap)
        z = cap * th
        slope = 1.0 - th.square()
    check_finite(z, "the logits", " (linear response)")
    return torch.softmax(z, -1), slope


def context_forms(model: HookedModel, hook: HookPoint, ids_1T: torch.Tensor, *,
                  tangent_batch: int = 64, position_batch: int | None = None) -> LinearForms:
    """One context's contribution to the running sums (a partial :class:`LinearForms` with
    ``n_contexts = 1``). Sums are always folded context by context (:meth:`LinearForms.add`),
    so a pass split across processes gives the same bits as one process."""
    dev = model.device
    ids = ids_1T.to(dev)
    x = model.forward(ids, read=[hook], logits=False).acts[hook.name]
    check_finite(x, hook.name, " (linear response)")
    with eager_attention(model):
        (G,) = context_tangents(model, hook, ids, x, tangent_batch=tangent_batch)
        with torch.no_grad():
            (y,) = _final_fn(model, hook, ids, [])(x.to(model.dtype))
    W = model.model.get_output_embeddings().weight.detach().float().T  # [D, V]
    d, n_pos = G.shape[0], G.shape[1]
    p, slope = _clean_head(model, y[0, 1:])
    if position_batch is None:  # two [P, d, V] float32 blocks within ~1 GiB
        position_batch = max(1, int(2**30 // (8 * d * W.shape[1])))
    out = LinearForms.zeros(d, W.shape[1], dev)
    A_c = out.A_mean
    with torch.no_grad():
        for t0 in range(0, n_pos, position_batch):
            sl = slice(t0, min(n_pos, t0 + position_batch))
            E = torch.einsum("itk,kv->tiv", G[:, sl], W)  # u_ct for v = e_i: [P, d, V]
            if slope is not None:
                E.mul_(slope[sl, None, :])
            pt = p[sl]
            m = torch.bmm(E, pt.unsqueeze(2))  # E_p u: [P, d, 1]
            E.sub_(m)
            out.B.add_(E.sum(0))
            E.mul_(pt.sqrt().unsqueeze(1))  # A_ct^T
            out.M_pos.add_(torch.bmm(E, E.transpose(1, 2)).sum(0).double())
            A_c.add_(E.sum(0))
            del E
    A_c.div_(n_pos)
    out.M_ctx.add_((A_c @ A_c.T).double())
    out.n_contexts, out.n_positions = 1, n_pos
    return out


def add_context(forms: LinearForms, model: HookedModel, hook: HookPoint, ids_1T: torch.Tensor,
                *, tangent_batch: int = 64, position_batch: int | None = None) -> None:
    """Fold one context into the running sums of ``forms`` (in place)."""
    forms.add(context_forms(model, hook, ids_1T, tangent_batch=tangent_batch,
                            position_batch=position_batch))


def linearise(model: HookedModel, hook: str | HookPoint, token_ids_CT: np.ndarray | torch.Tensor,
              *, forms: LinearForms | None = None, tangent_batch: int = 64,
              on_context: Callable[[LinearForms], None] | None = None) -> LinearForms:
    """The linear-response forms of ``model`` at ``hook`` on the contexts ``token_ids_CT``.

    ``forms``: a partial state to continue (its ``n_contexts`` first contexts are done);
    ``on_context`` is called after each context (checkpoints, progress)."""
    hp = model.hook_point(hook)
    if hp.kind not in ("resid_pre", "resid_post"):
        raise ValueError(f"the linear response needs a residual hook, got {hp.name}")
    ids = torch.as_tensor(np.asarray(token_ids_CT), dtype=torch.long)
    if forms is None:
        forms = LinearForms.zeros(model.d_model, model.vocab_size, model.device)
    for c in range(forms.n_contexts, ids.shape[0]):
        add_context(forms, model, hp, ids[c:c + 1], tangent_batch=tangent_batch)
        if on_context is not None:
            on_context(forms)
    return forms.finish()


@torch.no_grad()
def linear_columns(forms: LinearForms, dirs_FD: torch.Tensor, top_ids_FK: torch.Tensor | None,
                   *, chunk: int = 1024, n_out: int = N_OUT) -> dict[str, np.ndarray]:
    """``lin_stability``, ``lin_kl``, ``lin_collateral_out``, ``lin_target_gain`` of every
    direction (rows of ``dirs_FD``, normalised here: decoder rows give ``v_f``).

    ``top_ids_FK``: each direction's top-10 direct-logit tokens (``lin_target_gain``'s tokens,
    as the steer stage's target tokens); None leaves ``lin_target_gain`` NaN. ``chunk``:
    directions per ``chunk x d x V`` product (memory: one ``chunk x V`` float32 block)."""
    forms = forms.finish()
    dev = forms.M_pos.device
    v = _unit(dirs_FD, dev)
    c = forms.n_contexts
    q_ctx = _quad(v, forms.M_ctx)
    with np.errstate(all="ignore"):
        stab = ((_quad(v, forms.M_sum) - q_ctx) / ((c - 1) * q_ctx)).cpu().numpy()
        kl = np.log(0.5 * _quad(v, forms.M_pos).cpu().numpy())
    f = v.shape[0]
    out_share = np.full(f, np.nan)
    gain = np.full(f, np.nan)
    v32 = v.float()
    k = min(n_out, forms.A_mean.shape[1])
    for f0 in range(0, f, chunk):
        g = slice(f0, min(f, f0 + chunk))
        m = v32[g] @ forms.A_mean  # mean_c d_c: [n, V]
        m2 = m.square_()
        tot = m2.sum(1, dtype=torch.float64)
        top = torch.topk(m2, k, dim=1).values.sum(1, dtype=torch.float64)
        out_share[g] = torch.where(tot > 0, 1.0 - top / tot, torch.nan).cpu().numpy()
        del m, m2
        if top_ids_FK is not None:
            ids = torch.as_tensor(top_ids_FK[g], device=dev, dtype=torch.long)
            b = forms.B[:, ids.reshape(-1)].T.reshape(*ids.shape, -1)  # [n, K, d]
            gain[g] = torch.einsum("nkd,nd->n", b.double(), v[g]).div(ids.shape[1]).cpu().numpy()
    return {"lin_stability": stab, "lin_kl": kl, "lin_collateral_out": out_share,
            "lin_target_gain": gain}


__all__ = ["LinearForms", "add_context", "basis_jvp", "context_forms", "context_tangents",
           "downstream_tangents", "eager_attention", "linear_columns", "linearise"]
