"""Nothing unsafe is loaded: no pickle on any load path, no hub code unless the user asks.

A static scan of the package keeps code-running loaders out; planted pickles (a ``__reduce__``
that would create a marker file) next to or instead of real files are refused or ignored; and
``trust_remote_code`` reaches transformers as False unless ``--trust-remote-code`` is given.
"""

from __future__ import annotations

import ast
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import steerscreen
from steerscreen.errors import ArtifactError, SpecError
from steerscreen.models import load_model
from steerscreen.saes import load_sae
from tests.reliability.fixtures import make_sae, save_tiny_llama

SRC = Path(steerscreen.__file__).resolve().parent
CODE_RUNNING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                        "marshal", "skops"}


class Planted:
    """Unpickling this creates ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def plant(path: Path, marker: Path) -> Path:
    """A torch-format checkpoint (zip + pickle) whose unpickling creates ``marker``."""
    torch.save({"W_enc": Planted(marker)}, path)
    return path


# --- the static scan ---------------------------------------------------------------------------


def _keyword_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def scan(source: str, filename: str) -> list[str]:
    """Unsafe constructs in one module's code (docstrings and comments are not code)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            bad = [n for n in names if n.split(".")[0] in CODE_RUNNING_MODULES]
            found += [f"{where}: imports {n}" for n in bad]
        elif isinstance(node, ast.Attribute | ast.Name):
            name = node.attr if isinstance(node, ast.Attribute) else node.id
            if "pickle" in name.lower() or name in ("joblib", "read_pickle", "to_pickle"):
                found.append(f"{where}: uses {name}")
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func)
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec", "__import__"):
            found.append(f"{where}: calls {node.func.id}()")
        if func.endswith("torch.load") and not _keyword_true(node, "weights_only"):
            found.append(f"{where}: torch.load without weights_only=True")
        if _keyword_true(node, "allow_pickle"):
            found.append(f"{where}: allow_pickle=True")
        if _keyword_true(node, "trust_remote_code"):
            found.append(f"{where}: trust_remote_code=True")
    return found


def test_the_package_has_no_code_running_loader() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    found = [hit for f in files for hit in scan(f.read_text(encoding="utf-8"),
                                                str(f.relative_to(SRC)))]
    assert not found, "unsafe loading constructs:\n" + "\n".join(found)


@pytest.mark.parametrize("snippet", [
    "import pickle", "from joblib import load", "import pandas as pd\npd.read_pickle('x')",
    "import torch\ntorch.load('x')", "import torch\ntorch.load('x', weights_only=False)",
    "import numpy as np\nnp.load('x', allow_pickle=True)", "eval('1')", "exec('1')",
    "f(trust_remote_code=True)",
])
def test_the_scan_catches_each_unsafe_construct(snippet: str) -> None:
    assert scan(snippet, "snippet.py")


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load('x', weights_only=True)", "model.eval()",
    "pl.col('a').list.eval(pl.element())", "f(trust_remote_code=flag)",
    '"""No pickle: loading cannot run code."""',
])
def test_the_scan_passes_safe_code(snippet: str) -> None:
    assert not scan(snippet, "snippet.py")


# --- planted pickles ---------------------------------------------------------------------------


def test_the_planted_pickle_is_live(tmp_path: Path) -> None:
    """Control: an unsafe load of the planted file does create the marker."""
    marker = tmp_path / "ran"
    torch.load(plant(tmp_path / "x.pt", marker), weights_only=False)  # the unsafe load, once
    assert marker.exists()


@pytest.fixture()
def sae_folder(tmp_path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_sae(tmp_path / "sae")


def test_pickles_beside_the_safetensors_are_ignored(sae_folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for name in ("sae_weights.pt", "sae_weights.bin", "model.pt", "pytorch_model.bin",
                 "sparsity.pt", "cfg.pkl"):
        plant(sae_folder / name, marker)
    (sae_folder / "sae.pkl").write_bytes(pickle.dumps(Planted(marker)))
    loaded = load_sae(str(sae_folder))
    assert loaded.d_sae > 0
    assert not marker.exists()


@pytest.mark.parametrize("as_plain_pickle", [False, True])
def test_a_pickle_posing_as_the_safetensors_is_refused(sae_folder: Path, tmp_path: Path,
                                                       as_plain_pickle: bool) -> None:
    marker = tmp_path / "ran"
    weights = sae_folder / "sae_weights.safetensors"
    if as_plain_pickle:
        weights.write_bytes(pickle.dumps(Planted(marker)))
    else:
        plant(weights, marker)
    with pytest.raises(ArtifactError) as e:
        load_sae(str(sae_folder))
    assert "safetensors" in e.value.what and e.value.fix
    assert not marker.exists()


def test_release_loaders_torch_load_is_forced_tensors_only(monkeypatch, tmp_path: Path) -> None:
    """SAELens's ``.pt`` release loaders call ``torch.load`` without ``weights_only``; with
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` that would unpickle anything. load_sae forces it on."""
    import sae_lens

    marker = tmp_path / "ran"
    evil = plant(tmp_path / "ae.pt", marker)

    def from_pretrained(*_args: Any, **_kwargs: Any) -> Any:
        return torch.load(evil, map_location="cpu")  # what the release loaders do

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", from_pretrained)
    with pytest.raises(ArtifactError):
        load_sae("saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre")
    assert not marker.exists()
    assert torch.load is not None and "tensors_only" not in torch.load.__name__  # restored


def test_a_pickled_model_checkpoint_is_refused(tmp_path: Path) -> None:
    """A local model folder whose pytorch_model.bin carries code: read tensors-only, refused."""
    folder = save_tiny_llama(tmp_path / "tiny-llama")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    marker = tmp_path / "ran"
    plant(folder / "pytorch_model.bin", marker)
    with pytest.raises(ArtifactError) as e:
        load_model(f"local:{folder}")
    assert e.value.fix
    assert not marker.exists()


# --- trust_remote_code -------------------------------------------------------------------------


def test_hub_code_is_not_run_by_default(tmp_path: Path) -> None:
    folder = save_tiny_llama(tmp_path / "custom")
    marker = tmp_path / "ran"
    (folder / "custom_model.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n", encoding="utf-8")
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg["auto_map"] = {"AutoConfig": "custom_model.CustomConfig",
                       "AutoModelForCausalLM": "custom_model.CustomModel"}
    cfg["model_type"] = "planted-arch"  # no built-in class: only the shipped code could load it
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(SpecError) as e:
        load_model(f"local:{folder}")
    assert "--trust-remote-code" in e.value.fix
    assert not marker.exists()


class _Captured(Exception):
    pass


@pytest.mark.parametrize("flag", [None, False, True])
def test_trust_remote_code_reaches_transformers_as_given(monkeypatch, flag: bool | None) -> None:
    import transformers

    seen: dict[str, Any] = {}

    def tokenizer(_target: str, **kwargs: Any) -> Any:
        seen["tokenizer"] = kwargs
        return object()

    def model(_target: str, **kwargs: Any) -> Any:
        seen["model"] = kwargs
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    kwargs = {} if flag is None else {"trust_remote_code": flag}
    with pytest.raises(SpecError):
        load_model("hf:someone/some-model", **kwargs)
    want = bool(flag)
    assert seen["tokenizer"]["trust_remote_code"] is want
    assert seen["model"]["trust_remote_code"] is want
    assert seen["model"]["weights_only"] is True


@pytest.mark.parametrize("command", ["train-sae", "stats", "steer", "screen"])
def test_the_cli_flag_defaults_off_and_threads_through(monkeypatch, tmp_path: Path,
                                                       command: str) -> None:
    """Each model-loading command has --trust-remote-code, off by default, and hands it to its
    stage config (captured where the stage would start)."""
    from steerscreen.cli import app

    captured: list[Any] = []

    def stop(cfgs: Any, *_a: Any, **_k: Any) -> Any:
        captured.append(cfgs)
        raise SpecError("stopped by the test")

    targets = {"train-sae": "steerscreen.pipeline.train.train_saes",
               "stats": "steerscreen.pipeline.stats.run_stats",
               "steer": "steerscreen.pipeline.steer.run_steer",
               "screen": "steerscreen.pipeline.screen.run_screen"}
    monkeypatch.setattr(targets[command], stop if command != "screen" else
                        (lambda _p, cfg, *a, **k: stop(cfg)))
    sae = make_sae(tmp_path / "sae")
    args = {"train-sae": ["--out", str(tmp_path / "o")],
            "stats": ["--sae", str(sae), "--out", str(tmp_path / "o")],
            "steer": ["--run", str(tmp_path / "o"), "--downstream-sae", str(sae)],
            "screen": ["--predictor", str(tmp_path / "p.json"), "--sae", str(sae), "--out",
                       str(tmp_path / "o")]}[command]
    runner = CliRunner()
    for extra, want in (([], False), (["--trust-remote-code"], True)):
        captured.clear()
        res = runner.invoke(app, [command, *args, *extra])
        assert res.exit_code == 2 and "stopped by the test" in res.output, res.output
        cfg = captured[0][0] if isinstance(captured[0], list) else captured[0]
        assert cfg.trust_remote_code is want


def test_the_study_config_keeps_it_off_unless_set() -> None:
    from steerscreen.config import build_config

    assert build_config({}, "quick").trust_remote_code is False
    assert "trust_remote_code" not in build_config({}, "quick").record()
    on = build_config({"trust_remote_code": True}, "quick")
    assert on.record()["trust_remote_code"] is True
    assert on.stats_config("<sae>", None).trust_remote_code is True
    assert on.steer_config("<sae>", None).trust_remote_code is True
    assert all(on.train_config(e).trust_remote_code for e in on.saes)
    with pytest.raises(SpecError):
        build_config({"trust_remote_code": "yes"}, "quick")
    with pytest.raises(SpecError):
        build_config({"stats": {"trust_remote_code": True}}, "quick")
