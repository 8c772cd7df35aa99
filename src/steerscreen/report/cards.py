"""Feature cards: the cleanest and the worst steered features by measured cleanliness.

A card shows what a feature reads (its top activating contexts, the firing token highlighted),
what it writes (its top direct-logit tokens, when the stats stage recorded them), and how it
steered: measured outcomes on the primary context set next to the fit's out-of-fold
predictions. Measured cleanliness is taken from the fit when it ran, else computed the same way
(docs/method.md §3: z(effect_stability) - z(collateral_spread) over the feature rows of one SAE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from steerscreen.report.headline import LABELS
from steerscreen.report.html import Safe, code, join, note, num, table, tag
from steerscreen.report.load import RunData

N_CARDS = 4
"""Cards per end (cleanest, worst)."""
N_CONTEXTS = 5
N_TOKENS = 10
CONTEXT_CHARS = 140
"""Characters of context kept before the firing token (the window is cut on the left)."""
MEASURED = ("cleanliness", "effect_stability", "collateral_spread", "effect_kl", "target_gain")


@dataclass(frozen=True)
class Pick:
    feature: int
    kind: str
    """"cleanest" or "worst"."""
    rank: int
    """1 = the cleanest (or the worst) of all steered features."""


def measured(run: RunData) -> pl.DataFrame | None:
    """feature, measured outcomes (primary context set, the run's strength), pred_* if fitted."""
    rows = run.at_strength()
    if rows is None:
        return None
    cs = run.primary_set
    feat = rows.filter((pl.col("direction") == "feature") & (pl.col("context_set") == cs))
    if feat.height == 0:
        return None
    keep = [c for c in MEASURED[1:] if c in feat.columns]
    out = feat.select(["feature", *keep])
    preds = run.predictions
    if preds is not None and f"cleanliness@{cs}" in preds.columns:
        extra = [c for c in preds.columns if c.startswith("pred_")]
        out = out.join(preds.select(["feature", pl.col(f"cleanliness@{cs}").alias(
            "cleanliness"), *extra]), on="feature", how="left")
    else:
        out = out.with_columns(pl.Series("cleanliness", _z(out["effect_stability"])
                                         - _z(out["collateral_spread"])))
    return out


def _z(s: pl.Series) -> np.ndarray:
    x = s.to_numpy().astype(float)
    ok = np.isfinite(x)
    out = np.full(x.shape, np.nan)
    if ok.any():
        sd = x[ok].std()
        out[ok] = (x[ok] - x[ok].mean()) / sd if sd > 0 else 0.0
    return out


def pick(table_: pl.DataFrame, n: int = N_CARDS) -> list[Pick]:
    """The ``n`` cleanest and ``n`` worst features (no feature twice when few were steered)."""
    ranked = table_.filter(pl.col("cleanliness").is_not_nan() & pl.col("cleanliness")
                           .is_not_null()).sort("cleanliness", descending=True)
    ids = ranked["feature"].to_list()
    n = min(n, len(ids) // 2) if len(ids) > 1 else len(ids)
    best = [Pick(int(f), "cleanest", i + 1) for i, f in enumerate(ids[:n])]
    worst = [Pick(int(f), "worst", i + 1) for i, f in enumerate(reversed(ids[-n:]))] if n else []
    return best + worst


def render(run: RunData, picks: list[Pick], values: pl.DataFrame) -> Safe:
    """The cards section body for ``picks`` (``values`` from :func:`measured`)."""
    feats = [p.feature for p in picks]
    examples = run.examples(feats)
    by_feature = {r["feature"]: r for r in values.iter_rows(named=True)}
    stats = ({r["feature"]: r for r in run.stats.filter(pl.col("feature").is_in(feats))
              .iter_rows(named=True)} if run.stats is not None else {})
    logits = run.logit_tokens
    cards = []
    for p in picks:
        ex = examples.filter(pl.col("feature") == p.feature) if examples is not None else None
        lt = (logits.filter(pl.col("feature") == p.feature).sort("rank").head(N_TOKENS)
              if logits is not None else None)
        cards.append(_card(p, by_feature.get(p.feature, {}), stats.get(p.feature, {}), ex, lt,
                           run.primary_set))
    return tag("div", *cards, class_="cards")


def _card(p: Pick, vals: dict[str, Any], stats: dict[str, Any], ex: pl.DataFrame | None,
          lt: pl.DataFrame | None, cs: str) -> Safe:
    kind = f"#{p.rank} {'cleanest' if p.kind == 'cleanest' else 'least clean'}"
    head = tag("h4", f"feature {p.feature} ", tag("span", f"({kind})", class_="kind"))
    measured_row = [f"measured ({cs})", *[vals.get(o) for o in MEASURED]]
    predicted_row = ["predicted (out of fold)",
                     *[vals.get(f"pred_{o}") for o in MEASURED]]
    outcomes = table(("", *[LABELS.get(o, o) for o in MEASURED]), [measured_row, predicted_row])
    base = ""
    if stats:
        freq, mag = stats.get("base_freq"), stats.get("base_mag")
        base = note("firing frequency ", num(10 ** freq if freq is not None else None),
                    " of positions; log10 magnitude ", num(mag), "; log ‖DL‖ ",
                    num(stats.get("base_direct")))
    return tag("div", head, base, outcomes, tag("h4", "Top activating contexts"),
               _contexts(ex), tag("h4", "Top direct-logit tokens"), _tokens(lt),
               class_="card", id=f"feature-{p.feature}")


def _contexts(ex: pl.DataFrame | None) -> Safe:
    if ex is None:
        return note("Top activating contexts not recorded (rerun ", code("steerscreen stats"),
                    ").")
    if ex.height == 0:
        return note("No recorded firings.")
    items = []
    for r in ex.head(N_CONTEXTS).iter_rows(named=True):
        items.append(tag("li", tag("span", num(r["value"]), class_="val"),
                         _highlight(r.get("text"), r.get("token"), r.get("token_ids")),
                         class_="ctx"))
    return tag("ol", *items)


def _highlight(text: str | None, token: str | None, ids: list[int] | None) -> Safe:
    """The window's text with its last token (the firing one) marked; escaped throughout."""
    if text is None:  # decode_examples was off: show the token ids
        shown = ", ".join(str(i) for i in (ids or [])[:-1])
        return join(["ids ", shown, " ", tag("mark", str((ids or ["?"])[-1]))])
    token = token or ""
    if token and text.endswith(token):
        before, marked = text[: len(text) - len(token)], token
    else:  # the decoded window does not end in the decoded token (split multibyte characters)
        before, marked = text + " ", token or "?"
    if len(before) > CONTEXT_CHARS:
        before = "…" + before[-CONTEXT_CHARS:]
    return join([_newlines(before), tag("mark", _newlines(marked))])


def _newlines(s: str) -> Safe:
    return join([Safe(tag("span", "↵", class_="nl")) if part == "\n" else part
                 for part in _split_keep(s, "\n")])


def _split_keep(s: str, sep: str) -> list[str]:
    out: list[str] = []
    for i, part in enumerate(s.split(sep)):
        if i:
            out.append(sep)
        if part:
            out.append(part)
    return out


def _tokens(lt: pl.DataFrame | None) -> Safe:
    if lt is None:
        return note("Top direct-logit tokens not recorded (rerun ", code("steerscreen stats"),
                    ").")
    if lt.height == 0:
        return note("No direct-logit tokens recorded for this feature.")
    return tag("div", *[tag("span", tag("code", r["token"]), tag("small", num(r["dl"])),
                            class_="tok", title=f"token id {r['token_id']}")
                        for r in lt.iter_rows(named=True)])
