"""docs/method.md §4 on one run: cross-validated predictors vs baselines, verdicts, confounds,
payoff.

:func:`analyse` takes a :class:`~steerscreen.screening.data.ScreeningData` and returns an
:class:`Analysis`: long tables (one row per model x predictor set x outcome x context set, per
comparison, per predictor) and one ``summary`` dict with every headline number and its CI.

Every cross-validated number is the mean over the R x K test folds of a per-fold score (rho of
one set, or the paired difference of two sets' rho), with the Nadeau–Bengio interval, p-value
and detectable effect of those same fold scores (:mod:`.inference`). So each printed estimate
sits inside its own interval, and its test agrees with it.

- **CV metrics**: every predictor set, outcome and context set (ridge), and the
  ``boosting_sets`` with gradient boosting on the primary context set.
- **Comparisons**: with ``lin_*`` columns first ``full+lin`` against ``full`` (METHOD v2 §4, the
  first secondary comparison), then every set against ``freq+mag`` and ``full`` against the best
  baseline set; Holm across all of them but the primary endpoint.
- **Primary endpoint** (fixed in advance): ridge, ``full`` vs ``freq+mag``, cleanliness on fresh
  contexts, plus a permutation test through the whole CV pipeline.
- **Verdicts**: per outcome, "beats baselines" (``full`` minus the best baseline set) and
  "survives residualisation" (rho of ``full`` after ``base_freq`` and ``base_mag`` are regressed
  out inside the folds), and with ``lin_*`` columns "lin adds to full" (``full+lin`` minus
  ``full``). A verdict is given only when its test is positive with a Holm-adjusted p < 0.05
  across the verdict tests (six, nine with ``lin``); a test that cannot detect 0.1 at 80% power
  says "underpowered", not "neither".
- **Linear response** (``summary["linear"]``, only with ``lin_*`` columns): per outcome, rho of
  ``lin``, ``full`` and ``full+lin`` and the ``full+lin`` - ``full`` delta with its verdict test.
- **Confounds** (:mod:`.confounds`), **held-out screening** (:mod:`.heldout`) and
  **reliability** (:mod:`.reliability`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from steerscreen.config import FitConfig
from steerscreen.screening.confounds import partial_spearman, residual_targets, within_deciles
from steerscreen.screening.cv import CVResult, cross_validate, folds, r2
from steerscreen.screening.data import OUTCOMES, ScreeningData, predictor_sets
from steerscreen.screening.heldout import heldout
from steerscreen.screening.inference import (
    Estimate,
    benjamini_hochberg,
    fold_mean,
    holm,
    power_note,
)
from steerscreen.screening.models import MODELS
from steerscreen.screening.reliability import reliability

BASELINE_SETS = ("freq", "mag", "freq+mag", "direct", "pass", "baselines")
PRIMARY = ("ridge", "full", "freq+mag", "cleanliness")
BEATS, SURVIVES = "beats baselines", "survives residualisation"
LIN_ADDS = "lin adds to full"
LIN_SETS = ("lin", "full", "full+lin")
"""The linear-response sets reported side by side (METHOD v2 §4)."""


@dataclass
class Analysis:
    cv: pl.DataFrame  # model, set, outcome, context_set, n, rho (+ se, CI, p), r2
    comparisons: pl.DataFrame  # model, outcome, context_set, a, b, delta_rho, se, lo, hi, p..
    confounds: pl.DataFrame  # predictor, outcome, control, partial_rho, lo, hi, p, q_bh
    heldout: pl.DataFrame  # selector, outcome, payoff vs random / vs baseline with CIs
    predictions: pl.DataFrame  # feature, outcomes, ridge out-of-fold predictions
    summary: dict[str, Any] = field(default_factory=dict)
    residuals: dict[str, np.ndarray] = field(default_factory=dict)  # |y - oof| per outcome


class Fits:
    """The cross-validated fits of one run on one set of folds, each computed once."""

    def __init__(self, data: ScreeningData, cfg: FitConfig) -> None:
        self.data, self.cfg = data, cfg
        self.n = data.table.height
        self.splits = folds(self.n, cfg.n_splits, cfg.n_repeats, cfg.seed)
        self.sets = predictor_sets(data.predictors)
        self._cache: dict[tuple[str, str, str, str, bool], CVResult] = {}

    def cv(self, set_name: str, outcome: str, cs: str | None = None, model: str = "ridge",
           residualised: bool = False) -> CVResult:
        cs = cs or self.data.primary_set
        key = (model, set_name, outcome, cs, residualised)
        if key not in self._cache:
            y = self.data.outcome(outcome, cs)
            transform = (residual_targets(y, self.data.X(["base_freq", "base_mag"]),
                                          self.cfg.seed) if residualised else None)
            self._cache[key] = cross_validate(MODELS[model](self.cfg.seed),
                                              self.data.X(self.sets[set_name]), y, self.splits,
                                              transform_y=transform)
        return self._cache[key]

    def n_obs(self, outcome: str, cs: str | None = None) -> int:
        return int(np.isfinite(self.data.outcome(outcome, cs or self.data.primary_set)).sum())

    def rho(self, set_name: str, outcome: str, cs: str | None = None, model: str = "ridge",
            residualised: bool = False) -> Estimate:
        cv = self.cv(set_name, outcome, cs, model, residualised)
        return fold_mean(cv.fold_rho, cv.n_train, cv.fold_test_size, self.n_obs(outcome, cs),
                         self.cfg.n_splits, constant=bool(cv.fold_constant.all()), bound=1.0,
                         what="mean test-fold Spearman")

    def delta(self, a: str, b: str, outcome: str, cs: str | None = None) -> Estimate:
        ca, cb = self.cv(a, outcome, cs), self.cv(b, outcome, cs)
        return fold_mean(ca.fold_rho - cb.fold_rho, ca.n_train, ca.fold_test_size,
                         self.n_obs(outcome, cs), self.cfg.n_splits, bound=2.0,
                         constant=bool(ca.fold_constant.all() and cb.fold_constant.all()),
                         what="paired test-fold differences")

    def best_baseline(self, outcome: str, cs: str | None = None) -> str:
        rho = {b: self.rho(b, outcome, cs).estimate for b in BASELINE_SETS if b in self.sets}
        return max(rho, key=lambda b: -math.inf if math.isnan(rho[b]) else rho[b])

    @property
    def has_lin(self) -> bool:
        """The run has ``lin_*`` columns (so ``full+lin`` vs ``full`` is tested)."""
        return "full+lin" in self.sets and "full" in self.sets


def _cmp_row(e: Estimate, **key: Any) -> dict[str, Any]:
    t = e.estimate / e.se if e.se and math.isfinite(e.se) else math.nan
    return {**key, "delta_rho": e.estimate, "se": e.se, "lo": e.lo, "hi": e.hi, "t_nb": t,
            "p_nb": e.p, "mde": e.mde, "n": e.n}


def _cv_table(fits: Fits) -> pl.DataFrame:
    rows = []
    for cs in fits.data.context_sets:
        for outcome in OUTCOMES:
            for model in MODELS:
                if model != "ridge" and cs != fits.data.primary_set:
                    continue
                for name, cols in fits.sets.items():
                    if model != "ridge" and name not in fits.cfg.boosting_sets:
                        continue
                    cv = fits.cv(name, outcome, cs, model)
                    e = fits.rho(name, outcome, cs, model)
                    r2s = [r2(cv.target[r], cv.oof[r]) for r in range(cv.oof.shape[0])]
                    rows.append({"model": model, "set": name, "outcome": outcome,
                                 "context_set": cs, "n_predictors": len(cols), "n": e.n,
                                 "rho": e.estimate, "rho_se": e.se, "rho_lo": e.lo,
                                 "rho_hi": e.hi, "rho_p": e.p, "r2": float(np.nanmean(r2s))})
    return pl.DataFrame(rows)


def _comparisons(fits: Fits) -> pl.DataFrame:
    rows = []
    for cs in fits.data.context_sets:
        for outcome in OUTCOMES:
            key = {"model": "ridge", "outcome": outcome, "context_set": cs}
            if "freq+mag" not in fits.sets:
                continue
            if fits.has_lin:  # the first secondary comparison (METHOD v2 §4)
                rows.append(_cmp_row(fits.delta("full+lin", "full", outcome, cs), **key,
                                     a="full+lin", b="full"))
            for name in fits.sets:
                if name != "freq+mag":
                    rows.append(_cmp_row(fits.delta(name, "freq+mag", outcome, cs), **key,
                                         a=name, b="freq+mag"))
            best = fits.best_baseline(outcome, cs)
            rows.append(_cmp_row(fits.delta("full", best, outcome, cs), **key, a="full",
                                 b=f"best baseline ({best})"))
    table = pl.DataFrame(rows)
    _, a, b, outcome = PRIMARY
    secondary = ~((table["a"] == a) & (table["b"] == b) & (table["outcome"] == outcome)
                  & (table["context_set"] == fits.data.primary_set))
    p_holm = np.full(table.height, np.nan)
    idx = np.flatnonzero(secondary.to_numpy())
    p_holm[idx] = holm(table["p_nb"].to_numpy()[idx])
    return table.with_columns(pl.Series("p_holm", p_holm))


def verdict_family(fits: Fits) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The verdict tests (per outcome: beats baselines, survives residualisation, and with
    ``lin_*`` columns lin adds to full), Holm across all of them, and one verdict sentence per
    outcome (of the first two tests; the lin test's sentence is :func:`lin_verdict`)."""
    tests: list[tuple[str, str, str, Estimate]] = []
    for outcome in OUTCOMES:
        best = fits.best_baseline(outcome)
        tests.append((outcome, BEATS, f"Δρ, full − best baseline set ({best})",
                      fits.delta("full", best, outcome)))
        tests.append((outcome, SURVIVES, "ρ of full on the outcome with base_freq and "
                      "base_mag regressed out inside the folds",
                      fits.rho("full", outcome, residualised=True)))
        if fits.has_lin:
            tests.append((outcome, LIN_ADDS, "Δρ, full+lin − full",
                          fits.delta("full+lin", "full", outcome)))
    p_holm = holm(np.array([e.p for *_, e in tests]))
    rows = []
    for (outcome, test, what, e), ph in zip(tests, p_holm, strict=True):
        rows.append({"outcome": outcome, "test": test, "statistic": what, **e.row(),
                     "p_holm": float(ph), "passed": e.significant(ph),
                     "underpowered": e.underpowered})
    verdicts = {}
    for outcome in OUTCOMES:
        by_test = {r["test"]: r for r in rows if r["outcome"] == outcome}
        verdicts[outcome] = verdict_text(by_test[BEATS], by_test[SURVIVES])
    return rows, verdicts


def lin_verdict(test: dict[str, Any]) -> str:
    """One outcome's "lin adds to full" sentence from its verdict test row."""
    if test["passed"]:
        return LIN_ADDS
    if test["underpowered"]:
        return power_note(test["n"], test["mde"])
    return f"no gain from lin detected (detectable Δρ ≥ {test['mde']:.2f})"


def linear_rows(fits: Fits, verdict_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per outcome on the primary context set: rho of ``lin``, ``full`` and ``full+lin`` (each
    with its CI) and the ``full+lin`` - ``full`` delta with its CI, p, Holm p (the verdict
    family's), power and verdict. Empty without ``lin_*`` columns."""
    if not fits.has_lin:
        return []
    rows = []
    for outcome in OUTCOMES:
        t = next(r for r in verdict_rows if r["outcome"] == outcome and r["test"] == LIN_ADDS)
        row: dict[str, Any] = {"outcome": outcome, "context_set": fits.data.primary_set,
                               "n": t["n"]}
        for name in LIN_SETS:
            key = "rho_" + name.replace("+", "_")
            if name in fits.sets:
                e = fits.rho(name, outcome)
                row |= {key: e.estimate, f"{key}_lo": e.lo, f"{key}_hi": e.hi}
            else:
                row |= {key: math.nan, f"{key}_lo": math.nan, f"{key}_hi": math.nan}
        row |= {"delta_rho": t["estimate"], "delta_se": t["se"], "delta_lo": t["lo"],
                "delta_hi": t["hi"], "p": t["p"], "p_holm": t["p_holm"], "mde": t["mde"],
                "underpowered": t["underpowered"], "passed": t["passed"],
                "verdict": lin_verdict(t), "method": t["method"]}
        rows.append(row)
    return rows


def verdict_text(beats: dict[str, Any], survives: dict[str, Any]) -> str:
    """One outcome's verdict from its two test rows (see :func:`verdict_family`)."""
    n = beats["n"]
    if beats["passed"] and survives["passed"]:
        return f"{BEATS} and {SURVIVES}"
    if beats["passed"]:
        return (f"{BEATS}; residualisation " + power_note(n, survives["mde"], "residual ρ")
                if survives["underpowered"] else f"{BEATS} only")
    if survives["passed"]:
        return (f"{SURVIVES}; comparison " + power_note(n, beats["mde"])
                if beats["underpowered"] else f"{SURVIVES} only")
    if beats["underpowered"]:
        return power_note(n, beats["mde"])
    if survives["underpowered"]:
        return power_note(n, survives["mde"], "residual ρ")
    return "neither"


def primary_endpoint(fits: Fits) -> dict[str, Any]:
    model, a, b, outcome = PRIMARY
    cs = fits.data.primary_set
    e = fits.delta(a, b, outcome)
    y = fits.data.outcome(outcome, cs)
    rng = np.random.default_rng(fits.cfg.seed + 2)
    one = fits.splits[:1]  # one repeat per permutation keeps 200 refits of both sets affordable

    def stat(yy: np.ndarray) -> float:
        ca = cross_validate(MODELS[model](fits.cfg.seed), fits.data.X(fits.sets[a]), yy, one)
        cb = cross_validate(MODELS[model](fits.cfg.seed), fits.data.X(fits.sets[b]), yy, one)
        return float(np.nanmean(ca.fold_rho - cb.fold_rho))

    obs_one = float(np.nanmean(fits.cv(a, outcome).fold_rho[:len(one[0])]
                               - fits.cv(b, outcome).fold_rho[:len(one[0])]))
    null = np.array([stat(rng.permutation(y)) for _ in range(fits.cfg.n_permutations)])
    null = null[np.isfinite(null)]
    p_perm = (1 + np.sum(null >= obs_one)) / (1 + null.size) if null.size else math.nan
    if e.significant():
        verdict = f"{a} beats {b} (Nadeau–Bengio p = {e.p:.3g})"
    elif e.underpowered:
        verdict = power_note(e.n, e.mde)
    else:
        verdict = f"no gain over {b} detected (detectable Δρ ≥ {e.mde:.2f})"
    return {"model": model, "outcome": outcome, "context_set": cs, "full": a, "baseline": b,
            "rho_full": fits.rho(a, outcome).estimate,
            "rho_baseline": fits.rho(b, outcome).estimate,
            "delta_rho": e.estimate, "delta_se": e.se, "delta_lo": e.lo, "delta_hi": e.hi,
            "t_nadeau_bengio": e.estimate / e.se if e.se else math.nan,
            "p_nadeau_bengio": e.p, "p_permutation": float(p_perm),
            "n_permutations": fits.cfg.n_permutations,
            "permutation_note": "one-sided; the first K-fold split per permutation, both sets "
                                "refit; statistic: mean paired test-fold difference",
            "n": e.n, "mde": e.mde, "underpowered": e.underpowered, "verdict": verdict,
            "method": e.method}


def _confounds(fits: Fits, verdict_rows: list[dict[str, Any]]
               ) -> tuple[pl.DataFrame, list[dict[str, Any]], dict[str, Any]]:
    data = fits.data
    cs = data.primary_set
    Z = data.X(["base_freq", "base_mag"])
    kl = data.outcome("effect_kl", cs)
    Zkl = np.column_stack([Z, np.log(np.where(kl > 0, kl, np.nan))])
    rows = []
    for outcome in OUTCOMES:
        y = data.outcome(outcome, cs)
        for pred in data.predictors:
            if pred in ("base_freq", "base_mag"):
                continue
            x = data.X([pred])[:, 0]
            for control, ZZ in (("freq+mag", Z), ("freq+mag+log_kl", Zkl)):
                e = partial_spearman(x, y, ZZ)
                rows.append({"predictor": pred, "outcome": outcome, "context_set": cs,
                             "control": control, "partial_rho": e.estimate, "lo": e.lo,
                             "hi": e.hi, "p": e.p, "n": e.n})
    conf = pl.DataFrame(rows)
    q = np.full(conf.height, np.nan)
    for _key, idx in conf.with_row_index().group_by(["outcome", "control"]):
        i = idx["index"].to_numpy()
        q[i] = benjamini_hochberg(conf["p"].to_numpy()[i])
    conf = conf.with_columns(pl.Series("q_bh", q))
    resid, decile = [], {}
    for outcome in OUTCOMES:
        v = next(r for r in verdict_rows if r["outcome"] == outcome and r["test"] == SURVIVES)
        resid.append({"model": "ridge", "set": "full", "outcome": outcome, "context_set": cs,
                      "n": v["n"], "rho": v["estimate"], "rho_lo": v["lo"], "rho_hi": v["hi"],
                      "p": v["p"], "p_holm": v["p_holm"], "mde": v["mde"],
                      "survives": v["passed"]})
        dec = within_deciles(fits.cv("full", outcome).mean_oof, data.outcome(outcome, cs),
                             data.X(["base_freq"])[:, 0])
        decile[outcome] = {"per_decile": dec, "mean": float(np.nanmean(dec))
                           if np.isfinite(dec).any() else math.nan}
    return conf, resid, decile


def analyse(data: ScreeningData, cfg: FitConfig | None = None) -> Analysis:
    cfg = cfg or FitConfig()
    n = data.table.height
    if n < 3 * cfg.n_splits:
        raise ValueError(f"{n} steered features are too few for {cfg.n_splits}-fold CV")
    fits = Fits(data, cfg)
    primary = data.primary_set
    cv_table, comparisons = _cv_table(fits), _comparisons(fits)
    tests, verdicts = verdict_family(fits)
    conf, resid_rows, decile = _confounds(fits, tests)
    held = heldout(data, fits.splits, cfg)
    p = primary_endpoint(fits)
    summary: dict[str, Any] = {
        "n_features": n, "context_sets": data.context_sets, "primary_context_set": primary,
        "strength": data.strength,
        "config": cfg.__dict__ | {"boosting_sets": list(cfg.boosting_sets)},
        "primary_endpoint": p, "verdicts": verdicts, "verdict_tests": tests,
        "power": {"n": n, "detectable_delta_rho": p["mde"], "target": 0.1,
                  "underpowered": p["underpowered"], "alpha": 0.05, "power": 0.8},
        "residualised": resid_rows, "within_freq_deciles": decile,
        **({"linear": linear_rows(fits, tests)} if fits.has_lin else {}),
        "reliability": reliability(data),
        "heldout": held.filter(pl.col("outcome") == "cleanliness").to_dicts()}
    preds: dict[str, np.ndarray] = {"feature": data.table["feature"].to_numpy()}
    residuals = {}
    for outcome in OUTCOMES:
        y = data.outcome(outcome, primary)
        cv = fits.cv("full", outcome)
        preds[f"{outcome}@{primary}"] = y
        preds[f"pred_{outcome}"] = cv.mean_oof
        residuals[outcome] = np.abs(cv.oof - y[None, :]).ravel()
    return Analysis(cv_table, comparisons, conf, held, pl.DataFrame(preds), summary, residuals)
