"""The catalogue of bad inputs (docs/errors.md): the inputs they need, built on disk, and each
case's CLI arguments and documented message. Used by ``test_errors.py`` (in-process, in CI) and
``benchmarks/refusals.py`` (each case in a fresh process, timed)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def _cfg_with(folder: Path, **kw: Any) -> Path:
    """``make_sae`` then set top-level cfg.json fields (architecture, k, ...)."""
    make_sae(folder)
    cfg_path = folder / "cfg.json"
    cfg_path.write_text(json.dumps(json.loads(cfg_path.read_text()) | kw))
    return folder


def _weights_with(folder: Path, edit: Any) -> Path:
    """``make_sae`` then rewrite its safetensors file through ``edit(tensors) -> tensors``."""
    from safetensors.torch import load_file, save_file

    make_sae(folder)
    w = folder / "sae_weights.safetensors"
    save_file(edit(load_file(w)), w)
    return folder


def _truncated(folder: Path) -> Path:
    make_sae(folder)
    w = folder / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return folder


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _study(path: Path, p: dict[str, Path], sae: Path, tail: str = "") -> Path:
    model, corpus, down = p["model"], p["corpus"], p["down"]
    path.write_text(f'name = "x"\nmodel = "local:{model}"\ncorpus = "text:{corpus}"\n'
                    f'[[sae]]\nname = "mine"\nspec = "{sae}"\n[downstream]\nspec = '
                    f'"{down}"\n{tail}')
    return path


def build_inputs(root: Path) -> dict[str, Path]:
    """Every input the cases name (``{name}`` in their arguments), under ``root``."""
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
            # SAE files (checked before SAELens is imported)
            "k_neg": _cfg_with(root / "k-neg", architecture="topk", k=-3),
            "k_str": _cfg_with(root / "k-str", architecture="topk", k="four"),
            "k_big": _cfg_with(root / "k-big", architecture="topk", k=10**6),
            "arch": _cfg_with(root / "arch", architecture="spiky"),
            "norm": _cfg_with(root / "norm", normalize_activations="sideways"),
            "model_int": _sae_with(root / "model-int", model_name=7),
            "jumprelu": _cfg_with(root / "jumprelu", architecture="jumprelu"),
            "big_cfg": _cfg_with(root / "big-cfg", padding=" " * (1 << 20)),
            "truncated": _truncated(root / "truncated"),
            "w_dec_t": _weights_with(root / "w-dec-t",
                                     lambda t: t | {"W_dec": t["W_dec"].T.contiguous()}),
            "fifo_sae": make_sae(root / "fifo-sae"),
            "no_cfg": make_sae(root / "no-cfg"),
            "fifo": _fifo(root / "fifo"),
        }
    (p["fifo_sae"] / "cfg.json").unlink()
    _fifo(p["fifo_sae"] / "cfg.json")
    (p["no_cfg"] / "cfg.json").unlink()
    (root / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (root / "binary.bin").write_bytes(b"PK\x03\x04\x00\x00binary")
    (root / "a-file").write_text("not a folder")
    (root / "study.toml").write_text('name = "x"\nmodle = "embedded:smollm2-135m"\n')
    (root / "typed.toml").write_text('name = "x"\n[stats]\ntokens = "many"\n')
    p["study_features"] = _study(root / "features.toml", p, p["sae"],
                                 "[steer]\nfeatures = 1000000000\n")
    p["study_no_cfg"] = _study(root / "no-cfg.toml", p, p["no_cfg"])
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
    # SAE files: cfg.json and the safetensors header, checked before SAELens is imported
    Case("cfg-k-negative", stats(sae="{k_neg}"), "but must be", detail="k is -3"),
    Case("cfg-k-string", stats(sae="{k_str}"), "but must be", detail="k is 'four'"),
    Case("cfg-k-too-big", stats(sae="{k_big}"), "but must be",
         detail="k is 1000000, but must be an integer from 1 to d_sae = 40"),
    Case("cfg-architecture", stats(sae="{arch}"), "names the unknown architecture"),
    Case("cfg-normalize", stats(sae="{norm}"), "but must be",
         detail="normalize_activations is 'sideways'"),
    Case("cfg-model-name", stats(sae="{model_int}"), "but must be",
         detail="metadata.model_name is 7"),
    Case("cfg-huge", stats(sae="{big_cfg}"), "an SAE's cfg.json is a few kB"),
    Case("weights-jumprelu", stats(sae="{jumprelu}"), "lacks the tensor(s)",
         detail="threshold"),
    Case("weights-truncated", stats(sae="{truncated}"), "is truncated: tensor"),
    Case("weights-shape", stats(sae="{w_dec_t}"), "but cfg.json (d_in=", detail="W_dec"),
    # not a regular file where a file is expected (a FIFO would hang a reader)
    Case("fifo-cfg", stats(sae="{fifo_sae}"), "not a regular file", detail="SAE config"),
    Case("fifo-corpus", stats(corpus="text:{fifo}"), "not a regular file",
         detail="corpus file is a FIFO (named pipe)"),
    Case("fifo-config", ["run", "--config", "{fifo}", "--out", "{out}"], "not a regular file",
         detail="config file"),
    Case("fifo-feature-ids", steer("--feature-ids", "{fifo}"), "names a FIFO (named pipe)",
         out="stats_run"),
    Case("neighbour-threshold", stats("--neighbour-threshold", "nan"),
         "neighbour_threshold must be a cosine"),
    Case("batch-rows", steer("--batch-rows", "0"), "batch_rows must be positive",
         out="stats_run"),
    Case("dose-unknown", steer("--dose", "loud"), "unknown dose", out="stats_run"),
    Case("dose-equal-kl-strengths", steer("--dose", "equal-kl"),
         "--dose equal-kl sets each direction's own dose, so it takes no --strengths",
         out="stats_run"),
    # a study checks every stage before it writes anything (study.json included)
    Case("study-features", ["run", "--config", "{study_features}", "--out", "{out}"],
         "asked to steer", detail="[[sae]] 'mine': asked to steer 1000000000 features"),
    Case("study-features-fix", ["run", "--config", "{study_features}", "--out", "{out}",
                                "--dry-run"], "asked to steer", detail="set [steer] features"),
    Case("study-spec-no-cfg", ["run", "--config", "{study_no_cfg}", "--out", "{out}",
                               "--dry-run"], "has no cfg.json", detail="[[sae]] 'mine'"),
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
    Case("explain-feature", ["explain", "--predictor", "{out}/predictor.json", "--sae", "{sae}",
                             "--model", "local:{model}", "--out", "{out}", "3", "100000"],
         "are not features of", detail="feature id(s) 100000 are not features of"),
    Case("report-feature-study", ["report", "--run", "{out}", "--feature", "3"],
         "--feature needs a run folder"),
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


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))} if folder.exists() else {}


def case_out(case: Case, inputs: dict[str, Path], tmp_path: Path) -> Path:
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


__all__ = ["CASES", "DOCS", "Case", "build_inputs", "case_out", "snapshot"]
