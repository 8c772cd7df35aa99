"""Every bad input of the validation catalogue, through the real CLI: exit code 2, the documented
message, no traceback, nothing written, in under 5 seconds (docs/errors.md lists each message)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.pipeline.stats import StatsConfig, run_stats
from tests.reliability.fixtures import make_corpus, make_sae, save_tiny_llama

DOCS = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
SECONDS = 5.0
DOWN_HOOK = "blocks.3.hook_resid_post"
TINY_STATS = ["--tokens", "200", "--context-len", "12", "--batch-size", "4",
              "--reservoir-size", "5", "--n-examples", "2", "--example-window", "4",
              "--final-norm-contexts", "4", "--n-components", "4"]
TINY_STEER = ["--features", "2", "--random-directions", "2", "--contexts", "3",
              "--fresh-contexts", "0", "--context-len", "10", "--strengths", "0.5"]


def _sae_with(folder: Path, **kw: Any) -> Path:
    """``make_sae`` then edit its cfg.json metadata (model_name, ...)."""
    make_sae(folder)
    cfg_path = folder / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["metadata"].update(kw)
    cfg_path.write_text(json.dumps(cfg))
    return folder


def _nan_sae(folder: Path) -> Path:
    from safetensors.torch import load_file, save_file

    make_sae(folder)
    w = folder / "sae_weights.safetensors"
    tensors = load_file(w)
    tensors["W_dec"][[3, 7]] = float("nan")
    save_file(tensors, w)
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = {
            "model": save_tiny_llama(root / "tiny-llama"),
            "nan_model": save_tiny_llama(root / "nan" / "tiny-llama", nan_layer=0),
            "sae": make_sae(root / "sae"),
            "down": make_sae(root / "down", hook=DOWN_HOOK),
            "wide": make_sae(root / "wide", d_in=48),
            "other_model": _sae_with(root / "gpt2-sae", model_name="gpt2"),
            "nan_sae": _nan_sae(root / "nan-sae"),
            "corpus": make_corpus(root / "corpus.txt", n_docs=60),
            "short": make_corpus(root / "short.txt", n_docs=6),
        }
    (root / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (root / "binary.bin").write_bytes(b"PK\x03\x04\x00\x00binary")
    (root / "a-file").write_text("not a folder")
    (root / "study.toml").write_text('name = "x"\nmodle = "embedded:smollm2-135m"\n')
    (root / "typed.toml").write_text('name = "x"\n[stats]\ntokens = "many"\n')
    p |= {k: root / n for k, n in (("empty", "empty.txt"), ("latin1", "latin1.txt"),
                                    ("binary", "binary.bin"), ("file", "a-file"),
                                    ("study", "study.toml"), ("typed", "typed.toml"))}
    # A complete stats run for the steer cases (and for "another config").
    cfg = StatsConfig(sae=str(p["sae"]), model=f"local:{p['model']}",
                      corpus=f"text:{p['corpus']}", tokens=200, context_len=12, batch_size=4,
                      reservoir_size=5, n_examples=2, example_window=4, final_norm_contexts=4,
                      n_components=4)
    run_stats(cfg, root / "stats-run", progress=False)
    p["stats_run"] = root / "stats-run"
    return p


@dataclass
class Case:
    """One bad input: the CLI arguments (``{name}`` -> an input path, ``{out}`` -> the output
    folder) and a fragment of the documented message."""

    id: str
    args: list[str]
    message: str
    env: dict[str, str] = field(default_factory=dict)
    out: str = "fresh"  # fresh: must not appear; stats_run: a copy that must not change
    detail: str = ""  # must appear in the output too (the catalogue shows a placeholder)


def stats(*extra: str, model: str = "local:{model}", sae: str = "{sae}",
          corpus: str = "text:{corpus}") -> list[str]:
    return ["stats", "--sae", sae, "--out", "{out}", "--model", model, "--corpus", corpus,
            *TINY_STATS, *extra]


def steer(*extra: str, down: str = "{down}") -> list[str]:
    return ["steer", "--run", "{out}", "--downstream-sae", down, *TINY_STEER, *extra]


def train(*extra: str, corpus: str = "text:{corpus}") -> list[str]:
    return ["train-sae", "--out", "{out}", "--model", "local:{model}", "--corpus", corpus,
            "--hook", "blocks.1.hook_resid_post", "--width", "16", "--k", "4", "--tokens", "200",
            "--context-len", "12", *extra]


CASES = [
    # specs
    Case("model-scheme", stats(model="s3:bucket/model"), "is not recognised"),
    Case("model-embedded", stats(model="embedded:gpt5"), "no embedded model called"),
    Case("model-folder", stats(model="local:/no/such/model"), "is not a Hugging Face model"),
    Case("sae-scheme", stats(sae="s3:bucket/sae"), "uses the unknown scheme"),
    Case("sae-folder", stats(sae="/no/such/sae"), "does not exist"),
    Case("corpus-scheme", stats(corpus="ftp:x"), "unknown corpus spec"),
    Case("corpus-file", stats(corpus="text:/no/such/corpus.txt"), "corpus file not found"),
    Case("hook-malformed", stats("--hook", "blocks.x.resid"), "is not a supported hook point"),
    Case("train-hook-malformed", train("--hook", "layer3"), "is not a supported hook point"),
    # offline
    Case("model-offline", stats(model="hf:nobody/no-such-model"), "HF_HUB_OFFLINE is set",
         env={"HF_HUB_OFFLINE": "1"}),
    Case("sae-offline", stats(sae="hf:nobody/no-such-sae"), "needs the Hugging Face Hub",
         env={"HF_HUB_OFFLINE": "1"}),
    Case("corpus-offline", stats(corpus="hf:nobody/no-such-data:train"),
         "needs the network, but HF offline mode is set", env={"HF_HUB_OFFLINE": "1"}),
    # pairing
    Case("sae-width", stats(sae="{wide}"), "reads vectors of width d_in="),
    Case("hook-layer", stats("--hook", "blocks.9.hook_resid_post"), "layers (0..",
         detail="is at layer 9, but model 'tiny-llama' has 4 layers (0..3)"),
    Case("train-hook-layer", train("--hook", "blocks.9.hook_resid_post"), "layers (0..",
         detail="is at layer 9, but model 'tiny-llama' has 4 layers (0..3)"),
    Case("hook-other", stats("--hook", "blocks.2.hook_resid_post"), "was requested, but SAE"),
    Case("sae-model", stats(sae="{other_model}"), "was trained on model"),
    Case("down-width", steer(down="{wide}"), "reads vectors of width d_in=", out="stats_run"),
    Case("down-before", steer(down="{sae}"), "does not lie after the steering hook",
         out="stats_run"),
    # corpus
    Case("corpus-empty", stats(corpus="text:{empty}"), "has no non-empty documents"),
    Case("corpus-short", stats("--tokens", "100000", corpus="text:{short}"),
         "is too small for --tokens"),
    Case("train-corpus-short", train("--tokens", "100000", corpus="text:{short}"),
         "is too small for --tokens"),
    Case("corpus-latin1", stats(corpus="text:{latin1}"), "is not UTF-8: invalid byte"),
    Case("corpus-binary", stats(corpus="{binary}"), "looks binary (NUL byte"),
    # features
    Case("feature-ids", steer("--feature-ids", "3,999"), "are out of range for an SAE with",
         out="stats_run"),
    Case("feature-ids-text", steer("--feature-ids", "three"),
         "is neither a file nor comma-separated integers", out="stats_run"),
    # numerics
    Case("sae-nan", stats(sae="{nan_sae}"), "non-finite value(s)", detail="feature(s) 3, 7"),
    Case("activations-nan", stats(model="local:{nan_model}"), "NaN/Inf activations at",
         detail="at blocks.1.hook_resid_post in the first batch"),
    # output folder
    Case("run-unknown-user", ["steer", "--run", "~no-such-user-steerscreen/run",
                              "--downstream-sae", "{down}", *TINY_STEER], "cannot expand the path"),
    Case("out-under-file", stats(), "cannot write to --out", out="under_file"),
    Case("train-out-under-file", train(), "cannot write to --out", out="under_file"),
    Case("out-other-config", stats("--seed", "1", sae="{sae}"),
         "stage with a different config", out="stats_run",
         detail="already holds a stats stage with a different config (recorded -> new: seed: "
         "0 -> 1)"),
    Case("steer-no-stats", steer(), "holds no complete stats stage", out="empty_dir"),
    # config
    Case("config-unknown-field", ["run", "--config", "{study}", "--out", "{out}"],
         "unknown field", detail="unknown field 'modle' (did you mean 'model'?)"),
    Case("config-mistyped", ["run", "--config", "{typed}", "--out", "{out}"], "is not int"),
    # values of the right type but out of range (NaN included)
    Case("train-lr", train("--lr", "-1"), "must be a positive number"),
    Case("stats-seed", stats("--seed", "-1"), "seed must be a non-negative integer"),
    Case("fit-top-share", ["fit", "--run", "{out}", "--top-share", "nan"],
         "must be a number between 0 and 1"),
    Case("fit-splits", ["fit", "--run", "{out}", "--n-splits", "1"], "must be an integer >= 2"),
    # where the shards run (--backend ray)
    Case("backend-unknown", stats("--backend", "dask"), "unknown backend",
         detail="unknown backend 'dask'"),
    Case("address-without-ray", steer("--address", "auto"), "are Ray options",
         out="stats_run"),
    Case("task-gpus", stats("--backend", "ray", "--task-gpus", "-1"), "task_gpus must be >= 0"),
    # memory
    Case("stats-memory", stats("--reservoir-size", str(10**10)), "the stats pass needs at least"),
    Case("steer-memory", steer("--batch-rows", str(10**9)), "the steer stage needs at least",
         out="stats_run"),
    Case("train-memory", train("--tokens", str(10**13), "--context-len", "12"),
         "train-sae needs at least"),
]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))} if folder.exists() else {}


def _out(case: Case, inputs: dict[str, Path], tmp_path: Path) -> Path:
    if case.out == "stats_run":
        out = tmp_path / "run"
        shutil.copytree(inputs["stats_run"], out)
        return out
    if case.out == "under_file":
        return inputs["file"] / "run"
    if case.out == "empty_dir":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    return tmp_path / "out"


def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[Any, float]:
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(app, args, env=env)
    return res, time.perf_counter() - t


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_answered_by_its_documented_message(case: Case, inputs, tmp_path) -> None:
    out = _out(case, inputs, tmp_path)
    before = _snapshot(out) if out.exists() else None
    args = [a.format(out=out, **inputs) for a in case.args]
    res, seconds = invoke(args, case.env)
    text = " ".join(res.output.split())  # rich wraps long lines
    assert res.exit_code == 2, res.output
    assert case.message in text and case.detail in text, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "error:" in text and "fix:" in text
    if before is None:
        assert not out.exists(), f"{out} was created"
    else:
        assert _snapshot(out) == before, "the existing folder changed"
    assert seconds < SECONDS, f"{seconds:.1f} s"
    assert case.message in DOCS.read_text(encoding="utf-8"), "not in docs/errors.md"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0o555; the probe "
                    "write then succeeds (the under-a-file case covers the refusal)")
def test_read_only_out_folder_is_refused(inputs, tmp_path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        res, _ = invoke([a.format(out=parent / "run", **inputs) for a in stats()])
        assert res.exit_code == 2 and "cannot write to --out" in res.output, res.output
        assert not (parent / "run").exists()
    finally:
        parent.chmod(0o755)


@pytest.mark.parametrize("exc, code, path", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/x.parquet"), 2,
     "/data/run/x.parquet"),
    (OSError(errno.EROFS, "Read-only file system", "/data/run/manifest.json"), 2,
     "/data/run/manifest.json"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/run"), 2, "/data/run"),
    (KeyboardInterrupt(), 130, ""),
], ids=["disk-full", "read-only", "permission", "ctrl-c"])
def test_failed_writes_and_interrupts_get_a_message(monkeypatch, tmp_path, exc, code,
                                                    path) -> None:
    verb = "access" if isinstance(exc, PermissionError) else "write"
    message = (f"could not {verb} PATH: {exc.strerror}" if path else
               "interrupted: everything finished so far is saved; rerun the same command to "
               "resume")
    import steerscreen.pipeline.stats as stage

    def boom(*_a: Any, **_k: Any) -> None:
        raise exc

    monkeypatch.setattr(stage, "run_stats", boom)
    res, _ = invoke(["stats", "--sae", str(tmp_path), "--out", str(tmp_path / "o")])
    text = " ".join(res.output.split())
    assert res.exit_code == code, res.output
    assert message.replace("PATH", path) in text and "Traceback" not in res.output
    assert message in DOCS.read_text(encoding="utf-8")


def test_other_os_errors_are_not_disguised(monkeypatch, tmp_path) -> None:
    import steerscreen.pipeline.stats as stage

    def boom(*_a: Any, **_k: Any) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")

    monkeypatch.setattr(stage, "run_stats", boom)
    res, _ = invoke(["stats", "--sae", str(tmp_path), "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, FileNotFoundError)
