"""Models: specs and loading, and the TransformerLens-named hook adapter."""

from steerscreen.models.hooks import (
    HOOK_KINDS,
    ForwardResult,
    HookedModel,
    HookPoint,
    Unembed,
)
from steerscreen.models.loading import (
    DEFAULT_MODEL,
    EMBEDDED,
    ModelSpec,
    describe,
    from_transformers,
    load_model,
    model_sha256,
    transformers_spec,
)

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "HOOK_KINDS",
    "ForwardResult",
    "HookPoint",
    "HookedModel",
    "ModelSpec",
    "Unembed",
    "describe",
    "from_transformers",
    "load_model",
    "model_sha256",
    "transformers_spec",
]
