"""The hook adapter on tiny random models of all five architectures."""

from __future__ import annotations

import pytest
import torch

from steerscreen.errors import SpecError
from steerscreen.models import HookPoint
from tests.tiny_models import ARCHS, N_LAYERS, tiny_ids, tiny_model


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return tiny_model(request.param)


def test_parse_hook_names():
    hp = HookPoint.parse("blocks.3.hook_resid_post")
    assert (hp.layer, hp.kind, hp.name) == (3, "resid_post", "blocks.3.hook_resid_post")
    with pytest.raises(SpecError, match="TransformerLens"):
        HookPoint.parse("blocks.3.resid_post")
    with pytest.raises(SpecError, match="has 4 layers"):
        HookPoint.parse("blocks.4.hook_resid_pre", n_layers=4)


def test_reads_match_hidden_states_of_the_same_layer(model):
    ids = tiny_ids()
    hooks = [f"blocks.{layer}.hook_{k}" for layer in range(N_LAYERS)
             for k in ("resid_pre", "resid_post")]
    res = model.forward(ids, read=hooks)
    hs = model.model(ids, output_hidden_states=True).hidden_states
    for layer in range(N_LAYERS):
        assert torch.equal(res.acts[f"blocks.{layer}.hook_resid_pre"], hs[layer])
    # hidden_states[N] has the final norm applied, so resid_post of the last layer is not in it.
    for layer in range(N_LAYERS - 1):
        assert torch.equal(res.acts[f"blocks.{layer}.hook_resid_post"], hs[layer + 1])
    assert not torch.allclose(res.acts[f"blocks.{N_LAYERS - 1}.hook_resid_post"], hs[N_LAYERS])


def test_attn_and_mlp_out_decompose_the_residual(model):
    # resid_post = resid_pre + attn_out + mlp_out in every architecture (sequential or parallel);
    # hooking Gemma's raw mlp instead of its post-feedforward norm would break this.
    ids = tiny_ids()
    hooks = [f"blocks.{layer}.hook_{k}" for layer in range(N_LAYERS)
             for k in ("resid_pre", "resid_post", "attn_out", "mlp_out")]
    a = model.forward(ids, read=hooks).acts
    for layer in range(N_LAYERS):
        total = sum(a[f"blocks.{layer}.hook_{k}"] for k in ("resid_pre", "attn_out", "mlp_out"))
        torch.testing.assert_close(total, a[f"blocks.{layer}.hook_resid_post"],
                                   rtol=1e-5, atol=1e-5)


def test_zero_delta_changes_nothing(model):
    ids = tiny_ids()
    clean = model.forward(ids).logits
    for hook in ("blocks.1.hook_resid_pre", "blocks.2.hook_resid_post", "blocks.1.hook_mlp_out",
                 "blocks.0.hook_attn_out"):
        edited = model.forward(ids, write={hook: lambda x: x + torch.zeros_like(x)}).logits
        assert torch.equal(clean, edited), hook


def test_write_changes_downstream_only(model):
    ids = tiny_ids()
    delta = torch.randn(model.d_model)
    res = model.forward(ids, read=["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"],
                        write={"blocks.2.hook_resid_pre": lambda x: x + delta})
    clean = model.forward(ids, read=["blocks.1.hook_resid_post"])
    assert torch.equal(res.acts["blocks.1.hook_resid_post"], clean.acts["blocks.1.hook_resid_post"])
    torch.testing.assert_close(res.acts["blocks.2.hook_resid_pre"],
                               clean.acts["blocks.1.hook_resid_post"] + delta)
    assert not torch.allclose(res.logits, clean.logits)


def test_early_stop_and_start_from_cache(model):
    ids = tiny_ids()
    full = model.forward(ids, read=["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"])
    early = model.forward(ids, read=["blocks.1.hook_resid_post"], logits=False)
    assert early.logits is None
    assert torch.equal(early.acts["blocks.1.hook_resid_post"],
                       full.acts["blocks.1.hook_resid_post"])
    for start in ("blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"):
        resumed = model.forward(ids, start_at=(start, full.acts[start]))
        torch.testing.assert_close(resumed.logits, full.logits, rtol=0, atol=1e-6)
    last = model.forward(ids, read=[f"blocks.{N_LAYERS - 1}.hook_resid_post"])
    fin = model.forward(ids, start_at=(f"blocks.{N_LAYERS - 1}.hook_resid_post",
                                       last.acts[f"blocks.{N_LAYERS - 1}.hook_resid_post"]))
    torch.testing.assert_close(fin.logits, last.logits, rtol=0, atol=1e-5)


def test_logits_from_unembeds_only_later_positions(model):
    ids = tiny_ids()
    full = model.forward(ids, read=["blocks.1.hook_resid_post"])
    late = model.forward(ids, logits_from=1)
    assert late.logits.shape == (ids.shape[0], ids.shape[1] - 1, full.logits.shape[-1])
    torch.testing.assert_close(late.logits, full.logits[:, 1:], rtol=0, atol=1e-6)
    for start in ("blocks.1.hook_resid_post", f"blocks.{N_LAYERS - 1}.hook_resid_post"):
        r = model.forward(ids, read=[start], logits=False).acts[start]
        resumed = model.forward(ids, start_at=(start, r), logits_from=3)
        torch.testing.assert_close(resumed.logits, full.logits[:, 3:], rtol=0, atol=1e-5)


def test_start_from_cache_skips_lower_layers(model):
    ids = tiny_ids()
    r = model.forward(ids, read=["blocks.2.hook_resid_pre"], logits=False)
    calls = []
    lower = [model._module(HookPoint(layer, "mlp_out")) for layer in (0, 1)]
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in lower]
    try:
        model.forward(ids, start_at=("blocks.2.hook_resid_pre", r.acts["blocks.2.hook_resid_pre"]))
        assert calls == []  # no sublayer below the start ran
        model.forward(ids)
        assert len(calls) == 2  # and the layers' own forwards are back afterwards
    finally:
        for h in handles:
            h.remove()


def test_steered_start_equals_steered_full_forward(model):
    ids = tiny_ids()
    delta = torch.randn(model.d_model)
    full = model.forward(ids, write={"blocks.2.hook_resid_pre": lambda x: x + delta})
    r = model.forward(ids, read=["blocks.2.hook_resid_pre"], logits=False)
    from_cache = model.forward(ids, start_at=("blocks.2.hook_resid_pre",
                                              r.acts["blocks.2.hook_resid_pre"] + delta))
    torch.testing.assert_close(from_cache.logits, full.logits, rtol=0, atol=1e-6)


def test_unembed_reproduces_the_final_norm(model):
    # The linearised direct-logit path: for a residual x, final_norm(x) @ W_U equals
    # (x_centred / scale) * gain @ W_U (+ the LayerNorm bias term), before any softcap.
    ids = tiny_ids()
    last = f"blocks.{N_LAYERS - 1}.hook_resid_post"
    x = model.forward(ids, read=[last]).acts[last]
    u = model.unembed()
    scale = u.norm_scale(x)[..., None]
    xc = x - x.mean(-1, keepdim=True) if u.centre else x
    z = u.direct_logits((xc / scale).reshape(-1, model.d_model)).reshape(*x.shape[:2], -1)
    from steerscreen.models.hooks import _get

    normed = _get(model.model, model.arch.final_norm)(x)
    ref = normed @ u.W_U
    if u.centre:  # LayerNorm bias adds a constant per vocabulary entry
        ref = ref - _get(model.model, model.arch.final_norm).bias @ u.W_U
    torch.testing.assert_close(z, ref, rtol=1e-4, atol=1e-4)
    assert (u.softcap is not None) == (model.model_type == "gemma2")


def test_start_must_be_residual(model):
    with pytest.raises(ValueError):
        model.forward(tiny_ids(), start_at=("blocks.1.hook_mlp_out", torch.zeros(1)))
    with pytest.raises(SpecError):
        model.forward(tiny_ids(), read=[f"blocks.{N_LAYERS}.hook_resid_pre"])


def test_gpt2_hooks_match_transformer_lens():
    """Differential check against TransformerLens on the same (unprocessed) GPT-2 weights."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    model = tiny_model("gpt2")
    hf_cfg = model.model.config
    cfg = HookedTransformerConfig(
        n_layers=hf_cfg.n_layer, d_model=hf_cfg.n_embd, n_heads=hf_cfg.n_head,
        d_head=hf_cfg.n_embd // hf_cfg.n_head, d_mlp=4 * hf_cfg.n_embd, d_vocab=hf_cfg.vocab_size,
        n_ctx=hf_cfg.n_positions, act_fn="gelu_new", normalization_type="LN", eps=1e-5,
        default_prepend_bos=False,
    )
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert_gpt2_weights(model.model, cfg), fold_ln=False,
                                   center_writing_weights=False, center_unembed=False,
                                   fold_value_biases=False)
    ids = tiny_ids()
    hooks = [f"blocks.{layer}.hook_{k}" for layer in range(N_LAYERS)
             for k in ("resid_pre", "resid_post", "attn_out", "mlp_out")]
    ours = model.forward(ids, read=hooks)
    tl_logits, cache = tl.run_with_cache(ids)
    for h in hooks:
        torch.testing.assert_close(ours.acts[h], cache[h], rtol=1e-4, atol=1e-4, msg=h)
    torch.testing.assert_close(ours.logits, tl_logits, rtol=1e-4, atol=1e-4)
