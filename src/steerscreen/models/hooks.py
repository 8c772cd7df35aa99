"""One thin adapter over plain PyTorch forward hooks on Hugging Face causal LMs.

Hook points are named as TransformerLens names them (``blocks.{L}.hook_resid_pre`` ...) and map to
Hugging Face modules per architecture (``shared/reference/sae_formats_and_hooks.md`` §3):

- ``hook_resid_pre``  = input of decoder layer L (layer 0: the embeddings, Gemma's scale included)
- ``hook_resid_post`` = output of decoder layer L (never the final-normed ``hidden_states[N]``)
- ``hook_attn_out``   = attention output (Gemma 2/3: after ``post_attention_layernorm``)
- ``hook_mlp_out``    = MLP output (Gemma 2/3: after ``post_feedforward_layernorm``)

A forward can stop right after the deepest hook it needs, and can start from a cached residual
at a layer: the layers below are swapped for a passthrough for that call, so only the embedding
lookup (negligible) runs below it. Contexts are unpadded fixed-length windows, so no attention
mask is passed: the model builds its own causal (and sliding-window) masks and positions.

Shapes use name suffixes: B batch, T positions, D model width, V vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from steerscreen.errors import NumericsError, SpecError
from steerscreen.specs import HOOK_KINDS as SPEC_HOOK_KINDS
from steerscreen.specs import parse_hook

HookKind = Literal["resid_pre", "resid_post", "attn_out", "mlp_out"]
HOOK_KINDS: tuple[HookKind, ...] = ("resid_pre", "resid_post", "attn_out", "mlp_out")
assert HOOK_KINDS == SPEC_HOOK_KINDS


def check_finite(acts: torch.Tensor, hook: str, where: str = "") -> None:
    """NumericsError when activations read at ``hook`` hold NaN or Inf.

    One reduction per batch (cheap next to the forward that made them): NaN would otherwise
    pass silently into every statistic and outcome. ``where`` says which batch, for the user."""
    finite = torch.isfinite(acts)
    if bool(finite.all()):
        return
    n_bad = int((~finite).sum())
    raise NumericsError(
        f"the model produced NaN/Inf activations at {hook}{where} ({n_bad} of {acts.numel()} "
        "values)",
        "load the model in float32 (--dtype float32); if it already is, the model's weights "
        "hold NaN/Inf: re-download or re-save the model")


@dataclass(frozen=True, order=True)
class HookPoint:
    """A TransformerLens-style hook point: ``blocks.{layer}.hook_{kind}``."""

    layer: int
    kind: HookKind

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def depth(self) -> float:
        """Order along the forward pass (resid_post L comes right before resid_pre L+1)."""
        return self.layer + {"resid_pre": 0.0, "attn_out": 0.25, "mlp_out": 0.5,
                             "resid_post": 0.75}[self.kind]

    @classmethod
    def parse(cls, name: str, n_layers: int | None = None) -> HookPoint:
        hp = cls(*parse_hook(name))  # type: ignore[arg-type]
        if n_layers is not None and hp.layer >= n_layers:
            raise SpecError(
                f"hook {name!r} names layer {hp.layer}, but the model has {n_layers} layers "
                f"(0..{n_layers - 1})",
                f"pick a layer between 0 and {n_layers - 1}",
            )
        return hp

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ArchSpec:
    """Where the hook points live in one Hugging Face architecture family."""

    layers: str  # dotted path to the decoder-layer ModuleList
    attn: str  # submodule of a layer whose output is hook_attn_out
    mlp: str  # submodule of a layer whose output is hook_mlp_out
    final_norm: str  # dotted path to the final norm
    norm: Literal["layernorm", "rmsnorm"]
    gain_offset: float  # effective final-norm gain = offset + weight (Gemma: 1 + w)


ARCHS: dict[str, ArchSpec] = {
    "gpt2": ArchSpec("transformer.h", "attn", "mlp", "transformer.ln_f", "layernorm", 0.0),
    "gpt_neox": ArchSpec("gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm",
                         "layernorm", 0.0),
    "llama": ArchSpec("model.layers", "self_attn", "mlp", "model.norm", "rmsnorm", 0.0),
    "gemma2": ArchSpec("model.layers", "post_attention_layernorm", "post_feedforward_layernorm",
                       "model.norm", "rmsnorm", 1.0),
    "gemma3_text": ArchSpec("model.layers", "post_attention_layernorm",
                            "post_feedforward_layernorm", "model.norm", "rmsnorm", 1.0),
}
ARCHS["mistral"] = ARCHS["qwen2"] = ARCHS["qwen3"] = ARCHS["llama"]


@dataclass(frozen=True)
class Unembed:
    """What direct-logit work needs: ``DL = W_U^T (gain * v)`` (v mean-centred if ``centre``).

    ``softcap`` is the model's final logit softcap; direct-logit work ignores it (it is
    nonlinear), and callers record that it was ignored.
    """

    W_U: torch.Tensor  # [D, V]
    gain: torch.Tensor  # [D], the final norm's effective gain
    centre: bool  # LayerNorm models: directions are mean-centred before the gain
    norm: Literal["layernorm", "rmsnorm"]
    eps: float
    softcap: float | None

    def direct_logits(self, dirs_ND: torch.Tensor) -> torch.Tensor:
        """Direct-logit footprint of directions ``dirs_ND`` -> ``[N, V]``."""
        d = dirs_ND.to(self.W_U.dtype)
        if self.centre:
            d = d - d.mean(-1, keepdim=True)
        return (d * self.gain) @ self.W_U

    def norm_scale(self, resid_BTD: torch.Tensor) -> torch.Tensor:
        """The scale the final norm divides by (std for LayerNorm, RMS for RMSNorm) -> [B, T]."""
        x = resid_BTD.float()
        if self.norm == "layernorm":
            return torch.sqrt(x.var(-1, unbiased=False) + self.eps)
        return torch.sqrt(x.pow(2).mean(-1) + self.eps)


@dataclass
class ForwardResult:
    """Named result of :meth:`HookedModel.forward`."""

    logits: torch.Tensor | None  # [B, T, V], None when the forward stopped early
    acts: dict[str, torch.Tensor]  # hook name -> [B, T, D], as read (after any write)


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


Edit = Callable[[torch.Tensor], torch.Tensor]


def _first(out: object) -> torch.Tensor:
    """The hidden-state tensor of a module output (a tensor, or a tuple led by one)."""
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value,index]


def _replace_first(out: object, new: torch.Tensor) -> object:
    return (new, *out[1:]) if isinstance(out, tuple) else new  # type: ignore[index]


def _get(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


class HookedModel:
    """A Hugging Face causal LM with TransformerLens-named hook points.

    ``name`` is the model's identity for SAE pairing (e.g. ``smollm2-135m``); ``bos_id`` is the
    token every context starts with (position 0, excluded from all statistics).
    """

    def __init__(self, model: nn.Module, tokenizer: object, name: str, bos_id: int) -> None:
        cfg = model.config
        model_type = getattr(cfg, "model_type", "")
        if model_type not in ARCHS:
            raise SpecError(
                f"architecture {model_type!r} has no hook mapping",
                f"supported architectures: {', '.join(sorted(ARCHS))}",
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.bos_id = int(bos_id)
        self.model_type = model_type
        self.arch = ARCHS[model_type]
        self.layers: nn.ModuleList = _get(model, self.arch.layers)  # type: ignore[assignment]
        self.n_layers = len(self.layers)
        self.d_model = int(cfg.hidden_size)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._tuple_layers: bool | None = None

    # --- properties -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def hook_point(self, name: str | HookPoint) -> HookPoint:
        """Parse and range-check a hook name for this model."""
        if isinstance(name, HookPoint):
            name = name.name
        return HookPoint.parse(name, self.n_layers)

    def unembed(self) -> Unembed:
        norm = _get(self.model, self.arch.final_norm)
        w = norm.weight.detach().float()
        eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None) or 1e-5
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        return Unembed(
            W_U=self.model.get_output_embeddings().weight.detach().float().T,
            gain=w + self.arch.gain_offset,
            centre=self.arch.norm == "layernorm",
            norm=self.arch.norm,
            eps=float(eps),
            softcap=float(softcap) if softcap else None,
        )

    # --- hooks ------------------------------------------------------------------------------
    def _module(self, hp: HookPoint) -> nn.Module:
        layer = self.layers[hp.layer]
        if hp.kind in ("resid_pre", "resid_post"):
            return layer
        return _get(layer, self.arch.attn if hp.kind == "attn_out" else self.arch.mlp)

    @contextlib.contextmanager
    def _hooks(
        self,
        reads: list[HookPoint],
        writes: Mapping[HookPoint, Edit],
        stop: HookPoint | None,
        acts: dict[str, torch.Tensor],
    ) -> Iterator[None]:
        handles = []
        try:
            for hp in sorted(set(reads) | set(writes) | ({stop} if stop else set())):
                edit, read, halt = writes.get(hp), hp in reads, hp == stop
                if hp.kind == "resid_pre":
                    def pre(mod, args, kwargs, edit=edit, read=read, halt=halt, hp=hp):
                        x = args[0] if args else kwargs["hidden_states"]
                        if edit is not None:
                            x = edit(x)
                            if args:
                                args = (x, *args[1:])
                            else:
                                kwargs = {**kwargs, "hidden_states": x}
                        if read:
                            acts[hp.name] = x
                        if halt:
                            raise _Stop
                        return args, kwargs

                    module = self._module(hp)
                    handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
                else:
                    def post(mod, args, out, edit=edit, read=read, halt=halt, hp=hp):
                        x = _first(out)
                        if edit is not None:
                            x = edit(x)
                            out = _replace_first(out, x)
                        if read:
                            acts[hp.name] = x
                        if halt:
                            raise _Stop
                        return out

                    handles.append(self._module(hp).register_forward_hook(post))
            yield
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def editing(self, write: Mapping[str | HookPoint, Edit]) -> Iterator[None]:
        """Apply ``write`` (as :meth:`forward`'s) to every call of ``self.model`` in the block:
        for passes :meth:`forward` does not make, such as generation with a KV cache."""
        writes = {self.hook_point(h): f for h, f in write.items()}
        with self._hooks([], writes, None, {}):
            yield

    @contextlib.contextmanager
    def _skip_below(self, layer: int, resid_BTD: torch.Tensor) -> Iterator[None]:
        """Run layers ``< layer`` as passthroughs and feed ``resid_BTD`` into ``layer``."""
        tuple_out = self._layers_return_tuple()

        def passthrough(hidden_states, *args, **kwargs):
            return (hidden_states,) if tuple_out else hidden_states

        def inject(mod, args, kwargs):
            if args:
                return (resid_BTD, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": resid_BTD}

        skipped = list(self.layers[:layer])
        handle = None
        try:
            for mod in skipped:
                mod.forward = passthrough  # instance attribute shadows the class method
            if layer < self.n_layers:
                handle = self.layers[layer].register_forward_pre_hook(inject, with_kwargs=True)
            yield
        finally:
            for mod in skipped:
                del mod.forward
            if handle is not None:
                handle.remove()

    def _layers_return_tuple(self) -> bool:
        if self._tuple_layers is None:
            seen: list[bool] = []
            h = self.layers[0].register_forward_hook(
                lambda m, a, o: seen.append(isinstance(o, tuple)))
            try:
                with torch.no_grad():
                    self.model(torch.tensor([[self.bos_id, self.bos_id]], device=self.device),
                               use_cache=False)
            finally:
                h.remove()
            self._tuple_layers = seen[0]
        return self._tuple_layers

    # --- forward ----------------------------------------------------------------------------
    @torch.no_grad()
    def forward(
        self,
        input_ids_BT: torch.Tensor,
        *,
        read: list[str | HookPoint] | tuple[str | HookPoint, ...] = (),
        write: Mapping[str | HookPoint, Edit] | None = None,
        start_at: tuple[str | HookPoint, torch.Tensor] | None = None,
        logits: bool = True,
        logits_from: int = 0,
    ) -> ForwardResult:
        """Run the model, reading and editing hook points.

        ``write`` maps a hook to a function of its value (``lambda x: x + delta``). ``start_at``
        = (``blocks.L.hook_resid_pre`` or ``blocks.{L-1}.hook_resid_post``, cached residual):
        layers below L are not computed. With ``logits=False`` the pass stops right after the
        deepest read hook. ``logits_from``: unembed only positions ``t >= logits_from`` (the
        logits are then ``[B, T - logits_from, V]``; the unembedding is a large share of a
        small model's forward).
        """
        reads = [self.hook_point(h) for h in read]
        writes = {self.hook_point(h): f for h, f in (write or {}).items()}
        stop = None
        if not logits:
            if not reads:
                raise ValueError("forward(logits=False) needs at least one hook to read")
            stop = max(reads, key=lambda hp: hp.depth)
        acts: dict[str, torch.Tensor] = {}
        skip: contextlib.AbstractContextManager = contextlib.nullcontext()
        if start_at is not None:
            hp, resid = self.hook_point(start_at[0]), start_at[1]
            if hp.kind not in ("resid_pre", "resid_post"):
                raise ValueError(f"start_at must be a residual hook, got {hp.name}")
            first = hp.layer if hp.kind == "resid_pre" else hp.layer + 1
            too_early = [h.name for h in [*reads, *writes] if h.depth < first]
            if too_early:
                raise ValueError(f"hooks {too_early} lie below the start layer {first}")
            skip = self._skip_below(first, resid.to(self.device, self.dtype))
            if first == self.n_layers:  # start from the last residual: only the final norm
                return ForwardResult(self._logits_from_final(resid[:, logits_from:]), acts)
        out = None
        kw = {}
        if logits_from:
            kw["logits_to_keep"] = int(input_ids_BT.shape[1]) - logits_from
        with skip, self._hooks(reads, writes, stop, acts), contextlib.suppress(_Stop):
            out = self.model(input_ids_BT.to(self.device), use_cache=False, **kw)
        return ForwardResult(out.logits if out is not None else None, acts)

    def _logits_from_final(self, resid_BTD: torch.Tensor) -> torch.Tensor:
        x = _get(self.model, self.arch.final_norm)(resid_BTD.to(self.device, self.dtype))
        z = self.model.get_output_embeddings()(x)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return cap * torch.tanh(z / cap) if cap else z

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens (the corpus adds BOS itself)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
