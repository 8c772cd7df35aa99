"""The headline numbers of one run, pulled out once for the HTML page and ``summary.md``.

Per outcome: the fit's verdict, and the numbers it rests on (docs/method.md §4): delta rho of
``full`` over the best baseline set and the residual rho after the baselines are regressed out
inside the folds, each with its CI, its Holm-adjusted p (a verdict needs a positive estimate with
p_holm < 0.05) and the smallest effect it could detect at 80% power; and the held-out payoff of
the top share by predicted cleanliness, scored on the fresh contexts, vs random selection and vs
the ``freq+mag`` selection. When the run had ``lin_*`` columns (METHOD v2), the linear-response
rows (:func:`linear`): rho of ``lin``, ``full`` and ``full+lin`` and the ``full+lin`` - ``full``
delta with its CI and Holm p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from steerscreen.report.html import ci, num
from steerscreen.report.load import RunData
from steerscreen.screening.inference import POWER_TARGET

OUTCOMES = ("cleanliness", "effect_stability", "collateral_spread")
"""The outcomes the fit predicts, cleanliness (the method's score) first."""
SIDE_OUTCOMES = ("effect_kl", "target_gain", "collateral_out")
LABELS = {"cleanliness": "cleanliness", "effect_stability": "effect stability",
          "collateral_spread": "collateral spread", "effect_kl": "effect KL (nats)",
          "target_gain": "target gain (nats)", "collateral_out": "collateral out (share)",
          "n_recruited": "recruited downstream features", "effect_stability_logit":
          "effect stability (logit)"}


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float

    @classmethod
    def of(cls, d: dict[str, Any] | None, v: str, lo: str, hi: str) -> Interval | None:
        if not d or d.get(v) is None:
            return None
        return cls(_f(d.get(v)), _f(d.get(lo)), _f(d.get(hi)))

    @property
    def above_zero(self) -> bool:
        return math.isfinite(self.lo) and self.lo > 0


def _f(x: Any) -> float:
    return math.nan if x is None else float(x)


@dataclass(frozen=True)
class Test:
    """One verdict test as the fit recorded it (``summary.json``: ``verdict_tests``)."""

    estimate: Interval
    p_holm: float
    mde: float
    """Smallest true effect detected with 80% power at alpha = 0.05."""
    passed: bool
    underpowered: bool
    method: str

    @classmethod
    def of(cls, row: dict[str, Any] | None) -> Test | None:
        if not row:
            return None
        return cls(Interval(_f(row.get("estimate")), _f(row.get("lo")), _f(row.get("hi"))),
                   _f(row.get("p_holm")), _f(row.get("mde")), bool(row.get("passed")),
                   bool(row.get("underpowered")), str(row.get("method", "")))


@dataclass(frozen=True)
class Verdict:
    """One outcome's verdict and its evidence."""

    outcome: str
    verdict: str
    beats: bool
    survives: bool
    delta_best: Interval | None
    """delta rho, ``full`` minus the best baseline set, primary context set."""
    best_baseline: str | None
    residual: Interval | None
    """rho of ``full`` on the outcome with the baselines regressed out."""
    payoff_random: Interval | None
    payoff_baseline: Interval | None
    beats_test: Test | None = None
    survives_test: Test | None = None
    n: int | None = None


def primary(run: RunData) -> dict[str, Any] | None:
    return (run.summary or {}).get("primary_endpoint")


def verdicts(run: RunData) -> list[Verdict]:
    """One row per outcome (empty before the fit stage)."""
    s = run.summary
    if s is None:
        return []
    cs = run.primary_set
    resid = {r["outcome"]: r for r in s.get("residualised", [])}
    tests = _tests(s)
    out = []
    for outcome in OUTCOMES:
        verdict = str(s.get("verdicts", {}).get(outcome, "–"))
        delta, best = None, None
        if run.comparisons is not None:
            row = run.comparisons.filter(
                (pl.col("a") == "full") & pl.col("b").str.starts_with("best")
                & (pl.col("outcome") == outcome) & (pl.col("context_set") == cs))
            if row.height:
                r = row.row(0, named=True)
                delta = Interval(_f(r["delta_rho"]), _f(r["lo"]), _f(r["hi"]))
                best = str(r["b"]).removeprefix("best baseline (").removesuffix(")")
        res = resid.get(outcome)
        pay_r = pay_b = None
        if run.heldout is not None:
            row = run.heldout.filter((pl.col("selector") == "full")
                                     & (pl.col("outcome") == outcome))
            if row.height:
                r = row.row(0, named=True)
                pay_r = Interval.of(r, "payoff_vs_random", "vs_random_lo", "vs_random_hi")
                pay_b = Interval.of(r, "payoff_vs_baseline", "vs_baseline_lo", "vs_baseline_hi")
        bt = Test.of(tests.get((outcome, "beats baselines")))
        st = Test.of(tests.get((outcome, "survives residualisation")))
        out.append(Verdict(
            outcome=outcome, verdict=verdict,
            beats=bt.passed if bt else verdict.startswith("beats"),
            survives=st.passed if st else verdict.startswith("survives") or " and survives"
            in verdict, delta_best=delta, best_baseline=best,
            residual=Interval.of(res, "rho", "rho_lo", "rho_hi"), payoff_random=pay_r,
            payoff_baseline=pay_b, beats_test=bt, survives_test=st,
            n=(tests.get((outcome, "beats baselines")) or {}).get("n")))
    return out


def _tests(s: dict[str, Any] | None) -> dict[tuple[Any, Any], dict[str, Any]]:
    return {(r.get("outcome"), r.get("test")): r for r in (s or {}).get("verdict_tests") or []}


def outcome_tests(summary: dict[str, Any] | None, outcome: str) -> tuple[Test | None, ...]:
    """The (beats baselines, survives residualisation) tests of one outcome's verdict."""
    t = _tests(summary)
    return (Test.of(t.get((outcome, "beats baselines"))),
            Test.of(t.get((outcome, "survives residualisation"))))


def power_text(mde: float | None, what: str = "Δρ") -> str:
    """``detectable Δρ ≥ 0.12`` (80% power, alpha 0.05), or "–"."""
    if mde is None or not math.isfinite(mde):
        return "–"
    return f"detectable {what} ≥ {mde:.2f}"


def underpowered(mde: float | None) -> bool:
    """The test cannot detect :data:`POWER_TARGET` at 80% power (as the fit decides)."""
    return mde is None or not (math.isfinite(mde) and mde <= POWER_TARGET)


def power_statement(beats: Test | None, survives: Test | None) -> tuple[str, bool]:
    """The power beside a verdict: ``detectable Δρ ≥ 0.08; detectable residual ρ ≥ 0.11
    (underpowered)``, and whether either test is underpowered (("–", False) without tests)."""
    parts = []
    for t, what in ((beats, "Δρ"), (survives, "residual ρ")):
        if t is None:
            continue
        text = power_text(t.mde, what)
        text = f"{what}: power unknown" if text == "–" else text
        parts.append(text + (" (underpowered)" if t.underpowered else ""))
    weak = any(t is not None and t.underpowered for t in (beats, survives))
    return "; ".join(parts) or "–", weak


def primary_power(p: dict[str, Any]) -> str:
    """The primary endpoint's power: ``detectable Δρ ≥ 0.05 at 80% power (α = 0.05)``."""
    text = f"{power_text(p.get('mde'))} at 80% power (α = 0.05)"
    return text + (f"; underpowered (the target is Δρ = {POWER_TARGET:g})"
                   if p.get("underpowered") else "")


def mde_cell(mde: float | None) -> str:
    """A detectable-effect cell: ``≥ 0.052``, with "(underpowered)" past the target."""
    if mde is None or not math.isfinite(float(mde)):
        return "–" if mde is None else "unknown (underpowered)"
    return f"≥ {num(mde)}" + (" (underpowered)" if underpowered(float(mde)) else "")


def noise_ceiling(run: RunData) -> dict[str, Interval]:
    """Spearman of steering-context vs fresh-context outcomes of the same features."""
    rel = (run.summary or {}).get("reliability", {})
    out = {}
    for outcome in OUTCOMES:
        iv = Interval.of(rel.get(f"noise_ceiling_{outcome}"), "rho", "lo", "hi")
        if iv is not None:
            out[outcome] = iv
    return out


def selection(run: RunData) -> dict[str, dict[str, Any]]:
    """Held-out cleanliness rows by selector (selected mean, precision and recall of clean)."""
    if run.heldout is None:
        return {}
    rows = run.heldout.filter(pl.col("outcome") == "cleanliness")
    return {r["selector"]: r for r in rows.iter_rows(named=True)}


LIN_HEADER = ("ρ lin", "ρ full", "ρ full+lin", "Δρ full+lin − full", "Holm p",
              "detectable Δρ (80%)")
"""The number columns of a linear-response table (each ρ and Δρ with its 95% CI), and the
power of its test."""


def linear(run: RunData) -> list[dict[str, Any]]:
    """The fit's linear-response rows (``summary.json``: ``linear``), cleanliness first; empty
    for a run without ``lin_*`` columns."""
    rows = {r.get("outcome"): r for r in (run.summary or {}).get("linear") or []}
    return [rows[o] for o in OUTCOMES if o in rows]


def lin_cells(r: dict[str, Any]) -> tuple[str, ...]:
    """One linear-response row's :data:`LIN_HEADER` cells, as text."""
    return (ci(r.get("rho_lin"), r.get("rho_lin_lo"), r.get("rho_lin_hi")),
            ci(r.get("rho_full"), r.get("rho_full_lo"), r.get("rho_full_hi")),
            ci(r.get("rho_full_lin"), r.get("rho_full_lin_lo"), r.get("rho_full_lin_hi")),
            ci(r.get("delta_rho"), r.get("delta_lo"), r.get("delta_hi"), signed=True),
            num(r.get("p_holm")), mde_cell(r.get("mde")))


def lin_good(verdict: str | None) -> bool | None:
    """A linear-response verdict's badge colour: good, bad or neutral (underpowered)."""
    if not verdict or verdict.startswith("underpowered"):
        return None
    return verdict == "lin adds to full"
