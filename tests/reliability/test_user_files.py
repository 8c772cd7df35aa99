"""steerscreen replaces only what it created: a user's files in any output location survive every
command, ``--force`` included (issue: reliability, round two).

Each command runs through the CLI on the tiny on-disk pipeline of :mod:`.pipeline`, into a
location where a user keeps files: beside its outputs (names that look like its temp files
included), under its output names, and as the output folder itself.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.files import atomic_dir, atomic_path
from steerscreen.layout import RUN_OUTPUTS, steerscreen_temp
from steerscreen.pipeline.runs import RunDir
from tests.reliability.pipeline import Inputs, build_inputs

USER_FILES = {"thesis.txt": b"chapter one\n", "chapter1/draft.md": b"# draft\n",
              ".notes.tmp": b"my notes\n", ".cache.tmp-keep/keep.bin": b"\x00\x01",
              ".feature_stats.parquet.tmp": b"not a temp of ours\n",
              ".feature_stats.parquet.old-keep/x": b"mine\n"}
"""Beside the outputs; the dotted ones look like temp files but are not the ones it makes."""


def plant(folder: Path, files: dict[str, bytes]) -> dict[Path, str]:
    out = {}
    for name, data in files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[p] = hashlib.sha256(data).hexdigest()
    return out


def intact(planted: dict[Path, str]) -> bool:
    return all(p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == h
               for p, h in planted.items())


def cli(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(res: Any, words: str = "steerscreen did not write it") -> bool:
    out = " ".join(res.output.split())
    return res.exit_code == 2 and words in out and "Traceback" not in out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    return build_inputs(tmp_path_factory.mktemp("user-files"))


@pytest.fixture(scope="module")
def steered(inputs: Inputs, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("steered") / "run"
    assert cli(*inputs.stats_args(run)).exit_code == 0
    assert cli(*inputs.steer_args(run)).exit_code == 0
    return run


def test_train_sae_never_replaces_a_users_folder(inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    planted = plant(out, {"thesis.txt": b"years of work\n", "chapter1/draft.md": b"# one\n"})
    res = cli("train-sae", "--model", inputs.model, "--corpus", inputs.corpus, "--hook",
              "blocks.1.hook_resid_post", "--width", "16", "--k", "4", "--tokens", "200",
              "--context-len", "16", "--out", out)
    assert refused(res, "a non-empty folder that train-sae did not write"), res.output
    assert intact(planted) and sorted(p.name for p in out.iterdir()) == ["chapter1",
                                                                         "thesis.txt"]


def test_stats_force_keeps_files_that_only_look_like_temp_files(inputs: Inputs,
                                                               tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli(*inputs.stats_args(run)).exit_code == 0
    planted = plant(run, USER_FILES)
    leftover = run / ".feature_stats.parquet.ab12cd34.tmp"  # what a killed write leaves
    leftover.write_bytes(b"half a table")
    assert steerscreen_temp(leftover.name)
    res = cli(*inputs.stats_args(run, 700), "--force")  # another config: recomputed
    assert res.exit_code == 0, res.output
    assert intact(planted)
    assert not leftover.exists()  # its own temp file is cleaned up


@pytest.mark.parametrize("force", [False, True])
def test_a_run_folder_keeps_a_users_files_through_every_stage(inputs: Inputs, steered: Path,
                                                              tmp_path: Path,
                                                              force: bool) -> None:
    run = tmp_path / "run"
    shutil.copytree(steered, run)
    planted = plant(run, USER_FILES)
    extra = ["--force"] if force else []
    for args in (inputs.stats_args(run, 600, *extra), inputs.steer_args(run, *extra),
                 ["fit", "--run", run, "--n-splits", "3", "--n-repeats", "1",
                  "--n-permutations", "5", *extra], ["report", "--run", run]):
        res = cli(*args)
        assert res.exit_code == 0, res.output
        assert intact(planted), args[0]


@pytest.mark.parametrize("name", ["feature_stats.parquet", "steering_outcomes.parquet",
                                  "screening/summary.json", "report.html", "summary.md"])
def test_a_users_file_under_an_output_name_is_never_overwritten(inputs: Inputs, steered: Path,
                                                                tmp_path: Path,
                                                                name: str) -> None:
    """In a folder that holds no steerscreen run, --force writes into it but never over a file
    it did not write."""
    run = tmp_path / "run"
    if name != "feature_stats.parquet":
        shutil.copytree(steered, run)
        m = RunDir(run).read_manifest()
        for rec in m["stages"].values():  # forget that steerscreen wrote it
            (rec.get("outputs") or {}).pop(name, None)
        (m.get("files") or {}).pop(name, None)
        from steerscreen.files import write_json

        write_json(run / "manifest.json", m)
    planted = plant(run, {name: b"the user's own\n"})
    stage = {"feature_stats.parquet": inputs.stats_args(run, 600, "--force"),
             "steering_outcomes.parquet": inputs.steer_args(run, "--force"),
             "screening/summary.json": ["fit", "--run", run, "--n-splits", "3", "--n-repeats",
                                        "1", "--n-permutations", "5", "--force"],
             "report.html": ["report", "--run", run], "summary.md": ["report", "--run", run]}
    res = cli(*stage[name])
    assert refused(res), res.output
    assert intact(planted)


def test_compare_never_overwrites_a_users_tables(inputs: Inputs, steered: Path,
                                                 tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(steered, other)
    for run in (steered, other):
        if not (run / "screening" / "summary.json").exists():
            assert cli("fit", "--run", run, "--n-splits", "3", "--n-repeats", "1",
                       "--n-permutations", "5").exit_code == 0
    out = tmp_path / "cmp"
    planted = plant(out, {"transfer.parquet": b"mine\n", "runs.parquet": b"also mine\n"})
    assert refused(cli("compare", steered, other, "--out", out)) and intact(planted)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    res = cli("compare", steered, other, "--out", a_file)
    assert res.exit_code == 2 and "Traceback" not in res.output and a_file.read_text() == "x"
    fresh = tmp_path / "cmp2"
    assert cli("compare", steered, other, "--out", fresh).exit_code == 0
    assert cli("compare", steered, other, "--out", fresh).exit_code == 0  # its own: replaced


names = st.text(st.characters(codec="ascii", categories=("L", "N"), include_characters="._-"),
                min_size=1, max_size=24).filter(lambda s: s not in (".", ".."))


@settings(max_examples=200, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(names)
def test_only_steerscreens_own_temp_names_count_as_temp_files(name: str) -> None:
    """The cleanup's rule, for any name: a temp of one of steerscreen's outputs, made by its
    own atomic writes, or nothing."""
    looks = steerscreen_temp(name)
    if looks:
        stem = name[1:].rsplit(".", 2 if name.endswith(".tmp") else 1)[0]
        assert stem in RUN_OUTPUTS


@pytest.mark.parametrize("output", sorted(RUN_OUTPUTS))
def test_the_temp_names_atomic_writes_make_are_recognised(tmp_path: Path, output: str) -> None:
    with atomic_path(tmp_path / output) as tmp:
        assert steerscreen_temp(tmp.name), tmp.name
    with atomic_dir(tmp_path / output) as tmp:
        assert steerscreen_temp(tmp.name), tmp.name


# --- what it reads back: tables, manifests, predictors (refused with the file and the fix) ----


def fitted(steered: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(steered, run)
    if not (run / "screening" / "predictor.json").exists():
        assert cli("fit", "--run", run, "--n-splits", "3", "--n-repeats", "1",
                   "--n-permutations", "5").exit_code == 0
    return run


@pytest.mark.parametrize("table, column, stage", [
    ("feature_stats.parquet", "base_freq", "stats"),
    ("steering_outcomes.parquet", "effect_stability", "steer")])
def test_fit_names_the_table_that_lost_a_column(steered: Path, tmp_path: Path, table: str,
                                                column: str, stage: str) -> None:
    import polars as pl

    run = tmp_path / "run"
    shutil.copytree(steered, run)
    pl.read_parquet(run / table).drop(column).write_parquet(run / table)
    res = cli("fit", "--run", run, "--n-splits", "3", "--n-repeats", "1", "--n-permutations",
              "5", "--force")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"lacks the columns {column}" in text
    assert f"rerun `steerscreen {stage}` with --force" in text


@pytest.mark.parametrize("damage, words", [
    (lambda m: m["stages"]["stats"].update(config="seed=0"), "stage record is damaged (config)"),
    (lambda m: m["stages"]["stats"].pop("inputs"), "stage record is damaged (inputs)"),
    (lambda m: m.update(stages=["stats"]), "is not a steerscreen run manifest"),
    (lambda m: m.update(format="steerscreen-run/99"), "a newer steerscreen wrote it"),
], ids=["config-a-string", "inputs-missing", "stages-a-list", "future-format"])
def test_a_damaged_or_newer_manifest_is_refused(inputs: Inputs, steered: Path, tmp_path: Path,
                                                damage: Any, words: str) -> None:
    import json

    run = tmp_path / "run"
    shutil.copytree(steered, run)
    m = json.loads((run / "manifest.json").read_text())
    if "format" in m and "newer" in words:
        m["format"] = m["format"].split("/")[0] + "/99"
    else:
        damage(m)
    (run / "manifest.json").write_text(json.dumps(m))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for args in (inputs.stats_args(run), inputs.steer_args(run), ["fit", "--run", run],
                 ["report", "--run", run]):
        res = cli(*args)
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and "Traceback" not in res.output, (args[0], res.output)
        assert words in text, (args[0], res.output)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("field", ["coef", "scales", "intercept"])
def test_a_predictor_with_non_finite_numbers_is_refused(inputs: Inputs, steered: Path,
                                                        tmp_path: Path, field: str) -> None:
    import json

    run = fitted(steered, tmp_path)
    path = run / "screening" / "predictor.json"
    pred = json.loads(path.read_text())
    model = next(iter(pred["models"].values()))
    if isinstance(model[field], list):
        model[field][0] = float("nan")
    else:
        model[field] = float("inf")
    path.write_text(json.dumps(pred))  # Python writes NaN / Infinity, which JSON readers take
    out = tmp_path / "screened"
    res = cli("screen", "--predictor", path, "--sae", inputs.sae, "--model", inputs.model,
              "--corpus", inputs.corpus, "--tokens", "200", "--out", out)
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "is not a steerscreen predictor" in text, res.output
    assert "finite" in text and not out.exists()


def test_screen_checks_the_downstream_sae_before_its_stats_pass(inputs: Inputs, steered: Path,
                                                                tmp_path: Path) -> None:
    from steerscreen.screening.predictor import Predictor

    path = fitted(steered, tmp_path) / "screening" / "predictor.json"
    assert "base_pass" in Predictor.load(path).columns  # else S' is never needed
    out = tmp_path / "screened"
    res = cli("screen", "--predictor", path, "--sae", inputs.sae, "--model", inputs.model,
              "--corpus", inputs.corpus, "--tokens", "200", "--downstream-sae",
              tmp_path / "no-such-sae", "--out", out)
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "does not exist" in text, res.output
    assert not out.exists()  # refused before the stats pass wrote anything


@pytest.mark.parametrize("name", ["screen.csv", "screen.parquet"])
def test_screen_never_overwrites_a_users_ranking(inputs: Inputs, steered: Path, tmp_path: Path,
                                                 name: str) -> None:
    path = fitted(steered, tmp_path) / "screening" / "predictor.json"
    out = tmp_path / "screened"
    planted = plant(out, {name: b"my ranking\n"})
    res = cli("screen", "--predictor", path, "--sae", inputs.sae, "--model", inputs.model,
              "--corpus", inputs.corpus, "--tokens", "200", "--downstream-sae", inputs.down,
              "--out", out, "--force")
    assert refused(res), res.output
    assert intact(planted) and sorted(p.name for p in out.iterdir()) == [name]


def test_outputs_follow_the_users_umask(inputs: Inputs, tmp_path: Path) -> None:
    """Files are created as open() would create them (0644 under umask 022), not 0600."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        assert cli(*inputs.stats_args(run)).exit_code == 0
    finally:
        os.umask(old)
    for p in (run / "manifest.json", run / "feature_stats.parquet"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


@pytest.mark.parametrize("name", ["gpt2*small_[v2]", "a|b <script>x</script>", "# title",
                                  "back`tick`s", "line\nbreak ~~x~~", "tab\\slash"])
def test_summary_markdown_shows_user_names_literally(name: str) -> None:
    from markdown_it import MarkdownIt

    from steerscreen.report.summary import _code, _md

    md = MarkdownIt("commonmark").enable("table").enable("strikethrough")
    html = md.render(f"model {_md(name)} at {_code('/runs/' + name)}")
    flat = " ".join(name.split())
    escaped = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(
        '"', "&quot;")
    assert html.count("<code>") == 1 and "<em>" not in html and "<del>" not in html, html
    assert f"model {escaped} at" in html, html
    assert "<h1>" not in html and "<script>" not in html


@pytest.mark.parametrize("name", ["report.html", "summary.md", "feature_stats.parquet"])
def test_a_fifo_under_an_output_name_is_refused_without_blocking(inputs: Inputs, steered: Path,
                                                                 tmp_path: Path,
                                                                 name: str) -> None:
    """Nothing opens a FIFO where steerscreen expects its own file (reading one blocks)."""
    import os

    run = tmp_path / "run"
    shutil.copytree(steered, run)
    (run / name).unlink(missing_ok=True)
    os.mkfifo(run / name)
    args = (["report", "--run", run] if name != "feature_stats.parquet"
            else ["fit", "--run", run, "--n-splits", "3", "--n-repeats", "1", "--force"])
    res = cli(*args)
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert ("is a FIFO (named pipe), not a regular file" if name.endswith(".parquet") else
            "steerscreen did not write it") in text, res.output
    assert (run / name).is_fifo()


def test_compare_never_opens_a_fifo_record(inputs: Inputs, steered: Path,
                                           tmp_path: Path) -> None:
    import os

    run = fitted(steered, tmp_path)
    out = tmp_path / "cmp"
    out.mkdir()
    os.mkfifo(out / "comparison.json")
    os.mkfifo(out / "transfer.parquet")
    res = cli("compare", run, run, "--out", out)
    assert refused(res), res.output
