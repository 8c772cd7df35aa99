"""Inputs the CLI can load from disk: a tiny llama folder (weights + tokenizer), SAEs, corpora."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from tests.stats.test_stage import make_corpus, make_sae
from tests.tiny_models import tiny_model

CHARS = " abcdefghijklmnopqrstuvwxyz.,"


def save_tiny_llama(folder: Path, *, nan_layer: int | None = None) -> Path:
    """A random tiny llama that ``local:FOLDER`` loads, with a one-character-per-token tokenizer.

    ``nan_layer``: poison that layer's MLP so its output (and every later residual) is NaN.
    The folder's name is the model's name, so SAEs from ``make_sae`` (``tiny-llama``) pair."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = tiny_model("llama")
    if nan_layer is not None:
        with torch.no_grad():
            model.model.model.layers[nan_layer].mlp.down_proj.weight.fill_(float("nan"))
    vocab = {"<unk>": 0, "<s>": 1} | {c: i + 2 for i, c in enumerate(CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.model.save_pretrained(folder)
    hf_tok.save_pretrained(folder)
    return folder


__all__ = ["make_corpus", "make_sae", "save_tiny_llama"]
