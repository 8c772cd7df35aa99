"""Reproducibility: the same config and seed give bit-identical tables in two fresh run folders
(stats, steer, fit), and the manifest records versions, device, dtype and input hashes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.pipeline.runs import RunDir
from tests.reliability.pipeline import Inputs, build_inputs

runner = CliRunner()
FIT = ["--n-splits", "3", "--n-repeats", "1", "--n-permutations", "5"]
SHA256 = re.compile(r"[0-9a-f]{64}")


def pipeline(inputs: Inputs, out: Path) -> Path:
    for args in (inputs.stats_args(out), inputs.steer_args(out),
                 ["fit", "--run", str(out), *FIT]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def twice(tmp_path_factory) -> tuple[Path, Path]:
    inputs = build_inputs(tmp_path_factory.mktemp("repro"), n_docs=200)
    return pipeline(inputs, inputs.root / "a"), pipeline(inputs, inputs.root / "b")


def tables(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*.parquet"))


def test_same_config_and_seed_give_bit_identical_tables(twice) -> None:
    a, b = twice
    names = tables(a)
    assert names == tables(b)
    for stage in ("feature_stats", "feature_examples", "steering_outcomes", "steering_gram",
                  "screening/cv_metrics", "screening/predictions"):
        assert f"{stage}.parquet" in names
    for name in names:  # every value, bit for bit, NaN where NaN
        assert_frame_equal(pl.read_parquet(a / name), pl.read_parquet(b / name),
                           check_exact=True)


def test_same_fit_summary_numbers(twice) -> None:
    a, b = (json.loads((r / "screening" / "summary.json").read_text()) for r in twice)
    assert a == b
    assert a["primary_endpoint"]["rho_full"] is not None


def test_recorded_output_hashes_agree(twice) -> None:
    """The parquet files themselves are byte-identical; the predictor differs only in the run
    folder it names as its provenance."""
    a, b = (RunDir(r).read_manifest()["stages"] for r in twice)
    assert set(a) == {"stats", "steer", "fit"}
    for stage in a:
        assert a[stage]["inputs"] == b[stage]["inputs"], stage
        hashes = [{k: v["sha256"] for k, v in m[stage]["outputs"].items()
                   if k.endswith(".parquet")} for m in (a, b)]
        assert hashes[0] and hashes[0] == hashes[1], stage
    pa, pb = (json.loads((r / "screening" / "predictor.json").read_text()) for r in twice)
    assert pa["trained_on"].pop("run") != pb["trained_on"].pop("run")
    assert pa == pb


def test_manifest_records_versions_device_dtype_and_input_hashes(twice) -> None:
    m: dict[str, Any] = RunDir(twice[0]).read_manifest()
    env = m["environment"]
    for pkg in ("steerscreen", "torch", "transformers", "sae_lens", "numpy", "polars",
                "pyarrow"):
        assert env["versions"][pkg], pkg
    assert env["device"] == "cpu" and env["dtype"] == "float32"
    assert env["python"] and env["platform"] and "torch_threads" in env
    stats, steer, fit = (m["stages"][s] for s in ("stats", "steer", "fit"))
    for key in ("model_sha256", "sae_sha256", "corpus_sha256"):
        assert SHA256.fullmatch(stats["inputs"][key]), key
        assert steer["inputs"][key] == stats["inputs"][key], key
    assert SHA256.fullmatch(steer["inputs"]["downstream_sae_sha256"])
    assert steer["inputs"]["feature_stats_sha256"] == stats["outputs"][
        RunDir.FEATURE_STATS]["sha256"]
    assert fit["inputs"][RunDir.STEERING_OUTCOMES] == steer["outputs"][
        RunDir.STEERING_OUTCOMES]["sha256"]
    assert m["model"]["sha256"] == stats["inputs"]["model_sha256"]
    assert m["sae"]["sha256"] == stats["inputs"]["sae_sha256"]
    for rec in (stats, steer, fit):
        assert rec["status"] == "complete" and rec["config_sha256"]
        assert all(SHA256.fullmatch(o["sha256"]) for o in rec["outputs"].values())
