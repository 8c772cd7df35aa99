"""Spec schemes: the one registry of how models, SAEs and corpora are named on the command line.

A spec is ``SCHEME:REST`` (``hf:openai-community/gpt2``), a scheme that is the whole spec (the
corpus ``embedded``), or a bare path. :func:`parse` splits all three kinds the same way; what
``REST`` means, and whether a path exists, is the loader's business (``models.loading``,
``saes.io``, ``corpus``). :func:`forms` lists a kind's forms for help texts and error messages.

The split: the text before the first ``:`` is a scheme when it is a scheme-like name (a letter,
then one or more letters, digits, ``+ . -``: never a drive letter as in ``C:\\``) registered for
that kind; SAE scheme names ignore case (``HF:`` is ``hf:``). Anything else is a bare path
(``scheme`` None), and a scheme-like name that is not registered is kept in ``unknown_scheme``:
model and corpus specs then read the whole text as a path, SAE specs refuse it. Parsing only
looks at the string, as given: the loaders strip surrounding whitespace first, and report a NUL
byte or an odd path themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["model", "sae", "corpus"]

IGNORE_CASE: frozenset[Kind] = frozenset({"sae"})  # kinds whose scheme names ignore case
_SCHEME_NAME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]+")  # 2+ characters: not "C:\"


@dataclass(frozen=True)
class Scheme:
    """One way of naming a model, SAE or corpus. ``name`` None is the bare path."""

    kind: Kind
    name: str | None
    form: str  # as help and error messages write it: "hf:OWNER/REPO[/SUBFOLDER]"
    description: str

    @property
    def takes_argument(self) -> bool:
        """Whether the scheme is ``NAME:REST`` (False for a scheme that is the whole spec)."""
        return self.name is not None and self.form != self.name


@dataclass(frozen=True)
class Spec:
    """A spec split into its scheme and the rest."""

    kind: Kind
    scheme: str | None  # a registered scheme's name (lower case); None for a bare path
    rest: str  # what follows "SCHEME:" ("" for a scheme without argument); the text if bare
    text: str  # the spec as given
    unknown_scheme: str | None = None  # a bare spec's scheme-like prefix, if any


REGISTRY: dict[Kind, dict[str | None, Scheme]] = {"model": {}, "sae": {}, "corpus": {}}


def register(scheme: Scheme) -> Scheme:
    """Add ``scheme`` to its kind's registry (in order: :func:`forms` lists them so)."""
    table = REGISTRY[scheme.kind]
    if scheme.name in table:
        raise ValueError(f"{scheme.kind} scheme {scheme.name!r} is already registered")
    if scheme.name is not None and not (
        _SCHEME_NAME.fullmatch(scheme.name)
        and scheme.name == scheme.name.lower()
        and (scheme.form == scheme.name or scheme.form.startswith(f"{scheme.name}:"))
    ):
        raise ValueError(f"bad scheme {scheme.name!r} (form {scheme.form!r})")
    table[scheme.name] = scheme
    return scheme


def parse(kind: Kind, text: str) -> Spec:
    """Split a ``kind`` spec into its registered scheme (or None: a bare path) and the rest."""
    head, colon, rest = text.partition(":")
    if not _SCHEME_NAME.fullmatch(head):
        return Spec(kind, None, text, text)
    name = head.lower() if kind in IGNORE_CASE else head
    scheme = REGISTRY[kind].get(name)
    if scheme is not None and scheme.takes_argument == bool(colon):
        return Spec(kind, name, rest, text)
    return Spec(kind, None, text, text, unknown_scheme=name if colon else None)


def names(kind: Kind) -> tuple[str, ...]:
    """The registered scheme names of ``kind``, in registration order."""
    return tuple(name for name in REGISTRY[kind] if name is not None)


def forms(kind: Kind) -> list[str]:
    """How each spec of ``kind`` is written, bare path last: for help texts and errors."""
    return [scheme.form for scheme in REGISTRY[kind].values()]


for _scheme in (
    Scheme("model", "embedded", "embedded:NAME", "a model steerscreen ships (models.EMBEDDED)"),
    Scheme("model", "hf", "hf:REPO", "a Hugging Face hub model (offline: the local HF cache)"),
    Scheme("model", "gguf", "gguf:FILE", "a GGUF file transformers can dequantise"),
    Scheme("model", "local", "local:FOLDER", "a Hugging Face model folder (with config.json)"),
    Scheme("model", None, "FOLDER or FILE.gguf", "an existing model folder or GGUF file"),
    Scheme("sae", "local", "local:PATH", "a SAELens SAE folder (cfg.json + weights)"),
    Scheme("sae", "saelens", "saelens:RELEASE/SAE_ID", "an SAE of SAELens's pretrained directory"),
    Scheme("sae", "hf", "hf:OWNER/REPO[/SUBFOLDER]", "a SAELens-format SAE folder on the hub"),
    Scheme("sae", None, "PATH", "a SAELens SAE folder, as local:PATH"),
    Scheme("corpus", "embedded", "embedded", "Python's own documentation (no download)"),
    Scheme("corpus", "text", "text:PATH", "a UTF-8 text file (articles or paragraphs)"),
    Scheme("corpus", "jsonl", "jsonl:PATH[:FIELD]", "JSON lines, the text in FIELD (text)"),
    Scheme("corpus", "hf", "hf:DATASET[:CONFIG]:SPLIT[:FIELD]", "a Hugging Face dataset"),
    Scheme("corpus", None, "an existing file path", "a .jsonl file as jsonl, others as text"),
):
    register(_scheme)


# --- hook points ----------------------------------------------------------------------------
HOOK_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)$")


def parse_hook(name: str) -> tuple[int, str]:
    """A TransformerLens hook name (``blocks.L.hook_KIND``) -> (layer, kind), or SpecError.
    Torch-free, so a config can check its hooks before any model library loads."""
    from steerscreen.errors import SpecError

    m = _HOOK_RE.match(name.strip())
    if m is None:
        raise SpecError(
            f"hook name {name!r} is not a supported hook point",
            "write it as TransformerLens does: blocks.L.hook_resid_pre, "
            "blocks.L.hook_resid_post, blocks.L.hook_attn_out or blocks.L.hook_mlp_out "
            "(e.g. blocks.12.hook_resid_post)",
        )
    return int(m.group(1)), m.group(2)
