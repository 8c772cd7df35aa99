"""``summary.md``: the headline numbers as Markdown, for a terminal, a diff or a pull request."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from steerscreen.report import headline as hl
from steerscreen.report.headline import (
    LABELS,
    LIN_HEADER,
    OUTCOMES,
    Interval,
    Verdict,
    lin_cells,
    mde_cell,
    power_statement,
    primary_power,
)
from steerscreen.report.html import ci, num
from steerscreen.report.load import RunData, StudyData
from steerscreen.report.sections import dose_accuracy_lines, facts
from steerscreen.report.study import linear_rows, per_run_rows, verdict_power

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#~])")  # "|" only matters in tables: _cell


def _md(x: object) -> str:
    """Text from a user (a model, hook, run or study name) as literal Markdown: its markup
    characters escaped, newlines folded."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(x).split()))


def _code(x: object) -> str:
    """A path as a Markdown code span that no backtick inside it can close early."""
    text = " ".join(str(x).splitlines())
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(x: object) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |",
           "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(num(c) if c is None or isinstance(c, int | float) else c)
                              for c in r) + " |" for r in rows]
    return out


def _iv(x: Interval | None, signed: bool = True) -> str:
    return "–" if x is None else ci(x.value, x.lo, x.hi, signed=signed)


def _power(v: Verdict) -> str:
    return power_statement(v.beats_test, v.survives_test)[0]


def run_lines(run: RunData, figures: Sequence[Path], root: Path, level: str = "##") -> list[str]:
    lines = [_md(facts(run)), ""]
    p = hl.primary(run)
    if p is None:
        cmd = ("steerscreen stats" if run.stats is None else "steerscreen steer"
               if run.outcomes is None else "steerscreen fit")
        return [*lines, f"Not fitted yet: run `{cmd}` for {_code(run.path)} (see report.html).",
                ""]
    lines += [f"{level} Headline", "",
              f"**Primary endpoint** ({p.get('model')}, {p.get('full')} vs {p.get('baseline')}, "
              f"{p.get('outcome')} on {p.get('context_set')} contexts): ρ "
              f"{num(p.get('rho_full'))} vs {num(p.get('rho_baseline'))}, Δρ "
              f"{ci(p.get('delta_rho'), p.get('delta_lo'), p.get('delta_hi'), signed=True)}; "
              f"Nadeau–Bengio p = {num(p.get('p_nadeau_bengio'))}, permutation p = "
              f"{num(p.get('p_permutation'))}. **{p.get('verdict', '–')}**; n = "
              f"{num(p.get('n'))} features, {primary_power(p)}.", ""]
    lines += _table(("outcome", "verdict", "Δρ vs best baseline [95% CI]",
                     "residual ρ [95% CI]", "power (80%, α = 0.05)",
                     "held-out payoff vs random [95% CI]", "vs freq+mag selection [95% CI]"),
                    [(LABELS[v.outcome], v.verdict, _iv(v.delta_best), _iv(v.residual, False),
                      _power(v), _iv(v.payoff_random), _iv(v.payoff_baseline))
                     for v in hl.verdicts(run)])
    tests = (run.summary or {}).get("verdict_tests") or []
    if tests:
        lines += ["", f"A verdict needs a positive estimate with a Holm-adjusted p < 0.05 over the "
                  f"{len(tests)} verdict tests ({tests[0]['method']}); a test that cannot detect "
                  "0.1 at 80% power says “underpowered”."]
    lin = hl.linear(run)
    if lin:
        lines += ["", "Linear response (full+lin vs full, the first secondary comparison):", ""]
        lines += _table(("outcome", *LIN_HEADER, "verdict"),
                        [(LABELS[r["outcome"]], *lin_cells(r), r.get("verdict") or "–")
                         for r in lin])
    nc = hl.noise_ceiling(run)
    if nc:
        lines += ["", "Noise ceiling (steering vs fresh contexts): " + "; ".join(
            f"{LABELS[o]} {_iv(iv, False)}" for o, iv in nc.items()) + "."]
    acc = run.dose_accuracy()
    if acc is not None:
        intro, rows = dose_accuracy_lines(acc)
        lines += ["", _md(intro) + " " + "; ".join(
            f"{kind}: median {med} (10–90% {rng}, n = {n})" for kind, med, rng, n in rows) + "."]
    if figures:
        lines += ["", f"{level} Figures", ""]
        lines += [f"- {_code(f.relative_to(root))}" for f in figures]
    return [*lines, ""]


def run_summary(run: RunData, figures: Sequence[Path], stamp: str) -> str:
    head = [f"# steerscreen report: {_md(run.name)}", "",
            f"Run folder {_code(run.path)}; {stamp}. The full report is `report.html`.", ""]
    return "\n".join(head + run_lines(run, figures, run.path))


def study_summary(study: StudyData, shared: Sequence[Path],
                  run_figures: dict[str, list[Path]], stamp: str) -> str:
    lines = [f"# steerscreen study report: {_md(study.name)}", "",
             f"Study folder {_code(study.path)}, {len(study.runs)} runs; {stamp}. The full report "
             "is `report.html`.", "", "## Primary endpoint per SAE", ""]
    rows = per_run_rows(study)
    lines += _table(("run", "architecture", "width", "n", "ρ full", "ρ freq+mag",
                     "Δρ [95% CI]", "detectable Δρ (80%)", "primary endpoint"),
                    [(_md(r["run"]), _md(r.get("arch") or "–"), r.get("width") or "–",
                      r.get("n_fit") or "–",
                      num(r.get("rho_full")), num(r.get("rho_freq_mag")),
                      ci(r.get("delta_rho"), r.get("delta_lo"), r.get("delta_hi"), signed=True),
                      mde_cell(r.get("detectable_delta_rho")), r.get("primary_verdict") or "–")
                     for r in rows])
    lines += ["", "Verdicts per SAE, each with the power of its tests (80%, α = 0.05):", ""]
    lines += _table(("run", "outcome", "verdict", "power"),
                    [(_md(r["run"]), LABELS[o], v or "not fitted", power)
                     for r in rows for o in OUTCOMES for v, power in [verdict_power(r, o)]])
    lin = linear_rows(rows)
    if lin:
        lines += ["", "## Linear response per SAE (full+lin vs full)", ""]
        lines += _table(("run", "outcome", *LIN_HEADER, "verdict"),
                        [(_md(r["run"]), LABELS[r["outcome"]], *lin_cells(r),
                          r.get("verdict") or "–") for r in lin])
    lines += ["", "## Transfer", ""]
    if study.transfer is None or study.transfer.height == 0:
        lines.append("Not computed: run "
                     + _code(f"steerscreen compare ... --out {study.path}/comparison") + ".")
    else:
        lines += _table(("outcome", "fit on", "evaluated on", "ρ [95% CI]"),
                        [(r["outcome"], _md(r["train"]), _md(r["test"]),
                          ci(r["rho"], r["lo"], r["hi"]))
                         for r in study.transfer.sort(["outcome", "train", "test"])
                         .iter_rows(named=True)])
    if shared:
        lines += ["", "Figures: " + ", ".join(_code(f.relative_to(study.path)) for f in shared)]
    lines.append("")
    for r in study.runs:
        lines += [f"## Run {_md(r.name)}", ""]
        if r.data is None:
            lines += [f"The run folder {_code(r.path)} is missing.", ""]
            continue
        lines += run_lines(r.data, run_figures.get(r.name, []), study.path, level="###")
    return "\n".join(lines)
