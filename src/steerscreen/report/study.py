"""The sections of a study: overview, the width and architecture comparison, one section per
run (its sections nested, ids prefixed with the run's slug) and the study's methods."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import polars as pl

from steerscreen.layout import headline_row, lin_rows
from steerscreen.report import figures
from steerscreen.report.headline import (
    LABELS,
    LIN_HEADER,
    OUTCOMES,
    lin_cells,
    lin_good,
    mde_cell,
    outcome_tests,
    power_statement,
)
from steerscreen.report.html import Safe, badge, ci, code, kv_table, missing, note, table, tag
from steerscreen.report.load import StudyData, StudyRun
from steerscreen.report.sections import Section, make_plot, run_sections, section

ROLE_TITLES = {"architecture": "Architecture comparison", "width": "Width comparison"}


def slugs(names: list[str]) -> list[str]:
    """Stable, unique, id-safe slugs of run names (``l12 TopK/4096`` -> ``l12-topk-4096``)."""
    out: list[str] = []
    for name in names:
        base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "run"
        slug, i = base, 2
        while slug in out:
            slug, i = f"{base}-{i}", i + 1
        out.append(slug)
    return out


def study_sections(study: StudyData) -> list[Section]:
    ids = slugs([r.name for r in study.runs])
    sections = [overview_section(study, ids), comparison_section(study)]
    for run, slug in zip(study.runs, ids, strict=True):
        sections.append(_run_section(study, run, slug))
    sections.append(methods_section(study))
    return sections


def _run_section(study: StudyData, run: StudyRun, slug: str) -> Section:
    title = f"Run {run.name}"
    if run.data is None:
        return section("run-", slug, title, missing(
            f"the run folder {run.path} does not exist or holds no run",
            f"steerscreen run --out {study.path}  (or steerscreen stats --out {run.path})"))
    children = tuple(run_sections(run.data, prefix=f"{slug}-"))
    return Section(f"run-{slug}", title, Safe(""), children=children)


# --- overview -------------------------------------------------------------------------------------
def _status(run: StudyRun) -> Safe:
    if run.data is None:
        return badge("missing", False)
    parts = []
    for stage in ("stats", "steer", "fit"):
        s = run.data.stage_status(stage)
        parts.append(badge(stage, True if s == "complete" else (None if s is None else False)))
    return Safe(" ".join(parts))


def _n_steered(run: StudyRun) -> int | None:
    rows = run.data.at_strength() if run.data is not None else None
    if rows is None:
        return None
    return rows.filter(pl.col("direction") == "feature")["feature"].n_unique()


def overview_section(study: StudyData, ids: list[str]) -> Section:
    m = study.meta
    down = m.get("downstream") or {}
    intro = note(f"Study {study.name}", f" (preset {m['preset']})" if m.get("preset") else "",
                 f": {len(study.runs)} runs, one per SAE",
                 f"; downstream SAE {down.get('sae', '?')} at {down.get('hook', '?')}"
                 if down else "", ".")
    rows = [(tag("a", r.name, href=f"#run-{slug}"), r.arch or "–", r.width, r.hook or "–",
             ", ".join(r.roles) or "–", _status(r), _n_steered(r))
            for r, slug in zip(study.runs, ids, strict=True)]
    t = table(("run", "architecture", "width", "hook", "roles", "stages", "steered features"),
              rows)
    extra = [] if m else [note("No study.json: runs were found by scanning ", code("runs/*/"),
                               ".")]
    return section("", "overview", "Study overview", intro, t, *extra)


# --- comparison -----------------------------------------------------------------------------------
def per_run_rows(study: StudyData) -> list[dict[str, Any]]:
    """Each run's primary endpoint and verdicts: from its summary, else comparison/runs.parquet."""
    table_rows = ({r["run"]: r for r in study.per_run.iter_rows(named=True)}
                  if study.per_run is not None else {})
    out = []
    for r in study.runs:
        row: dict[str, Any] = {"run": r.name, "arch": r.arch, "width": r.width,
                               "roles": r.roles, "n": _n_steered(r)}
        s = r.data.summary if r.data is not None else None
        if s is not None:
            row |= headline_row(s)
            row["power"] = {o: power_statement(*outcome_tests(s, o)) for o in OUTCOMES}
        elif r.name in table_rows:
            row |= {k: v for k, v in table_rows[r.name].items() if k != "run"}
        out.append(row)
    return out


def _fitted(row: dict[str, Any]) -> bool:
    v = row.get("rho_full")
    return v is not None and math.isfinite(float(v))


def comparison_section(study: StudyData) -> Section:
    title = "Width and architecture comparison"
    rows = per_run_rows(study)
    fitted = [r for r in rows if _fitted(r)]
    body: list[object] = []
    plots = []
    if fitted:
        df = pl.DataFrame([{k: r.get(k) for k in ("rho_full", "rho_freq_mag", "delta_rho",
                                                  "delta_lo", "delta_hi")} for r in fitted],
                          schema={k: pl.Float64 for k in ("rho_full", "rho_freq_mag",
                                                          "delta_rho", "delta_lo", "delta_hi")})
        labels = [_label(r) for r in fitted]
        plot, fig = make_plot("comparison-", "endpoint", figures.comparison(df, labels),
                          "Primary endpoint per SAE (ridge, cleanliness, fresh contexts)",
                          "left: cross-validated ρ of all predictors (dark) and of freq+mag "
                          "(hollow) per SAE; right: their difference with its 95% CI. An SAE "
                          "where the screen adds value has its CI right of zero.")
        plots.append(plot)
        body.append(fig)
    absent = [r for r in study.runs if r.data is None]
    if absent:
        body.append(missing(f"the runs {', '.join(r.name for r in absent)} (no run folder)",
                            f"steerscreen run --out {study.path}"))
    for r in study.runs:
        if r.data is not None and not any(x["run"] == r.name and _fitted(x) for x in rows):
            body.append(missing(f"the primary endpoint of {r.name}",
                                f"steerscreen fit --run {r.path}"))
    roles = sorted({role for r in rows for role in r["roles"]},
                   key=lambda x: (x not in ROLE_TITLES, x))
    groups = [(ROLE_TITLES.get(role, f"{role} comparison"), [r for r in rows if role in
                                                            r["roles"]]) for role in roles]
    for heading, members in groups or [("All runs", rows)]:
        if heading.startswith("Width"):
            members = sorted(members, key=lambda r: (r["width"] is None, r["width"] or 0))
        body += [tag("h3", heading), _endpoint_table(members)]
    body += _linear(rows)
    body += _transfer(study, plots)
    return section("", "comparison", title, *body, plots=tuple(plots))


def _label(r: dict[str, Any]) -> str:
    bits = [str(x) for x in (r.get("arch"), r.get("width")) if x is not None]
    return f"{r['run']} ({', '.join(bits)})" if bits else str(r["run"])


def verdict_power(r: dict[str, Any], o: str) -> tuple[str | None, str]:
    """A :func:`per_run_rows` row's verdict on outcome ``o`` and the power beside it ("–" for
    a run known only from comparison/runs.parquet)."""
    return r.get(f"verdict_{o}"), (r.get("power") or {}).get(o, ("–", False))[0]


def _verdicts(r: dict[str, Any]) -> Safe:
    """One line per outcome: its verdict, and the power of the tests behind it."""
    lines = []
    for o in OUTCOMES:
        v, power = verdict_power(r, o)
        good = None if v is None or v.startswith("underpowered") else v != "neither"
        lines.append(tag("div", tag("strong", LABELS[o], ": "), badge(v or "–", good), " ",
                         tag("span", power, class_="power"), class_="verdict"))
    return Safe("".join(lines))


def _endpoint_table(rows: list[dict[str, Any]]) -> Safe:
    # One verdicts column (not one per outcome) keeps the table inside the page at 1,400 px.
    return table(("run", "architecture", "width", "steered", "ρ full", "ρ freq+mag",
                  "Δρ [95% CI]", "detectable Δρ (80%)",
                  "verdicts (power: 80%, α = 0.05)"),
                 [(r["run"], r.get("arch") or "–", r.get("width"), r.get("n"), r.get("rho_full"),
                   r.get("rho_freq_mag"), ci(r.get("delta_rho"), r.get("delta_lo"),
                                             r.get("delta_hi"), signed=True),
                   mde_cell(r.get("detectable_delta_rho")), _verdicts(r)) for r in rows],
                 class_="endpoints")


def linear_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run's linear-response rows (run, outcome, :data:`~steerscreen.layout.LIN_FIELDS`),
    from :func:`per_run_rows`; empty when no run had ``lin_*`` columns."""
    return [{"run": r["run"], **x} for r in rows for x in lin_rows(r, OUTCOMES)]


def _linear(rows: list[dict[str, Any]]) -> list[object]:
    lin = linear_rows(rows)
    if not lin:
        return []
    return [tag("h3", "Linear response per SAE: does lin add to full?"),
            table(("run", "outcome", *LIN_HEADER, "verdict"),
                  [(r["run"], LABELS[r["outcome"]], *lin_cells(r),
                    badge(r.get("verdict") or "–", lin_good(r.get("verdict")))) for r in lin]),
            note("Per SAE and outcome (ridge, primary context set): ρ of the lin_* group "
                 "alone, of full (the v1 groups) and of full+lin, each with its 95% CI, and Δρ "
                 "of full+lin minus full with its 95% CI and Holm-adjusted p (the run's verdict "
                 "tests).")]


def _transfer(study: StudyData, plots: list) -> list[object]:
    head = tag("h3", "Transfer: fit on one SAE, evaluate on another")
    t = study.transfer
    if t is None or t.height == 0:
        paths = " ".join(str(r.path) for r in study.runs) or f"{study.path}/runs/*"
        return [head, missing("the transfer matrix (comparison/transfer.parquet)",
                              f"steerscreen compare {paths} --out {study.path}/comparison")]
    names = [r.name for r in study.runs]
    names += sorted({*t["train"].to_list(), *t["test"].to_list()} - set(names))
    own: dict[tuple[str, str], float] = {}
    for r in study.runs:
        if r.data is None or r.data.cv is None:
            continue
        cv = r.data.cv.filter((pl.col("model") == "ridge") & (pl.col("set") == "full")
                              & (pl.col("context_set") == r.data.primary_set))
        for row in cv.iter_rows(named=True):
            own[r.name, row["outcome"]] = float(row["rho"])
    present = [n for n in names if n in set(t["train"].to_list()) | set(t["test"].to_list())]
    plot, fig = make_plot("comparison-", "transfer", figures.transfer(t, present, own),
                      "Transfer matrix: Spearman ρ of a predictor fit on one SAE (row) with the "
                      "measured outcomes of another (column)",
                      "each cell is ρ with its 95% Fisher-z CI over the evaluated SAE's "
                      "features; the outlined diagonal is each SAE's own cross-validated ρ. "
                      "Off-diagonal cells close to the diagonal mean the screen transfers.")
    plots.append(plot)
    order = {o: i for i, o in enumerate(OUTCOMES)}
    rows = [(LABELS.get(r["outcome"], r["outcome"]), r["train"], r["test"], r["n_test"],
             ci(r["rho"], r["lo"], r["hi"]))
            for r in sorted(t.iter_rows(named=True), key=lambda r: (
                order.get(r["outcome"], 99), r["outcome"], r["train"], r["test"]))]
    cells = table(("outcome", "fit on", "evaluated on", "features", "ρ [95% CI]"), rows)
    return [head, fig, tag("details", tag("summary", f"The {len(rows)} cells of the matrix as a "
                                          "table (ρ with its 95% CI and n)"), cells)]


# --- methods --------------------------------------------------------------------------------------
def methods_section(study: StudyData) -> Section:
    # runs and plan get tables of their own; the headline is the comparison section's.
    meta = {k: v for k, v in study.meta.items() if k not in ("runs", "plan", "headline")}
    body: list[object] = [note(f"Study folder {study.path}. Every run's own parameters, versions "
                               "and seeds are in its Methods subsection.")]
    if meta:
        body.append(kv_table(meta))
        body += _plan(study.meta)
    else:
        body.append(missing("study.json (the study's configuration)",
                            f"steerscreen run --out {study.path}"))
    runs = [(r.name, _relative(r.path, study.path), r.arch or "–", r.width, r.hook or "–",
             ", ".join(r.roles)) for r in study.runs]
    body += [tag("h4", "Runs"), table(("name", "path", "architecture", "width", "hook",
                                       "roles"), runs)]
    return section("", "methods", "Methods: the study's configuration", *body)


def _relative(path: Path, root: Path) -> str:
    """A run's folder inside the study as STUDY-relative (a long absolute path would widen the
    table past the page), else as it is."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)



def _plan(meta: dict[str, Any]) -> list[object]:
    """The study's plan: each step's estimate next to the time it took."""
    plan = meta.get("plan")
    if not (isinstance(plan, list) and plan and all(isinstance(p, dict) for p in plan)):
        return []
    timings = meta.get("timings") or {}

    def took(p: dict[str, Any]) -> object:
        key = f"{p.get('stage')}/{p.get('target')}"
        return timings.get(key, timings.get(str(p.get("stage"))))

    rows = [(p.get("stage", "–"), p.get("target", "–"), p.get("work", "–"),
             p.get("estimate_s"), took(p)) for p in plan]
    return [tag("h4", "Plan: estimated and measured time"),
            table(("stage", "target", "work", "estimate (s)", "took (s)"), rows)]
