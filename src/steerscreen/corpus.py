"""Text corpora: loading, splitting by document, and cutting into fixed-length contexts.

The method (docs/method.md) needs three disjoint document splits (stats, calibration, steering) and
contexts that never cross a document boundary, so a corpus is kept as a tuple of documents until
the very end.

Corpus specs accepted by :func:`load_corpus`:

- ``embedded`` (default): the Python reference-manual topics plus standard-library docstrings,
  read from the running interpreter, so it exists on any machine without a download.
- ``text:PATH``: a UTF-8 file, split into WikiText articles (`` = Title = `` lines) when it has
  them, otherwise into blank-line separated paragraphs.
- ``jsonl:PATH[:FIELD]``: one JSON object per line, the document in FIELD (default ``text``).
- ``hf:DATASET[:CONFIG]:SPLIT[:FIELD]``: a Hugging Face dataset (needs the network).
- a bare existing path: ``.jsonl`` files as jsonl, anything else as text.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import itertools
import json
import math
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from steerscreen import specs
from steerscreen.config.stages import DEFAULT_CORPUS as DEFAULT_SPEC
from steerscreen.errors import CorpusError, OfflineError, SpecError
from steerscreen.files import path_kind
from steerscreen.hub import hub_offline, is_network_error

SCHEMES = specs.names("corpus")  # ("embedded", "text", "jsonl", "hf")
DEFAULT_SPLITS: Mapping[str, float] = {"stats": 0.6, "calibration": 0.1, "steering": 0.3}

_VALID_SPECS = " | ".join(specs.forms("corpus"))  # embedded | text:PATH | ... | a file path
_OFFLINE_FIX = (
    "use a local corpus instead: `embedded` (built in), `text:PATH` or `jsonl:PATH[:FIELD]`"
)


@dataclass(frozen=True)
class Corpus:
    """An ordered tuple of documents plus what is needed to name it in a manifest."""

    spec: str
    name: str
    documents: tuple[str, ...]
    sha256: str
    description: str

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def n_chars(self) -> int:
        return sum(len(d) for d in self.documents)


def load_corpus(spec: str = DEFAULT_SPEC) -> Corpus:
    """Load the corpus named by ``spec`` (see the module docstring for the forms)."""
    spec = spec.strip()
    parsed = specs.parse("corpus", spec)
    scheme, rest = parsed.scheme, parsed.rest
    if scheme == "embedded":
        docs, name, desc = _embedded()
    elif scheme == "text" and rest:
        docs, name, desc = _load_text(Path(rest))
    elif scheme == "jsonl" and rest:
        path, field = _split_jsonl_spec(rest)
        docs, name, desc = _load_jsonl(path, field)
    elif scheme == "hf" and rest:
        docs, name, desc = _load_hf(rest)
    elif spec and path_kind(Path(spec)) != "missing":
        # A bare path: checked after the schemes so `text:x` never means a file named "text:x".
        path = Path(spec)
        if path.suffix == ".jsonl":
            docs, name, desc = _load_jsonl(path, "text")
        else:
            docs, name, desc = _load_text(path)
    elif spec and ":" not in spec and (os.sep in spec or "/" in spec or Path(spec).suffix):
        raise CorpusError(f"corpus file not found: {spec}", "check the path, or use `embedded`")
    else:
        raise SpecError(f"unknown corpus spec {spec!r}", f"use one of: {_VALID_SPECS}")
    if not docs:
        raise CorpusError(
            f"corpus {spec!r} has no non-empty documents", "point it at a file with some text in it"
        )
    return Corpus(
        spec=spec, name=name, documents=docs, sha256=_hash_documents(docs), description=desc
    )


def check_corpus_spec(spec: str) -> None:
    """Validate a corpus spec without reading it (files must exist; hub specs are not fetched).
    Raises the error ``load_corpus`` would raise for the same mistake."""
    spec = spec.strip()
    parsed = specs.parse("corpus", spec)
    scheme, rest = parsed.scheme, parsed.rest
    if scheme == "embedded":
        return
    if scheme in ("text", "jsonl") and rest:
        _check_file(Path(_split_jsonl_spec(rest)[0] if scheme == "jsonl" else rest))
        return
    if scheme == "hf" and rest:
        _parse_hf(rest)
        return
    if spec and path_kind(Path(spec)) != "missing":
        _check_file(Path(spec))
        return
    load_corpus(spec)  # raises the matching error


def describe(corpus: Corpus) -> dict[str, Any]:
    """The manifest entry for a corpus."""
    return {
        "spec": corpus.spec,
        "name": corpus.name,
        "n_documents": len(corpus.documents),
        "n_chars": corpus.n_chars,
        "sha256": corpus.sha256,
        "description": corpus.description,
    }


def _hash_documents(docs: Sequence[str]) -> str:
    # Length-prefixed so that document boundaries are part of the hash.
    h = hashlib.sha256()
    for d in docs:
        b = d.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


# --- embedded: the interpreter's own documentation --------------------------------------------

# Directories of the stdlib that are tests, tools, vendored code or data rather than prose.
_STDLIB_SKIP = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "site-packages",
        "dist-packages",
        "turtledemo",
        "ensurepip",
        "__phello__",
        "pydoc_data",
        "encodings",
        "__pycache__",
    }
)
_MIN_DOCSTRING = 200  # shorter docstrings are mostly one-line summaries: little running text
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@cache  # in-process only: parsing the stdlib takes ~2-3 s, and the result never changes
def _embedded() -> tuple[tuple[str, ...], str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data out
        topics = {}
    topic_docs = [topics[k].strip() for k in sorted(topics) if topics[k].strip()]
    module_docs = _stdlib_docstrings(Path(sysconfig.get_paths()["stdlib"]))
    docs = tuple(topic_docs + module_docs)
    py = ".".join(map(str, sys.version_info[:3]))
    desc = (
        f"Python {py} documentation, built from the interpreter with no download: "
        f"{len(topic_docs)} reference-manual topics (pydoc_data.topics) and the docstrings "
        f"(>= {_MIN_DOCSTRING} chars) of {len(module_docs)} standard-library modules, one "
        f"document each; {sum(map(len, docs)):,} characters. Technical English with code; "
        "it changes with the Python version (see sha256)."
    )
    return docs, "embedded", desc


def _stdlib_docstrings(root: Path) -> list[str]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP and not d.startswith("config-")]
        files += [
            Path(dirpath, f) for f in filenames if f.endswith(".py") and not f.startswith("test_")
        ]
    files.sort(key=lambda p: p.relative_to(root).as_posix())  # deterministic order
    docs = []
    # The cyclic GC otherwise rescans every AST node many times and triples the build time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for path in files:
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError, OSError):
                continue  # e.g. a file for another Python version: not worth failing over
            parts = _docstrings(tree)
            if parts:
                docs.append("\n\n".join(dict.fromkeys(parts)))  # dedupe, keep order
    finally:
        if gc_was_enabled:
            gc.enable()
    return docs


def _docstrings(tree: ast.Module) -> list[str]:
    """Module, class and method docstrings in source order (functions nested in functions skipped
    since they are rare and mostly private helpers)."""
    out: list[str] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if doc and len(doc) >= _MIN_DOCSTRING:
            out.append(doc)
        if isinstance(node, ast.Module | ast.ClassDef):
            stack.extend(c for c in reversed(node.body) if isinstance(c, _DOC_NODES))
    return out


# --- local files ----------------------------------------------------------------------------

# A WikiText article title: " = Title = " with a single "=" each side; " = = Sub = = " is a section.
_WIKI_TITLE = re.compile(r"^ ?= (?!=)(?:[^\n]*?[^=\n])? = ?$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def _check_file(path: Path) -> None:
    kind = path_kind(path)
    if kind != "file":
        what = {"missing": "not found", "folder": "is a directory"}.get(
            kind, f"is a {kind}, not a regular file")
        raise CorpusError(f"corpus file {what}: {path}", "check the path, or use `embedded`")


def _read_utf8(path: Path) -> str:
    _check_file(path)
    data = path.read_bytes()
    nul = data.find(b"\x00")
    if nul >= 0:
        raise CorpusError(
            f"{path} looks binary (NUL byte at byte offset {nul})",
            "give a plain UTF-8 text file (convert it first if it is a document format)",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{path} is not UTF-8: invalid byte 0x{data[e.start]:02x} at byte offset {e.start}",
            "re-encode it, e.g. `iconv -f latin1 -t utf-8 IN > OUT`",
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def split_text(text: str) -> tuple[str, ...]:
    """Split text into WikiText articles if it has article titles, else into paragraphs."""
    starts = [m.start() for m in _WIKI_TITLE.finditer(text)]
    if starts:
        bounds = [0, *starts, len(text)]  # text before the first title is its own document
        pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    else:
        pieces = _BLANK_LINES.split(text)
    return tuple(p.strip() for p in pieces if p.strip())


def _load_text(path: Path) -> tuple[tuple[str, ...], str, str]:
    text = _read_utf8(path)
    docs = split_text(text)
    style = "WikiText articles" if _WIKI_TITLE.search(text) else "blank-line separated paragraphs"
    return docs, path.stem, f"text file {path.name}: {len(docs)} documents ({style})"


def _split_jsonl_spec(rest: str) -> tuple[Path, str]:
    # The path itself may contain ':'; only treat the last piece as FIELD if the whole is no file.
    if Path(rest).exists() or ":" not in rest:
        return Path(rest), "text"
    path, field = rest.rsplit(":", 1)
    return Path(path), field or "text"


def _load_jsonl(path: Path, field: str) -> tuple[tuple[str, ...], str, str]:
    text = _read_utf8(path)
    docs = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(
                f"{path} line {lineno} is not JSON ({e.msg})", "give one JSON object per line"
            ) from None
        if not isinstance(record, dict) or field not in record:
            keys = sorted(record) if isinstance(record, dict) else f"a {type(record).__name__}"
            raise CorpusError(
                f"{path} line {lineno} has no field {field!r} (it has: {keys})",
                f"name the text field: `jsonl:{path}:FIELD`",
            )
        value = record[field]
        if not isinstance(value, str):
            raise CorpusError(
                f"{path} line {lineno}: field {field!r} is not a string",
                "name a field that holds the document text",
            )
        if value.strip():
            docs.append(value.strip())
    return tuple(docs), path.stem, f"jsonl file {path.name}, field {field!r}: {len(docs)} documents"


# --- Hugging Face datasets ------------------------------------------------------------------

_SPLIT_NAMES = frozenset({"train", "test", "validation", "valid", "val", "dev"})


def _parse_hf(rest: str) -> tuple[str, str | None, str, str]:
    # Split on ':' outside brackets, so split slices like `train[:1000]` survive.
    parts = re.split(r":(?![^\[]*\])", rest)
    is_split = [p.split("[", 1)[0] in _SPLIT_NAMES or "[" in p for p in parts]
    if len(parts) == 2:
        return parts[0], None, parts[1], "text"
    if len(parts) == 3:  # DATASET:CONFIG:SPLIT unless only the middle looks like a split
        if is_split[1] and not is_split[2]:
            return parts[0], None, parts[1], parts[2]
        return parts[0], parts[1], parts[2], "text"
    if len(parts) == 4:
        return parts[0], parts[1], parts[2], parts[3]
    raise SpecError(
        f"cannot parse hf spec 'hf:{rest}'",
        "write it as hf:DATASET[:CONFIG]:SPLIT[:FIELD], e.g. "
        "hf:Salesforce/wikitext:wikitext-2-raw-v1:test",
    )


def _load_hf(rest: str) -> tuple[tuple[str, ...], str, str]:
    dataset, config, split, field = _parse_hf(rest)
    if hub_offline(datasets=True):
        raise OfflineError(
            f"corpus 'hf:{rest}' needs the network, but HF offline mode is set", _OFFLINE_FIX
        )
    try:
        import datasets  # lazy: heavy, and only this spec needs it
    except ImportError:
        raise SpecError(
            "corpus spec hf: needs the `datasets` package",
            f"`pip install datasets`, or {_OFFLINE_FIX}",
        ) from None
    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as e:  # the hub raises many types; sort them into offline vs bad spec
        if is_network_error(e):
            raise OfflineError(
                f"could not download 'hf:{rest}' ({type(e).__name__}: {e})", _OFFLINE_FIX
            ) from None
        raise SpecError(
            f"could not load 'hf:{rest}' ({type(e).__name__}: {e})",
            "check the dataset, config and split names on the hub",
        ) from None
    if field not in ds.column_names:
        raise CorpusError(
            f"dataset 'hf:{rest}' has no column {field!r} (it has: {ds.column_names})",
            "name the text column: hf:DATASET[:CONFIG]:SPLIT:FIELD",
        )
    texts = ds[field]
    if "wikitext" in dataset.lower():  # one row per line: regroup into articles
        docs = split_text("\n".join(texts))
    else:
        docs = tuple(t.strip() for t in texts if isinstance(t, str) and t.strip())
    name = "/".join(p for p in (dataset, config, split) if p)
    return docs, name, f"Hugging Face dataset {name}, column {field!r}: {len(docs)} documents"


# --- splits ------------------------------------------------------------------------------------


def split_documents(
    n_docs: int, fractions: Mapping[str, float] = DEFAULT_SPLITS, seed: int = 0
) -> dict[str, np.ndarray]:
    """Split document indices 0..n_docs-1 into disjoint named splits, by a seeded shuffle.

    Split sizes are ``floor(fraction * n_docs)``; when the fractions sum to 1 the leftover
    documents go to the largest remainders so every document is used. Every split gets at least
    one document (taken from the split with the most to spare). Inside a split, indices are in
    shuffle order, so taking a prefix of a split is itself a random sample.
    """
    if not fractions:
        raise SpecError("no splits given", "give at least one split name and fraction")
    names = list(fractions)
    f = np.array([float(fractions[k]) for k in names])
    if not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise SpecError(
            f"split fractions must be positive, got {dict(fractions)}",
            "give every split a fraction in (0, 1]",
        )
    if f.sum() > 1 + 1e-6:
        raise SpecError(
            f"split fractions sum to {f.sum():.4g} > 1", "make the fractions sum to at most 1"
        )
    if n_docs < len(names):
        raise CorpusError(
            f"{n_docs} documents cannot fill {len(names)} splits ({', '.join(names)})",
            "use a corpus with more documents (or fewer splits)",
        )
    target = f * n_docs
    sizes = np.floor(target + 1e-9).astype(np.int64)
    if f.sum() > 1 - 1e-6:  # fractions cover everything: hand out the rounding leftovers
        order = np.argsort(-(target - sizes), kind="stable")
        sizes[order[: n_docs - sizes.sum()]] += 1
    for i in np.flatnonzero(sizes == 0):
        if sizes.sum() == n_docs:  # no unused documents left: take one from the most oversized
            donor = int(np.argmax(np.where(sizes > 1, sizes - target, -np.inf)))
            sizes[donor] -= 1
        sizes[i] = 1
    perm = np.random.default_rng(seed).permutation(n_docs).astype(np.int64)
    ends = np.cumsum(sizes)
    return {k: perm[e - s : e] for k, s, e in zip(names, sizes, ends, strict=True)}


# --- contexts ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Contexts:
    """Fixed-length token contexts, each ``[bos] + a window of one document``."""

    token_ids: np.ndarray  # int64 [N, T]
    doc_ids: np.ndarray  # int64 [N], index into the documents given to make_contexts
    starts: np.ndarray  # int64 [N], token offset of the window inside its document

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def context_len(self) -> int:
        return int(self.token_ids.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.size)


def max_contexts(documents: Sequence[str], context_len: int) -> int:
    """An upper bound on the contexts of ``context_len`` tokens that ``documents`` can give,
    for any tokenizer, without tokenizing.

    A token covers at least one UTF-8 byte (byte-level BPE, SentencePiece with byte fallback);
    two more per document allow for a dummy-prefix token. So when even this bound is below a
    request, the request is impossible, and that is known before a model is loaded.
    """
    window = max(context_len - 1, 1)
    return sum((len(d.encode("utf-8")) + 2) // window for d in documents)


def make_contexts(
    documents: Sequence[str],
    tokenize: Callable[[str], Sequence[int]],
    bos_id: int,
    context_len: int,
    n_contexts: int | None = None,
    n_tokens: int | None = None,
    stride: int | None = None,
) -> Contexts:
    """Cut documents, in order, into contexts of exactly ``context_len`` tokens.

    Each context is ``[bos_id]`` plus ``context_len - 1`` consecutive tokens of one document, so no
    context crosses a document boundary; windows start every ``stride`` tokens (default: no
    overlap) and a document shorter than one window yields nothing. Documents are tokenised one at
    a time and only until ``n_contexts`` contexts, or at least ``n_tokens`` tokens (BOS included),
    are collected; with neither, the whole corpus is used.
    """
    if context_len < 2:
        raise SpecError(
            f"context_len must be >= 2, got {context_len}",
            "a context is BOS plus at least one document token",
        )
    window = context_len - 1
    stride = window if stride is None else stride
    if stride < 1:
        raise SpecError(f"stride must be >= 1, got {stride}", "use a positive stride")
    for label, value in (("n_contexts", n_contexts), ("n_tokens", n_tokens)):
        if value is not None and value < 1:
            raise SpecError(f"{label} must be >= 1, got {value}", f"omit {label} or raise it")
    wanted = math.inf if n_contexts is None else n_contexts
    if n_tokens is not None:
        wanted = min(wanted, math.ceil(n_tokens / context_len))

    rows: list[list[int]] = []
    doc_ids: list[int] = []
    starts: list[int] = []
    for d, text in enumerate(documents):
        if len(rows) >= wanted:
            break
        ids = list(tokenize(text))
        for s in range(0, len(ids) - window + 1, stride):
            rows.append([bos_id, *ids[s : s + window]])
            doc_ids.append(d)
            starts.append(s)
            if len(rows) >= wanted:
                break

    if not rows or (n_contexts is not None and len(rows) < n_contexts):
        asked = f"{n_contexts} were requested" if n_contexts is not None else "any were needed"
        raise CorpusError(
            f"only {len(rows)} contexts of {context_len} tokens fit in {len(documents)} documents "
            f"(contexts never cross documents), but {asked}",
            "use a corpus with more (or longer) documents, shorter contexts, or fewer contexts",
        )
    return Contexts(
        token_ids=np.asarray(rows, dtype=np.int64).reshape(len(rows), context_len),
        doc_ids=np.asarray(doc_ids, dtype=np.int64),
        starts=np.asarray(starts, dtype=np.int64),
    )
