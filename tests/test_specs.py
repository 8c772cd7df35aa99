"""The spec-scheme registry: one split for model, SAE and corpus specs, errors as before."""

from __future__ import annotations

import pytest

from steerscreen import specs
from steerscreen.corpus import check_corpus_spec, load_corpus
from steerscreen.errors import CorpusError, SpecError
from steerscreen.models import ModelSpec
from steerscreen.saes.io import _split_scheme, check_sae_spec, load_sae
from steerscreen.specs import Scheme, Spec, parse

KINDS = ("model", "sae", "corpus")
REGISTERED = [s for kind in KINDS for s in specs.REGISTRY[kind].values() if s.name is not None]


def test_scheme_names_and_forms() -> None:
    assert specs.names("model") == ("embedded", "hf", "gguf", "local")
    assert specs.names("sae") == ("local", "saelens", "hf")
    assert specs.names("corpus") == ("embedded", "text", "jsonl", "hf")
    assert specs.forms("sae") == ["local:PATH", "saelens:RELEASE/SAE_ID",
                                  "hf:OWNER/REPO[/SUBFOLDER]", "PATH"]
    assert " | ".join(specs.forms("corpus")) == (
        "embedded | text:PATH | jsonl:PATH[:FIELD] | hf:DATASET[:CONFIG]:SPLIT[:FIELD] | an "
        "existing file path")


@pytest.mark.parametrize("scheme", REGISTERED, ids=lambda s: f"{s.kind}-{s.name}")
def test_every_registered_scheme_parses(scheme: Scheme) -> None:
    assert scheme.description and scheme.form in specs.forms(scheme.kind)
    if not scheme.takes_argument:  # the corpus `embedded`: the whole spec, never with ':'
        assert parse(scheme.kind, scheme.name) == Spec(scheme.kind, scheme.name, "", scheme.name)
        assert parse(scheme.kind, f"{scheme.name}:x").scheme is None
        return
    for rest in ("", "x", "a/b:c", "C:\\d\\e", " pad ", "a\x00b", "::"):
        text = f"{scheme.name}:{rest}"
        assert parse(scheme.kind, text) == Spec(scheme.kind, scheme.name, rest, text)
    assert parse(scheme.kind, scheme.name).scheme is None  # no ':': a bare path


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", ["", "/abs/path", "./rel:ative", "C:\\Users\\x", "c:/x",
                                  "~nobody/x", "a\x00b", "x.gguf", " hf:x", "1a:x", "-ab:x"])
def test_bare_paths(kind: specs.Kind, text: str) -> None:
    assert parse(kind, text) == Spec(kind, None, text, text)  # nothing scheme-like before ':'


def test_case_and_unknown_schemes() -> None:
    # SAE scheme names ignore case; model and corpus scheme names never did.
    assert parse("sae", "HF:a/b") == Spec("sae", "hf", "a/b", "HF:a/b")
    assert _split_scheme("Local: x ") == ("local", " x ")
    assert parse("model", "HF:a/b") == Spec("model", None, "HF:a/b", "HF:a/b", "HF")
    assert parse("corpus", "TEXT:a").scheme is None
    assert parse("corpus", "Embedded").scheme is None
    # A scheme-like prefix (2+ characters) no scheme has: kept for SAE specs to refuse.
    assert parse("sae", "S3:bucket/x") == Spec("sae", None, "S3:bucket/x", "S3:bucket/x", "s3")
    assert _split_scheme("S3:bucket/x") == ("s3", "bucket/x")
    assert parse("sae", "ab:x").unknown_scheme == "ab"
    assert parse("sae", "a:x").unknown_scheme is None
    assert parse("corpus", "embedded:x").unknown_scheme == "embedded"


def test_errors_are_unchanged(tmp_path, monkeypatch) -> None:
    fix = ("write a local SAELens folder (PATH or local:PATH), saelens:RELEASE/SAE_ID (e.g. "
           "saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre) or hf:OWNER/REPO[/SUBFOLDER]")
    for check in (load_sae, check_sae_spec):
        with pytest.raises(SpecError) as e:
            check(" HTTP://x/y ")
        assert (e.value.what, e.value.fix) == (
            "SAE spec 'HTTP://x/y' uses the unknown scheme 'http'", fix)
    with pytest.raises(SpecError) as e:
        check_sae_spec("local:a\x00b")
    assert e.value.what == "SAE spec 'local:a\\x00b' holds a NUL byte"
    with pytest.raises(SpecError) as e:
        ModelSpec.parse(" s3:x ")
    assert e.value.what == "model spec 's3:x' is not recognised"
    with pytest.raises(SpecError, match="names no model after 'hf:'"):
        ModelSpec.parse("hf:")
    for check in (load_corpus, check_corpus_spec):
        with pytest.raises(SpecError) as e:
            check("ftp:x")
        assert (e.value.what, e.value.fix) == (
            "unknown corpus spec 'ftp:x'", f"use one of: {' | '.join(specs.forms('corpus'))}")
        with pytest.raises(SpecError, match="unknown corpus spec 'text:'"):
            check("text:")  # an empty argument is no `text:` spec
    # Schemes are matched before bare paths: `text:x` never means a file named "text:x".
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text:x").write_text("a document\n")
    with pytest.raises(CorpusError, match="corpus file not found: x"):
        load_corpus("text:x")
    assert ModelSpec.parse("  hf:org/Repo ").target == "org/Repo"


def test_register_checks_its_input(monkeypatch) -> None:
    monkeypatch.setitem(specs.REGISTRY, "model", dict(specs.REGISTRY["model"]))
    with pytest.raises(ValueError, match="already registered"):
        specs.register(Scheme("model", "hf", "hf:REPO", "again"))
    for name, form in (("s", "s:X"), ("Up", "Up:X"), ("ok", "other:X"), ("a_b", "a_b:X")):
        with pytest.raises(ValueError, match="bad scheme"):
            specs.register(Scheme("model", name, form, "bad"))
    new = specs.register(Scheme("model", "s3", "s3:BUCKET/KEY", "an object store"))
    assert parse("model", "s3:b/k") == Spec("model", "s3", "b/k", "s3:b/k")
    assert specs.forms("model")[-1] == new.form
