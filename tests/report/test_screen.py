"""The screen section: every feature of ``screen.parquet`` in one table that sorts, filters,
searches and pages in Chromium, data that cannot break out of its script, power beside every
verdict, and a study page that fits 1,400 px."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from steerscreen.pipeline.compare import compare
from steerscreen.pipeline.screen import screen_run
from steerscreen.report import screen as screen_mod
from steerscreen.report import write_report
from steerscreen.report.screen import script_json
from tests.report.browser import BROWSER_ARGS, CHROMIUM, browser_or_skip, check_fits, guarded_page
from tests.report.test_report import write_logit_tokens
from tests.screening.test_stage import base, fitted  # noqa: F401  (fixtures)

EVIL = "</script><script>alert(1)</script>"
EVIL_FEATURE = 3
PAGE = 10  # rows per page here, so the tiny SAE has several pages


def _token(f: int) -> str:
    return EVIL if f == EVIL_FEATURE else f" tok{f:03d}z\u2028&"


def _tokens(run: Path) -> None:
    """Direct-logit tokens: a distinct searchable rank-0 token per feature, one hostile."""
    write_logit_tokens(run, lambda f: (_token(f), "other"))


@pytest.fixture(scope="module")
def screened(fitted, tmp_path_factory) -> dict[str, Any]:  # noqa: F811
    root = tmp_path_factory.mktemp("screen")
    run = root / "run"
    shutil.copytree(fitted["out"], run)
    _tokens(run)
    screen_run(run)
    study = root / "study"
    for name in ("a", "b"):
        shutil.copytree(run, study / "runs" / name)
    res = compare([study / "runs" / "a", study / "runs" / "b"])
    (study / "comparison").mkdir()
    res.transfer.write_parquet(study / "comparison" / "transfer.parquet")
    res.per_run.write_parquet(study / "comparison" / "runs.parquet")
    meta = {"name": "screened", "runs": [
        {"name": "a", "path": "runs/a", "arch": "relu", "width": 40,
         "roles": ["architecture", "width"]},
        {"name": "b", "path": "runs/b", "arch": "topk", "width": 40, "roles": ["architecture"]}]}
    (study / "study.json").write_text(json.dumps(meta))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(screen_mod, "PAGE_ROWS", PAGE)
        return {"run": run, "table": pl.read_parquet(run / "screen.parquet"),
                "run_html": write_report(run).html, "study_html": write_report(study).html}


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[str | None, str]] = []
        self._type: str | None = None
        self._in = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._in, self._type = True, dict(attrs).get("type")
            self.scripts.append((self._type, ""))

    def handle_endtag(self, tag: str) -> None:
        self._in = self._in and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in:
            kind, text = self.scripts[-1]
            self.scripts[-1] = (kind, text + data)


def test_script_json_cannot_end_its_script_and_round_trips() -> None:
    data = {"cols": {"token": [EVIL, "a\u2028b\u2029c", "<!-- x -->", None]}, "n": 4}
    text = script_json(data)
    assert not any(c in text for c in "<>&\u2028\u2029")
    assert json.loads(text) == data


def test_the_page_has_one_script_and_the_data_of_each_table(screened) -> None:
    run_html = screened["run_html"].read_text(encoding="utf-8")
    assert "<script>alert(1)" not in run_html and "no scripts" not in run_html
    page = _Scripts()
    page.feed(run_html)
    code = [t for k, t in page.scripts if k is None]
    blobs = [json.loads(t) for k, t in page.scripts if k == "application/json"]
    assert len(code) == 1 and len(blobs) == 1  # every other script is one of these two
    cols = blobs[0]["cols"]
    t = screened["table"]
    assert blobs[0]["n"] == t.height and cols["feature"] == t.sort("rank")["feature"].to_list()
    assert cols["token"][cols["feature"].index(EVIL_FEATURE)] == EVIL
    study = _Scripts()
    study.feed(screened["study_html"].read_text(encoding="utf-8"))
    assert [k for k, _ in study.scripts].count(None) == 1  # one copy for two tables
    assert [k for k, _ in study.scripts].count("application/json") == 2
    assert 'id="a-screen"' in screened["study_html"].read_text(encoding="utf-8")


def _first(page, col: int = 1) -> str:
    return page.locator("#screen tbody tr").first.locator("td").nth(col).inner_text()


def _shown(page) -> list[int]:
    return [int(x) for x in page.locator("#screen tbody tr td:nth-child(2)").all_inner_texts()]


def _count(page) -> str:
    return page.locator("#screen .screen-count").inner_text()


def test_the_screen_table_sorts_filters_searches_and_pages(screened) -> None:
    sync_playwright = browser_or_skip()
    t = screened["table"]
    m = t.height
    feats = t["feature"].to_list()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page, problems = guarded_page(browser, screened["run_html"])
            rows = page.locator("#screen tbody tr")
            assert rows.count() == PAGE and _count(page) == f"showing {m} of {m} features"
            assert _first(page, 0) == "1" and _shown(page) == t.sort("rank")["feature"][:PAGE]\
                .to_list()
            # Sort: a click sorts ascending, a second click descending.
            head = page.locator('#screen th[data-key="feature"] button')
            head.click()
            assert _first(page) == str(min(feats))
            head.click()
            assert _first(page) == str(max(feats))
            page.locator('#screen th[data-key="clean"] button').click()
            ranked = t.filter(pl.col("pred_cleanliness").is_not_nan()).sort("pred_cleanliness")
            assert _first(page) == str(ranked["feature"][0])
            # A min bound: every shown row satisfies it, and the count says how many do.
            v = ranked["pred_cleanliness"].unique().sort().to_list()
            k = len(v) // 2
            bound = (v[k - 1] + v[k]) / 2
            page.fill('#screen input[data-key="clean"][data-bound="min"]', f"{bound:.9g}")
            keep = set(t.filter(pl.col("pred_cleanliness") >= bound)["feature"].to_list())
            assert _count(page) == f"showing {len(keep)} of {m} features"
            assert set(_shown(page)) <= keep and rows.count() == min(PAGE, len(keep))
            page.fill('#screen input[data-key="clean"][data-bound="min"]', "")
            assert _count(page) == f"showing {m} of {m} features"
            # Search: a feature id (substring) and a token.
            search = page.locator("#screen input.screen-search")
            search.fill("1")
            want = [f for f in feats if "1" in str(f) or "1" in _token(f)]  # alert(1) too
            assert _count(page) == f"showing {len(want)} of {m} features"
            assert set(_shown(page)) <= set(want)
            search.fill("tok007z")
            assert _shown(page) == [7] and _first(page, 8) == " tok007z\u2028&"
            search.fill("alert(1)")  # the hostile token is text in a cell, nothing ran
            assert _shown(page) == [EVIL_FEATURE] and _first(page, 8) == EVIL
            search.fill("")
            # Pages: rank order again from the top after a sort on rank.
            page.locator('#screen th[data-key="rank"] button').click()
            page.locator("#screen .screen-next").click()
            assert _first(page, 0) == str(PAGE + 1)
            assert page.locator("#screen .screen-page").inner_text() == \
                f"rows {PAGE + 1}–{min(2 * PAGE, m)}"
            page.locator("#screen .screen-prev").click()
            assert _first(page, 0) == "1" and page.locator("#screen .screen-prev").is_disabled()
            assert page.locator("#screen tbody tr td").count() == PAGE * 11
            assert not problems, problems
            page.close()
            # Two tables on a study page keep their own state.
            page, problems = guarded_page(browser, screened["study_html"])
            page.locator('#a-screen th[data-key="feature"] button').click()
            page.locator('#a-screen th[data-key="feature"] button').click()
            a = page.locator("#a-screen tbody tr").first.locator("td").nth(1).inner_text()
            b = page.locator("#b-screen tbody tr").first.locator("td").nth(0).inner_text()
            assert a == str(max(feats)) and b == "1"
            assert not problems, problems
        finally:
            browser.close()


def test_power_is_shown_beside_every_verdict(screened) -> None:
    html = screened["study_html"].read_text(encoding="utf-8")
    cmp = html.split('id="comparison"')[1].split('id="run-a"')[0]
    # One verdicts cell per run: each outcome's verdict, then the power of its two tests.
    assert cmp.count('class="power"') == 3 * 3  # 2 runs in architecture, 1 in width
    assert "detectable Δρ ≥" in cmp and "detectable residual ρ ≥" in cmp
    assert "(underpowered)" in cmp  # the tiny fit cannot detect 0.1
    own = html.split('id="a-verdicts"')[1].split('id="a-scatter"')[0]
    assert "underpowered (the target is Δρ = 0.1)" in own and "(underpowered)" in own
    assert "<details><summary>The " in cmp  # the transfer cells under their heatmap
    md = (screened["study_html"].parent / "summary.md").read_text(encoding="utf-8")
    assert "detectable Δρ (80%)" in md and "| a | cleanliness |" in md
    assert md.count("detectable residual ρ ≥") >= 6


def test_a_study_page_fits_1400_px(screened) -> None:
    check_fits(screened["study_html"], 1400)
    check_fits(screened["run_html"], 1400)
