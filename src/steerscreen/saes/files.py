"""An SAE folder's two files, checked without SAELens, torch or the weights.

Importing SAELens costs ~5 s of CPU on a cold start and reading weights costs memory, so every
mistake that the files themselves reveal is found here first, in milliseconds: ``cfg.json``
(its size, JSON, every field SAELens will read, with its type and range) and the safetensors
header of ``sae_weights.safetensors`` (names, shapes and dtypes against ``cfg.json``, and byte
offsets against the file's size, so a truncated download is caught before it is loaded).
``steerscreen.saes.io`` runs these checks before it imports SAELens, and every stage's
preflight runs them before anything is written.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steerscreen.errors import ArtifactError
from steerscreen.files import path_kind, require_file

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm",
                  "covariance_whitening")
# An SAE's cfg.json is a few kB; anything this large is not one (and must not be read whole).
MAX_CFG_BYTES = 1 << 20
# Bytes per element of the safetensors dtypes an SAE may hold.
_ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                  "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# SAELens's inference architectures of the version this release was tested with; the installed
# version's own list is read from its source when it can be (see `architectures`).
_KNOWN_ARCHITECTURES = ("gated", "jumprelu", "jumprelu_skip_transcoder", "jumprelu_transcoder",
                        "matching_pursuit", "skip_transcoder", "standard", "temporal", "topk",
                        "abstopk", "transcoder")
_TOPK_ARCHITECTURES = ("topk", "abstopk")
_RESAVE = "re-save or re-download the SAE"


@functools.cache
def architectures() -> tuple[str, ...]:
    """The SAE architectures the installed SAELens can load, read from the
    ``register_sae_class("NAME", ...)`` lines of its ``__init__.py`` without importing it."""
    import importlib.util

    found = importlib.util.find_spec("sae_lens")
    names: set[str] = set()
    if found is not None and found.origin:
        try:
            source = Path(found.origin).read_text(encoding="utf-8")
        except OSError:  # pragma: no cover - an unreadable install
            source = ""
        names = set(re.findall(r"register_sae_class\(\s*[\"']([\w-]+)[\"']", source))
    return tuple(sorted(names or _KNOWN_ARCHITECTURES))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(path: Path, field: str, value: Any, must: str) -> ArtifactError:
    return ArtifactError(f"{str(path)!r}: {field} is {_show(value)}, but must be {must}",
                         f"fix {field} in cfg.json, or {_RESAVE}")


def _positive_int(v: Any) -> bool:
    return type(v) is int and v >= 1  # bool is an int subclass: refused


def read_cfg(path: Path) -> dict[str, Any]:
    """``cfg.json`` of an SAE folder, checked field by field (raises ArtifactError)."""
    kind = path_kind(path)
    if kind == "missing":
        raise ArtifactError(
            f"SAE folder {str(path.parent)!r} has no {CFG_FILENAME}",
            "an SAE folder needs cfg.json and sae_weights.safetensors (SAELens format); "
            f"{_RESAVE}")
    require_file(path, "SAE config", f"{CFG_FILENAME} must be a JSON file: {_RESAVE}")
    size = path.stat().st_size
    if size > MAX_CFG_BYTES:
        raise ArtifactError(f"{str(path)!r} is {size:,} bytes; an SAE's {CFG_FILENAME} is a "
                            "few kB", f"this is not an SAE config: {_RESAVE}")
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{str(path)!r} is not valid JSON ({e})",
                            f"the file is corrupt or truncated: {_RESAVE}") from e
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{str(path)!r} holds a JSON {type(cfg).__name__}, not an object",
                            _RESAVE)
    missing = [k for k in ("d_in", "d_sae") if not _positive_int(cfg.get(k))]
    if missing:
        raise ArtifactError(f"{str(path)!r} lacks positive integer {' and '.join(missing)}",
                            f"this is not a SAELens cfg.json: {_RESAVE}")
    arch = cfg.get("architecture", "standard")  # pre-6 configs default to standard
    if not isinstance(arch, str) or arch not in architectures():
        raise ArtifactError(
            f"{str(path)!r} names the unknown architecture {_show(arch)}",
            f"SAELens knows {', '.join(architectures())}; upgrade sae-lens or fix the file")
    _check_fields(path, cfg, arch)
    _check_metadata(path, cfg.get("metadata"))
    for key in ("model_name", "hook_name"):  # pre-6 configs keep them at the top level
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            raise _bad(path, key, cfg[key], "a string (or null)")
    return cfg


def _check_fields(path: Path, cfg: Mapping[str, Any], arch: str) -> None:
    dtype = cfg.get("dtype", "float32")
    if not isinstance(dtype, str) or dtype.removeprefix("torch.") not in DTYPE_NAMES:
        raise _bad(path, "dtype", dtype, f"one of {', '.join(DTYPE_NAMES)}")
    if not isinstance(cfg.get("device", "cpu"), str):
        raise _bad(path, "device", cfg["device"], "a string such as 'cpu'")
    if type(cfg.get("apply_b_dec_to_input", True)) is not bool:
        raise _bad(path, "apply_b_dec_to_input", cfg["apply_b_dec_to_input"], "true or false")
    norm = cfg.get("normalize_activations", "none")
    if norm is not None and norm not in NORMALIZATIONS:
        raise _bad(path, "normalize_activations", norm, f"one of {', '.join(NORMALIZATIONS)}")
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise _bad(path, "reshape_activations", cfg["reshape_activations"], "none or hook_z")
    if "d_out" in cfg and not _positive_int(cfg["d_out"]):
        raise _bad(path, "d_out", cfg["d_out"], "a positive integer")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, Mapping) else None)
    if (arch in _TOPK_ARCHITECTURES or k is not None) and (
            not _positive_int(k) or k > cfg["d_sae"]):
        raise _bad(path, "k", k, f"an integer from 1 to d_sae = {cfg['d_sae']} (the "
                       "number of features a TopK SAE keeps per token)")


def _check_metadata(path: Path, meta: Any) -> None:
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise _bad(path, "metadata", meta, "an object")
    for key in ("model_name", "hook_name"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise _bad(path, f"metadata.{key}", meta[key], "a string (or null)")
    if meta.get("prepend_bos") is not None and type(meta["prepend_bos"]) is not bool:
        raise _bad(path, "metadata.prepend_bos", meta["prepend_bos"], "true, false or null")
    kwargs = meta.get("model_from_pretrained_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise _bad(path, "metadata.model_from_pretrained_kwargs", kwargs, "an object (or null)")


def read_safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, dtype)} from a safetensors file's JSON header, after checking that
    the header and every tensor's bytes fit in the file (a truncated file is refused here)."""
    kind = path_kind(path)
    if kind == "missing":
        raise ArtifactError(f"SAE folder {str(path.parent)!r} has no {WEIGHTS_FILENAME}",
                            f"{_RESAVE} (the weights file is missing)")
    require_file(path, "SAE weights", f"{WEIGHTS_FILENAME} must be a safetensors file: "
                 f"{_RESAVE}")
    size = path.stat().st_size
    broken = ArtifactError(f"{str(path)!r} is not a readable safetensors file",
                           f"the file is truncated or corrupt: {_RESAVE}")
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(size - 8, 100 << 20):
            raise broken
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise broken from e
    if not isinstance(header, dict):
        raise broken
    data_bytes = size - 8 - n
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(d) for d in info["shape"])
            dtype = str(info["dtype"])
            start, end = (int(o) for o in info["data_offsets"])
        except (TypeError, KeyError, ValueError) as e:
            raise broken from e
        expected = math.prod(shape) * _ELEMENT_BYTES.get(dtype, 0)
        if end > data_bytes:
            raise ArtifactError(
                f"{str(path)!r} is truncated: tensor {name} ends at byte {end:,} of the data, "
                f"but the file holds {max(data_bytes, 0):,}", f"the file is truncated (an "
                f"interrupted copy or download): {_RESAVE}")
        if dtype in _ELEMENT_BYTES and end - start != expected:
            raise broken
        tensors[name] = (shape, dtype)
    return tensors


def check_weights(path: Path, cfg: Mapping[str, Any]) -> None:
    """The weights file's tensors against ``cfg.json``: the ones the architecture needs are
    there, with the shapes ``d_in`` / ``d_sae`` imply."""
    shapes = {k: shape for k, (shape, _) in read_safetensors_header(path).items()}
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "threshold": (d_sae,)}
    if "d_out" not in cfg:  # an SAE (not a transcoder) decodes back to d_in
        expected |= {"W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    arch = cfg.get("architecture", "standard")
    arch_tensors = {"standard": ["b_enc"], "topk": ["b_enc"], "jumprelu": ["b_enc", "threshold"]}
    # Tied SAEs (matching pursuit; a temporal SAE with tied_weights) store no W_enc.
    tied = arch == "matching_pursuit" or (arch == "temporal" and cfg.get("tied_weights"))
    required = [*([] if tied else ["W_enc"]), "W_dec", "b_dec", *arch_tensors.get(arch, [])]
    absent = [k for k in required if k not in shapes]
    if absent:
        raise ArtifactError(
            f"{str(path)!r} lacks the tensor(s) {', '.join(absent)} a {arch!r} SAE needs "
            f"(it has {', '.join(sorted(shapes)) or 'none'})", _RESAVE)
    for k, shape in expected.items():
        if k in shapes and shapes[k] != shape:
            raise ArtifactError(
                f"{str(path)!r}: tensor {k} has shape {list(shapes[k])}, but cfg.json "
                f"(d_in={d_in}, d_sae={d_sae}) implies {list(shape)}",
                "cfg.json and the weights do not belong together: re-save or re-download")


def check_folder(folder: Path) -> dict[str, Any]:
    """Both files of an SAE folder; returns its checked ``cfg.json``."""
    cfg = read_cfg(folder / CFG_FILENAME)
    check_weights(folder / WEIGHTS_FILENAME, cfg)
    return cfg
