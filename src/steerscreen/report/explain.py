"""One feature of a screen, explained: ``steerscreen explain`` and ``res.explain(id)``.

An :class:`Explanation` is read from a screen folder (``screen.parquet`` and the stats pass that
fed it: ``feature_stats``, ``feature_examples``, ``feature_logit_tokens``) and the predictor
that ranked it. It holds the feature's rank, its three predictions with their conformal
intervals, the predicted dose, the predictor columns that move its cleanliness score most
(each column's contribution ``coef * (x - mean) / scale``, the terms the ridge prediction is
the sum of), and what the feature reads and writes (top activating contexts, top direct-logit
tokens). It prints as plain text (:meth:`Explanation.text`, the CLI) and as HTML
(:meth:`Explanation._repr_html_`, Jupyter); both show the same fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from steerscreen.errors import SpecError
from steerscreen.layout import FEATURE_EXAMPLES, FEATURE_LOGIT_TOKENS, FEATURE_STATS, SCREEN_TABLE
from steerscreen.report.html import Safe, join, note, num, table, tag
from steerscreen.screening.data import OUTCOMES
from steerscreen.screening.predictor import Predictor
from steerscreen.stats.registry import COLUMNS

N_DRIVERS = 6
N_CONTEXTS = 5
N_TOKENS = 10
CONTEXT_CHARS = 100


@dataclass(frozen=True)
class Driver:
    column: str
    value: float
    contribution: float
    """Its term in the predicted cleanliness (z units of the score)."""
    description: str


@dataclass(frozen=True)
class Explanation:
    feature: int
    rank: int
    n_features: int
    dead: bool
    predictions: dict[str, tuple[float, float, float]]
    """outcome -> (prediction, interval low, interval high)."""
    level: float
    """The intervals' conformal coverage."""
    strength: float
    alpha: float
    target_kl: float
    drivers: list[Driver]
    firing_frequency: float
    contexts: list[tuple[float, str, str]]
    """(activation, text before the firing token, the firing token)."""
    tokens: list[tuple[str, float]]
    """Top direct-logit tokens: (token, logit change per unit of the decoder row)."""

    def text(self) -> str:
        """The card as plain text (what ``steerscreen explain`` prints)."""
        p = self.predictions
        lines = [f"feature {self.feature}: rank {self.rank:,} of {self.n_features:,}"
                 + (" (dead: never fired in the stats pass)" if self.dead else ""),
                 f"  firing frequency {num(self.firing_frequency)}"]
        for o in OUTCOMES:
            v, lo, hi = p[o]
            lines.append(f"  predicted {o}: {num(v, True)}  {self.level:.0%} interval "
                         f"[{num(lo, True)}, {num(hi, True)}]")
        lines.append(f"  predicted dose for KL {num(self.target_kl)} nats: strength "
                     f"{num(self.strength)} (alpha {num(self.alpha)})")
        lines.append("  drivers of predicted cleanliness (contribution, value):")
        lines += [f"    {d.contribution:+.3f}  {d.column} = {num(d.value)}  ({d.description})"
                  for d in self.drivers]
        if self.contexts:
            lines.append("  top activating contexts (firing token in [brackets]):")
            lines += [f"    {num(v)}  …{_flat(before)}[{_flat(tok)}]"
                      for v, before, tok in self.contexts]
        if self.tokens:
            lines.append("  top direct-logit tokens: " + ", ".join(
                f"{t!r} {num(v)}" for t, v in self.tokens))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        p = self.predictions
        head = tag("h4", f"feature {self.feature} ",
                   tag("small", f"rank {self.rank:,} of {self.n_features:,}"
                       + (" · dead" if self.dead else "")))
        preds = table(("", "prediction", f"{self.level:.0%} interval"),
                      [(o, p[o][0], f"[{num(p[o][1], True)}, {num(p[o][2], True)}]")
                       for o in OUTCOMES])
        dose = note(f"Predicted dose for KL {num(self.target_kl)} nats: strength "
                    f"{num(self.strength)} (alpha {num(self.alpha)}); firing frequency "
                    f"{num(self.firing_frequency)}.")
        drivers = table(("contribution", "column", "value", "what it is"),
                        [(d.contribution, d.column, d.value, d.description)
                         for d in self.drivers])
        ctx = tag("ol", *[tag("li", tag("small", num(v)), " …", before, tag("mark", tok))
                          for v, before, tok in self.contexts])
        toks = join(tag("code", t) + Safe(f" {num(v)} ") for t, v in self.tokens)
        return tag("div", head, preds, dose, tag("h5", "Drivers of predicted cleanliness"),
                   drivers, tag("h5", "Top activating contexts"), ctx,
                   tag("h5", "Top direct-logit tokens"), tag("p", toks), class_="card")


def explain(folder: str | Path, predictor: Predictor, feature: int) -> Explanation:
    """The :class:`Explanation` of ``feature`` in the screen at ``folder`` (ranked by
    ``predictor``)."""
    folder = Path(folder)
    screen = pl.read_parquet(folder / SCREEN_TABLE)
    row = screen.filter(pl.col("feature") == feature)
    if row.height == 0:
        raise SpecError(f"feature {feature} is not in the screen ({screen.height:,} features, "
                        f"ids 0..{screen.height - 1})", "pass a feature id of this SAE")
    r = row.row(0, named=True)
    stats = pl.read_parquet(folder / FEATURE_STATS).filter(pl.col("feature") == feature)
    s = stats.row(0, named=True)
    # The predictor's inputs: feature_stats, with the dose columns the screen computed.
    x = np.array([_float(r[c] if c in r else s.get(c)) for c in predictor.columns])
    model = predictor.models["cleanliness"]
    contrib = model.contributions(x[None, :])[0]
    order = np.argsort(-np.abs(contrib))[:N_DRIVERS]
    drivers = [Driver(predictor.columns[j], float(x[j]), float(contrib[j]),
                      COLUMNS[predictor.columns[j]].description
                      if predictor.columns[j] in COLUMNS else "") for j in order]
    return Explanation(
        feature=int(feature), rank=int(r["rank"]), n_features=screen.height,
        dead=bool(r.get("dead", False)),
        predictions={o: (_float(r[f"pred_{o}"]), _float(r[f"pred_{o}_lo"]),
                         _float(r[f"pred_{o}_hi"])) for o in OUTCOMES},
        level=float(model.conformal_level), strength=_float(r.get("pred_strength")),
        alpha=_float(r.get("pred_alpha")), target_kl=_float(r.get("target_kl")),
        drivers=drivers, firing_frequency=10 ** _float(s.get("base_freq")),
        contexts=_contexts(folder, feature), tokens=_tokens(folder, feature))


def _contexts(folder: Path, feature: int) -> list[tuple[float, str, str]]:
    path = folder / FEATURE_EXAMPLES
    if not path.is_file():
        return []
    ex = pl.read_parquet(path).filter(pl.col("feature") == feature).sort("rank")
    out = []
    for r in ex.head(N_CONTEXTS).iter_rows(named=True):
        text, tok = r.get("text") or "", r.get("token") or ""
        before = text[: len(text) - len(tok)] if tok and text.endswith(tok) else text
        out.append((float(r["value"]), before[-CONTEXT_CHARS:], tok))
    return out


def _tokens(folder: Path, feature: int) -> list[tuple[str, float]]:
    path = folder / FEATURE_LOGIT_TOKENS
    if not path.is_file():
        return []
    lt = pl.read_parquet(path).filter(pl.col("feature") == feature).sort("rank")
    return [(str(r["token"]), float(r["dl"])) for r in lt.head(N_TOKENS).iter_rows(named=True)]


def _float(x: Any) -> float:
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _flat(s: str) -> str:
    return s.replace("\n", "↵")


__all__ = ["Driver", "Explanation", "explain"]
