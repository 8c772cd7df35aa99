"""The column registry: METHOD's names, groups, documentation, and the table's use of it."""

from __future__ import annotations

import numpy as np
import pytest

from steerscreen.stats import COLUMNS, Column, columns_in_group, register
from steerscreen.stats.registry import predictor_names
from steerscreen.stats.table import to_frame

METHOD_NAMES = [
    "base_freq", "base_mag", "base_direct", "geom_max_cos", "geom_top10_cos",
    "geom_n_neighbours", "geom_enc_dec_cos", "geom_pc_share", "geom_mean_resid_cos", "act_cv",
    "act_skew", "act_kurtosis", "act_p50_rel", "act_p99_rel", "act_early_share",
    "act_token_entropy", "act_burstiness", "act_n_reservoir", "act_low_count", "coact_n_pmi1",
    "coact_max_cond", "coact_partner_entropy", "coact_top10_dec_cos", "logit_pr",
    "logit_top10_energy", "logit_kurtosis", "logit_trigger_overlap", "dead", "feature", "base_pass"]


def test_every_method_column_is_registered_and_documented() -> None:
    for name in METHOD_NAMES:
        c = COLUMNS[name]
        assert c.formula and c.units and c.description, name


def test_groups_follow_prefixes() -> None:
    for group in ("geom", "act", "coact", "logit"):
        assert all(c.name.startswith(group + "_") for c in columns_in_group(group))
    assert {c.name for c in columns_in_group("base", predictors_only=True)} == {
        "base_freq", "base_mag", "base_direct", "base_pass"}


def test_frequency_tracking_diagnostics_are_not_predictors() -> None:
    names = predictor_names()
    for name in ("feature", "dead", "act_n_reservoir", "act_low_count",
                 "coact_truncated_share"):
        assert name not in names


def test_register_rejects_duplicates_and_bad_prefixes() -> None:
    with pytest.raises(ValueError):
        register(Column("base_freq", "base", "x", "y", "z"))
    with pytest.raises(ValueError):
        register(Column("act_new", "geom", "x", "y", "z"))
    with pytest.raises(ValueError):
        columns_in_group("nope")


def test_unregistered_columns_are_refused() -> None:
    with pytest.raises(KeyError):
        to_frame({"feature": np.arange(2), "act_not_a_column": np.zeros(2)})


def test_int_columns_carry_nulls_for_nan() -> None:
    df = to_frame({"feature": np.arange(2), "coact_n_pmi1": np.array([2.0, np.nan])})
    assert df["coact_n_pmi1"].to_list() == [2, None]
