"""``--backend ray``: a local Ray cluster (2 CPUs, so 2 workers) gives the local backend's tables
bit for bit, also when a worker is SIGKILLed mid-task (Ray reruns its shard) and when the driver
is (the rerun keeps every recorded shard and runs only the rest).

The in-process runs share one Ray session (the stages reuse a session this process opened);
the killed drivers are CLI subprocesses that start Ray themselves.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.pipeline.runs import RunDir
from tests.reliability.pipeline import Inputs, build_inputs, kill_when
from tests.reliability.test_crash import STATS_TABLES, STEER_TABLES, assert_same_tables, ok

ray = pytest.importorskip("ray", reason="the Ray tests need steerscreen[ray]")

runner = CliRunner()
SHARD = ["--shard-contexts", "4"]  # 40 contexts: 10 stats shards
RAY = ["--backend", "ray"]


@pytest.fixture(scope="module")
def session():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    return build_inputs(tmp_path_factory.mktemp("ray"))


@pytest.fixture(scope="module")
def local(inputs: Inputs) -> Path:
    out = inputs.root / "local"
    ok(runner.invoke(app, inputs.stats_args(out, 600, *SHARD)))
    ok(runner.invoke(app, inputs.steer_args(out)))
    return out


def test_ray_stats_and_steer_equal_the_local_backend(session, inputs: Inputs,
                                                     local: Path) -> None:
    out = inputs.root / "ray"
    text = ok(runner.invoke(app, inputs.stats_args(out, 600, *SHARD, *RAY)))
    assert "10 shards of up to 4 contexts" in text
    assert_same_tables(local, out, STATS_TABLES)  # lin_* columns included: one task a context
    import polars as pl
    lin = pl.read_parquet(out / RunDir.FEATURE_STATS)["lin_kl"].to_numpy()
    assert np.isfinite(lin).all()
    assert not (out / ".stats_shards").exists()
    ok(runner.invoke(app, inputs.steer_args(out, *RAY)))
    assert_same_tables(local, out, STEER_TABLES)
    stages = RunDir(out).read_manifest()["stages"]
    assert stages["stats"]["results"]["runtime"]["backend"] == "ray"
    assert stages["steer"]["results"]["runtime"]["backend"] == "ray"
    assert "shards" not in stages["stats"] and "shards" not in stages["steer"]


class _Killer(threading.Thread):
    """SIGKILLs the first Ray worker seen running a task named ``steerscreen-WHAT``."""

    def __init__(self, what: str) -> None:
        super().__init__(daemon=True)
        self.title, self.killed = f"ray::steerscreen-{what}", []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and not self.killed:
            for p in psutil.process_iter(["cmdline"]):
                if (p.info["cmdline"] or [""])[0].startswith(self.title):
                    p.send_signal(signal.SIGKILL)
                    self.killed.append(p.pid)
                    return
            time.sleep(0.005)


@pytest.mark.parametrize("stage", ["stats", "steer"])
def test_a_worker_killed_mid_task_is_replaced_and_its_shard_redone(
        session, tmp_path: Path, stage: str) -> None:
    # Fresh inputs: each worker loads them inside its first task of the stage, and is killed
    # there (the kill lands in the first task any worker is seen running).
    inp = build_inputs(tmp_path / "in")
    ref, out = tmp_path / "local", tmp_path / "ray"
    ok(runner.invoke(app, inp.stats_args(ref, 600, *SHARD)))
    ok(runner.invoke(app, inp.steer_args(ref)))
    killer = _Killer(stage)
    if stage == "stats":
        killer.start()
    ok(runner.invoke(app, inp.stats_args(out, 600, *SHARD, *RAY)))
    if stage == "steer":
        killer.start()
        ok(runner.invoke(app, inp.steer_args(out, *RAY)))
    killer.stop.set()
    killer.join()
    assert killer.killed, "no worker was seen running a task"
    assert_same_tables(ref, out, STATS_TABLES)
    if stage == "steer":
        assert_same_tables(ref, out, STEER_TABLES)


def _recorded(run: Path, stage: str) -> int:
    try:
        doc = json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(((doc.get("stages") or {}).get(stage) or {}).get("shards") or {})


def test_a_killed_driver_resumes_without_redoing_finished_shards(
        inputs: Inputs, local: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = inputs.stats_args(out, 600, *SHARD, *RAY, "--workers", "1")
    rc = kill_when(args, lambda: _recorded(out, "stats") >= 2, tmp_path / "stats.log",
                   timeout_s=300)
    assert rc == -signal.SIGKILL, (tmp_path / "stats.log").read_text()
    assert 2 <= _recorded(out, "stats") < 10
    # Whole shards on disk: the recorded ones, and one written but not yet recorded if the
    # kill fell in between (adopted).
    done = len(list((out / ".stats_shards").glob("shard-*.json")))
    text = ok(runner.invoke(app, args))
    assert f"{done} finished shard(s) reused" in text
    assert_same_tables(local, out, STATS_TABLES)

    args = inputs.steer_args(out, *RAY, "--workers", "1")
    rc = kill_when(args, lambda: _recorded(out, "steer") >= 3, tmp_path / "steer.log",
                   timeout_s=300)
    assert rc == -signal.SIGKILL, (tmp_path / "steer.log").read_text()
    assert _recorded(out, "steer") >= 3
    done = len(list((out / "steering_shards").glob("*.parquet")))
    text = ok(runner.invoke(app, args))
    assert f"{done} finished shard(s) reused" in text
    assert_same_tables(local, out, STEER_TABLES)


def test_ray_errors_are_actionable_and_come_before_anything_loads(
        session, monkeypatch, inputs: Inputs, tmp_path: Path) -> None:
    # More CPUs per task than the cluster has: no task could ever run.
    res = runner.invoke(app, inputs.stats_args(tmp_path / "a", 600, *RAY, "--task-cpus", "64"))
    assert res.exit_code == 2, res.output
    assert "each stats task needs 64 CPU(s) but the Ray cluster has 2" in " ".join(
        res.output.split())
    res = runner.invoke(app, inputs.steer_args(tmp_path / "a", *RAY))
    assert res.exit_code == 2 and "holds no complete stats stage" in " ".join(res.output.split())
    assert not (tmp_path / "a").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # not installed
    res = runner.invoke(app, inputs.stats_args(tmp_path / "b", 600, *RAY))
    assert res.exit_code == 2, res.output
    assert "needs Ray" in res.output and "steerscreen[ray]" in res.output
    assert not (tmp_path / "b").exists()


def test_a_worker_whose_files_differ_from_the_drivers_stops_the_run(
        session, inputs: Inputs, tmp_path: Path) -> None:
    import torch

    from steerscreen.errors import SteerscreenError
    from steerscreen.models import load_model
    from steerscreen.pipeline.stats import StatsConfig, run_stats

    model = load_model(inputs.model)  # the driver's copy, then changed: the workers' differs
    with torch.no_grad():
        next(model.model.parameters()).add_(1.0)
    cfg = StatsConfig(sae=str(inputs.sae), model=inputs.model, corpus=inputs.corpus,
                      tokens=600, context_len=16, batch_size=4, reservoir_size=5, n_examples=2,
                      example_window=4, final_norm_contexts=4, n_components=4,
                      shard_contexts=4, backend="ray")
    with pytest.raises(SteerscreenError, match="on this Ray worker differs from the driver's"):
        run_stats(cfg, tmp_path / "run", model=model, progress=False)
