"""Differential: every column equals a loop/numpy computation of its METHOD formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerscreen.models.hooks import Unembed
from steerscreen.stats import COLUMNS, StatsOptions, TableOptions, feature_stats
from steerscreen.stats.activation import trigger_tokens
from steerscreen.stats.logits import logit_columns
from tests.stats.reference import reference_columns, reference_geometry, reference_logits
from tests.stats.synthetic import accumulate, make_data

OPTS = StatsOptions(reservoir_size=20, coact_size=12, max_partners=40, seed=3)


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def table(data):
    acc = accumulate(data, OPTS)
    return acc, feature_stats(acc, torch.from_numpy(data.W_enc), torch.from_numpy(data.W_dec),
                              options=TableOptions(n_components=3, block=7))


@pytest.fixture(scope="module")
def ref(data):
    return reference_columns(data.a, data.ids, data.ctx, data.scale, data.W_dec.astype(np.float64),
                             R=20, R_co=12, seed=3)


def test_fixture_is_not_vacuous(ref) -> None:
    dead, low = ref["dead"], ref["act_low_count"]
    assert dead.sum() == 2 and (low & ~dead).sum() >= 3 and (~low).sum() >= 20


def test_table_has_registered_columns_in_order(table) -> None:
    _, df = table
    assert df.columns == list(COLUMNS)
    assert df["feature"].to_list() == list(range(40))


@pytest.mark.parametrize("name", [
    "dead", "base_freq", "base_mag", "act_burstiness", "act_n_reservoir", "act_low_count",
    "act_cv", "act_skew", "act_kurtosis", "act_p50_rel", "act_p99_rel", "act_early_share",
    "act_token_entropy", "coact_n_pmi1", "coact_max_cond", "coact_partner_entropy",
    "coact_top10_dec_cos"])
def test_column_matches_reference(table, ref, name: str) -> None:
    _, df = table
    got = df[name].to_numpy().astype(np.float64)
    want = ref[name].astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)


def test_coact_is_exact_without_truncation(table) -> None:
    _, df = table
    share = df["coact_truncated_share"].to_numpy()
    assert np.all((share == 0) | np.isnan(share))


def test_geometry_matches_dense_reference(data, table) -> None:
    _, df = table
    X = data.resid[:, 1:].reshape(-1, data.resid.shape[2]).astype(np.float64)
    want = reference_geometry(data.W_enc.astype(np.float64), data.W_dec.astype(np.float64), X, 3)
    for name, w in want.items():
        np.testing.assert_allclose(df[name].to_numpy().astype(np.float64), w, rtol=1e-5,
                                   atol=1e-5, err_msg=name)


@pytest.mark.parametrize("centre", [False, True])
def test_logits_match_reference(data, table, centre: bool) -> None:
    acc, _ = table
    rng = np.random.default_rng(1)
    V = 15  # the synthetic vocabulary: trigger tokens can overlap the top DL tokens
    W_U = rng.normal(size=(data.W_dec.shape[1], V))
    gain = 1 + 0.3 * rng.normal(size=data.W_dec.shape[1])
    un = Unembed(W_U=torch.tensor(W_U, dtype=torch.float32),
                 gain=torch.tensor(gain, dtype=torch.float32), centre=centre,
                 norm="layernorm" if centre else "rmsnorm", eps=1e-5, softcap=None)
    trig = trigger_tokens(acc)
    got = logit_columns(torch.from_numpy(data.W_dec), un, alpha=4.0, sigma_fin=2.5,
                        trigger_tokens_FK=trig, chunk=7)
    triggers = [[int(t) for t in row if t >= 0] for row in trig]
    want = reference_logits(data.W_dec.astype(np.float64), W_U.astype(np.float32).astype(
        np.float64), gain.astype(np.float32).astype(np.float64), centre, 4.0, 2.5, triggers)
    assert set(got) | set(got.dose) == set(want)
    for name, w in want.items():
        np.testing.assert_allclose({**got.columns, **got.dose}[name], w, rtol=1e-4, atol=1e-5,
                                   equal_nan=True, err_msg=name)
    assert np.nanmax(got["logit_trigger_overlap"]) > 0  # the overlap test is not vacuous


def test_trigger_tokens_match_reference(table, ref) -> None:
    acc, _ = table
    trig = trigger_tokens(acc)
    for f in range(acc.n_features):
        assert [int(t) for t in trig[f] if t >= 0] == ref["_trigger"][f]


def test_sigma_fin_is_the_lower_median(data, table) -> None:
    acc, _ = table
    s = np.sort(data.final[:, 1:].reshape(-1))
    assert acc.sigma_fin() == pytest.approx(float(s[(s.size - 1) // 2]))


def test_dead_features_are_flagged_with_nan(table) -> None:
    _, df = table
    dead = df.filter(df["dead"])
    assert dead["feature"].to_list() == [3, 17]
    for name in ("base_freq", "base_mag", "act_cv", "act_burstiness", "coact_max_cond",
                 "act_token_entropy"):
        assert dead[name].is_nan().all(), name
    assert dead["coact_n_pmi1"].is_null().all()
    assert dead["act_n_reservoir"].to_list() == [0, 0]
    assert dead["act_low_count"].all()
    assert dead["geom_max_cos"].is_not_nan().all()  # geometry stays defined
