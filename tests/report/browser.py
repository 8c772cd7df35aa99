"""Open a report in headless Chromium (Debian's, driven by playwright) and check it: no console
errors, page errors or dialogs, every image decoded, the given element ids present, and no
request other than file: and data:. Saves a full-page screenshot as a test artifact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def browser_or_skip():
    """playwright's ``sync_playwright``; skips (or fails under STEERSCREEN_REQUIRE_BROWSER=1,
    as in CI) when Chromium or playwright is missing."""
    required = os.environ.get("STEERSCREEN_REQUIRE_BROWSER") == "1"
    why = None
    if not CHROMIUM.is_file():
        why = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            why = "the playwright package is missing (pip install playwright)"
    if why is not None:
        if required:
            pytest.fail(f"STEERSCREEN_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    return sync_playwright


def check_pages(pages: list[tuple[Path, tuple[str, ...], str]]) -> None:
    """``pages``: (report.html, element ids that must exist, screenshot file name)."""
    sync_playwright = browser_or_skip()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            for html, ids, shot in pages:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                errors: list[str] = []
                requests: list[str] = []
                page.on("console", lambda m, errors=errors: errors.append(m.text)
                        if m.type == "error" else None)
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                page.on("dialog", lambda d, errors=errors: errors.append(f"dialog {d.message}"))

                def route(r, requests=requests):
                    url = r.request.url
                    if url.startswith(("file:", "data:")):
                        r.continue_()
                    else:
                        requests.append(url)
                        r.abort()

                page.route("**/*", route)
                page.on("request", lambda q, requests=requests: requests.append(q.url)
                        if not q.url.startswith(("file:", "data:")) else None)
                page.goto(html.resolve().as_uri(), wait_until="load")
                widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
                assert widths and all(w > 0 for w in widths), widths
                for i in ids:
                    assert page.evaluate("id => document.getElementById(id) !== null", i), i
                assert not errors, errors
                assert not requests, requests
                page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
                page.close()
        finally:
            browser.close()
    for _, _, shot in pages:
        assert (ARTIFACTS / shot).stat().st_size > 10_000


OVERFLOW_JS = """() => {
  document.querySelectorAll('details').forEach((d) => { d.open = true; });
  const out = [];
  for (const c of document.querySelectorAll('td, th')) {
    if (c.scrollWidth > c.clientWidth + 1) {
      out.push(`cell ${c.closest('section')?.id}: ${c.scrollWidth} > ${c.clientWidth} `
               + JSON.stringify(c.textContent.slice(0, 60)));
    }
  }
  for (const t of document.querySelectorAll('table')) {
    const box = t.parentElement, w = t.getBoundingClientRect().width;
    if (w > box.clientWidth + 1) {
      out.push(`table ${t.closest('section')?.id}: ${w} > ${box.clientWidth}`);
    }
  }
  const main = document.querySelector('main');
  if (main.scrollWidth > main.clientWidth + 1 || document.documentElement.scrollWidth
      > window.innerWidth) out.push('the page scrolls sideways');
  return out;
}"""
"""Every cell, table and the page itself that is wider than its box (details opened first)."""


def check_fits(html: Path, width: int = 1400) -> None:
    """At a ``width`` px viewport no td/th content overflows its cell, no table is wider than
    its container and the page does not scroll sideways."""
    sync_playwright = browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(html.resolve().as_uri(), wait_until="load")
            problems = page.evaluate(OVERFLOW_JS)
            assert not problems, problems
        finally:
            browser.close()


def guarded_page(browser, html: Path, width: int = 1400):
    """``html`` opened in a new page that records console errors, page errors, dialogs and any
    request other than file: and data: (aborted) into the returned list."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    def dialog(d) -> None:
        problems.append(f"dialog {d.message}")
        d.dismiss()

    page.on("dialog", dialog)

    def route(r) -> None:
        if r.request.url.startswith(("file:", "data:")):
            r.continue_()
        else:
            problems.append(f"request {r.request.url}")
            r.abort()

    page.route("**/*", route)
    page.goto(html.resolve().as_uri(), wait_until="load")
    return page, problems
