"""Held-out screening (docs/method.md §4): does keeping the features a screen ranks cleanest pay
off?

Cross-fitted: a ridge is trained on the **steering-context** cleanliness of the training folds,
and in every test fold it keeps the top ``top_share`` of features by predicted cleanliness. Those
features are scored on their **fresh-context** outcomes. Per test fold, the payoff is the mean
outcome of the kept features minus the fold's mean (random selection), and minus the mean of
the features the ``freq+mag`` ridge keeps in that fold. The estimate is the mean over the R x K
folds and its interval is the Nadeau–Bengio one over the same fold payoffs
(:func:`~steerscreen.screening.inference.fold_mean`), so the selections are refit in every
fold, not held fixed. The kept sets' ``effect_kl`` and ``target_gain`` are reported too, so a
screen cannot win by choosing inert directions.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from steerscreen.config import FitConfig
from steerscreen.screening.cv import CVResult, cross_validate
from steerscreen.screening.data import OUTCOMES, SIDE_OUTCOMES, ScreeningData, predictor_sets
from steerscreen.screening.inference import fold_mean
from steerscreen.screening.models import MODELS

SELECTORS = {"full": "full", "baseline (freq+mag)": "freq+mag"}
"""Selector name -> predictor set."""


def _kept(cv: CVResult, splits, share: float, seed: int) -> np.ndarray:
    """[R, n] True where a feature is in its test fold's top ``share`` by prediction. Ties (a
    constant prediction) are broken by a seeded random order, not by feature id."""
    n = cv.oof.shape[1]
    tiebreak = np.random.default_rng(seed).permutation(n)
    kept = np.zeros(cv.oof.shape, dtype=bool)
    for r, rep in enumerate(splits):
        for _tr, te in rep:
            k = max(1, round(share * len(te)))
            order = np.lexsort((tiebreak[te], -cv.oof[r, te]))
            kept[r, te[order[:k]]] = True
    return kept


def _mean(y: np.ndarray, mask: np.ndarray) -> float:
    v = y[mask]
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else np.nan


def heldout(data: ScreeningData, splits, cfg: FitConfig) -> pl.DataFrame:
    """One row per selector x outcome: kept mean, payoffs with their intervals, precision."""
    train_cs = "steering" if "steering" in data.context_sets else data.primary_set
    eval_cs = data.primary_set
    y_train = data.outcome("cleanliness", train_cs)
    sets = predictor_sets(data.predictors)
    n = data.table.height
    kept = {name: _kept(cross_validate(MODELS["ridge"](cfg.seed), data.X(sets[s]), y_train,
                                       splits), splits, cfg.top_share, cfg.seed + 3)
            for name, s in SELECTORS.items()}
    folds = [(r, te) for r, rep in enumerate(splits) for _tr, te in rep]
    n_test = float(np.mean([len(te) for _r, te in folds]))
    clean = data.outcome("cleanliness", eval_cs)
    top_q = clean >= np.nanquantile(clean, 0.75)
    rows = []
    for outcome in (*OUTCOMES, *SIDE_OUTCOMES):
        y = data.outcome(outcome, eval_cs)
        n_obs = int(np.isfinite(y).sum())
        for selector, s in kept.items():
            sel = [_mean(y[te], s[r, te]) for r, te in folds]
            all_ = [_mean(y[te], np.ones(te.size, bool)) for _r, te in folds]
            pay = fold_mean(np.subtract(sel, all_), n - n_test, n_test, n_obs, cfg.n_splits,
                            what="payoff vs random selection")
            row = {"selector": selector, "outcome": outcome, "train_context_set": train_cs,
                   "eval_context_set": eval_cs, "n": n_obs,
                   "selected_mean": float(np.nanmean(sel)), "all_mean": float(np.nanmean(y)),
                   "payoff_vs_random": pay.estimate, "vs_random_lo": pay.lo,
                   "vs_random_hi": pay.hi, "vs_random_p": pay.p}
            if selector == "full":
                other = kept["baseline (freq+mag)"]
                base = [_mean(y[te], other[r, te]) for r, te in folds]
                vb = fold_mean(np.subtract(sel, base), n - n_test, n_test, n_obs, cfg.n_splits,
                               what="payoff vs the freq+mag selection")
                row |= {"payoff_vs_baseline": vb.estimate, "vs_baseline_lo": vb.lo,
                        "vs_baseline_hi": vb.hi, "vs_baseline_p": vb.p}
            if outcome == "cleanliness":
                hit = np.array([(s[r] & top_q).sum() for r in range(s.shape[0])])
                row["precision_clean"] = float(np.mean(hit / s.sum(1)))
                row["recall_clean"] = float(np.mean(hit / max(1, top_q.sum())))
            rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)
