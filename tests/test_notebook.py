"""The notebook API on a tiny model: ``ss.screen`` on plain objects ranks as the stage code does
on loaded specs, ``screen_run`` feeds the predictor what it was trained on, ``explain`` and the
study objects (the embedded-model check is in tests/study/test_quick_embedded.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest

import steerscreen as ss
from steerscreen.config import ScreenConfig
from steerscreen.corpus import load_corpus
from steerscreen.errors import SpecError
from steerscreen.pipeline.runs import RunDir
from steerscreen.pipeline.screen import screen, screen_run
from steerscreen.screening.data import screening_data, with_dose_stats
from steerscreen.screening.predictor import Predictor
from tests.screening.test_stage import fitted  # noqa: F401  (fixture)
from tests.steering.test_stage import base  # noqa: F401  (fixture)


def _specs(base, fitted):  # noqa: F811
    m = json.loads((fitted["out"] / RunDir.MANIFEST).read_text())
    sc = m["stages"]["stats"]["config"]
    return sc["model"], sc["corpus"], str(fitted["res"].predictor_path)


def test_notebook_screen_on_objects_ranks_as_the_stage_does(base, fitted,  # noqa: F811
                                                             tmp_path) -> None:
    model_spec, corpus_spec, predictor = _specs(base, fitted)
    cfg = ScreenConfig(predictor=predictor, sae=str(base["sae"].path), model=model_spec,
                       corpus=corpus_spec, tokens=150, downstream_sae=str(base["down"].path))
    cli = screen(cfg, tmp_path / "cli", model=base["model"], sae=base["sae"],
                 down=base["down"]).table
    hooked = base["model"]
    res = ss.screen(model=hooked.model, tokenizer=hooked.tokenizer, model_spec=model_spec,
                    sae=base["sae"].sae, downstream_sae=base["down"].sae,
                    corpus=list(load_corpus(corpus_spec).documents), predictor=predictor,
                    tokens=150, out=tmp_path / "nb")
    nb = res.table
    assert nb["feature"].to_list() == cli["feature"].to_list()
    np.testing.assert_array_equal(nb["pred_cleanliness"].to_numpy(),
                                  cli["pred_cleanliness"].to_numpy())
    top = res.top(5)
    assert top.height == 5 and top["rank"].to_list() == [1, 2, 3, 4, 5]
    assert {"pred_cleanliness_lo", "pred_cleanliness_hi", "pred_strength", "drivers"} <= set(
        top.columns)
    assert "<table" in res._repr_html_()
    # A rerun into the same folder resumes: neither the stats pass nor the ranking (with its
    # pass through S') is recomputed; another target KL ranks again.
    written = (tmp_path / "nb" / "screen.parquet").stat().st_mtime_ns
    again = ss.screen(model=hooked.model, tokenizer=hooked.tokenizer, model_spec=model_spec,
                      sae=base["sae"].sae, downstream_sae=base["down"].sae,
                      corpus=list(load_corpus(corpus_spec).documents), predictor=predictor,
                      tokens=150, out=tmp_path / "nb")
    assert again.table["feature"].to_list() == nb["feature"].to_list()
    assert (tmp_path / "nb" / "screen.parquet").stat().st_mtime_ns == written
    other = screen(dataclasses.replace(cfg, target_kl=0.5), tmp_path / "cli",
                   model=base["model"], sae=base["sae"], down=base["down"]).table
    assert (other["target_kl"] == 0.5).all()

    card = res.explain(int(nb["feature"][0]))
    text = card.text()
    assert text.startswith(f"feature {nb['feature'][0]}: rank 1 of {nb.height}")
    assert "predicted cleanliness" in text and "drivers" in text
    assert len(card.drivers) == 6 and "<table" in card._repr_html_()
    # The drivers are the terms the ridge prediction sums: they add up to it.
    p = Predictor.load(predictor)
    m = p.models["cleanliness"]
    assert abs(card.drivers[0].contribution) >= abs(card.drivers[-1].contribution)
    stats = pl.read_parquet(tmp_path / "nb" / RunDir.FEATURE_STATS)
    row = stats.filter(pl.col("feature") == card.feature)
    mine = nb.filter(pl.col("feature") == card.feature)
    x = np.array([[(mine if c in nb.columns else row)[c][0] for c in p.columns]], dtype=float)
    assert m.predict(x)[0] == pytest.approx(card.predictions["cleanliness"][0], abs=1e-9)
    with pytest.raises(SpecError, match="not in the screen"):
        res.explain(10**6)


def test_notebook_screen_refuses_what_it_cannot_use(base, fitted, tmp_path) -> None:  # noqa: F811
    model_spec, corpus_spec, predictor = _specs(base, fitted)
    hooked = base["model"]
    with pytest.raises(SpecError, match="non-empty list of strings"):
        ss.screen(model=hooked.model, tokenizer=hooked.tokenizer, model_spec=model_spec,
                  sae=base["sae"].sae, corpus=[1, 2], predictor=predictor, out=tmp_path / "a")
    with pytest.raises(SpecError, match="tokenizer"):
        ss.screen(model=hooked.model, model_spec=model_spec, sae=base["sae"].sae,
                  corpus=["x"], predictor=predictor, out=tmp_path / "b")
    with pytest.raises(SpecError, match="cannot tell which model"):
        ss.screen(model=hooked.model, tokenizer=hooked.tokenizer, sae=base["sae"].sae,
                  corpus=corpus_spec, predictor=predictor, out=tmp_path / "c")


def test_screen_run_feeds_the_predictor_its_training_inputs(base, fitted) -> None:  # noqa: F811
    out = fitted["out"]
    res = screen_run(out)
    t = res.table
    assert t.height == base["sae"].d_sae and res.parquet == out / "screen.parquet"
    assert t["rank"].to_list() == list(range(1, t.height + 1))
    # For the steered features, the screen's inputs are the fit's: same predictions as the
    # predictor on the screening table it was trained on.
    p = Predictor.load(fitted["res"].predictor_path)
    stats = pl.read_parquet(out / RunDir.FEATURE_STATS)
    outcomes = pl.read_parquet(out / RunDir.STEERING_OUTCOMES)
    dose = pl.read_parquet(out / "feature_dose_stats.parquet")
    data = screening_data(with_dose_stats(stats, dose), outcomes, float(p.dose["strength"]))
    feats = data.table["feature"].to_numpy()
    want = p.models["cleanliness"].predict(data.X(p.columns))
    got = t.filter(pl.col("feature").is_in(feats.tolist())).sort("feature")
    np.testing.assert_allclose(got["pred_cleanliness"].to_numpy(),
                               want[np.argsort(feats)], rtol=1e-12)


def test_a_dataset_or_a_list_becomes_one_cached_corpus(tmp_path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    from steerscreen.notebook import _corpus

    monkeypatch.setenv("STEERSCREEN_CACHE", str(tmp_path))
    ds = datasets.Dataset.from_dict({"body": ["a b c", "d\ne f"], "id": [1, 2]})
    spec = _corpus(ds, "body")
    assert load_corpus(spec).documents == ("a b c", "d\ne f")  # newlines stay in a document
    assert _corpus(["a b c", "d\ne f"], "text") == spec  # the same documents, the same file
    with pytest.raises(SpecError, match="no column 'text'"):
        _corpus(ds, "text")
    assert _corpus("embedded", "text") == "embedded"
