"""The sizes the cost model needs, known before anything loads: a model's layer shapes and each
SAE's width.

Model shapes come from what is local (the GGUF header of an embedded model, a folder's or cached
hub model's config.json, via :mod:`steerscreen.models.shape`) and otherwise from a built-in table
of the published config.json values of the models in ``configs/`` (marked as such in
:attr:`ModelDims.source`). SAE widths come from the study config (trained SAEs), a local or
cached cfg.json, or the release names of the SAELens releases the configs use.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from steerscreen.config import SAEEntry
from steerscreen.errors import SpecError, SteerscreenError
from steerscreen.models.loading import ModelSpec


@dataclass(frozen=True)
class ModelDims:
    """A decoder-only transformer's shape: what a forward costs per token and per layer."""

    name: str
    n_layers: int
    d_model: int
    d_ff: int
    vocab: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    gated_mlp: bool  # SwiGLU / GeGLU: three MLP matrices, else two
    tied: bool  # the unembedding is the embedding matrix (stored once)
    source: str  # where the numbers come from

    @property
    def layer_params(self) -> int:
        """Weights one layer multiplies by per token (norms and biases left out)."""
        q_o = 2 * self.d_model * self.n_heads * self.head_dim
        k_v = 2 * self.d_model * self.n_kv_heads * self.head_dim
        return q_o + k_v + (3 if self.gated_mlp else 2) * self.d_model * self.d_ff

    @property
    def n_params(self) -> int:
        embed = self.vocab * self.d_model
        return self.n_layers * self.layer_params + embed * (1 if self.tied else 2)

    def layer_flops(self, tokens: float, context_len: int) -> float:
        """FLOPs of ``tokens`` tokens through one layer, in contexts of ``context_len``: 2 per
        weight, plus QK^T and AV over the causal span (mean (T + 1) / 2 keys per query)."""
        span = (context_len + 1) / 2
        return tokens * (2 * self.layer_params + 4 * self.n_heads * self.head_dim * span)

    def unembed_flops(self, positions: float) -> float:
        return 2.0 * positions * self.d_model * self.vocab


def _dims(name: str, n_layers: int, d_model: int, d_ff: int, vocab: int, n_heads: int,
          n_kv_heads: int, head_dim: int, gated: bool, tied: bool, source: str) -> ModelDims:
    return ModelDims(name, n_layers, d_model, d_ff, vocab, n_heads, n_kv_heads, head_dim, gated,
                     tied, source)


_PUBLISHED = "built-in: the model's published config.json"
# Keyed by the spec's target (hub repo id or embedded name).
KNOWN_MODELS: dict[str, ModelDims] = {
    "openai-community/gpt2": _dims("gpt2", 12, 768, 3072, 50257, 12, 12, 64, False, True,
                                   _PUBLISHED),
    "gpt2": _dims("gpt2", 12, 768, 3072, 50257, 12, 12, 64, False, True, _PUBLISHED),
    "EleutherAI/pythia-70m-deduped": _dims("pythia-70m-deduped", 6, 512, 2048, 50304, 8, 8, 64,
                                           False, False, _PUBLISHED),
    "google/gemma-2-2b": _dims("gemma-2-2b", 26, 2304, 9216, 256000, 8, 4, 256, True, True,
                               _PUBLISHED),
    "meta-llama/Llama-3.1-8B": _dims("llama-3.1-8b", 32, 4096, 14336, 128256, 32, 8, 128, True,
                                     False, _PUBLISHED),
    "smollm2-135m": _dims("smollm2-135m", 30, 576, 1536, 49152, 9, 3, 64, True, True,
                          "built-in: SmolLM2-135M's config.json"),
    "gemma3-270m": _dims("gemma3-270m", 18, 640, 2048, 262144, 4, 1, 256, True, True,
                         "built-in: Gemma 3 270M's config.json"),
}


def model_dims(spec: str) -> ModelDims:
    """The shape of ``spec``'s model without loading it (and, for the hub models of the built-in
    table, without touching the hub or its cache)."""
    ms = ModelSpec.parse(spec)
    known = KNOWN_MODELS.get(ms.target)
    if ms.scheme == "hf" and known is not None:
        return known
    from steerscreen.models.shape import read_model_shape

    try:
        shape = read_model_shape(spec)
    except SteerscreenError:  # offline and not cached
        shape = None
    cfg = _config_json(ms)
    if shape is None and cfg is None:
        raise SpecError(
            f"the shape of model {spec!r} is not known here (not in the local cache, not in "
            f"the built-in table of {', '.join(k for k in KNOWN_MODELS if '/' in k)})",
            "run once with network access so its config.json is cached, or pass the path of "
            "a local model folder")
    if cfg is not None:
        dims = _from_config(ms.name, cfg, "config.json")
        if dims is not None:
            return dims
    assert shape is not None
    if known is not None:  # embedded: the header's sizes, the table's layer internals
        return replace(known, n_layers=shape.n_layers, d_model=shape.d_model,
                       vocab=shape.vocab_size or known.vocab,
                       source=f"GGUF header + {known.source}")
    heads = max(1, shape.d_model // 64)  # nothing says more: a GPT-2-like layer, marked so
    return _dims(shape.name, shape.n_layers, shape.d_model, 4 * shape.d_model, shape.vocab_size,
                 heads, heads, 64, False, False,
                 "GGUF header; d_ff = 4 d_model and 64-wide heads assumed")


def _config_json(ms: ModelSpec) -> dict | None:
    path: Path | None = None
    if ms.scheme == "local":
        path = Path(ms.target) / "config.json"
    elif ms.scheme == "hf":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ms.target, "config.json")
        path = Path(cached) if isinstance(cached, str) else None
    if path is None:
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg.get("text_config") or cfg if isinstance(cfg, dict) else None


def _from_config(name: str, cfg: dict, source: str) -> ModelDims | None:
    def first(*keys: str) -> int | None:
        return next((cfg[k] for k in keys if isinstance(cfg.get(k), int)), None)

    layers = first("num_hidden_layers", "n_layer", "num_layers")
    d = first("hidden_size", "n_embd", "d_model")
    vocab = first("vocab_size")
    if layers is None or d is None or vocab is None:
        return None
    heads = first("num_attention_heads", "n_head") or max(1, d // 64)
    kv = first("num_key_value_heads") or heads
    head_dim = first("head_dim") or d // heads
    d_ff = first("intermediate_size", "n_inner", "ffn_dim") or 4 * d
    act = str(cfg.get("hidden_act") or cfg.get("hidden_activation") or "")
    gated = "intermediate_size" in cfg and act in ("silu", "swish", "gelu_pytorch_tanh")
    tied = bool(cfg.get("tie_word_embeddings", True))
    return _dims(name, layers, d, d_ff, vocab, heads, kv, head_dim, gated, tied, source)


# --- SAE widths -------------------------------------------------------------------------------
# The SAELens releases of configs/ (their names say the width, or a multiple of d_model).
KNOWN_RELEASES: dict[str, int] = {
    "gpt2-small-res-jb": 24576,
    "gpt2-small-resid-post-v5-32k": 32768,
    "gpt2-small-resid-post-v5-128k": 131072,
    "pythia-70m-deduped-res-sm": 32768,
}


def sae_width(entry: SAEEntry, d_model: int) -> tuple[int, str]:
    """(number of features, where that number comes from) for one SAE of the study."""
    if entry.trained:
        return int(entry.width or 0), "config"
    spec = entry.spec or ""
    scheme, _, rest = spec.partition(":")
    if scheme == "saelens":
        release, _, sae_id = rest.partition("/")
        if release in KNOWN_RELEASES:
            return KNOWN_RELEASES[release], "built-in release table"
        m = re.search(r"width_(\d+)([km])", sae_id)  # Gemma Scope: width_16k = 2^14, 65k, 1m
        if m:
            n = int(m.group(1)) * (1000 if m.group(2) == "k" else 1_000_000)
            return 1 << round(math.log2(n)), "release name"
        m = re.search(r"_(\d+)x\b", release) or re.search(r"_(\d+)x\b", sae_id)  # Llama Scope
        if m:
            return int(m.group(1)) * d_model, "release name (expansion x d_model)"
    from steerscreen.saes.io import read_sae_header

    try:
        head = read_sae_header(spec)
    except SteerscreenError:
        head = None
    if head is not None:
        return head.d_sae, "cfg.json"
    raise SpecError(f"the width of SAE {entry.name!r} ({spec}) is not known before loading it",
                    "download it once (its cfg.json is then cached), or plan with a local copy")


__all__ = ["KNOWN_MODELS", "KNOWN_RELEASES", "ModelDims", "model_dims", "sae_width"]
