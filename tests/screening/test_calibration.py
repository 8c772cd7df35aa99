"""The calibration suite: the screening analysis on synthetic runs whose truth is known.

Runs ``fit``'s own code at its default configuration (5 x 5-fold CV) on 100+ synthetic runs per
scenario (:mod:`steerscreen.screening.simulate`) and checks the error rates it promises. Seeds
are fixed, so the result is the same on every machine; the thresholds leave the Monte-Carlo
margin of the trial counts. ``benchmarks/calibration.py`` runs the same suite with more trials
for the table in ``docs/screening.md``.
"""

from __future__ import annotations

import pytest

from steerscreen.screening.calibration import NULLS, SuiteResult, suite

TRIALS = 100
MARGIN = 1.645 * (0.05 * 0.95 / TRIALS) ** 0.5  # one-sided 95% MC margin at a 5% rate


@pytest.fixture(scope="module")
def result() -> SuiteResult:
    return suite(n=400, verdict_trials=TRIALS, coverage_trials=300, conformal_trials=20)


@pytest.mark.parametrize("scenario", NULLS)
def test_null_scenarios_rarely_claim_a_verdict(result: SuiteResult, scenario: str) -> None:
    assert result.false_beats[scenario].rate <= 0.05 + MARGIN, result.false_beats[scenario]
    assert result.false_survives[scenario].rate <= 0.05 + MARGIN, (
        result.false_survives[scenario])


def test_a_planted_signal_is_detected_at_n_400(result: SuiteResult) -> None:
    assert result.detection.rate >= 0.9, result.detection


def test_intervals_cover_the_population_delta(result: SuiteResult) -> None:
    for scenario in ("noise", "planted"):
        r, _ = result.coverage[scenario]
        assert 0.92 <= r.rate <= 0.98, (scenario, r)
    for scenario in ("freq_mag", "mag_explained"):  # nested nulls: conservative, never narrow
        r, _ = result.coverage[scenario]
        assert r.rate >= 0.92, (scenario, r)
    assert result.payoff_noise.rate >= 0.92, result.payoff_noise  # conservative on noise


def test_conformal_intervals_cover_unseen_features_at_their_level(result: SuiteResult) -> None:
    for outcome, (mean, _se) in result.conformal.items():
        assert abs(mean - 0.9) <= 0.03, (outcome, mean)
