"""Crash safety: a SIGKILLed ``steer`` or ``stats`` run resumes to exactly the uninterrupted
result without recomputing finished work, and a full disk mid-stage leaves the run folder valid.

The killed runs are real subprocesses of the CLI; the reference and resumed runs go through the
same CLI in-process (``CliRunner``), so a monkeypatch can watch what the resumed run writes.
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.files import sha256_file
from steerscreen.layout import STEER_SHARDS as SHARDS
from steerscreen.pipeline import checkpoint, shards
from steerscreen.pipeline.runs import RunDir
from steerscreen.pipeline.stats import FEATURE_LOGIT_TOKENS
from tests.reliability.pipeline import Inputs, build_inputs, kill_when

runner = CliRunner()
STATS_TABLES = (RunDir.FEATURE_STATS, RunDir.FEATURE_EXAMPLES, FEATURE_LOGIT_TOKENS)
STEER_TABLES = (RunDir.STEERING_OUTCOMES, RunDir.STEERING_GRAM, RunDir.CONTEXTS)
BIG_STATS = 6_000  # tokens: 400 contexts, 100 batches, a checkpoint after each


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    return build_inputs(tmp_path_factory.mktemp("crash"))


@pytest.fixture(scope="module")
def stats_run(inputs: Inputs) -> Path:
    out = inputs.root / "stats"
    ok(runner.invoke(app, inputs.stats_args(out)))
    return out


@pytest.fixture(scope="module")
def steer_reference(inputs: Inputs, stats_run: Path) -> Path:
    out = copy_run(stats_run, inputs.root / "steer-reference")
    ok(runner.invoke(app, inputs.steer_args(out)))
    return out


def ok(res: Any) -> str:
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def copy_run(src: Path, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    return dest


def assert_same_tables(a: Path, b: Path, names: tuple[str, ...]) -> None:
    for name in names:  # exact: every bit, NaN where NaN
        assert_frame_equal(pl.read_parquet(a / name), pl.read_parquet(b / name),
                           check_exact=True)


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


def file_ids(paths: list[Path]) -> dict[str, tuple[str, int, int]]:
    return {p.name: (sha256_file(p), p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


# --- SIGKILL ------------------------------------------------------------------------------------

def test_sigkilled_steer_resumes_without_recomputing(inputs, stats_run, steer_reference,
                                                     monkeypatch, tmp_path) -> None:
    run = copy_run(stats_run, inputs.root / "steer-killed")
    shard_dir = run / SHARDS
    code = kill_when(inputs.steer_args(run),
                     lambda: len(list(shard_dir.glob("*.parquet"))) >= 3, tmp_path / "log")
    assert code == -signal.SIGKILL, (tmp_path / "log").read_text()
    record = RunDir(run).stage("steer")
    assert record["status"] == "running"
    before = file_ids(sorted(shard_dir.glob("*.parquet")))
    assert before and set(record["shards"]) <= set(before)  # at most one unrecorded shard
    assert len(set(before) - set(record["shards"])) <= 1
    rows_before = sum(pl.read_parquet(shard_dir / n).height for n in before)

    written: list[str] = []
    real_write, real_gather = shards.write_shard, shards.gather
    still: dict[str, tuple[str, int, int]] = {}

    def watch_write(folder: Path, rows: list[dict[str, Any]]):
        name, info = real_write(folder, rows)
        written.append(name)
        return name, info

    def watch_gather(folder: Path, *args: Any):
        still.update(file_ids([folder / n for n in before if (folder / n).is_file()]))
        return real_gather(folder, *args)

    monkeypatch.setattr(shards, "write_shard", watch_write)
    monkeypatch.setattr(shards, "gather", watch_gather)
    out = ok(runner.invoke(app, inputs.steer_args(run, "--resume")))
    assert f"{len(before)} finished shard(s) reused ({rows_before} direction-sets)" in out
    assert written and not set(written) & set(before)  # no finished shard written again
    assert still == before  # same bytes, same inode, same mtime: never rewritten
    total = pl.read_parquet(steer_reference / RunDir.STEERING_OUTCOMES).height
    rec = RunDir(run).stage("steer")
    assert rec["results"]["computed"] == total - rows_before
    assert rec["status"] == "complete" and "shards" not in rec
    assert not shard_dir.exists() and not temp_files(run)
    assert_same_tables(steer_reference, run, STEER_TABLES)


def test_sigkilled_stats_resumes_from_its_checkpoint(inputs, tmp_path) -> None:
    ref, run = inputs.root / "stats-big-reference", inputs.root / "stats-big-killed"
    ok(runner.invoke(app, inputs.stats_args(ref, BIG_STATS)))
    ckpt = run / checkpoint.CHECKPOINT_DIR

    def checkpointed() -> bool:
        try:
            return bool(RunDir(run).stage("stats").get("checkpoint"))
        except Exception:  # the manifest does not exist yet
            return False

    code = kill_when(inputs.stats_args(run, BIG_STATS, "--checkpoint-every", "0"), checkpointed,
                     tmp_path / "log")
    assert code == -signal.SIGKILL, (tmp_path / "log").read_text()
    assert RunDir(run).stage("stats")["status"] == "running"
    assert list(ckpt.glob("state-*.safetensors"))
    out = ok(runner.invoke(app, inputs.stats_args(run, BIG_STATS, "--resume")))
    assert "resuming the stats pass from its checkpoint" in out
    done = int(out.split("from its checkpoint: context ")[1].split()[0].replace(",", ""))
    assert 0 < done < 400
    rec = RunDir(run).stage("stats")
    assert rec["status"] == "complete" and "checkpoint" not in rec
    assert not ckpt.exists() and not temp_files(run)
    assert_same_tables(ref, run, STATS_TABLES)


# --- a full disk ----------------------------------------------------------------------------------

def enospc_on(calls: int, real):
    """``real`` that writes half its output and then fails with ENOSPC on call number ``calls``
    (``real(obj, path, ...)`` writing to ``path``)."""
    n = {"calls": 0}

    def write(obj: Any, path: Any, *args: Any, **kwargs: Any):
        n["calls"] += 1
        if n["calls"] == calls:
            real(obj, path, *args, **kwargs)
            p = Path(path)
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(obj, path, *args, **kwargs)

    return write


def assert_valid_run(run: Path) -> dict[str, Any]:
    """Manifest parses; every recorded output and shard is there with its hash; no temp file."""
    manifest = json.loads((run / RunDir.MANIFEST).read_text())
    for rec in manifest["stages"].values():
        if rec["status"] == "complete":
            assert not RunDir(run).damaged_outputs(rec)
        for name, info in (rec.get("shards") or {}).items():
            assert sha256_file(run / SHARDS / name) == info["sha256"]
            pl.read_parquet(run / SHARDS / name)
    assert not temp_files(run), temp_files(run)
    return manifest


def test_disk_full_while_writing_a_shard(inputs, stats_run, steer_reference,
                                         monkeypatch) -> None:
    run = copy_run(stats_run, inputs.root / "steer-enospc")
    # contexts.parquet and feature_dose_stats.parquet are written first: the 7th parquet write
    # is the 5th shard.
    monkeypatch.setattr(pl.DataFrame, "write_parquet",
                        enospc_on(7, pl.DataFrame.write_parquet))
    res = runner.invoke(app, inputs.steer_args(run))
    assert res.exit_code != 0
    assert isinstance(res.exception, OSError) or "No space left" in res.output
    monkeypatch.undo()
    manifest = assert_valid_run(run)
    assert manifest["stages"]["stats"]["status"] == "complete"
    assert manifest["stages"]["steer"]["status"] == "running"
    assert manifest["stages"]["steer"]["shards"]
    out = ok(runner.invoke(app, inputs.steer_args(run)))
    assert "finished shard(s) reused" in out
    assert_valid_run(run)
    assert_same_tables(steer_reference, run, STEER_TABLES)


def test_disk_full_while_writing_the_manifest(inputs, stats_run, steer_reference,
                                              monkeypatch) -> None:
    run = copy_run(stats_run, inputs.root / "manifest-enospc")
    real = Path.write_text
    written: list[str] = []

    def write_text(path: Path, data: str, *args: Any, **kwargs: Any):
        if path.name.startswith(f".{RunDir.MANIFEST}."):  # atomic_path's temp manifest
            if len(written) == 6:  # begin_stage, batch sizes, then a few shard records
                real(path, data[: len(data) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            written.append(data)
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    res = runner.invoke(app, inputs.steer_args(run))
    assert res.exit_code != 0
    monkeypatch.undo()
    assert (run / RunDir.MANIFEST).read_text() == written[-1]  # the last whole manifest
    assert_valid_run(run)
    # The shard whose record the full disk stopped is on disk: adopted on the rerun.
    recorded = RunDir(run).stage("steer")["shards"]
    assert len(list((run / SHARDS).glob("*.parquet"))) == len(recorded) + 1
    ok(runner.invoke(app, inputs.steer_args(run)))
    assert_same_tables(steer_reference, run, STEER_TABLES)


def test_disk_full_while_checkpointing_the_stats_pass(inputs, stats_run, monkeypatch) -> None:
    run = inputs.root / "stats-enospc"
    monkeypatch.setattr(checkpoint, "save_file", enospc_on(4, checkpoint.save_file))
    res = runner.invoke(app, inputs.stats_args(run, 600, "--checkpoint-every", "0"))
    assert res.exit_code != 0
    monkeypatch.undo()
    rec = assert_valid_run(run)["stages"]["stats"]
    saved = rec["checkpoint"]  # the third checkpoint, recorded and intact
    assert saved["next_context"] == 12
    for name, digest in saved["files"].items():
        assert sha256_file(run / checkpoint.CHECKPOINT_DIR / name) == digest
    out = ok(runner.invoke(app, inputs.stats_args(run, 600, "--resume")))
    assert "from its checkpoint: context 12 of 40" in out
    assert_valid_run(run)
    assert_same_tables(stats_run, run, STATS_TABLES)


# --- --resume -----------------------------------------------------------------------------------

def test_resume_needs_a_recorded_stage(inputs, stats_run, tmp_path) -> None:
    typo = tmp_path / "no-such-run"
    res = runner.invoke(app, inputs.stats_args(typo, 600, "--resume"))
    assert res.exit_code == 2 and "nothing to resume" in res.output
    assert not typo.exists()
    res = runner.invoke(app, inputs.steer_args(stats_run, "--resume"))
    assert res.exit_code == 2
    assert "holds no steer stage" in " ".join(res.output.split())
    res = runner.invoke(app, ["fit", "--run", str(stats_run), "--resume"])
    assert res.exit_code == 2 and "holds no fit stage" in " ".join(res.output.split())
    res = runner.invoke(app, inputs.stats_args(stats_run, 600, "--resume", "--force"))
    assert res.exit_code == 2 and "contradict" in res.output
    res = runner.invoke(app, ["run", "--preset", "quick", "--out", str(typo), "--resume"])
    assert res.exit_code == 2 and "holds no study" in " ".join(res.output.split())
    assert not typo.exists()


def test_resume_never_recomputes_with_another_config(inputs, stats_run) -> None:
    res = runner.invoke(app, inputs.stats_args(stats_run, 900, "--resume"))
    assert res.exit_code == 2 and "different config" in " ".join(res.output.split())
    out = ok(runner.invoke(app, inputs.stats_args(stats_run, 600, "--resume")))
    assert "already complete" in out


# --- the protocols, case by case ------------------------------------------------------------------

def test_reconcile_keeps_adopts_and_discards_shards(tmp_path) -> None:
    folder = tmp_path / SHARDS
    tokens = {c: [1, 2] if c.endswith("_ids") else [0.5, 0.25] for c in shards.TOKEN_COLUMNS}
    rows = [{"feature": f, "strength_index": 0, "context_set": "steering", "x": 1.0, **tokens}
            for f in range(5)]
    good, info = shards.write_shard(folder, rows[:1])
    changed, changed_info = shards.write_shard(folder, rows[1:2])
    adopted, adopted_info = shards.write_shard(folder, rows[2:3])
    broken, _ = shards.write_shard(folder, rows[3:4])
    # A recorded shard of an older steerscreen (no measured top tokens): steered again.
    older, older_info = shards.write_shard(folder, [{k: v for k, v in rows[4].items()
                                                     if k not in tokens}])
    (folder / changed).write_bytes((folder / adopted).read_bytes())  # not what was recorded
    (folder / broken).write_bytes(b"PAR1 truncated")
    (folder / ".x.parquet.abc.tmp").write_bytes(b"half")
    recorded = {good: info, changed: changed_info, older: older_info,
                "steering-s0-+0000099.parquet": info}
    kept, notes = shards.reconcile(folder, recorded)
    assert kept == {good: info, adopted: adopted_info}
    assert sorted(p.name for p in folder.iterdir()) == sorted([good, adopted])
    text = " ".join(notes)
    assert "does not match its recorded sha256" in text and "adopted" in text
    assert "unreadable" in text and "is missing" in text and "older steerscreen" in text


def test_the_newest_whole_checkpoint_is_used(tmp_path) -> None:
    from steerscreen.stats.accumulators import StatsAccumulator

    acc = StatsAccumulator(3, 2)
    folder = tmp_path / checkpoint.CHECKPOINT_DIR
    first = checkpoint.save(folder, acc, 8, key="k")
    notes: list[str] = []
    loaded = checkpoint.load(folder, "k", first, "cpu", notes.append)
    assert loaded is not None and loaded[1:] == (8, first) and not notes
    assert checkpoint.load(folder, "other", first, "cpu", notes.append) is None
    assert "another config" in notes[-1]
    # A newer checkpoint, written but never recorded: adopted, the older one gone.
    second = checkpoint.save(folder, acc, 12, key="k")
    assert sorted(folder.iterdir()) == sorted(folder / n for n in second["files"])
    loaded = checkpoint.load(folder, "k", first, "cpu", notes.append)
    assert loaded is not None and loaded[1:] == (12, second) and "adopted" in notes[-1]
    # Killed while writing the next one: its tensors are there, its JSON never came.
    (folder / "state-0000000016.safetensors").write_bytes(b"half")
    assert checkpoint.load(folder, "k", second, "cpu", notes.append)[1] == 12
    # A damaged newest checkpoint beside a whole older one: the older one is used.
    keep = {n: (folder / n).read_bytes() for n in second["files"]}
    third = checkpoint.save(folder, acc, 20, key="k")
    for n, data in keep.items():
        (folder / n).write_bytes(data)
    tensors = folder / "state-0000000020.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-8])
    assert checkpoint.load(folder, "k", third, "cpu", notes.append)[1] == 12
    assert "damaged" in " ".join(notes)
    (folder / "state-0000000012.json").write_text("{not json")
    assert checkpoint.load(folder, "k", third, "cpu", notes.append) is None
    assert "unreadable" in notes[-1]
