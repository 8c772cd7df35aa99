"""The command line: help, honest stubs, and actionable errors with exit code 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from steerscreen.cli import app

runner = CliRunner()
COMMANDS = ["train-sae", "stats", "steer", "fit", "screen", "report", "run"]


def test_help_lists_the_pipeline():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in res.output


@pytest.mark.parametrize("cmd", ["steer", "fit", "screen", "report"])
def test_built_stages_require_their_options(cmd):
    res = runner.invoke(app, [cmd])
    assert res.exit_code == 2
    assert "Missing option" in res.output


@pytest.mark.parametrize("args, message", [
    (["--arch", "gated"], "unknown SAE architecture"),
    (["--hook", "blocks.12.resid_post"], "not a supported hook point"),
    (["--model", "embedded:gpt5"], "no embedded model"),
    (["--corpus", "ftp:x"], "ftp"),
    (["--width", "0"], "width must be positive"),
])
def test_train_sae_bad_input(tmp_path, args, message):
    res = runner.invoke(app, ["train-sae", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "o").exists()
