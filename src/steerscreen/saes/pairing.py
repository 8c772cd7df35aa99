"""Pairing an SAE with a model and hook: does it fit, and at which hook point.

:func:`validate_pairing` checks an SAE against a model (width, layer count, the model it was
trained on) and a hook before any compute; it takes loaded objects or, before anything loads,
the SAE's cfg.json header and the model's config shape (``steerscreen.pipeline.checks``); and
:func:`canonical_model_name` is the key under which two spellings of one model's name agree.
Only names and shapes are compared here: how the SAE's input is prepared (``SAEInput``) is
``steerscreen.saes.io``'s business.
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

from steerscreen.errors import PairingError, SpecError
from steerscreen.models.hooks import HookPoint


@runtime_checkable
class ModelLike(Protocol):
    """What pairing needs from a model (``steerscreen.models.hooks.HookedModel`` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def n_layers(self) -> int: ...

    @property
    def d_model(self) -> int: ...


class SAELike(Protocol):
    """What pairing reads from an SAE: a ``LoadedSAE``, or an ``SAEHeader`` read from cfg.json
    before anything loads."""

    @property
    def spec(self) -> str: ...

    @property
    def d_in(self) -> int: ...

    @property
    def hook_name(self) -> str | None: ...

    @property
    def model_name(self) -> str | None: ...


_MODEL_ALIASES = {"gpt2small": "gpt2"}


def canonical_model_name(name: str) -> str:
    """A comparison key for model names: ``openai-community/gpt2``, ``gpt2`` and ``gpt2-small``
    agree, as do ``meta-llama/Llama-3.1-8B`` and ``llama3.1-8b``.

    Lowercase, drop an org prefix and a ``-hf`` suffix, drop separators (``-_. ``), then map
    TransformerLens aliases.
    """
    n = name.strip().lower().rsplit("/", 1)[-1]
    n = re.sub(r"[-_]hf$", "", n)
    n = re.sub(r"[\s._\-]+", "", n)
    n = n.removeprefix("meta") if n.startswith("metallama") else n
    return _MODEL_ALIASES.get(n, n)


def check_layer(hp: HookPoint, model: ModelLike) -> HookPoint:
    """``hp`` if its layer exists in ``model``, else the PairingError that says which do."""
    if hp.layer >= model.n_layers:
        raise PairingError(
            f"hook {hp.name} is at layer {hp.layer}, but model {model.name!r} has "
            f"{model.n_layers} layers (0..{model.n_layers - 1})",
            f"use a hook and SAE at a layer between 0 and {model.n_layers - 1}",
        )
    return hp


def validate_pairing(loaded: SAELike, model: ModelLike, hook: str | None) -> HookPoint:
    """The hook point to use ``loaded`` at on ``model``, or PairingError saying why not.

    ``hook`` defaults to the SAE's metadata hook. A malformed hook name raises SpecError.
    ``blocks.L.hook_resid_post`` and ``blocks.{L+1}.hook_resid_pre`` are the same tensor, so
    an SAE trained at one pairs with the other.
    """
    spec = loaded.spec
    meta_hp: HookPoint | None = None
    if loaded.hook_name:
        try:
            meta_hp = HookPoint.parse(loaded.hook_name)
        except SpecError:
            meta_hp = None
    if hook is None:
        if not loaded.hook_name:
            raise PairingError(
                f"SAE {spec!r} does not record the hook it was trained at (no "
                "metadata.hook_name)",
                "pass the hook explicitly, e.g. blocks.12.hook_resid_post",
            )
        if meta_hp is None:
            raise PairingError(
                f"SAE {spec!r} was trained at {loaded.hook_name!r}, which steerscreen cannot hook",
                "use an SAE trained at blocks.L.hook_resid_pre / hook_resid_post / hook_attn_out "
                "/ hook_mlp_out",
            )
        hp = meta_hp
    else:
        hp = HookPoint.parse(hook)  # SpecError: already says how to write a hook
    check_layer(hp, model)
    d_in = loaded.d_in
    if d_in != model.d_model:
        fits = (f" such as {loaded.model_name!r}" if loaded.model_name and canonical_model_name(
            loaded.model_name) != canonical_model_name(model.name) else "")
        raise PairingError(
            f"SAE {spec!r} reads vectors of width d_in={d_in}, but model {model.name!r} has "
            f"d_model={model.d_model} at every hook (resid_pre/resid_post/attn_out/mlp_out)",
            f"use an SAE with d_in={model.d_model} trained on {model.name!r}; this SAE fits a "
            f"model with d_model={d_in}{fits}",
        )
    if loaded.model_name and canonical_model_name(loaded.model_name) != canonical_model_name(
            model.name):
        raise PairingError(
            f"SAE {spec!r} was trained on model {loaded.model_name!r}, not {model.name!r}",
            f"use an SAE trained on {model.name!r} or load {loaded.model_name!r}; if both "
            "names mean the same weights, fix metadata.model_name in the SAE's cfg.json",
        )
    if hook is not None and loaded.hook_name and not _same_tensor(hp, meta_hp):
        raise PairingError(
            f"hook {hp.name!r} was requested, but SAE {spec!r} was trained at "
            f"{loaded.hook_name!r}",
            f"pass the SAE's hook ({loaded.hook_name}) or leave the hook out, or use an SAE "
            f"trained at {hp.name}",
        )
    return hp


def _same_tensor(a: HookPoint, b: HookPoint | None) -> bool:
    if b is None:
        return False
    if a == b:
        return True
    pre, post = (a, b) if a.kind == "resid_pre" else (b, a)
    return pre.kind == "resid_pre" and post.kind == "resid_post" and pre.layer == post.layer + 1
