"""A model's shape read from its config or GGUF header, without loading weights.

:func:`read_model_shape` answers "how many layers, how wide, how large a vocabulary, how many
parameters" in well under a second for every spec ``load_model`` takes, so that SAE pairing,
hook ranges and memory can be checked before a model spends seconds (or minutes) loading. A hub
model that is not in the local cache has no cheap answer (None) unless the hub is switched off,
which is an error right away.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from steerscreen.errors import OfflineError
from steerscreen.files import path_kind
from steerscreen.hub import hub_offline
from steerscreen.models.loading import ModelSpec, embedded_gguf

# Config keys across architectures (GPT-2 names its own).
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers")
_WIDTH = ("hidden_size", "n_embd", "d_model")


@dataclass(frozen=True)
class ModelShape:
    """What pairing and memory checks need; ``name`` is the one ``load_model`` gives."""

    name: str
    n_layers: int
    d_model: int
    vocab_size: int
    n_params: int | None  # None when only the config is at hand (no weight headers)


def read_model_shape(spec: str) -> ModelShape | None:
    """The shape of the model ``spec`` names, or None when it cannot be read cheaply.

    Raises SpecError for a bad spec and OfflineError for a hub model that is neither cached
    nor downloadable (HF_HUB_OFFLINE set)."""
    ms = ModelSpec.parse(spec)
    try:
        if ms.scheme in ("embedded", "gguf"):
            path = embedded_gguf(ms.target) if ms.scheme == "embedded" else Path(ms.target)
            return _gguf_shape(path, ms.name)
        folder = _hub_folder(ms.target, spec) if ms.scheme == "hf" else Path(ms.target)
        return None if folder is None else _folder_shape(folder, ms.name)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None  # unreadable here: loading the model reports it properly


def _hub_folder(repo: str, spec: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json")
    if isinstance(cached, str):
        return Path(cached).parent
    if hub_offline():
        raise OfflineError(
            f"model {spec!r} must be downloaded from the Hugging Face hub, but HF_HUB_OFFLINE "
            "is set and the model is not in the local HF cache",
            "run once with network access, or save it with save_pretrained and pass the "
            "folder, or use embedded:smollm2-135m")
    return None  # online: only a download would tell


def _folder_shape(folder: Path, name: str) -> ModelShape | None:
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg = cfg.get("text_config") or cfg  # multimodal configs (Gemma 3) nest the LM
    layers = next((cfg[k] for k in _LAYERS if isinstance(cfg.get(k), int)), None)
    width = next((cfg[k] for k in _WIDTH if isinstance(cfg.get(k), int)), None)
    if layers is None or width is None:
        return None
    n_params = sum(_safetensors_params(p) for p in folder.glob("*.safetensors")) or None
    return ModelShape(name, layers, width, int(cfg.get("vocab_size") or 0), n_params)


def _safetensors_params(path: Path) -> int:
    if path_kind(path) != "file":  # a FIFO would block the read
        return 0
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 << 20:  # not a header: a corrupt file (loading says so)
            return 0
        header = json.loads(f.read(n))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


# --- GGUF header ----------------------------------------------------------------------------
# Only the key-value section and the tensor infos are read (the `gguf` package parses every
# token string into arrays, ~5 s for a 49K vocabulary).
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}
_STRING, _ARRAY = 8, 9


def _gguf_shape(path: Path, name: str) -> ModelShape | None:
    with open(path, "rb") as f:
        magic, _version, n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF":
            return None
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = _str(f)
            kv[key] = _value(f, struct.unpack("<I", f.read(4))[0])
        n_params = 0
        for _ in range(n_tensors):
            _str(f)
            (n_dims,) = struct.unpack("<I", f.read(4))
            n_params += math.prod(struct.unpack(f"<{n_dims}Q", f.read(8 * n_dims)))
            f.read(12)  # type, offset
    arch = kv.get("general.architecture")
    layers, width = kv.get(f"{arch}.block_count"), kv.get(f"{arch}.embedding_length")
    if not isinstance(layers, int) or not isinstance(width, int):
        return None
    vocab = kv.get(f"{arch}.vocab_size") or kv.get("tokenizer.ggml.tokens") or 0
    return ModelShape(name, layers, width, int(vocab), n_params)


def _str(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _str(f)
    if kind == _ARRAY:
        sub, n = struct.unpack("<IQ", f.read(12))
        if sub == _STRING:
            for _ in range(n):
                _str(f)
            return n  # arrays are only counted (the vocabulary's size)
        if sub in _SCALAR:
            f.seek(n * struct.calcsize(_SCALAR[sub]), 1)
            return n
        for _ in range(n):
            _value(f, sub)
        return n
    fmt = "<" + _SCALAR[kind]
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


__all__ = ["ModelShape", "read_model_shape"]
