"""Every bad input of the validation catalogue (:mod:`.catalogue`), through the real CLI: exit
code 2, the documented message, no traceback, nothing written, in under 5 seconds (docs/errors.md
lists each message)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from steerscreen.cli import app
from tests.reliability.catalogue import CASES, DOCS, Case, build_inputs, case_out, snapshot
from tests.reliability.catalogue import stats as stats_args

SECONDS = 5.0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return build_inputs(tmp_path_factory.mktemp("inputs"))


def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[Any, float]:
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(app, args, env=env)
    return res, time.perf_counter() - t


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_answered_by_its_documented_message(case: Case, inputs, tmp_path) -> None:
    out = case_out(case, inputs, tmp_path)
    before = snapshot(out) if out.exists() else None
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
        assert snapshot(out) == before, "the existing folder changed"
    assert seconds < SECONDS, f"{seconds:.1f} s"
    assert case.message in DOCS.read_text(encoding="utf-8"), "not in docs/errors.md"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0o555; the probe "
                    "write then succeeds (the under-a-file case covers the refusal)")
def test_read_only_out_folder_is_refused(inputs, tmp_path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        res, _ = invoke([a.format(out=parent / "run", **inputs) for a in stats_args()])
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


@pytest.mark.parametrize("sae, model, heavy", [
    *[(s, "model", "[]") for s in ("k_neg", "arch", "truncated", "w_dec_t", "fifo_sae",
                                   "nan_sae")],
    ("sae", "nan_model", "['transformers']")])  # the model ran; the SAE never loaded
def test_sae_file_errors_are_found_before_saelens_is_imported(inputs, sae: str, model: str,
                                                              heavy: str) -> None:
    """What keeps a bad SAE folder's answer fast in a fresh process (SAELens and transformers
    import in 5-6 s of CPU): the CLI refuses it having imported neither; a model with NaN
    activations is refused before SAELens is imported."""
    code = ("import sys\nfrom steerscreen.cli import app\ntry:\n"
            "    app(prog_name='steerscreen')\nexcept SystemExit:\n"
            "    print('HEAVY', sorted({m.split('.')[0] for m in sys.modules}\n"
            "                          & {'sae_lens', 'transformers'}))\n    raise\n")
    args = [a.format(out=inputs["sae"].parent / "never",
                     **{**inputs, "sae": inputs[sae], "model": inputs[model]})
            for a in stats_args()]
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr
    assert f"HEAVY {heavy}" in res.stdout, res.stdout + res.stderr
