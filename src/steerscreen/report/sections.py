"""The sections of one run: verdicts, scatter, ablation, payoff, distributions, cards, screen
(only with ``screen.parquet``), methods.

Each builder takes a :class:`~steerscreen.report.load.RunData` and returns a :class:`Section`
(stable ``id``, title, escaped body, the figures it drew). A section whose inputs are missing
says which command produces them. In a study every id gets the run's prefix (``NAME-verdicts``)
so ids stay unique on the page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from steerscreen.report import cards, figures, screen
from steerscreen.report.headline import (
    LABELS,
    LIN_HEADER,
    Interval,
    Verdict,
    lin_cells,
    lin_good,
    linear,
    noise_ceiling,
    power_statement,
    primary,
    primary_power,
    selection,
    verdicts,
)
from steerscreen.report.html import (
    Safe,
    badge,
    ci,
    code,
    esc,
    figure,
    kv_table,
    missing,
    note,
    num,
    table,
    tag,
)
from steerscreen.report.load import RunData

RUN_SECTIONS = ("verdicts", "scatter", "ablation", "payoff", "distributions", "cards", "methods")
OPTIONAL_RUN_SECTIONS = ("screen",)
"""Sections only some runs have (screen: a run with ``screen.parquet``), before ``methods``."""


@dataclass(frozen=True)
class Plot:
    name: str
    """File stem in ``figures/`` (e.g. ``scatter`` or ``NAME-scatter``)."""
    png: bytes


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    body: Safe
    plots: tuple[Plot, ...] = ()
    children: tuple[Section, ...] = field(default=())


def run_sections(run: RunData, prefix: str = "", features: Sequence[int] = ()
                 ) -> list[Section]:
    """Every section of one run, in page order (ids prefixed with ``prefix``; ``features``:
    extra feature cards the user asked for, ``steerscreen report --feature``)."""
    builders: dict[str, Callable[[RunData, str], Section]] = {
        "verdicts": verdicts_section, "scatter": scatter_section, "ablation": ablation_section,
        "payoff": payoff_section, "distributions": distributions_section,
        "cards": lambda r, p: cards_section(r, p, features), "methods": methods_section}
    out = [builders[k](run, prefix) for k in RUN_SECTIONS]
    screened = run.screen
    if screened is not None:  # OPTIONAL_RUN_SECTIONS: only a run with screen.parquet has it
        out.insert(RUN_SECTIONS.index("methods"), screen_section(run, screened, prefix))
    return out


# --- what produces what ---------------------------------------------------------------------------
def _cmd(run: RunData, stage: str) -> str:
    p = str(run.path)
    return {"stats": f"steerscreen stats --sae SAE --out {p}",
            "steer": f"steerscreen steer --run {p} --downstream-sae SAE_DOWNSTREAM",
            "fit": f"steerscreen fit --run {p}"}[stage]


def _fit_gate(run: RunData, table: object, what: str) -> Safe | None:
    """The placeholder when the fit stage, or its table ``what``, is missing."""
    gate = _gate(run, "fit")
    if gate is None and table is None:  # an older fit that did not write this table
        gate = missing(what, _cmd(run, "fit") + " --force")
    return gate


def _gate(run: RunData, stage: str) -> Safe | None:
    """The placeholder for the first missing stage up to ``stage``, else None."""
    needs = [("stats", run.stats is not None, "per-feature statistics (feature_stats.parquet)"),
             ("steer", run.outcomes is not None, "steering outcomes (steering_outcomes.parquet)"),
             ("fit", run.summary is not None, "the screening fit (screening/summary.json)")]
    for name, ok, desc in needs:
        if not ok:
            return missing(desc, _cmd(run, name))
        if name == stage:
            return None
    return None


def section(prefix: str, key: str, title: str, *body: object, plots: tuple[Plot, ...] = ()
         ) -> Section:
    return Section(f"{prefix}{key}", title, Safe("".join(esc(b) for b in body)), plots)


def make_plot(prefix: str, key: str, png: bytes, caption: str, how: str) -> tuple[Plot, Safe]:
    name = f"{prefix}{key}"
    return Plot(name, png), figure(png, alt=f"{caption} ({name})", caption=caption, how=how)


# --- verdicts -------------------------------------------------------------------------------------
def facts(run: RunData) -> str:
    """One line: model, hook, SAE, what was steered, the dose."""
    m = run.manifest
    sae = run.sae
    parts = [str((m.get("model") or {}).get("name") or (m.get("model") or {}).get("spec", "?")),
             str(m.get("hook") or sae.get("hook_name") or "?")]
    if sae:
        parts.append(f"{sae.get('architecture', '?')} SAE, {num(sae.get('d_sae'))} features")
    rows = run.at_strength()
    if rows is not None:
        n_f = rows.filter(pl.col("direction") == "feature")["feature"].n_unique()
        n_r = rows.filter(pl.col("direction") == "random")["feature"].n_unique()
        parts.append(f"{n_f} steered features + {n_r} random directions")
        if run.equal_kl:
            feat = rows.filter(pl.col("direction") == "feature")
            s = feat["row_strength"] if "row_strength" in feat.columns else feat["strength"]
            parts.append(f"equal-KL dose: each direction at its own α, predicted KL "
                         f"{num(m.get('target_kl', run.strength))} nats (feature s median "
                         f"{num(_med(s.to_numpy().astype(float)))})")
        else:
            alpha = rows["alpha"][0] if rows.height else None
            parts.append(f"s = {num(run.strength)} (α = {num(alpha)}, "
                         f"{m.get('dose_mode', '?')} dose)")
    return " · ".join(parts)


def _stage_warnings(run: RunData) -> list[Safe]:
    out = []
    for stage, rec in (run.manifest.get("stages") or {}).items():
        status = rec.get("status")
        if status != "complete":
            why = rec.get("stale_because") or "it did not finish"
            out.append(tag("p", tag("strong", f"The {stage} stage is {status}"), f" ({why}); "
                           "the numbers below may not match the current inputs.", class_="warn"))
    return out


def verdicts_section(run: RunData, prefix: str = "") -> Section:
    title = "Headline verdicts"
    gate = _gate(run, "fit")
    if gate is not None:
        return section(prefix, "verdicts", title, note(facts(run)), *_stage_warnings(run), gate)
    p = primary(run) or {}
    sig = ci(p.get("delta_rho"), p.get("delta_lo"), p.get("delta_hi"), signed=True)
    verdict = str(p.get("verdict") or "")
    good = None if p.get("underpowered") and "beats" not in verdict else "beats" in verdict
    head = tag(
        "div", tag("div", "Primary endpoint (fixed in advance): ", p.get("model", "ridge"), ", ",
                   code(p.get("full", "full")), " vs ", code(p.get("baseline", "freq+mag")), ", ",
                   p.get("outcome", "cleanliness"), " on ", p.get("context_set", "?"),
                   f" contexts, n = {num(p.get('n'))} features"),
        tag("div", f"ρ {num(p.get('rho_full'))} vs {num(p.get('rho_baseline'))}; Δρ {sig} ",
            badge(verdict or "–", good), class_="big"),
        tag("div", f"Nadeau–Bengio p = {num(p.get('p_nadeau_bengio'))}; permutation p = "
            f"{num(p.get('p_permutation'))} ({num(p.get('n_permutations'))} permutations); "
            f"{primary_power(p)}"),
        class_="headline")
    rows = [_verdict_row(v) for v in verdicts(run)]
    vt = table(("outcome", "verdict", "Δρ vs best baseline", "residual ρ",
                "power (80%, α = 0.05)", "payoff vs random", "payoff vs freq+mag"), rows)
    n_tests = len((run.summary or {}).get("verdict_tests") or []) or 6
    explain = note(
        "Each estimate is the mean over the cross-validation test folds; its 95% CI and p come "
        "from the Nadeau–Bengio corrected t over the same folds (df = K − 1). Beats baselines: "
        "Δρ (all predictors minus the best baseline set, named in brackets) is positive with "
        f"Holm-adjusted p < 0.05 across the {n_tests} verdict tests. Survives residualisation: the "
        "same test for ρ after freq and mag are regressed out inside the folds. A test whose "
        "detectable effect exceeds 0.1 says “underpowered” instead of a negative verdict. "
        "Payoffs: mean outcome of the held-out selection minus random picking and minus the "
        "freq+mag selection, per test fold, with the same kind of interval.")
    sel = selection(run)
    share = (run.summary or {}).get("config", {}).get("top_share", 0.2)
    prec = note(
        f"Held-out screening keeps the top {100 * share:g}% of each test fold by predicted "
        "cleanliness (trained on steering contexts) and scores them on fresh contexts. "
        f"Precision for “clean” (top quartile of measured cleanliness): "
        f"{num(sel.get('full', {}).get('precision_clean'))} for full, "
        f"{num(sel.get('baseline (freq+mag)', {}).get('precision_clean'))} for freq+mag "
        "(chance 0.25).")
    nc = noise_ceiling(run)
    rel = (table(("outcome", "noise ceiling: ρ(steering, fresh) [95% CI]"),
                 [(LABELS[o], ci(iv.value, iv.lo, iv.hi)) for o, iv in nc.items()])
           if nc else "")
    axes = (run.summary or {}).get("reliability", {}).get(f"axes_rho_{run.primary_set}")
    return section(prefix, "verdicts", title, note(facts(run)), *_stage_warnings(run), head, vt,
                   explain, *_linear(run), prec, tag("h4", "Reliability of the measurements"), rel,
                note("A noise ceiling near 1 means the outcomes are measured reliably, so the "
                     "predictors, not the measurements, limit the screen. Correlation of the two "
                     f"axes (stability vs spread): ρ = {num(axes)}."))


def _linear(run: RunData) -> list[object]:
    """The linear-response table (METHOD v2 §4), or nothing for a run without ``lin_*``."""
    rows = linear(run)
    if not rows:
        return []
    return [tag("h4", "Linear response: does lin add to full?"),
            table(("outcome", *LIN_HEADER, "verdict"),
                  [(LABELS[r["outcome"]], *lin_cells(r),
                    badge(r.get("verdict") or "–", lin_good(r.get("verdict")))) for r in rows]),
            note("ρ of the lin_* group alone, of full (the v1 groups, the primary endpoint's "
                 "set) and of full+lin (ridge, 95% CIs), and Δρ of full+lin minus full, the "
                 "first secondary comparison: “lin adds to full” needs a positive Δρ with "
                 "Holm-adjusted p < 0.05 across the verdict tests.")]


def _verdict_row(v: Verdict) -> tuple[object, ...]:
    def iv(x, signed=True):
        return "–" if x is None else ci(x.value, x.lo, x.hi, signed=signed)

    def holm(t) -> str:
        return "" if t is None else f" (Holm p = {num(t.p_holm)})"

    best = f" ({v.best_baseline})" if v.best_baseline else ""
    power, weak = power_statement(v.beats_test, v.survives_test)
    return (LABELS[v.outcome],
            badge(v.verdict, None if "underpowered" in v.verdict and not (v.beats or v.survives)
                  else v.beats or v.survives),
            join_badge(iv(v.delta_best) + best + holm(v.beats_test), v.beats),
            join_badge(iv(v.residual, False) + holm(v.survives_test), v.survives),
            badge(power, None if power == "–" else not weak),
            iv(v.payoff_random), iv(v.payoff_baseline))


def join_badge(text: str, good: bool) -> Safe:
    return Safe(esc(text) + " " + badge("yes" if good else "no", good))


# --- scatter, ablation, payoff --------------------------------------------------------------------
def scatter_section(run: RunData, prefix: str = "") -> Section:
    title = "Predicted vs measured"
    gate = _fit_gate(run, run.predictions,
                     "out-of-fold predictions (screening/predictions.parquet)")
    if gate is not None:
        return section(prefix, "scatter", title, gate)
    cs = run.primary_set
    rhos: dict[str, Interval | None] = {}
    if run.cv is not None:
        for r in run.cv.filter((pl.col("model") == "ridge") & (pl.col("set") == "full")
                               & (pl.col("context_set") == cs)).iter_rows(named=True):
            rhos[r["outcome"]] = Interval(r["rho"], r["rho_lo"], r["rho_hi"])
    plot, fig = make_plot(prefix, "scatter", figures.scatter(run.predictions, cs, rhos),
                      f"Ridge (all predictors) predictions vs measured outcomes, {cs} contexts",
                      "each dot is one steered feature; x is the prediction made without that "
                      "feature in the training folds, y is what steering it measured. A rising "
                      "cloud means the screen ranks features correctly; ρ is the cross-validated "
                      "Spearman with its 95% CI.")
    return section(prefix, "scatter", title, fig, plots=(plot,))


def ablation_section(run: RunData, prefix: str = "") -> Section:
    title = "Which predictor groups matter"
    gate = _fit_gate(run, run.cv, "CV metrics (screening/cv_metrics.parquet)")
    if gate is not None:
        return section(prefix, "ablation", title, gate)
    cs = run.primary_set
    plot, fig = make_plot(prefix, "ablation", figures.ablation(run.cv, cs),
                      f"Cross-validated Spearman ρ per predictor set (ridge, {cs} contexts)",
                      "bars are ρ of one predictor set (mean over test folds), black lines "
                      "their 95% Nadeau–Bengio CI. Grey: baselines; blue: one group alone; "
                      "orange: all predictors minus one group; dark: all predictors (dashed "
                      "line). A group matters when dropping it (orange) pulls ρ below the "
                      "dashed line.")
    body: list[object] = [fig]
    if run.comparisons is not None:
        rows = run.comparisons.filter((pl.col("model") == "ridge") & (pl.col("outcome") ==
                                      "cleanliness") & (pl.col("context_set") == cs))
        against = ("each set against freq+mag (full+lin against full)"
                   if (rows["a"] == "full+lin").any() else "each set against freq+mag")
        body += [tag("h4", f"Cleanliness: {against}"), table(
            ("set", "vs", "Δρ [95% CI]", "Nadeau–Bengio p", "Holm p"),
            [(code(r["a"]), r["b"], ci(r["delta_rho"], r["lo"], r["hi"], signed=True),
              r["p_nb"], r["p_holm"]) for r in rows.iter_rows(named=True)])]
    return section(prefix, "ablation", title, *body, plots=(plot,))


def payoff_section(run: RunData, prefix: str = "") -> Section:
    title = "Held-out payoff"
    gate = _fit_gate(run, run.heldout, "held-out screening (screening/heldout.parquet)")
    if gate is not None:
        return section(prefix, "payoff", title, gate)
    plot, fig = make_plot(prefix, "payoff", figures.payoff(run.heldout),
                      "Outcomes of the features each screen keeps, against the alternatives",
                      "each panel is one measured outcome (fresh contexts) of the top share by "
                      "predicted cleanliness. Dark: full screen minus random picking; grey: the "
                      "freq+mag screen minus random; blue: full minus freq+mag; lines are 95% "
                      "Nadeau–Bengio CIs over the test folds. Higher is better for cleanliness "
                      "and stability, lower for spread; effect KL and target gain show whether "
                      "a screen picks inert directions.")
    rows = run.heldout.filter(pl.col("outcome") == "cleanliness")
    t = table(("selector", "selected mean", "all features", "payoff vs random [95% CI]",
               "precision (clean)", "recall (clean)"),
              [(r["selector"], r["selected_mean"], _zero(r["all_mean"]),
                ci(r["payoff_vs_random"], r["vs_random_lo"], r["vs_random_hi"], signed=True),
                r.get("precision_clean"), r.get("recall_clean")) for r in rows.iter_rows(
                    named=True)])
    return section(prefix, "payoff", title, fig, tag("h4", "Cleanliness of the selected sets"), t,
                plots=(plot,))


# --- distributions --------------------------------------------------------------------------------
def distributions_section(run: RunData, prefix: str = "") -> Section:
    title = "Outcome distributions: features vs random directions"
    gate = _gate(run, "steer")
    if gate is not None:
        return section(prefix, "distributions", title, gate)
    rows = run.at_strength()
    cs = run.primary_set
    plot, fig = make_plot(prefix, "distributions", figures.distributions(rows, cs),
                      f"Measured outcomes at s = {num(run.strength)}, {cs} contexts",
                      "filled bars are the steered features, orange outlines (and one tick per "
                      "direction) random unit directions steered the same way; dashed lines are "
                      "medians. Features whose outcomes sit apart from the orange null steer "
                      "differently from an arbitrary direction.")
    part = rows.filter(pl.col("context_set") == cs)
    feat = part.filter(pl.col("direction") == "feature")
    rand = part.filter(pl.col("direction") == "random")
    trows = []
    for col in figures.DIST_COLUMNS:
        if col not in part.columns:
            continue
        f = feat[col].to_numpy().astype(float)
        r = rand[col].to_numpy().astype(float)
        f, r = f[np.isfinite(f)], r[np.isfinite(r)]
        above = float(np.mean(f > np.quantile(r, .95))) if f.size and r.size else None
        trows.append((LABELS.get(col, col), _med(f), _med(r), above))
    t = table(("outcome", "feature median", "random median",
               "share of features above the random 95th percentile"), trows)
    return section(prefix, "distributions", title, fig, t, *dose_accuracy_block(run),
                   plots=(plot,))


def dose_accuracy_lines(acc: dict[str, Any]) -> tuple[str, list[tuple[str, ...]]]:
    """(intro, rows) of the dose-accuracy table (shared by the page and summary.md)."""
    if acc["mode"] == "equal-kl":
        intro = (f"Dose accuracy (--dose equal-kl): each direction was steered at its own "
                 f"α = √(target_kl / exp(lin_kl)); measured effect_kl / target_kl "
                 f"({num(acc.get('target_kl'))} nats) on {acc['context_set']} contexts.")
    else:
        intro = (f"Dose accuracy: measured effect_kl / predicted α² exp(lin_kl) at "
                 f"s = {num(acc.get('strength'))}, on {acc['context_set']} contexts (how well "
                 "the linear response predicts each feature's KL; --dose equal-kl steers every "
                 "direction at its own predicted α).")
    rows = []
    for kind in ("features", "random"):
        v = acc.get(kind)
        if v:
            rows.append((kind, num(v["median"]), f"{num(v['q10'])}–{num(v['q90'])}",
                         str(v["n"])))
    return intro, rows


def dose_accuracy_block(run: RunData) -> list[Safe]:
    acc = run.dose_accuracy()
    if acc is None:
        return []
    intro, rows = dose_accuracy_lines(acc)
    return [tag("h4", "Dose accuracy"), note(intro),
            table(("directions", "median measured / predicted", "10–90% range", "n"), rows)]


def _zero(x: float | None) -> float | None:
    # The all-feature mean of a z-scored outcome is 0 up to rounding (7.7e-15 reads as noise).
    return 0.0 if x is not None and abs(x) < 1e-9 else x


def _med(x: np.ndarray) -> float | None:
    return float(np.median(x)) if x.size else None


# --- cards ----------------------------------------------------------------------------------------
def cards_section(run: RunData, prefix: str = "", features: Sequence[int] = ()) -> Section:
    """The picked cards, then a "requested" card for each of ``features`` not among them."""
    title = "Feature cards: cleanest and least clean"
    gate = _gate(run, "steer")
    values = cards.measured(run) if gate is None else None
    if gate is None and values is None:
        gate = missing(f"no steered features at s = {num(run.strength)} on the "
                       f"{run.primary_set} contexts", _cmd(run, "steer"))
    if gate is not None:
        return section(prefix, "cards", title, gate)
    picks = cards.pick(values)
    picks += cards.requested(picks, features)
    if not picks:
        return section(prefix, "cards", title, note(
            f"No steered feature has a finite cleanliness at s = {num(run.strength)}."))
    src = "the fit" if run.predictions is not None else "the outcomes (not fitted yet)"
    intro = note(f"The {len([p for p in picks if p.kind == 'cleanest'])} cleanest and least "
                 f"clean steered features by measured cleanliness on {run.primary_set} contexts "
                 f"(from {src}). Contexts are the feature's top activations in the stats split, "
                 "the firing token highlighted; direct-logit tokens are what the decoder "
                 "direction writes straight to the output; the measured top tokens and the "
                 "steered text are what steering it did."
                 + (" Requested features follow." if any(p.kind == "requested" for p in picks)
                    else ""))
    return section(prefix, "cards", title, intro, cards.render(run, picks, values))


# --- screen ---------------------------------------------------------------------------------------
def screen_section(run: RunData, screened: pl.DataFrame, prefix: str = "") -> Section:
    """Every feature of ``screen.parquet`` in one table to sort, filter and search."""
    return section(prefix, "screen", "Screen: every feature, ranked",
                   screen.intro(screened, screen.conformal_level(run.summary)),
                   screen.render(run, screened))


# --- methods --------------------------------------------------------------------------------------
def methods_section(run: RunData, prefix: str = "") -> Section:
    m = run.manifest
    setup = {k: v for k, v in m.items() if k not in ("stages", "environment", "format")}
    body: list[object] = [note(f"Run folder {run.path}; manifest format "
                               f"{m.get('format', '?')}.")]
    body += [tag("h4", "Set-up: model, SAEs, corpus, dose, seeds"), kv_table(setup)]
    for stage, rec in (m.get("stages") or {}).items():
        body += [tag("h4", f"Stage {stage}: {rec.get('status', '?')}, finished "
                     f"{rec.get('finished_utc', '–')}"),
                 kv_table({"config": rec.get("config", {}), "timings_s": rec.get("timings_s",
                                                                                 {})}),
                 _details("results, inputs and output hashes",
                          kv_table({"results": rec.get("results", {}),
                                    "inputs": rec.get("inputs", {}),
                                    "outputs": rec.get("outputs", {})}))]
    if m.get("generation"):  # steered_text.parquet: what was generated, at what cost
        body += [tag("h4", "Steered text for the cards"), note(cards.generation_text(
            m["generation"]))]
    if run.summary is not None:
        fit = _fit_config(run.summary)
        if "fit" in (m.get("stages") or {}):  # its config is listed with the stage above
            fit.pop("config", None)
        body += [tag("h4", "Screening fit: data and intervals"), kv_table(fit)]
    env: dict[str, Any] = {"manifest": m.get("environment", {})}
    if run.summary is not None and run.summary.get("environment"):
        env["fit"] = run.summary["environment"]
    body += [tag("h4", "Environment and versions"), kv_table(env)]
    if not m.get("stages"):
        body.append(missing("a manifest", _cmd(run, "stats")))
    return section(prefix, "methods", "Methods: every parameter, version and seed", *body)


def _fit_config(s: dict[str, Any]) -> dict[str, Any]:
    keep = ("n_features", "context_sets", "primary_context_set", "strength", "config", "power",
            "conformal_q")
    return {k: s[k] for k in keep if k in s}


def _details(summary: str, body: Safe) -> Safe:
    return tag("details", tag("summary", summary), body)
