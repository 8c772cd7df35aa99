"""The README's main job in its fast form: `steerscreen run --preset quick` on the embedded model,
from the command line, to a report that opens in Chromium with every section filled; then the
notebook API on the same study's SAE against the `screen` and `explain` commands."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.pipeline.generate import card_features
from steerscreen.report.sections import RUN_SECTIONS
from tests.report.browser import check_fits, check_pages
from tests.study.notebook_check import check_notebook_matches_cli

pytestmark = pytest.mark.slow


def test_quick_study_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "study"
    res = CliRunner().invoke(app, ["run", "--preset", "quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "report:" in res.output and "held-out payoff" in res.output
    rec = json.loads((out / "study.json").read_text())
    assert rec["status"] == "complete" and len(rec["runs"]) == 4
    html = (out / "report.html").read_text(encoding="utf-8")
    # Every section filled from measured data: no "run this command first" placeholder, and
    # the feature cards carry their direct-logit tokens.
    assert 'class="missing"' not in html and "not recorded" not in html
    first = rec["runs"][0]["name"]
    check_pages([(out / "report.html",
                  ("overview", "comparison", "methods",
                   *(f"{first}-{s}" for s in RUN_SECTIONS), f"{first}-screen"),
                  "quick_study_report.png")])
    check_fits(out / "report.html")  # 1,400 px: no cell or table wider than its box
    check_notebook_matches_cli(out, tmp_path)
    # A feature the user names gets its own card, steered text included.
    run = out / rec["runs"][0]["path"]
    shown = set(card_features(run))
    named = next(int(f) for f in pl.read_parquet(run / "screen.parquet")["feature"]
                 if int(f) not in shown)
    res = CliRunner().invoke(app, ["report", "--run", str(run), "--feature", str(named)])
    assert res.exit_code == 0, res.output
    page = (run / "report.html").read_text(encoding="utf-8")
    assert f'id="feature-{named}"' in page and "requested" in page
    text = pl.read_parquet(run / "steered_text.parquet")
    assert named in set(text["feature"].to_list())
