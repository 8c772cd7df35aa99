"""Every interval the screening writes contains its own point estimate (issue: honest verdicts).

:func:`interval_violations` walks every table and the summary of a fit (and a transfer table)
and returns the rows whose estimate lies outside its interval, or that have an interval without
an estimate. Each table's (estimate, lo, hi) triples are named here once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import polars as pl

TRIPLES: dict[str, list[tuple[str, str, str]]] = {
    "cv_metrics": [("rho", "rho_lo", "rho_hi")],
    "comparisons": [("delta_rho", "lo", "hi")],
    "confounds": [("partial_rho", "lo", "hi")],
    "heldout": [("payoff_vs_random", "vs_random_lo", "vs_random_hi"),
                ("payoff_vs_baseline", "vs_baseline_lo", "vs_baseline_hi")],
    "transfer": [("rho", "lo", "hi")],
}


def _bad(est: Any, lo: Any, hi: Any) -> bool:
    vals = [math.nan if v is None else float(v) for v in (est, lo, hi)]
    e, lo_, hi_ = vals
    if math.isnan(lo_) and math.isnan(hi_):
        return False  # no interval (e.g. too few rows): nothing to contain
    return not (lo_ - 1e-12 <= e <= hi_ + 1e-12)


def _rows(rows: Iterable[dict[str, Any]], triple: tuple[str, str, str], where: str
          ) -> list[str]:
    est, lo, hi = triple
    return [f"{where}: {r.get(est)} not in [{r.get(lo)}, {r.get(hi)}] ({r})"
            for r in rows if lo in r and _bad(r.get(est), r.get(lo), r.get(hi))]


def interval_violations(tables: dict[str, pl.DataFrame], summary: dict[str, Any] | None = None
                        ) -> list[str]:
    out: list[str] = []
    for name, df in tables.items():
        for triple in TRIPLES[name]:
            if triple[1] in df.columns:
                out += _rows(df.iter_rows(named=True), triple, name)
    if summary is None:
        return out
    p = summary["primary_endpoint"]
    out += _rows([p], ("delta_rho", "delta_lo", "delta_hi"), "primary_endpoint")
    out += _rows(summary.get("residualised", []), ("rho", "rho_lo", "rho_hi"), "residualised")
    out += _rows(summary.get("verdict_tests", []), ("estimate", "lo", "hi"), "verdict_tests")
    out += _rows(summary.get("heldout", []), TRIPLES["heldout"][0], "summary.heldout")
    for est in ("rho_lin", "rho_full", "rho_full_lin"):
        out += _rows(summary.get("linear", []), (est, f"{est}_lo", f"{est}_hi"), "linear")
    out += _rows(summary.get("linear", []), ("delta_rho", "delta_lo", "delta_hi"), "linear")
    rel = summary.get("reliability", {})
    out += _rows([v for k, v in rel.items() if k.startswith("noise_ceiling")],
                 ("rho", "lo", "hi"), "noise_ceiling")
    out += _rows(rel.get("rank_agreement_across_strengths", []), ("rho", "lo", "hi"),
                 "rank_agreement")
    return out
