"""Tiny random Hugging Face models of every supported architecture, built in the test process."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
)

from steerscreen.models import HookedModel

VOCAB = 97
D = 32
N_LAYERS = 4


def tiny_config(arch: str):
    common = dict(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=N_LAYERS,
                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    if arch == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=D, n_layer=N_LAYERS, n_head=4,
                          n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if arch == "gpt_neox":
        return GPTNeoXConfig(**common, use_parallel_residual=True, rotary_pct=0.25)
    if arch == "llama":
        return LlamaConfig(**common, num_key_value_heads=2)
    if arch == "gemma2":
        return Gemma2Config(**common, num_key_value_heads=2, head_dim=8, sliding_window=4,
                            final_logit_softcapping=30.0, query_pre_attn_scalar=8)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                query_pre_attn_scalar=8)
    raise ValueError(arch)


ARCHS = ["gpt2", "gpt_neox", "llama", "gemma2", "gemma3"]


def tiny_model(arch: str, seed: int = 0) -> HookedModel:
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="eager")
    # Random norm weights so gains and Gemma's (1 + w) actually matter.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or ".ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return HookedModel(hf.float().eval(), tokenizer=CharTokenizer(), name=f"tiny-{arch}", bos_id=1)


def tiny_ids(batch: int = 3, length: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, length), generator=g)
    ids[:, 0] = 1
    return ids


class CharTokenizer:
    """A byte-level stand-in tokenizer for tiny models (ids 2..VOCAB-1)."""

    bos_token_id = 1

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [2 + b % (VOCAB - 2) for b in text.encode()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}
