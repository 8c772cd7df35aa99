"""Feature cards: the cleanest and the worst steered features by measured cleanliness.

A card shows what a feature reads (its top activating contexts, the firing token highlighted),
what it writes (its top direct-logit tokens, when the stats stage recorded them), and how it
steered: measured outcomes on the primary context set next to the fit's out-of-fold
predictions, the measured top promoted and suppressed tokens (``steering_tokens.parquet``), and
greedy continuations of three prompts clean, at the run's dose and at twice it
(``steered_text.parquet``), the tokens whose log-probability the steering raised most marked.
Features the user names (``--feature``) get "requested" cards after the picked ones. Measured
cleanliness is taken from the fit when it ran, else computed the same way
(docs/method.md §3: z(effect_stability) - z(collateral_spread) over the feature rows of one SAE).
"""

from __future__ import annotations

from collections.abc import Sequence
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
N_MARKED = 3
MARK_RISE = 0.5
"""A steered token is marked when its log-probability rise (log p_steered - log p_clean on the
same prefix) is among the ``N_MARKED`` largest of its continuation and above this many nats."""
CONDITION_LABELS = {"clean": "clean", "1x": "1× dose", "2x": "2× dose"}
GENERATE_HINT = "steerscreen.pipeline.generate.run_generations(RUN, [FEATURE])"
_GRID = "display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:.4rem .8rem"
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


def requested(picks: list[Pick], features: Sequence[int]) -> list[Pick]:
    """Cards for the user-named ``features`` not already among ``picks``, in their order."""
    shown = {p.feature for p in picks}
    extra = [int(f) for f in dict.fromkeys(features) if int(f) not in shown]
    return [Pick(f, "requested", i + 1) for i, f in enumerate(extra)]


def render(run: RunData, picks: list[Pick], values: pl.DataFrame) -> Safe:
    """The cards section body for ``picks`` (``values`` from :func:`measured`)."""
    feats = [p.feature for p in picks]
    effects = _effect_tokens(run, feats)
    text = run.steered_text
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
        steered = (tag("h4", "Steered text"), _steered_text(text, p.feature),
                   tag("h4", "Measured effect on the next-token distribution"),
                   _effects(effects, p.feature, run.primary_set))
        cards.append(_card(p, by_feature.get(p.feature, {}), stats.get(p.feature, {}), ex, lt,
                           run.primary_set, *steered))
    return tag("div", *cards, class_="cards")


def _card(p: Pick, vals: dict[str, Any], stats: dict[str, Any], ex: pl.DataFrame | None,
          lt: pl.DataFrame | None, cs: str, *steered: Safe) -> Safe:
    kind = ("requested" if p.kind == "requested"
            else f"#{p.rank} {'cleanest' if p.kind == 'cleanest' else 'least clean'}")
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
               _contexts(ex), tag("h4", "Top direct-logit tokens"), _tokens(lt), *steered,
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


# --- how it steered: measured top tokens and steered text -----------------------------------------
def _effect_tokens(run: RunData, feats: list[int]) -> pl.DataFrame | None:
    """``steering_tokens`` rows of ``feats`` at the run's strength on the primary set (a row's
    own s: equal-KL rows differ per feature), or None when the steer stage did not write it."""
    tokens, rows = run.steering_tokens, run.at_strength()
    if tokens is None or rows is None:
        return None
    own = "row_strength" if "row_strength" in rows.columns else "strength"
    keys = rows.filter((pl.col("direction") == "feature") & pl.col("feature").is_in(feats)
                       & (pl.col("context_set") == run.primary_set)).select(
        "feature", "context_set", pl.col(own).alias("_s"))
    return (tokens.join(keys, on=["feature", "context_set"], how="inner")
            .filter((pl.col("strength") - pl.col("_s")).abs() <= 1e-12 * pl.col("_s").abs())
            .drop("_s"))


def _effects(effects: pl.DataFrame | None, feature: int, cs: str) -> Safe:
    if effects is None:
        return note("This run's steer stage predates the measured top tokens (rerun ",
                    code("steerscreen steer ... --force"), " to add steering_tokens.parquet).")
    mine = effects.filter(pl.col("feature") == feature)
    if mine.height == 0:
        return note("Not steered at this strength: no measured effect.")
    parts = [note("Entries of the mean Fisher effect m = mean_c d_c (docs/method.md §3) on the ",
                  cs, " contexts: the 10 tokens the steering pushed up most (promoted) and down "
                  "most (suppressed).")]
    for kind in ("promoted", "suppressed"):
        rows = mine.filter(pl.col("kind") == kind).sort("rank")
        parts.append(tag("div", tag("strong", f"{kind}: "), *[
            tag("span", tag("code", _newlines(_shown(r["token"], r["token_id"]))),
                tag("small", num(r["value"], signed=True)), class_="tok",
                title=f"token id {r['token_id']}") for r in rows.iter_rows(named=True)]))
    return join(parts)


def _shown(token: str | None, token_id: int) -> str:
    return f"#{token_id}" if token is None else token


def _steered_text(text: pl.DataFrame | None, feature: int) -> Safe:
    mine = text.filter(pl.col("feature") == feature) if text is not None else None
    if mine is None or mine.height == 0:
        return note("No steered text generated for this feature yet (", code(GENERATE_HINT),
                    " writes it; the study runs it for the cards).")
    parts = [note(f"Greedy continuations of {mine['prompt'].n_unique()} fresh-context prompts: "
                  "clean, at the run's dose (alpha) and at twice it. Marked: each "
                  f"continuation's up to {N_MARKED} tokens whose log-probability rose most vs "
                  f"the clean model on the same prefix, if by more than {MARK_RISE} nats.")]
    for q in sorted(set(mine["prompt"].to_list())):
        rows = {r["condition"]: r for r in mine.filter(pl.col("prompt") == q)
                .iter_rows(named=True)}
        first = next(iter(rows.values()))
        prompt = first["prompt_text"] or " ".join(str(i) for i in first["prompt_ids"][1:])
        cells = [tag("div", tag("small", _label(c, rows.get(c))), tag("div", _continuation(
            rows.get(c)), class_="ctx")) for c in CONDITION_LABELS]
        parts.append(tag("div", tag("div", tag("small", "prompt "), _newlines(prompt),
                                    class_="ctx"),
                         tag("div", *cells, class_="steered", style=_GRID),
                         style="margin:.3rem 0 .6rem"))
    return join(parts)


def _label(cond: str, row: dict[str, Any] | None) -> str:
    if row is None or cond == "clean":
        return CONDITION_LABELS[cond]
    return f"{CONDITION_LABELS[cond]} (alpha {num(row['alpha'])})"


def _continuation(row: dict[str, Any] | None) -> Safe:
    """The generated tokens, escaped, the largest log-probability rises marked."""
    if row is None:
        return Safe("–")
    ids, toks, rise = row["token_ids"], row["tokens"] or [], row["logprob_rise"] or []
    order = sorted(range(len(rise)), key=lambda i: -rise[i])[:N_MARKED]
    marked = {i for i in order if rise[i] > MARK_RISE}
    out = []
    for i, tid in enumerate(ids):
        t = _shown(toks[i] if i < len(toks) else None, tid)
        out.append(tag("mark", _newlines(t), title=f"+{rise[i]:.2f} nats") if i in marked
                   else _newlines(t))
    return join(out)


def generation_text(gen: dict[str, Any]) -> str:
    """The methods line for the manifest's ``generation`` record (pipeline.generate)."""
    n, secs = gen.get("n_features"), gen.get("seconds")
    per = gen.get("seconds_per_feature")
    return (f"Greedy continuations ({gen.get('decoding', 'greedy')}) of "
            f"{num(gen.get('n_prompts'))} prompts (the first {num(gen.get('prompt_tokens'))} "
            f"tokens of the first fresh contexts) by {num(gen.get('new_tokens'))} tokens, clean, "
            f"at each feature's dose and at twice it, for {num(n)} features: "
            f"{num(gen.get('tokens'))} tokens in {num(secs)} s ({num(per)} s per feature).")
