"""The run folder: manifest updates, atomic tables, and the stage guard."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest

from steerscreen.errors import ArtifactError, SteerscreenError
from steerscreen.pipeline.runs import MANIFEST_FORMAT, RunDir, environment

CFG = {"tokens": 100, "seed": 0}
INPUTS = {"sae_sha256": "abc"}


def complete(run: RunDir, name: str = "stats", cfg=CFG, inputs=INPUTS, **kw) -> None:
    run.begin_stage(name, cfg, inputs, **kw)
    info = run.write_table(RunDir.FEATURE_STATS, pl.DataFrame({"feature": [0, 1]}))
    run.complete_stage(name, outputs={RunDir.FEATURE_STATS: info}, timings={"total": 1.0},
                       results={"n": 2})


def test_environment_names_versions() -> None:
    env = environment("cpu", "float32")
    assert env["versions"]["torch"] and env["versions"]["sae_lens"]
    assert env["device"] == "cpu" and env["python"]


def test_manifest_updates_merge_and_are_atomic(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert run.read_manifest() == {"format": MANIFEST_FORMAT, "stages": {}}
    run.update_manifest({"model": {"name": "m", "d": 4}})
    m = run.update_manifest({"model": {"d": 8}, "hook": "h"})
    assert m["model"] == {"name": "m", "d": 8} and m["hook"] == "h"
    assert json.loads(run.manifest_path.read_text()) == m
    assert [p.name for p in run.path.iterdir()] == [RunDir.MANIFEST]


def test_write_table_hashes_what_it_wrote(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    info = run.write_table("t.parquet", pl.DataFrame({"a": [1, 2, 3]}))
    data = (tmp_path / "t.parquet").read_bytes()
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["rows"] == 3
    assert run.read_table("t.parquet")["a"].to_list() == [1, 2, 3]
    (tmp_path / "bad.parquet").write_text("no")
    with pytest.raises(ArtifactError, match="not a readable parquet"):
        run.read_table("bad.parquet")


def test_guard_runs_skips_refuses(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert run.check_stage("stats", CFG, inputs=INPUTS).action == "run"
    complete(run)
    assert run.check_stage("stats", CFG, inputs=INPUTS).action == "skip"
    assert run.check_stage("stats", CFG, inputs=INPUTS, force=True).action == "run"
    with pytest.raises(SteerscreenError, match=r"tokens: 100 -> 5"):
        run.check_stage("stats", {**CFG, "tokens": 5})
    with pytest.raises(SteerscreenError, match=r"inputs.sae_sha256: abc -> xyz"):
        run.check_stage("stats", CFG, inputs={"sae_sha256": "xyz"})
    assert run.check_stage("stats", {**CFG, "tokens": 5}, force=True).action == "run"
    (run.path / RunDir.FEATURE_STATS).write_bytes(b"changed")
    assert run.check_stage("stats", CFG, inputs=INPUTS).action == "run"


def test_recomputing_a_stage_marks_dependents_stale(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    complete(run)
    complete(run, "steer", cfg={"n": 1}, inputs={}, depends_on=["stats"])
    complete(run)  # same config: dependents stay complete
    assert run.stage("steer")["status"] == "complete"
    run.begin_stage("stats", {**CFG, "tokens": 7}, INPUTS)
    assert run.stage("steer")["status"] == "stale"
    assert run.stage("stats")["status"] == "running"


def test_corrupt_manifest_is_an_actionable_error(tmp_path: Path) -> None:
    (tmp_path / RunDir.MANIFEST).write_text("{nope")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        RunDir(tmp_path).read_manifest()


def test_manifest_is_strict_json(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.update_manifest({"sigma": float("nan"), "nested": {"r": float("inf"), "ok": 1.5}})
    m = json.loads(run.manifest_path.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert m["sigma"] is None and m["nested"] == {"r": None, "ok": 1.5}


def test_a_stale_stage_reruns_without_force(tmp_path):
    from steerscreen.pipeline.runs import RunDir

    run = RunDir(tmp_path / "run")
    run.begin_stage("a", {"x": 1}, {})
    run.complete_stage("a", outputs={}, timings={})
    run.begin_stage("b", {"y": 1}, {}, depends_on=["a"])
    run.complete_stage("b", outputs={}, timings={})
    run.begin_stage("a", {"x": 2}, {})  # recomputed with another config: b goes stale
    assert run.stage("b")["status"] == "stale"
    check = run.check_stage("b", {"y": 2}, inputs={"new": 1})
    assert check.action == "run" and "stale" in check.reason
