"""Model specs and loading: fast spec checks, and the embedded models end to end (slow)."""

from __future__ import annotations

import pytest
import torch

from steerscreen.errors import OfflineError, SpecError
from steerscreen.models import ModelSpec, describe, load_model
from steerscreen.models.loading import _bos_id


def test_parse_specs(tmp_path):
    assert ModelSpec.parse("embedded:smollm2-135m").name == "smollm2-135m"
    assert ModelSpec.parse("hf:openai-community/gpt2").name == "gpt2"
    (tmp_path / "config.json").write_text("{}")
    assert ModelSpec.parse(str(tmp_path)).scheme == "local"
    assert ModelSpec.parse(f"local:{tmp_path}").scheme == "local"
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF")
    assert ModelSpec.parse(f"gguf:{g}").name == "m"


@pytest.mark.parametrize("spec, match", [
    ("nonsense", "not recognised"),
    ("embedded:gpt5", "no embedded model"),
    ("embedded:", "names no model"),
    ("gguf:/no/such/file.gguf", "does not exist"),
    ("local:/no/such/folder", "no config.json"),
])
def test_bad_specs(spec, match):
    with pytest.raises(SpecError, match=match):
        ModelSpec.parse(spec)


def test_bad_dtype_and_device():
    with pytest.raises(SpecError, match="dtype"):
        load_model("embedded:smollm2-135m", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(SpecError, match="CUDA"):
            load_model("embedded:smollm2-135m", device="cuda")


def test_hub_spec_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(OfflineError, match="hub"):
        load_model("hf:openai-community/gpt2-not-cached")


class _Tok:
    """Minimal tokenizer stand-in for the BOS rule."""

    def __init__(self, vocab, bos=None, eos=None, adds_bos=False):
        self.vocab, self.bos_token_id, self.eos_token_id = vocab, bos, eos
        self.unk_token_id, self.adds_bos = None, adds_bos

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([self.bos_token_id] if self.adds_bos else []) + [5]}

    def convert_tokens_to_ids(self, tok):
        return self.vocab.get(tok)


def test_bos_rule():
    # GPT-2 / Pythia: no BOS added by the tokenizer -> the <|endoftext|> separator.
    assert _bos_id(_Tok({"<|endoftext|>": 50256}, bos=50256, eos=50256)) == 50256
    # Llama 3 / Gemma: the tokenizer adds its BOS -> that BOS.
    assert _bos_id(_Tok({}, bos=128000, eos=128001, adds_bos=True)) == 128000
    # No separator token at all -> BOS, then EOS.
    assert _bos_id(_Tok({}, bos=None, eos=7)) == 7


@pytest.mark.slow
@pytest.mark.parametrize("spec, n_layers, d_model", [
    ("embedded:smollm2-135m", 30, 576),
    ("embedded:gemma3-270m", 18, 640),
])
def test_embedded_models(spec, n_layers, d_model):
    model = load_model(spec)
    info = describe(model, spec)
    assert (info["n_layers"], info["d_model"]) == (n_layers, d_model)
    ids = torch.tensor([[model.bos_id, *model.tokenize("The cat sat on the mat because it was")]])
    mid = n_layers // 2
    res = model.forward(ids, read=[f"blocks.{mid}.hook_resid_post"])
    hs = model.model(ids, output_hidden_states=True).hidden_states
    assert torch.equal(res.acts[f"blocks.{mid}.hook_resid_post"], hs[mid + 1])
    resumed = model.forward(ids, start_at=(f"blocks.{mid}.hook_resid_post",
                                           res.acts[f"blocks.{mid}.hook_resid_post"]))
    torch.testing.assert_close(resumed.logits, res.logits, rtol=0, atol=1e-4)
    # A real model predicts real text far better than chance.
    logp = torch.log_softmax(res.logits[0, :-1], -1).gather(-1, ids[0, 1:, None])
    assert logp.mean().exp() > 50 / model.vocab_size
    u = model.unembed()
    assert u.W_U.shape == (d_model, model.vocab_size)
    if model.model_type.startswith("gemma"):
        assert torch.allclose(u.gain, 1 + model.model.model.norm.weight.float())
