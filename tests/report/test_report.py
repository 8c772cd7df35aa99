"""``steerscreen report`` end to end on a tiny model: a fitted run, a run missing stages, a
study of two runs with their comparison, escaping of planted markup, and the page in Chromium."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from steerscreen.cli import app
from steerscreen.errors import SteerscreenError
from steerscreen.pipeline.compare import compare
from steerscreen.pipeline.runs import RunDir
from steerscreen.report import write_report
from steerscreen.report.load import LOGIT_TOKENS
from steerscreen.report.sections import RUN_SECTIONS
from tests.report.browser import check_pages
from tests.screening.test_stage import base, fitted  # noqa: F401  (fixtures)

SCRIPT = "<script>alert(1)</script>"
TEXT = f' {SCRIPT} "&<> before the firing token'
TOKEN = ' <b>"&tok</b>'
STUDY_IDS = ("overview", "comparison", "methods")


class _Ids(HTMLParser):
    """Every element id, and every tag name, of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.tags: set[str] = set()
        self.img_src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "img":
            self.img_src.append(str(a.get("src")))


def _parse(html: str) -> _Ids:
    p = _Ids()
    p.feed(html)
    return p


def _plant(run: Path) -> None:
    """Markup in example text and tokens, and a logit-token table with markup in its tokens."""
    ex = pl.read_parquet(run / RunDir.FEATURE_EXAMPLES)
    ex.with_columns(pl.lit(TEXT + TOKEN).alias("text"), pl.lit(TOKEN).alias("token")
                    ).write_parquet(run / RunDir.FEATURE_EXAMPLES)
    write_logit_tokens(run, lambda _f: (SCRIPT, '"&<>', " plain"))


def write_logit_tokens(run: Path, tokens: Callable[[int], Sequence[str]]) -> None:
    """``feature_logit_tokens.parquet`` for every feature of ``run``: ``tokens(feature)`` in
    rank order (token ids 10, 11, ...; dl falling by 1 per rank)."""
    feats = pl.read_parquet(run / RunDir.FEATURE_STATS)["feature"].to_list()
    rows = [{"feature": f, "rank": r, "token_id": 10 + r, "token": tok, "dl": 3.0 - r}
            for f in feats for r, tok in enumerate(tokens(f))]
    pl.DataFrame(rows, schema={"feature": pl.Int64, "rank": pl.Int64, "token_id": pl.Int64,
                               "token": pl.String, "dl": pl.Float64}
                 ).write_parquet(run / LOGIT_TOKENS)


@pytest.fixture(scope="module")
def reports(fitted, tmp_path_factory) -> dict[str, Any]:  # noqa: F811
    root = tmp_path_factory.mktemp("report")
    run = root / 'run <i>"&'  # a hostile folder name: paths are escaped too
    shutil.copytree(fitted["out"], run)
    _plant(run)
    study = root / "study"
    for name in ("a", "b"):
        shutil.copytree(fitted["out"], study / "runs" / name)
    _plant(study / "runs" / "a")
    transfer, per_run = compare([study / "runs" / "a", study / "runs" / "b"], )
    (study / "comparison").mkdir()
    transfer.write_parquet(study / "comparison" / "transfer.parquet")
    per_run.write_parquet(study / "comparison" / "runs.parquet")
    meta = {"steerscreen_version": "0.1.0", "name": "tiny <study>", "preset": "quick",
            "config": {"seed": 0}, "downstream": {"sae": "down", "hook": "blocks.3"},
            "runs": [{"name": "a", "path": "runs/a", "arch": "relu", "width": 40,
                      "hook": "blocks.1.hook_resid_post", "roles": ["architecture", "width"]},
                     {"name": "b", "path": "runs/b", "arch": None, "width": None,
                      "roles": ["architecture"]},
                     {"name": "gone", "path": "runs/gone", "roles": ["width"]}],
            "timings": {"compare": 1.0}}
    (study / "study.json").write_text(json.dumps(meta))
    return {"run": run, "run_res": write_report(run), "study": study,
            "study_res": write_report(study)}


def test_run_report_has_every_section_figure_and_summary(reports) -> None:
    res = reports["run_res"]
    assert res.kind == "run" and res.html == reports["run"] / "report.html"
    html = res.html.read_text(encoding="utf-8")
    page = _parse(html)
    assert set(RUN_SECTIONS) <= set(page.ids) and len(page.ids) == len(set(page.ids))
    assert {p.name for p in res.figures} == {"scatter.png", "ablation.png", "payoff.png",
                                             "distributions.png"}
    for p in res.figures:
        assert p.parent == reports["run"] / "figures"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(page.img_src) == 4 and all(s.startswith("data:image/png;base64,")
                                          for s in page.img_src)
    assert "Not available" not in html  # everything was computed
    assert "How to read this" in html and 'class="card"' in html
    summary = res.summary.read_text(encoding="utf-8")
    assert "Primary endpoint" in summary and "figures/scatter.png" in summary


def test_text_tokens_and_paths_are_escaped(reports) -> None:
    html = reports["run_res"].html.read_text(encoding="utf-8")
    page = _parse(html)
    assert "script" not in page.tags and "b" not in page.tags and "i" not in page.tags
    assert SCRIPT not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;&amp;&lt;&gt;" in html  # the planted "&<>
    assert "<mark> &lt;b&gt;&quot;&amp;tok&lt;/b&gt;</mark>" in html  # the firing token
    assert 'run &lt;i&gt;&quot;&amp;' in html  # the folder name
    assert 'class="tok"' in html  # the planted direct-logit tokens were shown
    assert "http://" not in html and "https://" not in html  # nothing to fetch


def test_missing_stages_say_which_command_produces_them(base, fitted, tmp_path) -> None:  # noqa: F811
    stats_only = tmp_path / "stats_only"
    shutil.copytree(base["stats_dir"], stats_only)
    html = write_report(stats_only).html.read_text(encoding="utf-8")
    assert set(RUN_SECTIONS) <= set(_parse(html).ids)
    assert "steerscreen steer --run" in html and "data:image/png" not in html
    steered = tmp_path / "steered"
    shutil.copytree(fitted["out"], steered)
    shutil.rmtree(steered / "screening")
    (steered / LOGIT_TOKENS).unlink(missing_ok=True)  # a run from before the stats stage wrote it
    res = write_report(steered)
    html = res.html.read_text(encoding="utf-8")
    assert "steerscreen fit --run" in html
    assert {p.name for p in res.figures} == {"distributions.png"}
    assert 'class="card"' in html  # cleanliness comes from the outcomes before a fit
    assert "top direct-logit tokens not recorded" in html.lower()
    assert "Not fitted yet" in res.summary.read_text(encoding="utf-8")
    # Before a fit, the views use the first nonzero strength (s = 0 outcomes are all NaN).
    m = json.loads((steered / RunDir.MANIFEST).read_text())
    s = m["strengths"][0]
    (steered / RunDir.MANIFEST).write_text(json.dumps({**m, "strengths": [0.0, s]}))
    from steerscreen.report.load import load_run

    assert load_run(steered).strength == s


def test_a_folder_that_is_neither_is_refused(tmp_path) -> None:
    with pytest.raises(SteerscreenError, match="neither a run folder"):
        write_report(tmp_path)
    res = CliRunner().invoke(app, ["report", "--run", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not a folder" in " ".join(res.output.split())


def test_cli_prints_where_the_report_is(reports) -> None:
    res = CliRunner().invoke(app, ["report", "--run", str(reports["run"])])
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output and "4 figures" in res.output


def test_study_report_has_the_comparison_and_a_section_per_run(reports) -> None:
    res = reports["study_res"]
    assert res.kind == "study"
    html = res.html.read_text(encoding="utf-8")
    ids = set(_parse(html).ids)
    assert set(STUDY_IDS) <= ids
    for name in ("a", "b"):
        assert f"run-{name}" in ids and {f"{name}-{k}" for k in RUN_SECTIONS} <= ids
    assert "run-gone" in ids and "does not exist" in html  # listed, never run
    names = {p.name for p in res.figures}
    assert {"comparison-endpoint.png", "comparison-transfer.png", "a-scatter.png",
            "b-payoff.png"} <= names
    assert "Width comparison" in html and "Architecture comparison" in html
    assert "tiny &lt;study&gt;" in html and "<study>" not in html
    # compare() labelled runs by their paths; the report shows the study's run names.
    cmp = html.split('id="comparison"')[1].split('id="run-a"')[0]
    assert "<td>a</td><td>b</td>" in cmp and "runs/a</td>" not in cmp
    summary = res.summary.read_text(encoding="utf-8")
    assert "## Run a" in summary and "## Transfer" in summary
    assert "| cleanliness | a | b |" in summary


def test_a_study_without_study_json_is_found_by_its_runs(reports, tmp_path) -> None:
    study = tmp_path / "bare"
    shutil.copytree(reports["study"] / "runs", study / "runs")
    res = write_report(study)
    ids = set(_parse(res.html.read_text(encoding="utf-8")).ids)
    assert res.kind == "study" and {"comparison", "run-a", "run-b", "b-verdicts"} <= ids
    assert "comparison/transfer.parquet" in res.html.read_text(encoding="utf-8")  # missing


# --- the page in a real browser ---------------------------------------------------------------
def test_the_pages_render_in_chromium_without_errors_or_network(reports) -> None:
    check_pages([(reports["run_res"].html, RUN_SECTIONS, "report.png"),
                 (reports["study_res"].html, (*STUDY_IDS, "run-a", "a-cards", "b-scatter"),
                  "study_report.png")])


def _without_lin(run: Path) -> None:
    """The fit summary of a run without ``lin_*`` columns (``--linear-contexts 0``)."""
    path = run / "screening" / "summary.json"
    s = json.loads(path.read_text(encoding="utf-8"))
    s.pop("linear", None)
    path.write_text(json.dumps(s), encoding="utf-8")


def _with_lin(run: Path) -> None:
    """A fit summary with the linear-response rows a run with ``lin_*`` columns gets."""
    path = run / "screening" / "summary.json"
    s = json.loads(path.read_text(encoding="utf-8"))
    s["linear"] = [{"outcome": o, "context_set": "fresh", "n": 40, "rho_lin": 0.41,
                    "rho_lin_lo": 0.2, "rho_lin_hi": 0.6, "rho_full": 0.3, "rho_full_lo": 0.1,
                    "rho_full_hi": 0.5, "rho_full_lin": 0.55, "rho_full_lin_lo": 0.4,
                    "rho_full_lin_hi": 0.7, "delta_rho": 0.25, "delta_lo": 0.12,
                    "delta_hi": 0.38, "p": 0.001, "p_holm": 0.0042, "mde": 0.09,
                    "underpowered": False, "passed": True, "verdict": "lin adds to full"}
                   for o in ("effect_stability", "collateral_spread", "cleanliness")]
    path.write_text(json.dumps(s), encoding="utf-8")


def test_lin_rows_are_shown_only_for_runs_that_have_them(reports, tmp_path) -> None:
    # The fixture's runs have real lin_* columns (the stats stage computes them): shown.
    real = reports["run_res"].html.read_text(encoding="utf-8")
    assert "Linear response: does lin add to full?" in real
    assert "Linear response per SAE" in reports["study_res"].html.read_text(encoding="utf-8")
    study = tmp_path / "lin"
    shutil.copytree(reports["study"] / "runs", study / "runs")
    _without_lin(study / "runs" / "b")
    _with_lin(study / "runs" / "a")
    res = write_report(study)
    html = res.html.read_text(encoding="utf-8")
    cmp = html.split('id="comparison"')[1].split('id="run-a"')[0]
    assert "Linear response per SAE" in cmp and "lin adds to full" in cmp
    assert "+0.250 [+0.120, +0.380]" in cmp and "0.00420" in cmp  # Δρ with its CI; Holm p
    own = html.split('id="a-verdicts"')[1].split('id="a-scatter"')[0]
    assert "Linear response: does lin add to full?" in own and "0.550 [0.400, 0.700]" in own
    b = html.split('id="b-verdicts"')[1].split('id="b-scatter"')[0]
    assert "Linear response" not in b
    md = res.summary.read_text(encoding="utf-8")
    assert "## Linear response per SAE (full+lin vs full)" in md
    assert "| a | cleanliness | 0.410 [0.200, 0.600] |" in md
    per_run = compare([study / "runs" / "a", study / "runs" / "b"]).per_run
    assert per_run["lin_cleanliness_delta_lo"].to_list() == [0.12, None]
