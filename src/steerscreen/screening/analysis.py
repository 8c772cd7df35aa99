"""METHOD §4 on one run: cross-validated predictors vs baselines, confounds, held-out payoff.

:func:`analyse` takes a :class:`~steerscreen.screening.data.ScreeningData` and returns an
:class:`Analysis`: long tables (one row per model x predictor set x outcome x context set, per
comparison, per predictor) and one ``summary`` dict with every headline number and its CI.

- **CV metrics**: repeated K-fold (default 5 x 5), the same folds for every set; rho and R^2 per
  repeat of the pooled out-of-fold predictions, averaged; bootstrap CI over features.
- **Comparisons**: every set against ``freq+mag`` and ``full`` against the best baseline set,
  delta rho with a paired bootstrap CI and the Nadeau–Bengio test; Holm across the secondary
  comparisons.
- **Primary endpoint** (fixed in advance): ridge, ``full`` vs ``freq+mag``, cleanliness on fresh
  contexts, plus a permutation test through the whole CV pipeline.
- **Confounds**: partial Spearman of each predictor (BH-corrected), residualised CV, and
  Spearman within ``base_freq`` deciles.
- **Held-out screening**: cross-fitted top-``top_share`` selection, trained on steering-context
  outcomes and scored on the **fresh** ones; payoff vs random and vs the baseline-selected set.
- **Reliability**: noise ceiling, the correlation of the two axes, features vs the random null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from steerscreen.screening.confounds import partial_spearman, residual_targets, within_deciles
from steerscreen.screening.cv import (
    CVResult,
    benjamini_hochberg,
    bootstrap_rows,
    cross_validate,
    folds,
    holm,
    nadeau_bengio,
    percentile_ci,
    r2,
    spearman,
    spearman_boot,
)
from steerscreen.screening.data import OUTCOMES, SIDE_OUTCOMES, ScreeningData, predictor_sets
from steerscreen.screening.fit_config import FitConfig
from steerscreen.screening.models import MODELS

BASELINE_SETS = ("freq", "mag", "freq+mag", "direct", "pass", "baselines")
PRIMARY = ("ridge", "full", "freq+mag", "cleanliness")


@dataclass
class Analysis:
    cv: pl.DataFrame  # model, set, outcome, context_set, n, rho, rho_lo, rho_hi, r2
    comparisons: pl.DataFrame  # model, outcome, context_set, a, b, delta_rho, lo, hi, p, p_holm
    confounds: pl.DataFrame  # predictor, outcome, control, rho, lo, hi, p, q_bh
    heldout: pl.DataFrame  # selector, outcome, payoff vs random / vs baseline with CIs
    predictions: pl.DataFrame  # feature, outcomes, ridge out-of-fold predictions
    summary: dict[str, Any] = field(default_factory=dict)
    residuals: dict[str, np.ndarray] = field(default_factory=dict)  # |y - oof| per outcome


def _cv_row(cv: CVResult, y: np.ndarray, boot: np.ndarray, **key: Any) -> dict[str, Any]:
    rhos = [spearman(cv.oof[r], cv.target[r]) for r in range(cv.oof.shape[0])]
    r2s = [r2(cv.target[r], cv.oof[r]) for r in range(cv.oof.shape[0])]
    target = np.nanmean(cv.target, 0) if not np.array_equal(cv.target[0], y) else y
    lo, hi = percentile_ci(spearman_boot(cv.mean_oof, target, boot))
    return {**key, "n": int(np.isfinite(y).sum()), "rho": float(np.nanmean(rhos)),
            "rho_lo": lo, "rho_hi": hi, "r2": float(np.nanmean(r2s))}


def _delta(ca: CVResult, cb: CVResult, y: np.ndarray, boot: np.ndarray, n: int, **key: Any
            ) -> dict[str, Any]:
    ra = np.nanmean([spearman(ca.oof[r], y) for r in range(ca.oof.shape[0])])
    rb = np.nanmean([spearman(cb.oof[r], y) for r in range(cb.oof.shape[0])])
    d = spearman_boot(ca.mean_oof, y, boot) - spearman_boot(cb.mean_oof, y, boot)
    lo, hi = percentile_ci(d)
    t, p = nadeau_bengio(ca.fold_rho - cb.fold_rho, n - ca.fold_test_size, ca.fold_test_size)
    return {**key, "delta_rho": float(ra - rb), "lo": lo, "hi": hi, "t_nb": t, "p_nb": p}


def analyse(data: ScreeningData, cfg: FitConfig | None = None) -> Analysis:
    cfg = cfg or FitConfig()
    n = data.table.height
    if n < 3 * cfg.n_splits:
        raise ValueError(f"{n} steered features are too few for {cfg.n_splits}-fold CV")
    sets = predictor_sets(data.predictors)
    splits = folds(n, cfg.n_splits, cfg.n_repeats, cfg.seed)
    boot = bootstrap_rows(n, cfg.n_boot, cfg.seed + 1)
    primary = data.primary_set
    cv_rows, cmp_rows = [], []
    results: dict[tuple[str, str, str, str], CVResult] = {}
    for cs in data.context_sets:
        for outcome in OUTCOMES:
            y = data.outcome(outcome, cs)
            for model, make in MODELS.items():
                if model != "ridge" and cs != primary:
                    continue
                for name, cols in sets.items():
                    if model != "ridge" and name not in cfg.boosting_sets:
                        continue
                    cv = cross_validate(make(cfg.seed), data.X(cols), y, splits)
                    results[(model, name, outcome, cs)] = cv
                    cv_rows.append(_cv_row(cv, y, boot, model=model, set=name, outcome=outcome,
                                           context_set=cs, n_predictors=len(cols)))
            # Comparisons (ridge): every set vs freq+mag, full vs the best baseline set.
            key = {"model": "ridge", "outcome": outcome, "context_set": cs}
            ref = results.get(("ridge", "freq+mag", outcome, cs))
            if ref is None:
                continue
            for name in sets:
                if name != "freq+mag":
                    cmp_rows.append(_delta(results[("ridge", name, outcome, cs)], ref, y, boot,
                                           n, **key, a=name, b="freq+mag"))
            base_rho = {b: np.nanmean([spearman(results[("ridge", b, outcome, cs)].oof[r], y)
                                       for r in range(cfg.n_repeats)])
                        for b in BASELINE_SETS if b in sets}
            best = max(base_rho, key=lambda b: -np.inf if math.isnan(base_rho[b])
                       else base_rho[b])
            cmp_rows.append(_delta(results[("ridge", "full", outcome, cs)],
                                   results[("ridge", best, outcome, cs)], y, boot, n, **key,
                                   a="full", b=f"best baseline ({best})"))
    cv_table = pl.DataFrame(cv_rows)
    comparisons = pl.DataFrame(cmp_rows)
    secondary = ~((comparisons["a"] == "full") & (comparisons["b"] == "freq+mag") & (
        comparisons["outcome"] == "cleanliness") & (comparisons["context_set"] == primary))
    p_holm = np.full(comparisons.height, np.nan)
    sec_idx = np.flatnonzero(secondary.to_numpy())
    p_holm[sec_idx] = holm(comparisons["p_nb"].to_numpy()[sec_idx])
    comparisons = comparisons.with_columns(pl.Series("p_holm", p_holm))

    summary: dict[str, Any] = {"n_features": n, "context_sets": data.context_sets,
                               "primary_context_set": primary, "strength": data.strength,
                               "config": cfg.__dict__ | {"boosting_sets": list(cfg.boosting_sets)}}
    summary["primary_endpoint"] = _primary(data, results, splits, boot, cfg, comparisons)
    conf, resid_rows, decile = _confounds(data, splits, boot, cfg, results)
    held = _heldout(data, splits, cfg)
    summary["verdicts"] = _verdicts(comparisons, pl.DataFrame(resid_rows), primary)
    summary["residualised"] = resid_rows
    summary["within_freq_deciles"] = decile
    summary["reliability"] = _reliability(data, boot)
    summary["heldout"] = held.filter(pl.col("outcome") == "cleanliness").to_dicts()
    preds = {"feature": data.table["feature"].to_numpy()}
    residuals = {}
    for outcome in OUTCOMES:
        y = data.outcome(outcome, primary)
        cv = results[("ridge", "full", outcome, primary)]
        preds[f"{outcome}@{primary}"] = y
        preds[f"pred_{outcome}"] = cv.mean_oof
        residuals[outcome] = np.abs(cv.oof - y[None, :]).ravel()
    return Analysis(cv_table, comparisons, conf, held, pl.DataFrame(preds), summary, residuals)


def _primary(data: ScreeningData, results, splits, boot, cfg: FitConfig,
             comparisons: pl.DataFrame) -> dict[str, Any]:
    model, a, b, outcome = PRIMARY
    cs = data.primary_set
    row = comparisons.filter((pl.col("a") == a) & (pl.col("b") == b) & (
        pl.col("outcome") == outcome) & (pl.col("context_set") == cs)).row(0, named=True)
    y = data.outcome(outcome, cs)
    sets = predictor_sets(data.predictors)
    rng = np.random.default_rng(cfg.seed + 2)
    make = MODELS[model]
    null = []
    one = splits[:1]  # one repeat per permutation keeps 200 refits of both sets affordable
    for _ in range(cfg.n_permutations):
        yp = rng.permutation(y)
        ca = cross_validate(make(cfg.seed), data.X(sets[a]), yp, one)
        cb = cross_validate(make(cfg.seed), data.X(sets[b]), yp, one)
        null.append(spearman(ca.oof[0], yp) - spearman(cb.oof[0], yp))
    obs_one = (spearman(results[(model, a, outcome, cs)].oof[0], y)
               - spearman(results[(model, b, outcome, cs)].oof[0], y))
    null_arr = np.asarray(null)
    p_perm = (1 + np.sum(null_arr[np.isfinite(null_arr)] >= obs_one)) / (1 + len(null_arr))
    rho = {s: float(np.nanmean([spearman(results[(model, s, outcome, cs)].oof[r], y)
                                for r in range(cfg.n_repeats)])) for s in (a, b)}
    return {"model": model, "outcome": outcome, "context_set": cs, "full": a, "baseline": b,
            "rho_full": rho[a], "rho_baseline": rho[b], "delta_rho": row["delta_rho"],
            "delta_lo": row["lo"], "delta_hi": row["hi"], "t_nadeau_bengio": row["t_nb"],
            "p_nadeau_bengio": row["p_nb"], "p_permutation": float(p_perm),
            "n_permutations": cfg.n_permutations,
            "permutation_note": "one 5-fold split per permutation, both sets refit"}


def _confounds(data: ScreeningData, splits, boot, cfg: FitConfig, results):
    cs = data.primary_set
    Z = data.X(["base_freq", "base_mag"])
    kl = data.outcome("effect_kl", cs)
    Zkl = np.column_stack([Z, np.log(np.where(kl > 0, kl, np.nan))])
    rows = []
    for outcome in OUTCOMES:
        y = data.outcome(outcome, cs)
        for j, pred in enumerate(data.predictors):
            x = data.X([pred])[:, 0]
            for control, ZZ in (("freq+mag", Z), ("freq+mag+log_kl", Zkl)):
                if pred in ("base_freq", "base_mag"):
                    continue
                r = partial_spearman(x, y, ZZ, n_boot=min(cfg.n_boot, 500), seed=cfg.seed + j)
                rows.append({"predictor": pred, "outcome": outcome, "context_set": cs,
                             "control": control, "partial_rho": r["rho"], "lo": r["lo"],
                             "hi": r["hi"], "p": r["p"], "n": r["n"]})
    conf = pl.DataFrame(rows)
    q = np.full(conf.height, np.nan)
    for _key, idx in conf.with_row_index().group_by(["outcome", "control"]):
        i = idx["index"].to_numpy()
        q[i] = benjamini_hochberg(conf["p"].to_numpy()[i])
    conf = conf.with_columns(pl.Series("q_bh", q))
    resid_rows, decile = [], {}
    sets = predictor_sets(data.predictors)
    for outcome in OUTCOMES:
        y = data.outcome(outcome, cs)
        cv = cross_validate(MODELS["ridge"](cfg.seed), data.X(sets["full"]), y, splits,
                            transform_y=residual_targets(y, Z, cfg.seed))
        row = _cv_row(cv, y, boot, model="ridge", set="full", outcome=outcome, context_set=cs)
        row["survives"] = bool(np.isfinite(row["rho_lo"]) and row["rho_lo"] > 0)
        resid_rows.append(row)
        full = results[("ridge", "full", outcome, cs)]
        dec = within_deciles(full.mean_oof, y, data.X(["base_freq"])[:, 0])
        decile[outcome] = {"per_decile": dec, "mean": float(np.nanmean(dec))
                           if np.isfinite(dec).any() else math.nan}
    return conf, resid_rows, decile


def _heldout(data: ScreeningData, splits, cfg: FitConfig) -> pl.DataFrame:
    """Cross-fitted top-share selection: trained on steering contexts, scored on fresh."""
    train_cs = "steering" if "steering" in data.context_sets else data.primary_set
    eval_cs = data.primary_set
    y_train = data.outcome("cleanliness", train_cs)
    sets = predictor_sets(data.predictors)
    n = data.table.height
    sel: dict[str, np.ndarray] = {}
    for selector, set_name in (("full", "full"), ("baseline (freq+mag)", "freq+mag")):
        cv = cross_validate(MODELS["ridge"](cfg.seed), data.X(sets[set_name]), y_train, splits)
        s = np.zeros((len(splits), n), dtype=bool)
        for r, rep in enumerate(splits):
            for _tr, te in rep:
                k = max(1, round(cfg.top_share * len(te)))
                s[r, te[np.argsort(-cv.oof[r, te], kind="stable")[:k]]] = True
        sel[selector] = s
    rng = np.random.default_rng(cfg.seed + 3)
    idx = rng.integers(0, n, size=(cfg.n_boot, n))
    rows = []
    clean_y = data.outcome("cleanliness", eval_cs)
    top_q = clean_y >= np.nanquantile(clean_y, 0.75)
    for outcome in (*OUTCOMES, *SIDE_OUTCOMES):
        y = data.outcome(outcome, eval_cs)
        for selector, s in sel.items():
            def payoff(rows_idx: np.ndarray, s=s, y=y, other=None) -> float:
                yy = y[rows_idx]
                vals = []
                for r in range(s.shape[0]):
                    m = s[r, rows_idx]
                    base = np.nanmean(yy) if other is None else np.nanmean(
                        yy[other[r, rows_idx]])
                    vals.append(np.nanmean(yy[m]) - base if m.any() else np.nan)
                return float(np.nanmean(vals))

            all_rows = np.arange(n)
            vs_random = payoff(all_rows)
            boot_r = np.array([payoff(i) for i in idx])
            row = {"selector": selector, "outcome": outcome, "train_context_set": train_cs,
                   "eval_context_set": eval_cs, "selected_mean": float(np.mean(
                       [np.nanmean(y[s[r]]) for r in range(s.shape[0])])),
                   "all_mean": float(np.nanmean(y)), "payoff_vs_random": vs_random}
            row["vs_random_lo"], row["vs_random_hi"] = percentile_ci(boot_r)
            if selector == "full":
                other = sel["baseline (freq+mag)"]
                row["payoff_vs_baseline"] = payoff(all_rows, other=other)
                boot_b = np.array([payoff(i, other=other) for i in idx])
                row["vs_baseline_lo"], row["vs_baseline_hi"] = percentile_ci(boot_b)
            if outcome == "cleanliness":
                hit = np.array([(s[r] & top_q).sum() for r in range(s.shape[0])])
                row["precision_clean"] = float(np.mean(hit / s.sum(1)))
                row["recall_clean"] = float(np.mean(hit / max(1, top_q.sum())))
            rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def _reliability(data: ScreeningData, boot: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if {"steering", "fresh"} <= set(data.context_sets):
        for outcome in OUTCOMES:
            a, b = data.outcome(outcome, "steering"), data.outcome(outcome, "fresh")
            lo, hi = percentile_ci(spearman_boot(a, b, boot))
            out[f"noise_ceiling_{outcome}"] = {"rho": spearman(a, b), "lo": lo, "hi": hi}
    for cs in data.context_sets:
        out[f"axes_rho_{cs}"] = spearman(data.outcome("effect_stability", cs),
                                         data.outcome("collateral_spread", cs))
        rnd = data.random.filter(pl.col("context_set") == cs)
        if rnd.height:
            for outcome in ("effect_stability", "collateral_spread", "effect_kl"):
                f = data.outcome(outcome, cs)
                r = rnd[outcome].to_numpy().astype(np.float64)
                out[f"null_{outcome}_{cs}"] = {
                    "feature_median": float(np.nanmedian(f)),
                    "random_median": float(np.nanmedian(r)),
                    "share_features_above_random_p95": float(np.nanmean(
                        f > np.nanquantile(r, 0.95))) if np.isfinite(r).any() else math.nan}
    return out


def _verdicts(comparisons: pl.DataFrame, resid: pl.DataFrame, cs: str) -> dict[str, str]:
    out = {}
    for outcome in OUTCOMES:
        row = comparisons.filter((pl.col("a") == "full") & pl.col("b").str.starts_with("best")
                                 & (pl.col("outcome") == outcome) & (pl.col("context_set") == cs))
        beats = bool(row.height and np.isfinite(row["lo"][0]) and row["lo"][0] > 0)
        r = resid.filter(pl.col("outcome") == outcome)
        survives = bool(r.height and r["survives"][0])
        out[outcome] = ("beats baselines and survives residualisation" if beats and survives
                        else "beats baselines only" if beats
                        else "survives residualisation only" if survives else "neither")
    return out
