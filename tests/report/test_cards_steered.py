"""The feature cards' steered text and measured top tokens: a fitted tiny run with both tables
(generated for the cards' features, markup planted in the tokens), a requested feature, and a
run without them."""

from __future__ import annotations

import shutil

import polars as pl

from steerscreen.layout import STEERED_TEXT, STEERING_TOKENS
from steerscreen.pipeline.generate import card_features, run_generations
from steerscreen.pipeline.runs import RunDir
from steerscreen.report import write_report
from tests.screening.test_stage import base, fitted  # noqa: F401  (fixtures)

MARKUP = '<b>"&x</b>'


def _cards(html: str) -> str:
    start = html.index('id="cards"')
    return html[start:html.index("</section>", start)]


def test_cards_show_steered_text_and_measured_tokens(base, fitted, tmp_path) -> None:  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(fitted["out"], run)
    feats = card_features(run)
    assert feats
    res = run_generations(run, feats, model=base["model"], sae=base["sae"], new_tokens=6,
                          prompt_tokens=5)
    assert res.generated == feats and res.tokens > 0
    # Plant markup: the first generated token of every steered row rose 2 nats; the tiny
    # tokenizer decodes nothing, so every token string comes from here.
    text = pl.read_parquet(run / STEERED_TEXT)
    rises = [[2.0, *[0.1] * 5] if c != "clean" else [0.0] * 6 for c in text["condition"]]
    text.with_columns(pl.Series("tokens", [[MARKUP, *["tok"] * 5]] * text.height),
                      pl.Series("logprob_rise", rises),
                      pl.lit("prompt " + MARKUP).alias("prompt_text")
                      ).write_parquet(run / STEERED_TEXT)
    tokens = pl.read_parquet(run / STEERING_TOKENS)
    tokens.with_columns(pl.when(pl.col("rank") == 1).then(pl.lit(MARKUP)).otherwise(
        pl.lit("plain")).alias("token")).write_parquet(run / STEERING_TOKENS)
    extra = next(f for f in range(2, 26) if f not in feats)
    html = write_report(run, features=[extra]).html.read_text(encoding="utf-8")
    cards = _cards(html)
    assert MARKUP not in html
    esc = "&lt;b&gt;&quot;&amp;x&lt;/b&gt;"
    assert f'<mark title="+2.00 nats">{esc}</mark>' in cards  # the 1x / 2x rises
    assert cards.count("<mark title=") == 2 * 3 * len(feats)  # none on the requested card
    assert "Steered text" in cards and "1× dose (alpha" in cards and "2× dose (alpha" in cards
    assert "promoted: " in cards and "suppressed: " in cards
    assert f"<code>{esc}</code>" in cards  # rank-1 measured tokens, escaped
    assert f'id="feature-{extra}"' in cards and "(requested)" in cards
    assert "No steered text generated for this feature yet" in cards  # not generated for it
    assert "Steered text for the cards" in html and "tokens in" in html  # methods: the cost
    assert "not recorded" not in cards and 'class="missing"' not in cards


def test_cards_without_the_tables_say_how_to_make_them(fitted, tmp_path) -> None:  # noqa: F811
    run = tmp_path / "old"
    shutil.copytree(fitted["out"], run)
    (run / STEERING_TOKENS).unlink()
    assert not (run / STEERED_TEXT).exists()
    cards = _cards(write_report(run).html.read_text(encoding="utf-8"))
    assert "run_generations" in cards and "predates the measured top tokens" in cards
    assert "<mark title=" not in cards
    assert RunDir(run).read_manifest().get("generation") is None
