"""Fuzz: random bytes and truncated real files where steerscreen reads a file.

Every input is seeded: empty files, random bytes of many sizes, and truncations of a valid file
(the cuts land in headers, in the middle and one byte short). Through the public loaders the only
acceptable outcomes are a result or a :class:`SteerscreenError` subclass; through the CLI, exit
code 2 with an ``error:`` line and no traceback.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.corpus import load_corpus
from steerscreen.errors import ArtifactError, CorpusError, SpecError, SteerscreenError
from steerscreen.pipeline.fit import load_screening_data as screening_table
from steerscreen.pipeline.runs import RunDir
from steerscreen.pipeline.shards import read_shards
from steerscreen.pipeline.study import load_config
from steerscreen.report.load import load
from steerscreen.saes import load_sae
from steerscreen.screening.predictor import LinearModel, Predictor
from tests.reliability.fixtures import make_sae

SIZES = (0, 1, 2, 3, 7, 8, 9, 16, 64, 257, 4096)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def random_blobs(seed: int) -> Iterator[bytes]:
    rng = np.random.default_rng(seed)
    for n in SIZES:
        yield rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    yield b"\x00" * 100
    yield b"\xff\xfe" + "héllo".encode("utf-16-le")  # UTF-16 text: not UTF-8
    yield b"PAR1" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes() + b"PAR1"  # fake parquet


def truncations(data: bytes) -> Iterator[bytes]:
    n = len(data)
    for cut in sorted({0, 1, 4, 8, 9, 16, n // 3, n // 2, n - 8, n - 1}):
        if 0 <= cut < n:
            yield data[:cut]


def corrupt_versions(valid: bytes, seed: int) -> list[bytes]:
    """Random blobs, truncations of ``valid``, and ``valid`` with a few bytes flipped."""
    rng = np.random.default_rng(seed + 1)
    flipped = []
    for _ in range(3):
        b = bytearray(valid)
        for i in rng.integers(0, len(b), 4):
            b[i] ^= 0xFF
        flipped.append(bytes(b))
    return [*random_blobs(seed), *truncations(valid), *flipped]


def expect_only_documented(fn: Callable[[], Any], allowed: tuple[type, ...] = (SteerscreenError,)
                           ) -> SteerscreenError | None:
    """Run ``fn``: a result is fine, a documented error is fine, anything else fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except allowed as e:
        assert isinstance(e, SteerscreenError)
        assert e.what and e.fix, f"{type(e).__name__} without what/fix: {e}"
        return e
    return None


def cli(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, (args, res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output, res.output
    assert "error:" in res.output, res.output


# --- valid files to truncate -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_sae(tmp_path_factory.mktemp("fuzz") / "sae")


def a_predictor(columns: list[str]) -> Predictor:
    n = len(columns)
    models = {o: LinearModel(o, [0.0] * n, [0.0] * n, [1.0] * n, [0.1] * n, 0.0, 1.0, 0.5, 0.9,
                             10) for o in ("effect_stability", "collateral_spread", "cleanliness")}
    return Predictor(columns, models, "fresh", {"strength": 0.25, "residual_norm": 1.0,
                                                "alpha": 0.25}, {"run": "x"})


def a_table() -> pl.DataFrame:
    return pl.DataFrame({"feature": np.arange(20), "base_freq": np.linspace(0, 1, 20),
                         "dead": [False] * 20, "strength": [0.25] * 20})


# --- library loaders ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["text", "jsonl", "bare"])
def test_corpus_files(tmp_path: Path, scheme: str) -> None:
    valid = ("\n".join(json.dumps({"text": f"dökument {i} ✓"}) for i in range(30))
             if scheme == "jsonl" else "\n\n".join(f"Paragraph {i}: naïve café ✓." for i in
                                                   range(30))).encode()
    for i, blob in enumerate(corrupt_versions(valid, seed=1)):
        p = tmp_path / f"c{i}.{'jsonl' if scheme == 'jsonl' else 'txt'}"
        p.write_bytes(blob)
        spec = str(p) if scheme == "bare" else f"{scheme}:{p}"
        err = expect_only_documented(lambda spec=spec: load_corpus(spec), (CorpusError,))
        if err is not None and b"\x00" not in blob and "UTF-8" in err.what:
            assert "byte offset" in err.what  # where the bad byte is


@pytest.mark.parametrize("name", ["cfg.json", "sae_weights.safetensors"])
def test_sae_folder_files(sae_dir: Path, tmp_path: Path, name: str) -> None:
    valid = (sae_dir / name).read_bytes()
    for i, blob in enumerate(corrupt_versions(valid, seed=2)):
        folder = tmp_path / f"sae{i}"
        shutil.copytree(sae_dir, folder)
        (folder / name).write_bytes(blob)
        expect_only_documented(lambda folder=folder: load_sae(str(folder)), (ArtifactError,))
        shutil.rmtree(folder)


def test_run_folder_tables_and_manifest(tmp_path: Path) -> None:
    src = RunDir(tmp_path / "valid")
    src.write_table(RunDir.FEATURE_STATS, a_table())
    valid_table = src.file(RunDir.FEATURE_STATS).read_bytes()
    src.update_manifest({"stages": {"stats": {"status": "complete", "config": {"tokens": 1}}},
                         "strengths": [0.25]})
    valid_manifest = src.manifest_path.read_bytes()
    for i, blob in enumerate(corrupt_versions(valid_table, seed=3)):
        run = RunDir(tmp_path / f"t{i}")
        run.path.mkdir()
        shutil.copy(src.manifest_path, run.manifest_path)
        for name in (RunDir.FEATURE_STATS, RunDir.STEERING_OUTCOMES):
            run.file(name).write_bytes(blob)
        expect_only_documented(lambda run=run: run.read_table(RunDir.FEATURE_STATS),
                               (ArtifactError,))
        expect_only_documented(lambda run=run: load(run.path), (ArtifactError,))
        expect_only_documented(lambda run=run: screening_table(run), (ArtifactError,))
    for i, blob in enumerate(corrupt_versions(valid_manifest, seed=4)):
        run = RunDir(tmp_path / f"m{i}")
        run.path.mkdir()
        run.manifest_path.write_bytes(blob)
        expect_only_documented(run.read_manifest, (ArtifactError,))
        expect_only_documented(lambda run=run: load(run.path), (ArtifactError,))


def test_steering_shards_are_dropped_not_raised(tmp_path: Path) -> None:
    shards = tmp_path / "steering_shards"
    shards.mkdir()
    for i, blob in enumerate(random_blobs(seed=5)):
        (shards / f"steering-s0-{i:+08d}.parquet").write_bytes(blob)
    assert read_shards(shards) is None  # damaged shards are deleted; their directions rerun
    assert not list(shards.glob("*.parquet"))


def test_predictor_files(tmp_path: Path) -> None:
    valid = a_predictor(["base_freq"]).save(tmp_path / "valid.json").read_bytes()
    wrong_schema = [json.dumps(x).encode() for x in (
        [], 5, "x", None, {}, {"format": "steerscreen-predictor/1"},
        {**json.loads(valid), "models": []}, {**json.loads(valid), "columns": "base_freq"},
        {**json.loads(valid), "dose": {}}, {**json.loads(valid), "context_set": 3},
        {**json.loads(valid), "models": {"cleanliness": json.loads(valid)["models"][
            "cleanliness"]}},
        {**json.loads(valid), "columns": ["base_freq", "base_mag"]})]
    for i, blob in enumerate([*corrupt_versions(valid, seed=6), *wrong_schema]):
        p = tmp_path / f"p{i}.json"
        p.write_bytes(blob)
        expect_only_documented(lambda p=p: Predictor.load(p), (ArtifactError,))
    for blob in wrong_schema:
        (tmp_path / "w.json").write_bytes(blob)
        with pytest.raises(ArtifactError):
            Predictor.load(tmp_path / "w.json")
    model = json.loads(valid)["models"]["cleanliness"]
    for bad in ({"coef": ["x"]}, {"intercept": None}, {"means": []}, {"alpha": True},
                {"unknown": 1}, {"outcome": "other"}):
        raw = json.loads(valid)
        raw["models"]["cleanliness"] = {**model, **bad}
        (tmp_path / "w.json").write_text(json.dumps(raw), encoding="utf-8")
        with pytest.raises(ArtifactError):
            Predictor.load(tmp_path / "w.json")


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_study_config_files(tmp_path: Path, suffix: str) -> None:
    valid = (CONFIGS / "smollm2-embedded.toml").read_bytes()
    if suffix == ".json":
        import tomllib

        valid = json.dumps(tomllib.loads(valid.decode())).encode()
    for i, blob in enumerate(corrupt_versions(valid, seed=7)):
        p = tmp_path / f"s{i}{suffix}"
        p.write_bytes(blob)
        expect_only_documented(lambda p=p: load_config(p), (SpecError, CorpusError,
                                                            ArtifactError))


def test_study_json(tmp_path: Path) -> None:
    valid = json.dumps({"name": "s", "runs": [{"name": "a", "path": "runs/a"}]}).encode()
    bad = [json.dumps(x).encode() for x in ([], {"runs": 5}, {"runs": [5]},
                                            {"runs": [{"path": 5}]}, {"runs": "abc"})]
    for i, blob in enumerate([*corrupt_versions(valid, seed=8), *bad]):
        study = tmp_path / f"study{i}"
        study.mkdir()
        (study / "study.json").write_bytes(blob)
        expect_only_documented(lambda study=study: load(study), (ArtifactError,))


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_answers_corrupt_inputs_with_exit_2(tmp_path: Path, sae_dir: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"some words number {i}" for i in range(50)), encoding="utf-8")
    blobs = [b"", b"\x00\x01garbage", b"\xff" * 64, b"PAR1" + b"\x00" * 50 + b"PAR1"]
    for i, blob in enumerate(blobs):
        # a corpus that is not text: refused before any model is loaded
        bad_corpus = tmp_path / f"bad{i}.txt"
        bad_corpus.write_bytes(blob)
        cli(["train-sae", "--out", str(tmp_path / f"o{i}"), "--corpus", f"text:{bad_corpus}"])
        # an SAE folder with a corrupt file: refused before any model is loaded
        for name in ("cfg.json", "sae_weights.safetensors"):
            folder = tmp_path / f"sae-{i}-{name}"
            shutil.copytree(sae_dir, folder)
            (folder / name).write_bytes(blob)
            cli(["stats", "--sae", str(folder), "--corpus", f"text:{corpus}", "--out",
                 str(tmp_path / f"run-{i}-{name}")])
        # a predictor that is not one
        pred = tmp_path / f"pred{i}.json"
        pred.write_bytes(blob)
        cli(["screen", "--predictor", str(pred), "--sae", str(sae_dir), "--out",
             str(tmp_path / f"screen{i}")])
        # a study config of random bytes
        config = tmp_path / f"study{i}.toml"
        config.write_bytes(blob + b"\x00")
        cli(["run", "--config", str(config), "--dry-run"])
        # run folders whose manifest or tables are corrupt
        run = RunDir(tmp_path / f"run{i}")
        run.write_table(RunDir.FEATURE_STATS, a_table())
        run.update_manifest({"stages": {}})
        run.manifest_path.write_bytes(blob or b"{")
        cli(["report", "--run", str(run.path)])
        cli(["fit", "--run", str(run.path)])
        cli(["steer", "--run", str(run.path), "--downstream-sae", str(sae_dir)])
        run.manifest_path.write_text(json.dumps({"stages": {}}), encoding="utf-8")
        for name in (RunDir.FEATURE_STATS, RunDir.STEERING_OUTCOMES):
            run.file(name).write_bytes(blob)
        cli(["report", "--run", str(run.path)])
        cli(["fit", "--run", str(run.path)])
