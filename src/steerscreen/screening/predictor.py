"""The fitted predictor: ridge models saved as plain JSON, applied to any stats table.

A :class:`Predictor` holds one standardised ridge model per outcome (``effect_stability``,
``collateral_spread``, ``cleanliness``) over the ``full`` predictor set, each as numbers only:
the imputation medians, the scaler's means and scales, the coefficients, the intercept and the
chosen penalty. No pickle: loading a predictor cannot run code. Each model also carries its
split-conformal half-width ``q`` (the ``level`` quantile of the absolute cross-validated
residuals, with the finite-sample correction), so a prediction comes with an interval.

:meth:`Predictor.predict` checks that the stats table has every column the predictor was fit on
(a clear :class:`~steerscreen.errors.ArtifactError` otherwise) and returns, per feature, the
three predictions, their intervals and the predictors that drive the cleanliness score most
(largest |coefficient x standardised value|).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from steerscreen import __version__
from steerscreen.errors import ArtifactError
from steerscreen.files import require_file, user_path, write_json
from steerscreen.screening.data import OUTCOMES, ScreeningData, predictor_sets
from steerscreen.screening.models import ridge

FORMAT = "steerscreen-predictor/1"


@dataclass
class LinearModel:
    """``y = intercept + sum_j coef_j (impute(x_j) - mean_j) / scale_j``."""

    outcome: str
    medians: list[float]
    means: list[float]
    scales: list[float]
    coef: list[float]
    intercept: float
    alpha: float | None
    """The ridge penalty; None when the intercept alone predicted best (all coef 0)."""
    conformal_q: float
    conformal_level: float
    n_train: int

    def contributions(self, X: np.ndarray) -> np.ndarray:
        med = np.asarray(self.medians)
        X = np.where(np.isfinite(X), X, med)
        return (X - np.asarray(self.means)) / np.asarray(self.scales) * np.asarray(self.coef)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.intercept + self.contributions(X).sum(1)


@dataclass
class Predictor:
    columns: list[str]
    models: dict[str, LinearModel]
    context_set: str
    """The context set whose outcomes the models predict (fresh, when the run had it)."""
    dose: dict[str, float]
    """strength (s), residual_norm (r) and alpha of the training run."""
    trained_on: dict[str, Any]
    versions: dict[str, str] = field(default_factory=lambda: {"steerscreen": __version__})
    format: str = FORMAT

    def save(self, path: str | Path) -> Path:
        write_json(path, asdict(self))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        p = user_path(path)
        require_file(p, "predictor file", "pass the predictor.json that `steerscreen fit` "
                     "wrote (RUN/screening/predictor.json)")
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError(f"a JSON {type(raw).__name__}, not an object")
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT!r}")
            columns = raw["columns"]
            if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
                raise ValueError("columns is not a list of names")
            if not isinstance(raw["models"], dict) or set(raw["models"]) != set(OUTCOMES):
                raise ValueError(f"models must be exactly {', '.join(OUTCOMES)}")
            models = {k: _linear_model(k, v, len(columns)) for k, v in raw["models"].items()}
            dose, trained_on = raw["dose"], raw.get("trained_on", {})
            versions = raw.get("versions", {})
            if not all(isinstance(x, dict) for x in (dose, trained_on, versions)):
                raise ValueError("dose, trained_on and versions must be objects")
            if not (_is_number(dose.get("strength")) and dose["strength"] > 0):
                raise ValueError("dose.strength is not a positive number")
            if not isinstance(raw["context_set"], str):
                raise ValueError("context_set is not a string")
            return cls(columns=list(columns), models=models, context_set=raw["context_set"],
                       dose=dict(dose), trained_on=dict(trained_on), versions=dict(versions),
                       format=raw["format"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError) as e:
            raise ArtifactError(f"{str(p)!r} is not a steerscreen predictor "
                                f"({type(e).__name__}: {e})",
                                "pass the predictor.json that `steerscreen fit` wrote") from e

    def check_columns(self, stats: pl.DataFrame) -> None:
        missing = [c for c in self.columns if c not in stats.columns]
        if missing:
            raise ArtifactError(
                f"the stats table lacks {len(missing)} column(s) the predictor was fit on: "
                f"{', '.join(missing[:8])}",
                "compute the statistics with the same steerscreen version (and, for "
                "base_pass, a downstream SAE), or refit the predictor on this table's columns")

    def predict(self, stats: pl.DataFrame, n_drivers: int = 3) -> pl.DataFrame:
        """Per feature: predictions, conformal intervals and the top cleanliness drivers."""
        self.check_columns(stats)
        X = stats.select(self.columns).to_numpy().astype(np.float64)
        out: dict[str, Any] = {"feature": stats["feature"].to_numpy()}
        if "dead" in stats.columns:
            out["dead"] = stats["dead"].to_numpy()
        for name, m in self.models.items():
            y = m.predict(X)
            out[f"pred_{name}"] = y
            out[f"pred_{name}_lo"] = y - m.conformal_q
            out[f"pred_{name}_hi"] = y + m.conformal_q
        contrib = self.models["cleanliness"].contributions(X)
        order = np.argsort(-np.abs(contrib), axis=1)[:, :n_drivers]
        cols = np.asarray(self.columns)
        out["drivers"] = [
            ", ".join(f"{cols[j]} {contrib[i, j]:+.2f}" for j in order[i])
            for i in range(X.shape[0])]
        return pl.DataFrame(out)


def _linear_model(outcome: str, raw: Any, n_columns: int) -> LinearModel:
    """A :class:`LinearModel` from its JSON, every field type- and length-checked (ValueError)."""
    if not isinstance(raw, dict):
        raise ValueError(f"model {outcome!r} is not an object")
    m = LinearModel(**raw)  # TypeError on missing or unknown fields
    for name in ("medians", "means", "scales", "coef"):
        v = getattr(m, name)
        if not (isinstance(v, list) and len(v) == n_columns
                and all(_is_number(x) for x in v)):
            raise ValueError(f"model {outcome!r}: {name} is not {n_columns} finite numbers "
                             "(one per column)")
    for name in ("intercept", "conformal_level"):
        if not _is_number(getattr(m, name)):
            raise ValueError(f"model {outcome!r}: {name} is not a finite number")
    q = m.conformal_q  # +inf is an honest half-width for a tiny calibration set
    if not (isinstance(q, int | float) and not isinstance(q, bool) and q >= 0):
        raise ValueError(f"model {outcome!r}: conformal_q is not a number >= 0")
    if any(s <= 0 for s in m.scales):
        raise ValueError(f"model {outcome!r}: scales must be positive")
    if m.alpha is not None and not _is_number(m.alpha):
        raise ValueError(f"model {outcome!r}: alpha is not a number or null")
    if m.outcome != outcome:
        raise ValueError(f"model {outcome!r} says it predicts {m.outcome!r}")
    return m


def _is_number(x: Any) -> bool:
    """A finite number (JSON's NaN and Infinity read as floats, and are refused)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def conformal_q(abs_residuals: np.ndarray, level: float) -> float:
    """Split-conformal half-width: the ceil((n + 1) level) / n quantile of |residuals|."""
    r = np.sort(abs_residuals[np.isfinite(abs_residuals)])
    n = r.size
    if n == 0:
        return math.nan
    k = math.ceil((n + 1) * level)
    return float(r[min(k, n) - 1]) if k <= n else math.inf


def fit_predictor(data: ScreeningData, residuals: dict[str, np.ndarray], *, level: float,
                  dose: dict[str, float], trained_on: dict[str, Any], seed: int = 0
                  ) -> Predictor:
    """Ridge on the ``full`` set for every outcome on the primary context set, fit on all
    steered features; ``residuals``: each outcome's absolute out-of-fold residuals."""
    cols = predictor_sets(data.predictors)["full"]
    X = data.X(cols)
    models = {}
    for outcome in OUTCOMES:
        y = data.outcome(outcome, data.primary_set)
        ok = np.isfinite(y)
        rg = ridge(seed).fit(X[ok], y[ok])
        models[outcome] = LinearModel(
            outcome=outcome, medians=rg.medians_.tolist(), means=rg.mean_.tolist(),
            scales=rg.scale_.tolist(), coef=rg.coef_.tolist(), intercept=rg.intercept_,
            alpha=None if math.isinf(rg.alpha_) else rg.alpha_,
            conformal_q=conformal_q(residuals[outcome], level), conformal_level=level,
            n_train=int(ok.sum()))
    return Predictor(cols, models, data.primary_set, dose, trained_on)
