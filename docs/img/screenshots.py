"""The report screenshots in docs/img/, taken from a finished study in headless Chromium at
1,400 px (the width the report is checked at).

    .venv/bin/python docs/img/screenshots.py STUDY

writes ``report-card.png`` (the first run's cleanest feature card: steered text and measured
top tokens), ``report-screen.png`` (that run's screen table, sorted by predicted stability and
filtered to predicted cleanliness >= 0) and ``report-verdicts.png`` (the study's comparison
section: the forest plot and the architecture comparison, power beside every verdict).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
HERE = Path(__file__).resolve().parent


def main(study: Path) -> None:
    from playwright.sync_api import sync_playwright

    first = json.loads((study / "study.json").read_text())["runs"][0]["name"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto((study / "report.html").resolve().as_uri(), wait_until="load")
        page.locator(f"#{first}-cards .card").first.screenshot(path=HERE / "report-card.png")
        table = page.locator(f"#{first}-screen div.screen-table")
        table.locator("th[data-key='stab'] button").click()
        table.locator("th[data-key='stab'] button").click()  # descending
        table.locator("input[data-bound='min'][data-key='clean']").fill("0")
        table.locator("input[data-bound='min'][data-key='clean']").dispatch_event(
            "input")
        table.evaluate("el => el.scrollIntoView()")  # its top at the viewport's top
        box = table.bounding_box()  # the controls and the first rows of the page of 100
        page.screenshot(path=HERE / "report-screen.png",
                        clip={"x": box["x"], "y": box["y"], "width": box["width"], "height": 760})
        comparison = page.locator("#comparison")
        comparison.evaluate("el => el.scrollIntoView()")
        box = comparison.bounding_box()  # the forest plot and the architecture comparison
        page.set_viewport_size({"width": 1400, "height": 1400})
        box = comparison.bounding_box()
        page.screenshot(path=HERE / "report-verdicts.png",
                        clip={"x": box["x"], "y": box["y"], "width": box["width"], "height": 1300})
        browser.close()
    print("->", *(HERE / n for n in ("report-card.png", "report-screen.png",
                                     "report-verdicts.png")))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
