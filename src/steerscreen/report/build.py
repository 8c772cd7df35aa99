"""``steerscreen report``: PATH/report.html (self-contained), PATH/figures/*.png, PATH/summary.md.

PATH is a run folder or a study folder (:func:`steerscreen.report.load.load` decides). Nothing
here loads a model: the report reads the tables the stages wrote, so it takes seconds. Every file
is written atomically (temp file + rename).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from steerscreen import __version__
from steerscreen.errors import ArtifactError
from steerscreen.files import atomic_path, utc_now
from steerscreen.layout import FIGURES, REPORT
from steerscreen.layout import REPORT_SUMMARY as SUMMARY
from steerscreen.report.html import GENERATOR, Safe, join, page, tag
from steerscreen.report.load import RunData, StudyData, load
from steerscreen.report.screen import page_script
from steerscreen.report.sections import Plot, Section, run_sections
from steerscreen.report.study import study_sections
from steerscreen.report.summary import run_summary, study_summary


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote."""

    html: Path
    """PATH/report.html: the self-contained page."""
    figures: tuple[Path, ...]
    """PATH/figures/NAME.png, the same figures the page embeds."""
    summary: Path
    """PATH/summary.md: the headline numbers as Markdown."""
    kind: Literal["run", "study"]
    seconds: float


def write_report(path: str | Path, features: Sequence[int] = ()) -> ReportResult:
    """Build the report of the run or study at ``path`` (see the module docstring);
    ``features``: extra feature cards of a run report (``--feature``)."""
    t0 = time.perf_counter()
    data = load(path)
    root = data.path
    for name in (REPORT, SUMMARY):  # before anything is written
        _claim(root / name)
    stamp = f"generated {utc_now()} by steerscreen {__version__}"
    if isinstance(data, StudyData):
        sections = study_sections(data)
        title = f"steerscreen study report: {data.name}"
        subtitle = f"Study {data.path} · {len(data.runs)} runs · {stamp}"
    else:
        sections = run_sections(data, features=features)
        title = f"steerscreen report: {data.name}"
        subtitle = f"Run {data.path} · {stamp}"
    written = {plot.name: _write_png(root, plot) for plot in _plots(sections)}
    html = root / REPORT
    body = join(_render(s) for s in sections)
    script = page_script(body)
    footer = ("Self-contained page: inline styles, images and "
              + ("script (the screen tables'), " if script else "no scripts, ")
              + f"no network. The figures are also in {FIGURES}/, the headline numbers in "
              f"{SUMMARY}.")
    _write_text(html, page(title, subtitle, _toc(sections), body, footer, script))
    summary = root / SUMMARY
    _write_text(summary, _summary(data, sections, written, stamp))
    return ReportResult(html, tuple(written.values()), summary,
                        "study" if isinstance(data, StudyData) else "run",
                        time.perf_counter() - t0)


def _summary(data: RunData | StudyData, sections: list[Section], written: dict[str, Path],
             stamp: str) -> str:
    if isinstance(data, RunData):
        return run_summary(data, list(written.values()), stamp)
    shared = [written[p.name] for s in sections if s.id == "comparison" for p in s.plots]
    by_run = {}
    for run, sec in zip(data.runs, (s for s in sections if s.id.startswith("run-")), strict=True):
        by_run[run.name] = [written[p.name] for p in _plots([sec])]
    return study_summary(data, shared, by_run, stamp)


def _plots(sections: list[Section]) -> list[Plot]:
    out: list[Plot] = []
    for s in sections:
        out += s.plots
        out += _plots(list(s.children))
    return out


def _render(s: Section, level: int = 2) -> Safe:
    return tag("section", tag(f"h{level}", s.title), s.body,
               *[_render(c, level + 1) for c in s.children], id=s.id)


def _toc(sections: list[Section]) -> Safe:
    def items(secs: tuple[Section, ...] | list[Section]) -> Safe:
        return tag("ol", *[tag("li", tag("a", s.title, href=f"#{s.id}"),
                               items(s.children) if s.children else "") for s in secs])

    return tag("nav", tag("strong", "Contents"), items(sections), class_="toc")


def _claim(path: Path) -> None:
    """Refuse to replace a report.html or summary.md that a report of steerscreen did not
    write (its page carries :data:`GENERATOR`, its summary starts ``# steerscreen``)."""
    if not (path.exists() or path.is_symlink()):
        return
    mark = GENERATOR if path.suffix == ".html" else "# steerscreen"
    head = ""
    if path.is_file() and not path.is_symlink():  # never open a FIFO (it would block)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                head = f.read(2000)
        except OSError:
            pass
    if mark not in head:
        raise ArtifactError(f"refusing to overwrite {str(path)!r}: steerscreen did not write it",
                            "move that file away, or write the report somewhere else")


def _write_png(root: Path, plot: Plot) -> Path:
    path = root / FIGURES / f"{plot.name}.png"
    with atomic_path(path) as tmp:
        tmp.write_bytes(plot.png)
    return path


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
