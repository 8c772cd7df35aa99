"""The report's screen table at dictionary scale: page size, report time and the browser's load,
sort and search times for an N-feature screen (default 131,072, a 128K dictionary).

    .venv/bin/python benchmarks/screen_table.py RUN [--features 131072]

RUN is a fitted run folder with ``screen.parquet`` (e.g. ``STUDY/runs/NAME`` of a finished
study). A copy in a temporary folder has its screen, feature statistics and direct-logit tokens
tiled to N features (ids renumbered), its report is written, and the page is opened in headless
Chromium at 1,400 px. Each browser time is the median of 3 (wall clock from the click or
keystroke to the redrawn table). Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from steerscreen.layout import FEATURE_LOGIT_TOKENS, FEATURE_STATS, REPORT, SCREEN_TABLE
from steerscreen.report import write_report

CHROMIUM = "/usr/bin/chromium"


def tile(df: pl.DataFrame, n_src: int, n: int) -> pl.DataFrame:
    """``df`` (keyed by feature 0..n_src-1) repeated to features 0..n-1."""
    reps = -(-n // n_src)
    out = pl.concat([df.with_columns(pl.col("feature") + i * n_src) for i in range(reps)])
    return out.filter(pl.col("feature") < n)


def build(run: Path, n: int, root: Path) -> Path:
    copy = root / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report.html", "figures"))
    screen = pl.read_parquet(copy / SCREEN_TABLE)
    n_src = screen.height
    big = tile(screen, n_src, n).sort("rank", "feature")
    big = big.with_columns(pl.int_range(1, big.height + 1).alias("rank"))
    big.write_parquet(copy / SCREEN_TABLE)
    for name in (FEATURE_STATS, FEATURE_LOGIT_TOKENS):
        if (copy / name).is_file():
            tile(pl.read_parquet(copy / name), n_src, n).write_parquet(copy / name)
    return copy


def browser_times(html: Path) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {"load": [], "sort": [], "search": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        for _ in range(3):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            t = time.perf_counter()
            page.goto(html.as_uri(), wait_until="load")
            page.wait_for_selector("div.screen-table tbody tr")
            out["load"].append(time.perf_counter() - t)
            table = page.locator("div.screen-table").first
            t = time.perf_counter()
            table.locator("th[data-key='clean'] button").click()
            page.wait_for_function("() => document.querySelector("
                                   "\"div.screen-table th[data-key='clean']\")"
                                   ".getAttribute('aria-sort') === 'ascending'")
            out["sort"].append(time.perf_counter() - t)
            t = time.perf_counter()
            table.locator("input.screen-search").fill("1234")
            page.wait_for_function("() => document.querySelector('div.screen-table "
                                   ".screen-count').textContent.startsWith('showing ') && "
                                   "!document.querySelector('div.screen-table .screen-count')"
                                   ".textContent.startsWith('showing 131')")
            out["search"].append(time.perf_counter() - t)
            out.setdefault("dom_elements", []).append(
                page.evaluate("() => document.getElementsByTagName('*').length"))
            page.close()
        browser.close()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--features", type=int, default=131_072)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        copy = build(a.run, a.features, Path(tmp))
        t = time.perf_counter()
        write_report(copy)
        report_s = time.perf_counter() - t
        html = (copy / REPORT).resolve()
        print(f"features: {a.features:,}")
        print(f"report: {report_s:.1f} s, page {html.stat().st_size / 2**20:.1f} MiB")
        for k, v in browser_times(html).items():
            print(f"browser {k}: {v:.0f}" if k == "dom_elements" else f"browser {k}: {v:.2f} s")


if __name__ == "__main__":
    main()
