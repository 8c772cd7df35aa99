"""Loading and saving SAELens SAEs, and using them on raw residuals: SAELens <-> steerscreen.

SAEs *are* SAELens v6 objects (``sae_lens.SAE`` subclasses). SAELens owns the formats, the
pretrained-release registry and the forward maths (including ``normalize_activations`` such as
the OpenAI ``layer_norm`` input and Gemma Scope's ``apply_b_dec_to_input=False``); this module
only adds what steerscreen needs around it:

- one spec string per SAE (``PATH`` / ``local:PATH``, ``saelens:RELEASE/SAE_ID``,
  ``hf:OWNER/REPO[/SUBFOLDER]``), with actionable errors instead of tracebacks for missing,
  truncated, corrupt or non-finite files and for a hub that cannot be reached;
- atomic saving in a folder that SAELens classifies as v6;
- :class:`SAEInput`, the input conventions SAELens does not apply itself (a TransformerLens
  mean-centred residual; BOS), so that the raw Hugging Face residuals steerscreen reads are fed
  to an SAE the way it was trained (:func:`encode`, :func:`decoder_directions`).

Checking an SAE against a model and hook is ``steerscreen.saes.pairing``'s job.

See ``shared/reference/sae_formats_and_hooks.md`` for the formats and release quirks.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from steerscreen import specs
from steerscreen.errors import ArtifactError, OfflineError, SpecError
from steerscreen.files import atomic_dir, cache_dir, path_kind, sha256_file, user_path, write_json
from steerscreen.hub import hub_offline, is_network_error, offline_mode
from steerscreen.saes.files import (
    CFG_FILENAME,
    DTYPE_NAMES,
    WEIGHTS_FILENAME,
    check_folder,
    read_cfg,
)

if TYPE_CHECKING:  # sae_lens takes ~10 s to import; keep `import steerscreen.saes` cheap
    from sae_lens import SAE

SPARSITY_FILENAME = "sparsity.safetensors"
SCHEMES = specs.names("sae")  # ("local", "saelens", "hf")
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}

# Releases trained on TransformerLens's mean-centred residual (center_writing_weights=True) whose
# hub cfg may not say so (a v6 cfg drops the yaml override outside `metadata`).
_CENTRED_RELEASE_PREFIXES = ("gpt2-small-res-jb",)
# Tensors whose leading/trailing axis is the feature axis, for "first bad feature" messages.
_FEATURE_AXIS = {"W_enc": 1, "W_dec": 0, "b_enc": 0, "threshold": 0}


# --------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class SAEInput:
    """How a raw Hugging Face residual must be prepared before ``sae.encode``.

    ``centre``: subtract the per-token mean over the model dimension first. SAEs trained on
    TransformerLens with ``center_writing_weights=True`` (``gpt2-small-res-jb``) saw a
    mean-centred residual; the HF residual differs from it by exactly that mean (TL centres
    every matrix that writes to the residual), so centring reproduces their input.
    ``prepend_bos``: whether the SAE was trained on contexts that start with BOS
    (``metadata.prepend_bos``, default True; the OpenAI GPT-2 SAEs say False).
    """

    centre: bool = False
    prepend_bos: bool = True


@dataclass
class LoadedSAE:
    """A SAELens SAE (eval mode, frozen) plus what steerscreen needs to know about it."""

    sae: SAE[Any]
    spec: str
    path: Path | None  # local folder it was read from; None for a `saelens:` release
    hook_name: str | None  # metadata.hook_name (TransformerLens name), if the SAE says
    model_name: str | None  # metadata.model_name (or the release's model), if known
    input: SAEInput
    # sha256 of sae_weights.safetensors when read from a folder; for `saelens:` releases (whose
    # files may be converted from other formats) the sha256 of the loaded tensors, see
    # `_sha256_tensors`.
    sha256: str
    architecture: str

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)


# --------------------------------------------------------------------------------------------
# Loading


def load_sae(spec: str, device: str = "cpu", dtype: str = "float32") -> LoadedSAE:
    """Load an SAE from a spec: ``PATH`` | ``local:PATH`` | ``saelens:RELEASE/SAE_ID`` |
    ``hf:OWNER/REPO[/SUBFOLDER]`` (the last two need the hub unless already cached).

    Raises SpecError (bad spec), OfflineError (hub needed but unreachable), ArtifactError
    (missing, corrupt or non-finite files).
    """
    spec = spec.strip()
    if dtype.removeprefix("torch.") not in DTYPES:
        raise SpecError(f"unsupported SAE dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    dtype = dtype.removeprefix("torch.")
    scheme, rest = _split_scheme(spec)
    if scheme is None or scheme == "local":
        return _load_folder(_resolve_local(rest, spec), spec, device, dtype, releases=())
    if scheme == "saelens":
        return _load_release(rest, spec, device, dtype)
    if scheme == "hf":
        folder, repo = _download_hf(rest, spec)
        from sae_lens.loading.pretrained_saes_directory import get_releases_for_repo_id

        return _load_folder(folder, spec, device, dtype, releases=get_releases_for_repo_id(repo))
    raise SpecError(
        f"SAE spec {spec!r} uses the unknown scheme {scheme!r}",
        "write a local SAELens folder (PATH or local:PATH), saelens:RELEASE/SAE_ID (e.g. "
        "saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre) or hf:OWNER/REPO[/SUBFOLDER]",
    )


def from_saelens(sae: SAE[Any], spec: str | None = None) -> LoadedSAE:
    """Wrap a SAELens ``SAE`` the caller already holds (a notebook's) as a :class:`LoadedSAE`.

    Its weights are checked finite and hashed as they are (the hash goes into the manifest);
    ``spec`` names it in the manifest (default: its folder when it came from one, else
    ``saelens-object:SHA256[:12]``). The hook and model name come from ``sae.cfg.metadata``,
    as for a loaded folder."""
    _finish(sae, spec or "the SAE object")
    digest = _sha256_tensors(sae.state_dict())
    return _wrap(sae, spec or f"saelens-object:{digest[:12]}", None, digest, centre_extra=False)


def _split_scheme(spec: str) -> tuple[str | None, str]:
    """(scheme, rest) of an SAE spec: scheme None for a bare path; an unregistered scheme-like
    prefix (``s3:...``) comes back as the scheme, for the callers to refuse."""
    parsed = specs.parse("sae", spec)
    if parsed.unknown_scheme is not None:
        return parsed.unknown_scheme, spec.partition(":")[2]
    return parsed.scheme, parsed.rest


def _resolve_local(rest: str, spec: str) -> Path:
    if "\x00" in rest:  # the OS cannot take it: say so rather than let os.stat raise
        raise SpecError(f"SAE spec {spec!r} holds a NUL byte", "write the SAE folder's path")
    try:
        path = Path(rest).expanduser()
    except RuntimeError:  # "~name/..." for a user that does not exist
        raise SpecError(f"SAE spec {spec!r}: cannot expand {rest.split('/', 1)[0]!r} (no such "
                        "user's home folder)", "write the SAE folder's full path") from None
    if path.is_file() and path.name in (CFG_FILENAME, WEIGHTS_FILENAME):
        path = path.parent  # pointing at one of the SAE's files means its folder
    if not path.exists():
        hint = ""
        head = rest.split("/", 1)[0]
        if "/" in rest and head and _known_release(head):
            hint = f" ({head!r} is a SAELens release: did you mean saelens:{rest}?)"
        raise ArtifactError(
            f"SAE folder {str(path)!r} (from spec {spec!r}) does not exist{hint}",
            "pass a folder holding cfg.json and sae_weights.safetensors, "
            "saelens:RELEASE/SAE_ID or hf:OWNER/REPO[/SUBFOLDER]",
        )
    if not path.is_dir():
        kind = path_kind(path)
        raise ArtifactError(
            f"SAE spec {spec!r} names the {'file' if kind == 'file' else kind} {str(path)!r}, "
            "not an SAE folder",
            "pass the folder that holds cfg.json and sae_weights.safetensors",
        )
    return path


def _known_release(name: str) -> bool:
    return name in saelens_directory()


@dataclass(frozen=True)
class ReleaseEntry:
    """One release of SAELens's pretrained-SAE directory (the fields steerscreen reads)."""

    repo_id: str
    model: str
    saes_map: dict[str, str]  # SAE id -> path in the repository
    config_overrides: Any = None


@functools.cache
def saelens_directory() -> dict[str, ReleaseEntry]:
    """SAELens's directory of pretrained releases, read straight from the
    ``pretrained_saes.yaml`` it ships (as its own ``get_pretrained_saes_directory`` does).
    Importing sae_lens to ask takes seconds on a cold start, and a typo in a spec must fail in
    one; the loaders still go through SAELens itself."""
    import importlib.util

    import yaml

    found = importlib.util.find_spec("sae_lens")  # locates the package without importing it
    if found is None or not found.submodule_search_locations:  # pragma: no cover - a dependency
        return {}
    path = Path(next(iter(found.submodule_search_locations)), "pretrained_saes.yaml")
    st = path.stat()
    # Parsing the 1.5 MB YAML takes ~1 s; a JSON copy keyed by the file's size and mtime, 20 ms.
    cached = cache_dir("saelens") / f"directory-{st.st_size}-{st.st_mtime_ns}.json"
    try:
        data = json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        with path.open(encoding="utf-8") as f:
            data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        with contextlib.suppress(OSError):  # a read-only cache only costs the parse
            write_json(cached, data)
    return {release: ReleaseEntry(
        repo_id=value["repo_id"], model=value.get("model", ""),
        saes_map={h["id"]: str(h["path"]) for h in value.get("saes", [])},
        config_overrides=value.get("config_overrides")) for release, value in data.items()}


def _load_folder(folder: Path, spec: str, device: str, dtype: str,
                 releases: list[str] | tuple[str, ...]) -> LoadedSAE:
    check_folder(folder)  # every mistake the files show, before SAELens (5 s) is imported
    weights = folder / WEIGHTS_FILENAME
    _check_finite_file(weights)
    from sae_lens import SAE

    digest = sha256_file(weights)
    try:
        with _quiet_sae_lens():
            sae = SAE.load_from_disk(folder, device=device, dtype=dtype)
    except Exception as e:
        # What pre-validation did not catch (a cfg field of the wrong type, ...): still say
        # which folder and why, never a bare SAELens/torch traceback.
        raise ArtifactError(
            f"SAELens could not build the SAE in {str(folder)!r}: {type(e).__name__}: {e}",
            "check cfg.json against the weights (re-save or re-download the SAE)",
        ) from e
    # Finite in the file; a narrower dtype than the file's can still overflow to Inf.
    _finish(sae, weights, check=dtype != "float32")
    centre_from_release = any(r.startswith(_CENTRED_RELEASE_PREFIXES) for r in releases)
    return _wrap(sae, spec, folder, digest, centre_extra=centre_from_release)


@contextmanager
def _quiet_sae_lens() -> Iterator[None]:
    # SAELens warns on every load of a centred-residual SAE to load the model through
    # TransformerLens with those kwargs; steerscreen applies that convention itself (SAEInput).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*model_from_pretrained_kwargs",
                                category=UserWarning)
        yield


@contextmanager
def _tensors_only_torch_load() -> Iterator[None]:
    """Force ``weights_only=True`` on the ``torch.load`` calls of SAELens's release loaders
    (``.pt`` checkpoints): they pass no ``weights_only``, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    in the environment would otherwise let a downloaded pickle run code."""
    original = torch.load

    def tensors_only(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = tensors_only  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original  # type: ignore[assignment]


def check_weights_finite(spec: str) -> bool:
    """For an SAE in a local folder: refuse NaN/Inf weights from the file itself, without
    SAELens (5 s to import) and before anything else loads (``load_sae`` then skips the
    same check). -> whether it was checked: False for a hub SAE, checked as it loads."""
    scheme, rest = _split_scheme(spec.strip())
    if scheme is not None and scheme != "local":
        return False
    _check_finite_file(_resolve_local(rest, spec) / WEIGHTS_FILENAME)
    return True


def _check_finite_file(path: Path) -> None:
    st = path.stat()
    _check_finite_file_once(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _check_finite_file_once(path: str, size: int, mtime_ns: int) -> None:
    """Keyed by size and mtime too: a file rewritten in place is checked again."""
    _check_finite(_file_tensors(Path(path)), path)


def _file_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """A safetensors file's tensors one at a time (memory-mapped: one tensor in memory)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            yield name, f.get_tensor(name)


def _check_finite(tensors: Iterable[tuple[str, torch.Tensor]], source: Path | str) -> None:
    """Reject NaN/Inf weights up front: they would silently poison every statistic."""
    for name, t in tensors:
        if not torch.is_floating_point(t):
            continue
        bad = ~torch.isfinite(t)
        n_bad = int(bad.sum())
        if n_bad == 0:
            continue
        where = ""
        axis = _FEATURE_AXIS.get(name)
        if axis is not None and t.dim() > axis:
            dims = [d for d in range(t.dim()) if d != axis]
            per_feature = bad.any(dim=dims) if dims else bad
            idx = per_feature.nonzero()[:, 0].tolist()
            where = (f"; feature(s) {', '.join(map(str, idx[:8]))}"
                     + (f" ... ({len(idx)} features in all)" if len(idx) > 8 else ""))
        n_nan = int(torch.isnan(t).sum())
        raise ArtifactError(
            f"SAE weights in {str(source)!r}: tensor {name} has {n_bad} non-finite value(s) "
            f"({n_nan} NaN, {n_bad - n_nan} Inf) of {t.numel()}{where}",
            "the SAE is broken (diverged training or a corrupt file): retrain or re-download",
        )


def _finish(sae: SAE[Any], source: Path | str, check: bool = True) -> None:
    if check:
        _check_finite(sae.state_dict().items(), source)
    sae.eval()
    sae.requires_grad_(False)  # an analysis object: no autograd graphs on encode


def _wrap(sae: SAE[Any], spec: str, folder: Path | None, digest: str, *, centre_extra: bool,
          model_fallback: str | None = None) -> LoadedSAE:
    meta = sae.cfg.metadata
    kwargs = meta.get("model_from_pretrained_kwargs") or {}
    centre = centre_extra or (isinstance(kwargs, Mapping)
                              and kwargs.get("center_writing_weights") is True)
    prepend_bos = meta.get("prepend_bos")
    return LoadedSAE(
        sae=sae, spec=spec, path=folder,
        hook_name=meta.get("hook_name") or None,
        model_name=meta.get("model_name") or model_fallback,
        input=SAEInput(centre=bool(centre),
                       prepend_bos=True if prepend_bos is None else bool(prepend_bos)),
        sha256=digest, architecture=str(sae.cfg.architecture()),
    )


def _sha256_tensors(state: Mapping[str, torch.Tensor]) -> str:
    """Hash of named tensors (name, dtype, shape, bytes in name order): stable across runs."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Hub specs


def _hub_error(e: Exception, spec: str, offline: bool, where: str) -> Exception:
    """Translate a hub failure into a steerscreen error (the caller raises it `from e`)."""
    if is_network_error(e):
        why = ("HF_HUB_OFFLINE is set and it is not in the local cache" if offline
               else f"the hub could not be reached ({type(e).__name__})")
        return OfflineError(
            f"SAE spec {spec!r} needs the Hugging Face Hub ({where}), but {why}",
            "download the SAE where the hub is reachable and pass its local folder (cfg.json + "
            "sae_weights.safetensors; `save_sae` writes one from a loaded release), load it "
            "once online so it is cached, or train one with `steerscreen train-sae`",
        )
    name = type(e).__name__
    if name == "GatedRepoError":
        return SpecError(f"SAE spec {spec!r}: {where} is gated on the hub",
                         "accept its licence on huggingface.co and log in (HF_TOKEN)")
    if name in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        return SpecError(f"SAE spec {spec!r}: {where} was not found on the hub",
                         "check the repository name (private repos need HF_TOKEN)")
    if name in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        return ArtifactError(f"SAE spec {spec!r}: a file is missing in {where} ({e})",
                             "check the folder name; a SAELens SAE folder has cfg.json and "
                             "sae_weights.safetensors")
    return ArtifactError(f"SAE spec {spec!r}: loading {where} failed: {name}: {e}",
                         "re-download the SAE (a cached file may be corrupt) or pass a local "
                         "folder")


@dataclass(frozen=True)
class SAEHeader:
    """What an SAE's cfg.json says about it, read without loading weights or SAELens."""

    spec: str
    d_in: int
    d_sae: int
    hook_name: str | None
    model_name: str | None


def read_sae_header(spec: str) -> SAEHeader | None:
    """The cfg.json facts of a local (or already cached ``hf:``) SAE, in milliseconds; None
    when they are not at hand cheaply (``saelens:`` releases, uncached hub SAEs). Every mistake
    in a local folder's files (``steerscreen.saes.files``) raises as in ``load_sae``, so it
    fails before anything loads."""
    spec = spec.strip()
    scheme, rest = _split_scheme(spec)
    if scheme is None or scheme == "local":
        path = _resolve_local(rest, spec) / CFG_FILENAME
    elif scheme == "hf":
        parts = [p for p in rest.strip().strip("/").split("/") if p]
        if len(parts) < 2:
            return None
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache("/".join(parts[:2]),
                                        "/".join([*parts[2:], CFG_FILENAME]))
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    else:
        return None
    # A mistake in the files is refused here, before anything loads or is written.
    cfg = check_folder(path.parent) if scheme is None or scheme == "local" else read_cfg(path)
    meta = cfg.get("metadata") or {}
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    # Pre-6 SAELens configs keep these at the top level; the loader moves them.
    hook, model = (meta.get(k) or cfg.get(k) for k in ("hook_name", "model_name"))
    return SAEHeader(spec, d_in, d_sae, hook if isinstance(hook, str) else None,
                     model if isinstance(model, str) else None)


def check_sae_spec(spec: str) -> None:
    """Validate an SAE spec without loading weights or touching the network: the scheme, a
    local folder's files, that a ``saelens:`` release and id are in SAELens's directory, and the
    shape of an ``hf:`` spec. Raises the error ``load_sae`` would raise for the same mistake."""
    spec = spec.strip()
    scheme, rest = _split_scheme(spec)
    if scheme is None or scheme == "local":
        read_sae_header(spec)  # the folder and both files
    elif scheme == "saelens":
        _release_lookup(rest, spec)
    elif scheme == "hf":
        if len([p for p in rest.strip().strip("/").split("/") if p]) < 2:
            raise SpecError(f"SAE spec {spec!r} is not hf:OWNER/REPO[/SUBFOLDER]",
                            "e.g. hf:jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre")
    else:
        load_sae(spec)  # raises the unknown-scheme error


def _release_lookup(rest: str, spec: str) -> tuple[str, str, Any]:
    """(release, sae_id, directory entry) of ``saelens:RELEASE/SAE_ID``, checked offline."""
    # SAE ids contain slashes (layer_12/width_16k/canonical); release names never do.
    release, sep, sae_id = rest.strip().partition("/")
    if not sep or not release or not sae_id:
        raise SpecError(f"SAE spec {spec!r} is not saelens:RELEASE/SAE_ID",
                        "e.g. saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre")
    directory = saelens_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3)
        raise SpecError(
            f"SAE spec {spec!r}: {release!r} is not a SAELens release"
            + (f" (close: {', '.join(close)})" if close else ""),
            "see sae_lens/pretrained_saes.yaml for release names; for a hub repository in "
            "SAELens format write hf:OWNER/REPO[/SUBFOLDER]",
        )
    lookup = directory[release]
    if sae_id not in lookup.saes_map:
        ids = list(lookup.saes_map)
        close = difflib.get_close_matches(sae_id, ids, n=3) or ids[:5]
        raise SpecError(f"SAE spec {spec!r}: release {release!r} has no SAE id {sae_id!r}",
                        f"valid ids include {', '.join(close)} ({len(ids)} in all)")
    return release, sae_id, lookup


def _load_release(rest: str, spec: str, device: str, dtype: str) -> LoadedSAE:
    from sae_lens import SAE

    release, sae_id, lookup = _release_lookup(rest, spec)
    offline = hub_offline()
    try:
        with offline_mode(offline), _quiet_sae_lens(), _tensors_only_torch_load():
            sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
    except Exception as e:
        raise _hub_error(e, spec, offline, f"repository {lookup.repo_id}") from e
    _finish(sae, spec)
    overrides = (lookup.config_overrides or {}).get("model_from_pretrained_kwargs") or {}
    centre = release.startswith(_CENTRED_RELEASE_PREFIXES) or (
        isinstance(overrides, Mapping) and overrides.get("center_writing_weights") is True)
    return _wrap(sae, spec, None, _sha256_tensors(sae.state_dict()), centre_extra=centre,
                 model_fallback=lookup.model or None)


def _download_hf(rest: str, spec: str) -> tuple[Path, str]:
    """Fetch only the SAELens files of ``OWNER/REPO[/SUBFOLDER]``; returns (folder, repo)."""
    import huggingface_hub

    parts = [p for p in rest.strip().strip("/").split("/") if p]
    if len(parts) < 2:
        raise SpecError(f"SAE spec {spec!r} is not hf:OWNER/REPO[/SUBFOLDER]",
                        "e.g. hf:jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    # Only the SAELens files of that one folder: a repo often holds dozens of SAEs.
    patterns = [f"{sub}/{n}" if sub else n for n in (CFG_FILENAME, WEIGHTS_FILENAME,
                                                      SPARSITY_FILENAME)]
    offline = hub_offline()
    where = f"repository {repo}" + (f" folder {sub}" if sub else "")
    try:
        with offline_mode(offline):
            root = huggingface_hub.snapshot_download(repo, allow_patterns=patterns,
                                                     local_files_only=offline)
    except Exception as e:
        raise _hub_error(e, spec, offline, where) from e
    folder = Path(root) / sub if sub else Path(root)
    if not (folder / CFG_FILENAME).is_file():
        raise ArtifactError(f"SAE spec {spec!r}: {where} has no {CFG_FILENAME}",
                            "point at the folder of one SAE in SAELens format (cfg.json + "
                            "sae_weights.safetensors); other formats load via saelens:RELEASE/ID")
    return folder, repo


# --------------------------------------------------------------------------------------------
# Saving


def save_sae(sae: SAE[Any] | LoadedSAE, folder: str | Path, *,
             extra_metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``sae`` as a SAELens v6 folder (cfg.json + sae_weights.safetensors), atomically.

    ``metadata.sae_lens_version`` is forced to a v6 version (else SAELens would reread the file
    through its pre-6 converter), ``model_name`` and ``hook_name`` are always present (null if
    unknown), and ``extra_metadata`` is merged in last. A :class:`LoadedSAE` also records its
    :class:`SAEInput` so a reload reproduces it. An existing SAE folder is replaced; any other
    non-empty folder is refused. Training SAEs are saved in their inference form.
    """
    import sae_lens
    from packaging.version import InvalidVersion, Version
    from sae_lens import SAE, TrainingSAE

    loaded = sae if isinstance(sae, LoadedSAE) else None
    module = loaded.sae if loaded is not None else sae
    if not isinstance(module, SAE):
        raise TypeError(f"save_sae needs a sae_lens.SAE or LoadedSAE, got {type(module)}")
    folder = user_path(folder)
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"cannot save an SAE to {str(folder)!r}: it is a file",
                            "choose a folder path")
    looks_like_sae = any((folder / n).exists() for n in (CFG_FILENAME, WEIGHTS_FILENAME))
    if folder.is_dir() and any(folder.iterdir()) and not looks_like_sae:
        raise ArtifactError(f"refusing to replace {str(folder)!r}: a non-empty folder that is "
                            "not an SAE folder", "choose a new or empty folder")
    with atomic_dir(folder) as tmp:  # an SAE folder is replaced whole, never half-written
        if isinstance(module, TrainingSAE):
            module.save_inference_model(tmp)  # e.g. JumpReLU log_threshold -> threshold
        else:
            module.save_model(tmp)
        cfg_path = tmp / CFG_FILENAME
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        meta = dict(cfg.get("metadata") or {})
        version = str(meta.get("sae_lens_version") or "")
        try:
            is_v6 = Version(version) >= Version("6.0.0rc0")
        except InvalidVersion:
            is_v6 = False
        if not is_v6:
            meta["sae_lens_version"] = sae_lens.__version__
        cfg.pop("sae_lens_version", None)  # a top-level key would win over metadata's
        meta.setdefault("model_name", loaded.model_name if loaded is not None else None)
        meta.setdefault("hook_name", loaded.hook_name if loaded is not None else None)
        if loaded is not None:
            meta["prepend_bos"] = loaded.input.prepend_bos
            if loaded.input.centre:
                kwargs = dict(meta.get("model_from_pretrained_kwargs") or {})
                kwargs["center_writing_weights"] = True
                meta["model_from_pretrained_kwargs"] = kwargs
        meta.update(extra_metadata or {})
        cfg["metadata"] = meta
        cfg_path.write_text(json.dumps(cfg, indent=2, allow_nan=False), encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------
# Using an SAE on raw residuals


def encode(loaded: LoadedSAE, x: torch.Tensor) -> torch.Tensor:
    """Feature activations ``[..., F]`` (float32) of raw HF residuals ``x [..., D]``.

    Applies :class:`SAEInput` (centring), then ``sae.encode``, which itself applies the SAE's
    own input normalisation and b_dec handling. Runs without autograd.
    """
    x = x.to(device=loaded.sae.W_enc.device, dtype=torch.float32)
    if loaded.input.centre:
        x = x - x.mean(dim=-1, keepdim=True)
    with torch.no_grad():
        return loaded.sae.encode(x).to(torch.float32)


def decoder_directions(loaded: LoadedSAE) -> torch.Tensor:
    """Decoder rows ``W_dec [F, D]`` (float32 copy): each feature's write direction.

    They are the right directions to add to the *raw* residual. For a centred-input SAE the
    rows live in centred space, and they are not assumed to sum to zero; adding a row ``r`` to
    the raw residual changes the centred residual by ``r - mean(r)``, and ``mean(r)`` is a
    multiple of the all-ones vector, which every LayerNorm that reads the residual removes, so
    the model sees the same change as TransformerLens does. For ``layer_norm`` /
    ``constant_norm_rescale`` SAEs the decoder output is rescaled per token by a scalar, which
    changes magnitudes (undo it for raw-unit magnitudes), not directions.
    """
    return loaded.sae.W_dec.detach().to(torch.float32).clone()
