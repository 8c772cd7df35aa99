"""SAE glue: SAELens round trips, an independent numpy reference, pairing, corrupt files, specs.

Everything is built in the test (d_in=16, d_sae=64) and runs offline on CPU.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import sae_lens
    from sae_lens import (
        SAE,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

from steerscreen.errors import ArtifactError, OfflineError, PairingError, SpecError
from steerscreen.models.hooks import HookPoint
from steerscreen.saes import (
    SAEInput,
    canonical_model_name,
    decoder_directions,
    encode,
    load_sae,
    save_sae,
    validate_pairing,
)

D_IN, D_SAE, K = 16, 64, 4
HOOK = "blocks.3.hook_resid_pre"

# name -> (architecture, normalize_activations, apply_b_dec_to_input)
CASES: dict[str, tuple[str, str, bool]] = {
    "standard": ("standard", "none", True),
    "jumprelu": ("jumprelu", "none", True),
    "topk": ("topk", "none", True),
    "topk_layer_norm": ("topk", "layer_norm", True),  # OpenAI GPT-2 TopK SAEs
    "jumprelu_no_b_dec_in": ("jumprelu", "none", False),  # Gemma Scope
}


def make_sae(case: str = "standard", *, seed: int = 0, model_name: str | None = "gpt2",
             hook_name: str | None = HOOK, **meta: Any) -> SAE[Any]:
    arch, norm, b_dec_in = CASES[case]
    md = {"model_name": model_name, "hook_name": hook_name, **meta}
    common: dict[str, Any] = dict(d_in=D_IN, d_sae=D_SAE, normalize_activations=norm,
                                  apply_b_dec_to_input=b_dec_in,
                                  metadata=SAEMetadata(**{k: v for k, v in md.items()
                                                          if v is not None}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SAELens warns about model_from_pretrained_kwargs
        if arch == "standard":
            sae: SAE[Any] = StandardSAE(StandardSAEConfig(**common))
        elif arch == "jumprelu":
            sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
        else:
            sae = TopKSAE(TopKSAEConfig(k=K, **common))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":  # random positive thresholds
                p.copy_(0.05 + 0.5 * torch.rand(p.shape, generator=gen))
            else:
                p.copy_(0.4 * torch.randn(p.shape, generator=gen))
    return sae.eval()


def batch(seed: int = 1, n: int = 40) -> torch.Tensor:
    # An offset and a scale, like a real residual, so layer_norm and centring matter.
    gen = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(n, D_IN, generator=gen) + 0.7


def model(name: str = "gpt2", n_layers: int = 6, d_model: int = D_IN) -> SimpleNamespace:
    return SimpleNamespace(name=name, n_layers=n_layers, d_model=d_model)


def quiet_load(spec: str, **kw: Any):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_sae(spec, **kw)


# --------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("case", list(CASES))
def test_save_then_load_encodes_identically(case: str, tmp_path: Path) -> None:
    sae = make_sae(case)
    x = batch()
    with torch.no_grad():
        want = sae.encode(x)
    assert 0 < int((want > 0).sum()) < want.numel()  # not vacuous: some on, some off
    folder = save_sae(sae, tmp_path / "sae")
    assert folder == tmp_path / "sae"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temp folders left

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = SAE.load_from_disk(folder)
    for name, t in sae.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name
    with torch.no_grad():
        assert torch.equal(again.encode(x), want)

    loaded = quiet_load(str(folder))
    assert torch.equal(encode(loaded, x), want)
    assert torch.equal(quiet_load(f"local:{folder}").sae.W_dec, sae.W_dec)
    assert loaded.architecture == CASES[case][0]
    assert loaded.hook_name == HOOK and loaded.model_name == "gpt2"
    assert loaded.path == folder and loaded.input == SAEInput(centre=False, prepend_bos=True)
    assert not loaded.sae.training and not loaded.sae.W_enc.requires_grad
    assert len(loaded.sha256) == 64
    assert torch.equal(decoder_directions(loaded), sae.W_dec.detach())
    # SAELens itself carries the release quirks through the file.
    assert loaded.sae.cfg.normalize_activations == CASES[case][1]
    assert loaded.sae.cfg.apply_b_dec_to_input is CASES[case][2]


def test_saved_cfg_is_v6_with_metadata(tmp_path: Path) -> None:
    from packaging.version import Version

    sae = make_sae("jumprelu", model_name=None, hook_name=None)
    sae.cfg.metadata.sae_lens_version = "5.9.1"  # would send SAELens down its pre-6 path
    folder = save_sae(sae, tmp_path / "s", extra_metadata={"steerscreen_run": "abc",
                                                           "hook_name": HOOK})
    meta = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert Version(meta["sae_lens_version"]) >= Version("6.0.0")
    assert meta["sae_lens_version"] == sae_lens.__version__
    assert "model_name" in meta and meta["model_name"] is None
    assert meta["hook_name"] == HOOK and meta["steerscreen_run"] == "abc"
    loaded = quiet_load(str(folder))
    assert loaded.architecture == "jumprelu" and loaded.hook_name == HOOK
    assert torch.equal(loaded.sae.threshold, sae.threshold)


def test_save_replaces_sae_folder_but_not_other_folders(tmp_path: Path) -> None:
    folder = save_sae(make_sae(seed=0), tmp_path / "sae")
    save_sae(make_sae(seed=5), folder)
    assert torch.equal(quiet_load(str(folder)).sae.W_enc, make_sae(seed=5).W_enc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="refusing"):
        save_sae(make_sae(), other)
    assert (other / "keep.txt").read_text() == "mine"


def test_training_sae_saves_in_inference_form(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tsae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(model_name="gpt2", hook_name=HOOK)))
    with torch.no_grad():
        tsae.b_enc.copy_(torch.randn(D_SAE, generator=torch.Generator().manual_seed(3)))
    loaded = quiet_load(str(save_sae(tsae, tmp_path / "t")))
    assert loaded.architecture == "jumprelu"
    with torch.no_grad():
        assert torch.allclose(encode(loaded, batch()), tsae.encode(batch()), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Differential check against an independent numpy reference


def reference_encode(sae: SAE[Any], x: torch.Tensor, *, centre: bool = False,
                     margin: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Hand-written float64 SAE encoder. Returns (acts, rows far from a decision boundary)."""
    p = {k: v.detach().double().numpy() for k, v in sae.state_dict().items()}
    cfg = sae.cfg
    h_in = x.double().numpy()
    if centre:
        h_in = h_in - h_in.mean(-1, keepdims=True)
    if cfg.normalize_activations == "layer_norm":
        c = h_in - h_in.mean(-1, keepdims=True)
        h_in = c / (c.std(-1, ddof=1, keepdims=True) + 1e-5)  # unbiased std, eps outside sqrt
    if cfg.apply_b_dec_to_input:
        h_in = h_in - p["b_dec"]
    pre = h_in @ p["W_enc"] + p["b_enc"]
    arch = cfg.architecture()
    if arch == "standard":
        return np.maximum(pre, 0.0), np.abs(pre).min(-1) > margin
    if arch == "jumprelu":
        gap = np.abs(pre - p["threshold"]).min(-1)
        return np.where(pre > p["threshold"], pre, 0.0), gap > margin  # strict '>'
    assert arch == "topk"
    order = np.argsort(-pre, axis=-1)
    out = np.zeros_like(pre)
    rows = np.arange(pre.shape[0])[:, None]
    top = order[:, :K]
    out[rows, top] = np.maximum(pre[rows, top], 0.0)  # ReLU after the top-k
    srt = np.take_along_axis(pre, order, -1)
    clear = (srt[:, K - 1] - srt[:, K] > margin) & (np.abs(srt[:, :K]).min(-1) > margin)
    return out, clear


@pytest.mark.parametrize("case", list(CASES))
def test_encode_matches_numpy_reference(case: str, tmp_path: Path) -> None:
    sae = make_sae(case, seed=11)
    x = batch(seed=12, n=200)
    loaded = quiet_load(str(save_sae(sae, tmp_path / "s")))
    got = encode(loaded, x).numpy()
    want, clear = reference_encode(sae, x)
    assert clear.sum() > 150  # nearly all rows are far from a threshold/top-k tie
    np.testing.assert_allclose(got[clear], want[clear], rtol=1e-5, atol=1e-5)
    if CASES[case][0] == "topk":
        assert ((got > 0).sum(-1) <= K).all()


def test_jumprelu_threshold_is_strict(tmp_path: Path) -> None:
    sae = make_sae("jumprelu")
    x = batch(n=1)
    with torch.no_grad():
        pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
        sae.threshold.copy_(pre[0])  # every feature sits exactly on its threshold
    loaded = quiet_load(str(save_sae(sae, tmp_path / "s")))
    assert not encode(loaded, x).any()
    with torch.no_grad():
        sae.threshold.sub_(1e-3)
    assert encode(quiet_load(str(save_sae(sae, tmp_path / "s"))), x).gt(0).sum() == int(
        (pre[0] > 0).sum())


def test_layer_norm_sae_is_invariant_to_offset_and_scale(tmp_path: Path) -> None:
    loaded = quiet_load(str(save_sae(make_sae("topk_layer_norm"), tmp_path / "s")))
    x = batch()
    torch.testing.assert_close(encode(loaded, 2.0 * x + 5.0), encode(loaded, x),
                               rtol=1e-4, atol=1e-4)


def test_centred_input_convention(tmp_path: Path) -> None:
    sae = make_sae("standard", model_from_pretrained_kwargs={"center_writing_weights": True},
                   prepend_bos=False)
    loaded = quiet_load(str(save_sae(sae, tmp_path / "s")))
    assert loaded.input == SAEInput(centre=True, prepend_bos=False)
    x = batch(n=200)
    got = encode(loaded, x)
    with torch.no_grad():
        assert torch.equal(got, sae.encode(x - x.mean(-1, keepdim=True)))
    want, clear = reference_encode(sae, x, centre=True)
    np.testing.assert_allclose(got.numpy()[clear], want[clear], rtol=1e-5, atol=1e-5)
    # The raw residual's mean is invisible to a centred SAE.
    torch.testing.assert_close(encode(loaded, x + 9.0), got, rtol=1e-5, atol=1e-4)
    # The convention survives another save of the LoadedSAE.
    again = quiet_load(str(save_sae(loaded, tmp_path / "t")))
    assert again.input == loaded.input


# --------------------------------------------------------------------------------------------
# Pairing


@pytest.fixture
def loaded_sae(tmp_path: Path):
    return quiet_load(str(save_sae(make_sae("standard"), tmp_path / "s")))


def test_pairing_uses_metadata_hook(loaded_sae) -> None:
    assert validate_pairing(loaded_sae, model(), None) == HookPoint(3, "resid_pre")
    assert validate_pairing(loaded_sae, model(), HOOK).name == HOOK
    # resid_post of layer 2 is the same tensor as resid_pre of layer 3
    assert validate_pairing(loaded_sae, model(), "blocks.2.hook_resid_post").name == (
        "blocks.2.hook_resid_post")


def test_pairing_wrong_width(loaded_sae) -> None:
    with pytest.raises(PairingError) as e:
        validate_pairing(loaded_sae, model(d_model=768), None)
    assert "16" in str(e.value) and "768" in str(e.value)
    assert e.value.fix


def test_pairing_wrong_hook(loaded_sae) -> None:
    with pytest.raises(PairingError) as e:
        validate_pairing(loaded_sae, model(), "blocks.4.hook_resid_pre")
    assert "blocks.4.hook_resid_pre" in str(e.value) and HOOK in str(e.value)


def test_pairing_malformed_hook_is_spec_error(loaded_sae) -> None:
    with pytest.raises(SpecError):
        validate_pairing(loaded_sae, model(), "layer3.resid")


def test_pairing_layer_out_of_range(loaded_sae) -> None:
    with pytest.raises(PairingError, match="layer 3"):
        validate_pairing(loaded_sae, model(n_layers=3), None)


def test_pairing_other_model(loaded_sae) -> None:
    with pytest.raises(PairingError) as e:
        validate_pairing(loaded_sae, model(name="pythia-70m-deduped"), None)
    assert "gpt2" in str(e.value) and "pythia-70m-deduped" in str(e.value)


@pytest.mark.parametrize("sae_name,model_name", [
    ("gpt2-small", "gpt2"),
    ("openai-community/gpt2", "gpt2"),
    ("GPT2", "gpt2-small"),
    ("EleutherAI/pythia-70m-deduped", "pythia-70m-deduped"),
    ("google/gemma-2-2b", "gemma-2-2b"),
    ("meta-llama/Llama-3.1-8B", "llama3.1-8b"),
    ("Llama-3.1-8B", "llama3.1-8b"),
    ("HuggingFaceTB/SmolLM2-135M", "smollm2-135m"),
])
def test_pairing_accepts_model_aliases(sae_name: str, model_name: str, tmp_path: Path) -> None:
    assert canonical_model_name(sae_name) == canonical_model_name(model_name)
    loaded = quiet_load(str(save_sae(make_sae(model_name=sae_name), tmp_path / "s")))
    assert validate_pairing(loaded, model(name=model_name), None).layer == 3


@pytest.mark.parametrize("a,b", [("gpt2", "gpt2-medium"), ("pythia-70m", "pythia-70m-deduped"),
                                 ("gemma-2-2b", "gemma-2-2b-it"),
                                 ("llama3.1-8b", "llama3-8b")])
def test_distinct_models_stay_distinct(a: str, b: str) -> None:
    assert canonical_model_name(a) != canonical_model_name(b)


def test_pairing_without_any_hook_or_model_name(tmp_path: Path) -> None:
    loaded = quiet_load(str(save_sae(make_sae(model_name=None, hook_name=None), tmp_path / "s")))
    assert loaded.model_name is None
    with pytest.raises(PairingError, match="hook"):
        validate_pairing(loaded, model(name="anything"), None)
    assert validate_pairing(loaded, model(name="anything"), "blocks.1.hook_mlp_out").layer == 1


# --------------------------------------------------------------------------------------------
# Missing and corrupt files


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_sae(make_sae("jumprelu"), tmp_path / "s")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_sae(str(tmp_path / "nope"))


def test_missing_weights(saved: Path) -> None:
    (saved / "sae_weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"sae_weights\.safetensors"):
        load_sae(str(saved))


def test_missing_cfg(saved: Path) -> None:
    (saved / "cfg.json").unlink()
    with pytest.raises(ArtifactError, match=r"cfg\.json"):
        load_sae(str(saved))


@pytest.mark.parametrize("cut", [0.5, 0.999, 4])
def test_truncated_weights(saved: Path, cut: float) -> None:
    w = saved / "sae_weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: int(cut * len(data)) if cut < 1 else int(cut)])
    with pytest.raises(ArtifactError, match=r"sae_weights\.safetensors") as e:
        load_sae(str(saved))
    assert "truncated" in e.value.fix


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'{"d_in": 16}', b"\xff\xfe\x00junk",
                                 b""])
def test_garbage_cfg(saved: Path, raw: bytes) -> None:
    (saved / "cfg.json").write_bytes(raw)
    with pytest.raises(ArtifactError, match=r"cfg\.json"):
        load_sae(str(saved))


def test_unknown_architecture(saved: Path) -> None:
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg["architecture"] = "quantum"
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="quantum"):
        load_sae(str(saved))


def test_weights_that_do_not_match_cfg(saved: Path) -> None:
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg["d_sae"] = 32
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="W_enc"):
        load_sae(str(saved))


def test_missing_tensor(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sae = make_sae("jumprelu")
    folder = save_sae(sae, tmp_path / "s")
    state = {k: v.detach().contiguous() for k, v in sae.state_dict().items() if k != "threshold"}
    save_file(state, str(folder / "sae_weights.safetensors"))
    with pytest.raises(ArtifactError, match="threshold"):
        load_sae(str(folder))


@pytest.mark.parametrize("tensor,index,feature", [
    ("W_dec", (5, 2), 5), ("W_enc", (3, 7), 7), ("b_enc", (9,), 9), ("threshold", (2,), 2),
    ("b_dec", (1,), None),
])
def test_non_finite_weights(tmp_path: Path, tensor: str, index: tuple[int, ...],
                            feature: int | None) -> None:
    sae = make_sae("jumprelu")
    with torch.no_grad():
        getattr(sae, tensor)[index] = float("nan")
        if tensor == "W_dec":
            sae.W_dec[40, 0] = float("inf")
    folder = save_sae(sae, tmp_path / "s")
    with pytest.raises(ArtifactError) as e:
        load_sae(str(folder))
    msg = str(e.value)
    assert f"tensor {tensor} " in msg
    assert ("2 non-finite" if tensor == "W_dec" else "1 non-finite") in msg
    if feature is not None:
        assert f"feature(s) {feature}" in msg  # every bad feature, first to last
        if tensor == "W_dec":
            assert "feature(s) 5, 40" in msg



def test_weights_rewritten_in_place_are_checked_again(tmp_path: Path) -> None:
    """The file check is done once per file version (load_sae after the stage's early check
    skips it), never once per path: NaN written over a good file is still refused."""
    from steerscreen.saes.io import check_weights_finite

    sae = make_sae("topk")
    folder = save_sae(sae, tmp_path / "s")
    check_weights_finite(str(folder))
    load_sae(str(folder))
    with torch.no_grad():
        sae.W_dec[3, 1] = float("nan")
    save_sae(sae, folder)
    with pytest.raises(ArtifactError, match="feature\\(s\\) 3"):
        check_weights_finite(str(folder))
    with pytest.raises(ArtifactError, match="non-finite"):
        load_sae(str(folder))

# --------------------------------------------------------------------------------------------
# Specs and the hub (no network: offline mode, or a stubbed download)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("spec", [
    "saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre",
    "saelens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical",
    "hf:steerscreen-test/no-such-repo/layer_3",
    "hf:steerscreen-test/no-such-repo",
])
def test_online_specs_offline(spec: str) -> None:
    import huggingface_hub.constants as hc

    before = hc.HF_HUB_OFFLINE
    with pytest.raises(OfflineError) as e:
        load_sae(spec)
    assert "hub" in str(e.value).lower() and "local folder" in e.value.fix
    assert "train-sae" in e.value.fix
    assert before == hc.HF_HUB_OFFLINE  # the temporary offline switch is restored


def test_connection_failure_is_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def boom(*_: Any, **__: Any) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    with pytest.raises(OfflineError, match="could not be reached"):
        load_sae("hf:someone/some-saes/layer_3")


def test_hf_spec_loads_the_subfolder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    root = tmp_path / "snapshot"
    sae = make_sae("topk")
    save_sae(sae, root / "deep" / "layer_3")
    calls: list[dict[str, Any]] = []

    def fake(repo_id: str, **kw: Any) -> str:
        calls.append({"repo_id": repo_id, **kw})
        return str(root)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    loaded = quiet_load("hf:someone/some-saes/deep/layer_3")
    assert calls[0]["repo_id"] == "someone/some-saes"
    assert "deep/layer_3/cfg.json" in calls[0]["allow_patterns"]
    assert loaded.path == root / "deep" / "layer_3"
    assert torch.equal(encode(loaded, batch()), sae.encode(batch()))
    with pytest.raises(ArtifactError, match=r"cfg\.json"):
        load_sae("hf:someone/some-saes/elsewhere")


@pytest.mark.parametrize("spec,match", [
    ("s3:bucket/sae", "unknown scheme"),
    ("http://example.com/sae", "unknown scheme"),
    ("saelens:gpt2-small-res-jb", "RELEASE/SAE_ID"),
    ("saelens:not-a-release/blocks.8.hook_resid_pre", "not a SAELens release"),
    ("saelens:gpt2-small-res-jb/blocks.99.hook_resid_pre", "no SAE id"),
    ("hf:just-a-name", "OWNER/REPO"),
])
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(SpecError, match=match) as e:
        load_sae(spec)
    if "scheme" in match:
        assert all(s in e.value.fix for s in ("local:", "saelens:", "hf:"))


def test_bad_dtype(saved: Path) -> None:
    with pytest.raises(SpecError, match="dtype"):
        load_sae(str(saved), dtype="int8")


def test_dtype_is_applied(saved: Path) -> None:
    loaded = quiet_load(str(saved), dtype="bfloat16")
    assert loaded.sae.W_enc.dtype == torch.bfloat16
    assert encode(loaded, batch()).dtype == torch.float32


def test_release_path_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="saelens:gpt2-small-res-jb"):
        load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")


@pytest.mark.parametrize("arch, extra", [("matching_pursuit", {}),
                                         ("temporal", {"tied_weights": True})])
def test_tied_saes_need_no_encoder_matrix(tmp_path: Path, arch: str,
                                          extra: dict[str, Any]) -> None:
    """A tied SAE stores only its decoder: the file check must not demand a W_enc."""
    from safetensors.torch import save_file

    from steerscreen.saes.files import check_folder

    folder = tmp_path / arch
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "architecture": arch,
                                                 **extra}))
    save_file({"W_dec": torch.zeros(16, 8), "b_dec": torch.zeros(8)},
              str(folder / "sae_weights.safetensors"))
    assert check_folder(folder)["architecture"] == arch
    (folder / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16,
                                                 "architecture": "standard"}))
    with pytest.raises(ArtifactError, match="lacks the tensor"):
        check_folder(folder)
