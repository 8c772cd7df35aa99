"""The main job: config validation, the shipped configs, and a whole study on a tiny model."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.config import PRESET_VALUES, PRESETS
from steerscreen.errors import ArtifactError, SpecError
from steerscreen.pipeline.plan import make_plan
from steerscreen.pipeline.study import build_config, load_config, run_study
from tests.stats.test_stage import make_corpus
from tests.tiny_models import tiny_model

CONFIGS_DIR = Path(__file__).parents[2] / "configs"
CONFIGS = sorted(CONFIGS_DIR.glob("*.toml"))


# -- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_the_embedded_study_validates_for_every_preset(preset: str) -> None:
    cfg = load_config(None, preset)
    assert [e.arch for e in cfg.saes] == ["topk", "relu", "jumprelu", "topk"]
    ratio = PRESET_VALUES[preset]["wide_ratio"]  # the width question: 4x apart, 2x by default
    assert cfg.saes[3].width == ratio * cfg.saes[0].width and ratio >= 2
    own = PRESET_VALUES[preset].get("sae_epochs", {})  # the wide TopK's and JumpReLU's epochs
    for e, role in ((cfg.saes[2], "jumprelu"), (cfg.saes[3], "wide")):
        assert cfg.train_config(e).epochs == own.get(role, cfg.train.epochs)
    assert cfg.train_config(cfg.saes[0]).epochs == cfg.train.epochs
    if preset == "default":  # the embedded default study, written out, is the built-in one
        written = load_config(CONFIGS_DIR / "smollm2-embedded.toml", preset)
        assert [(e.name, e.arch, e.width, e.hook, e.epochs) for e in written.saes] == [
            (e.name, e.arch, e.width, e.hook, e.epochs) for e in cfg.saes]
    assert cfg.downstream is not None and cfg.downstream.hook == "blocks.16.hook_resid_post"
    plan = make_plan(cfg)
    assert {s.stage for s in plan.steps} == {"train", "stats", "steer", "fit", "screen",
                                             "compare", "report"}
    if preset == "quick":
        assert plan.total_s is not None and plan.total_s <= plan.budget_s


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_validates_offline(path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(path)
    assert len(cfg.saes) >= 2 and cfg.downstream is not None
    assert make_plan(cfg).steps
    text = path.read_text()
    assert "# needs:" in text and "# cost:" in text  # each says what it costs and needs


def test_configs_cover_the_papers_settings() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"gpt2-small", "pythia-70m-deduped", "gemma-2-2b", "llama-3.1-8b",
            "gemma3-270m", "smollm2-embedded"} <= names


@pytest.mark.parametrize("raw, message", [
    ({"stats": {"tokenz": 10}}, "unknown field 'tokenz' (did you mean 'tokens'?)"),
    ({"stats": {"tokens": "many"}}, "stats.tokens = 'many' is not int"),
    ({"steer": {"downstream_sae": "x"}}, "which the study sets itself"),
    ({"modle": "x"}, "did you mean 'model'"),
    ({"sae": [{"name": "a", "arch": "topk", "width": 8, "hook": "blocks.1.hook_resid_post"}]},
     "no [downstream] SAE"),
    ({"sae": [{"name": "a", "arch": "conv", "hook": "blocks.1.hook_resid_post"}],
      "downstream": {"arch": "topk", "hook": "blocks.3.hook_resid_post"}}, "unknown arch"),
    ({"sae": [{"name": "a", "spec": "saelens:gpt2-small-res-jb/blocks.99.hook_resid_pre"}],
      "downstream": {"arch": "topk", "hook": "blocks.3.hook_resid_post"}}, "has no SAE id"),
    ({"sae": [{"name": "a", "arch": "topk", "hook": "blocks.5.hook_resid_post"}],
      "downstream": {"arch": "topk", "hook": "blocks.3.hook_resid_post"}},
     "does not lie before the downstream hook"),
    ({"sae": [{"name": "a/b", "arch": "topk", "hook": "blocks.1.hook_resid_post"}],
      "downstream": {"arch": "topk", "hook": "blocks.3.hook_resid_post"}}, "not a folder name"),
    ({"fit": {"n_splits": 1.5}}, "fit.n_splits = 1.5 is not int"),
    ({"sae": [{"name": "a", "arch": "topk", "hook": "blocks.1.hook_resid_post", "epochs": 0}],
      "downstream": {"arch": "topk", "hook": "blocks.3.hook_resid_post"}}, "epochs"),
])
def test_bad_configs_name_the_field_and_the_fix(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as e:
        build_config(raw, "quick")
    assert message in e.value.what
    assert e.value.fix


def test_an_sae_can_train_longer_than_the_others() -> None:
    """``[[sae]] epochs`` (the wide SAE's extra optimiser steps) reaches its training config,
    and so its cache key; the other SAEs keep the [train] section's epochs."""
    from steerscreen.pipeline.train import cache_key

    hook, down = "blocks.1.hook_resid_post", {"arch": "topk", "hook": "blocks.3.hook_resid_post"}
    cfg = build_config({"sae": [{"name": "narrow", "hook": hook},
                                {"name": "wide", "hook": hook, "width": 64, "epochs": 12}],
                        "downstream": down, "train": {"epochs": 3},
                        "steer": {"features": 16}}, "quick")
    narrow, wide = (cfg.train_config(e) for e in cfg.saes)
    assert (narrow.epochs, wide.epochs) == (3, 12)
    assert cache_key(wide, "c") != cache_key(dataclasses.replace(wide, epochs=3), "c")
    assert make_plan(cfg).steps  # the plan charges each SAE its own samples


def test_config_files_parse_toml_and_yaml(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('name = "t"\npreset = "quick"\n[steer]\nstrengths = [0.25, 0.5]\n')
    yaml = tmp_path / "s.yaml"
    yaml.write_text("name: t\npreset: quick\nsteer:\n  strengths: [0.25, 0.5]\n")
    a, b = load_config(toml), load_config(yaml)
    assert a.record() == b.record()
    assert a.steer.strengths == [0.25, 0.5] and a.preset == "quick"
    assert load_config(toml, "default").preset == "default"  # --preset wins
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(SpecError, match="does not parse"):
        load_config(bad)


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "study"
    res = CliRunner().invoke(app, ["run", "--preset", "quick", "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "estimated total" in res.output and "budget 15" in res.output
    assert not out.exists()
    res = CliRunner().invoke(app, ["run", "--preset", "nope", "--dry-run"])
    assert res.exit_code == 2 and "unknown preset" in res.output


# -- the whole study on a tiny model -----------------------------------------------------------
def tiny_study(root: Path, **steer: Any):
    model = tiny_model("llama")
    model_dir = root / "tiny-llama"
    model.model.config.save_pretrained(model_dir)
    corpus = make_corpus(root / "corpus.txt", n_docs=80)
    hook, down = "blocks.1.hook_resid_post", "blocks.3.hook_resid_post"
    raw = {
        "name": "tiny", "model": f"local:{model_dir}", "corpus": f"text:{corpus}",
        "sae": [
            {"name": "topk-32", "arch": "topk", "width": 32, "k": 4, "hook": hook,
             "roles": ["architecture", "width"]},
            {"name": "relu-32", "arch": "relu", "width": 32, "hook": hook,
             "roles": ["architecture"]},
            {"name": "jumprelu-32", "arch": "jumprelu", "width": 32, "hook": hook,
             "roles": ["architecture"]},
            {"name": "topk-128", "arch": "topk", "width": 128, "k": 4, "hook": hook,
             "roles": ["width"]},
        ],
        "downstream": {"arch": "topk", "width": 32, "k": 4, "hook": down},
        "train": {"tokens": 1500, "heldout_tokens": 300, "epochs": 2, "batch_size": 128,
                  "context_len": 16, "target_l0": 6.0},
        "stats": {"tokens": 300, "context_len": 12, "batch_size": 8, "reservoir_size": 5,
                  "n_examples": 2, "example_window": 4, "final_norm_contexts": 4,
                  "n_components": 4},
        "steer": {"features": 12, "random_directions": 4, "contexts": 3, "fresh_contexts": 3,
                  "context_len": 10, "calibration_contexts": 3, "calibration_directions": 4,
                  "shard_directions": 4, "target_kl": 0.005, "kl_tolerance": 0.2, **steer},
        "fit": {"n_splits": 3, "n_repeats": 1, "n_permutations": 10,
                "boosting_sets": ["full"]},
    }
    return build_config(raw, "quick"), model


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.setenv("STEERSCREEN_CACHE", str(root / "cache"))
    cfg, model = tiny_study(root)
    out = root / "out"
    logs: list[str] = []
    res = run_study(cfg, out, model=model, progress=False, log=logs.append)
    yield {"root": root, "cfg": cfg, "model": model, "out": out, "res": res, "logs": logs}
    mp.undo()


def test_study_writes_every_run_the_comparison_and_the_report(study) -> None:
    out: Path = study["out"]
    rec = json.loads((out / "study.json").read_text())
    assert rec["status"] == "complete" and rec["format"] == "steerscreen-study/1"
    assert [r["name"] for r in rec["runs"]] == ["topk-32", "relu-32", "jumprelu-32", "topk-128"]
    for r in rec["runs"]:
        run = out / r["path"]
        for f in ("feature_stats.parquet", "feature_examples.parquet", "contexts.parquet",
                  "steering_outcomes.parquet", "steering_gram.parquet",
                  "screening/summary.json", "screening/predictor.json"):
            assert (run / f).is_file(), f"{r['name']}: {f}"
        assert (out / "saes" / r["name"] / "cfg.json").is_file()  # trained SAEs travel along
        assert (run / "report.html").is_file()
    transfer = pl.read_parquet(out / "comparison" / "transfer.parquet")
    assert set(transfer["train"]) == {"topk-32", "relu-32", "jumprelu-32", "topk-128"}
    assert transfer.height == 4 * 3 * 3  # ordered pairs x outcomes
    widths = {r["width"] for r in rec["runs"]}
    assert widths == {32, 128}
    # One calibration for the study: every run steered at the same dose.
    strengths = {json.loads((out / r["path"] / "manifest.json").read_text())["strengths"][0]
                 for r in rec["runs"]}
    assert len(strengths) == 1
    assert sum("reusing the dose calibration" in m for m in study["logs"]) == 3
    h = study["res"].headline
    assert h is not None and h.run == "topk-32" and h.delta_rho is not None
    assert study["res"].report is not None and study["res"].report.is_file()


def test_rerun_resumes_without_recomputing(study) -> None:
    out: Path = study["out"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    t = time.perf_counter()
    logs: list[str] = []
    run_study(study["cfg"], out, model=study["model"], progress=False, log=logs.append,
              make_report=False)
    assert time.perf_counter() - t < 60
    assert any("already complete" in m or "skip" in m for m in logs), logs
    after = {p: p.stat().st_mtime_ns for p in before}
    changed = [p for p in before
               if after[p] != before[p] and "comparison" not in p.parts]
    assert not changed, changed


def test_another_config_in_the_same_folder_is_refused(study) -> None:
    cfg, _ = tiny_study(study["root"], features=10)
    with pytest.raises(ArtifactError, match="another config"):
        run_study(cfg, study["out"], model=study["model"], progress=False, make_report=False)


def test_docs_match_the_config_classes() -> None:
    from steerscreen.pipeline.docs import markdown

    doc = Path(__file__).parents[2] / "docs" / "study.md"
    assert doc.read_text(encoding="utf-8") == markdown(), (
        "docs/study.md is stale: run `python -m steerscreen.pipeline.docs --write docs/study.md`")
    for line in markdown().splitlines():
        if (line.startswith("| `") and line.replace("\\|", "").count("|") != 5
                and "configs/" not in line):
            raise AssertionError(f"a table row with a stray '|': {line}")


def test_force_recomputes_only_what_the_new_config_changes(study) -> None:
    out: Path = study["out"]
    stats = sorted(out.glob("runs/*/feature_stats.parquet"))
    before = {p: p.stat().st_mtime_ns for p in stats}
    # A user's files in the study folder, a run folder and the comparison folder survive --force.
    mine = [out / "thesis.txt", out / "notes" / "draft.md", stats[0].parent / ".notes.tmp",
            stats[0].parent / "my-analysis.ipynb", out / "comparison" / "my-plot.png"]
    for i, p in enumerate(mine):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"the user's own %d\n" % i)
    cfg, _ = tiny_study(study["root"], features=10)
    logs: list[str] = []
    run_study(cfg, out, model=study["model"], progress=False, make_report=False, force=True,
              log=logs.append)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # stats untouched
    assert [p.read_bytes() for p in mine] == [b"the user's own %d\n" % i for i in range(5)]
    for p in out.glob("runs/*/steering_outcomes.parquet"):
        df = pl.read_parquet(p)
        assert (df["direction"] == "feature").sum() == 10 * 2  # 10 features x 2 context sets
    assert json.loads((out / "study.json").read_text())["config"]["steer"]["features"] == 10


def test_the_notebook_opens_the_study_and_its_screens(study) -> None:
    import steerscreen as ss

    s = ss.Study.open(study["out"])
    assert list(s.runs) == ["topk-32", "relu-32", "jumprelu-32", "topk-128"]
    run = s.runs["topk-32"]
    assert run.outcomes is not None and run.outcomes.height > 0
    assert run.stats is not None and run.stats.height == 32
    assert set(run.verdicts) == {"effect_stability", "collateral_spread", "cleanliness"}
    v = s.verdicts
    assert {"run", "outcome", "test", "estimate", "lo", "hi", "mde", "underpowered",
            "verdict"} <= set(v.columns)
    assert v.height > 0 and set(v["run"]) == set(s.runs)
    assert s.report == study["out"] / "report.html" and s.transfer is not None
    # Every run screens its own SAE: every feature ranked, dead last.
    screen = run.screen
    assert screen is not None and screen.table.height == 32
    assert screen.table["rank"].to_list() == list(range(1, 33))
    assert screen.top(3).height == 3 and "feature" in screen.explain(
        int(screen.table["feature"][0])).text()
    assert "<table" in s._repr_html_() and "verdict" in run._repr_html_()
    with pytest.raises(ArtifactError, match="not a study folder"):
        ss.Study.open(study["root"])
