"""The plan a study prints before it starts: every stage, its work, and a time estimate.

Estimates use throughputs measured on the project's reference machine (2 CPU cores, no GPU) with
the embedded SmolLM2 (docs/benchmarks.md): they are there so a user sees the size of the job
before committing to it, not as a promise. Other models get the work counts without a time
(``steerscreen plan`` of issue 8 owns the GPU cost model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steerscreen.config import PRESET_BUDGET_S, SAEEntry, StudyConfig
from steerscreen.models import HookPoint

# Measured on 2 CPU cores, SmolLM2-135M (d_model 576, vocabulary 49,152; docs/benchmarks.md).
CARD_FEATURES = 8
"""Features a run's report shows on cards (2 x ``report.cards.N_CARDS``; named here so that the
plan does not import the report and matplotlib)."""
_CPU_RATES = {
    "embedded:smollm2-135m": {
        "layer_tokens_per_s": 15_000.0,  # bare forward to layer 12: 1,168 tokens/s x 13 layers
        "n_layers": 30,
        # SAELens SAETrainer, TopK 576 x 4096 at batch 128 (the presets'): 360K samples in 162 s
        # (benchmarks/dead_features.py); a 1024-wide SAE takes about 0.4 as long, not a quarter
        "train_samples_per_s_4096": 2_200.0,
        "table_s_per_4096": 18.0,  # feature_stats + examples for 4,096 features
        # engine at the presets' T = 32: 0.274-0.303 s per direction on 4 + 4 contexts (248
        # steered positions; docs/benchmarks.md#power), clean passes included
        "steer_s_per_position": 1.25e-3,
        "dose_stats_s_per_128_positions": 35.0,  # base_pass + lin_pass, once per run: 25-39 s
        # linear response: 238.8 s for 8 x 32 positions (benchmarks/linear_response.py)
        "linear_s_per_position": 0.93,
        "stats_overhead": 1.2,
        # greedy continuations, clean / 1x / 2x, 3 prompts x 24 tokens: 7.8-9.7 s for a run's
        # 8 card features on a quiet machine (model loaded); the screen itself is a table join
        "generate_s_per_feature": 1.2,
    },
}


@dataclass(frozen=True)
class PlanStep:
    stage: str  # train | stats | steer | fit | screen | compare | report
    target: str  # the run (SAE) or "study"
    work: str  # what it computes, in words and counts
    estimate_s: float | None  # None: no estimate for this model/device


@dataclass(frozen=True)
class Plan:
    steps: list[PlanStep]
    budget_s: float | None

    @property
    def total_s(self) -> float | None:
        est = [s.estimate_s for s in self.steps]
        return None if any(e is None for e in est) else float(sum(e for e in est if e))


def fit_seconds(n_features: int, n_repeats: int, n_permutations: int) -> float:
    """CPU seconds of one fit stage on the reference machine (2 cores), measured: the repeats'
    gradient boosting dominates (about 5 s per repeat from n = 256 up; less for fewer
    features), the permutations (one split each) cost 0.01 s apiece (docs/benchmarks.md)."""
    return 2.0 + 0.01 * n_permutations + n_repeats * min(5.0, 1.0 + n_features / 70)


def _stats_seconds(e: SAEEntry, st: dict[str, Any], rates: dict[str, float],
                   linearised: set[str]) -> float | None:
    """One stats stage: the pass, the tables, and the linear response for the first SAE at its
    hook (``linearised``: the hooks already charged)."""
    if e.hook is None or not e.width:
        return None
    est = (st["tokens"] * (HookPoint.parse(e.hook).layer + 1) / rates["layer_tokens_per_s"]
           * rates["stats_overhead"] + rates["table_s_per_4096"] * e.width / 4096)
    if st["linear_contexts"] and e.hook not in linearised:
        linearised.add(e.hook)
        est += (st["linear_contexts"] * (st["linear_len"] or st["context_len"])
                * rates["linear_s_per_position"])
    return est


def make_plan(cfg: StudyConfig) -> Plan:
    rates = _CPU_RATES.get(cfg.model) if cfg.device == "cpu" else None
    tr, st, sr, ft = (cfg.resolved(s) for s in ("train", "stats", "steer", "fit"))
    steps: list[PlanStep] = []
    trained = [e for e in [*cfg.saes, cfg.downstream] if e is not None and e.trained]
    if trained:
        depth = max(HookPoint.parse(e.hook or "").layer for e in trained) + 1
        n_tok = tr["tokens"] + tr["heldout_tokens"]
        est = None
        if rates:
            est = n_tok * depth / rates["layer_tokens_per_s"]
        steps.append(PlanStep("train", "study", f"collect {n_tok:,} tokens of activations "
                              f"(layers 0..{depth - 1})", est))
        for e in trained:
            samples = tr["tokens"] * (e.epochs or tr["epochs"])
            est = None
            if rates:
                est = samples / rates["train_samples_per_s_4096"] * max(0.4, (e.width or 0)
                                                                        / 4096)
            steps.append(PlanStep("train", e.name, f"{e.arch} SAE, {e.width:,} features at "
                                  f"{e.hook}: {samples:,} samples", est))
    positions = sr["features"] + sr["random_directions"]
    ctx = sr["contexts"] + sr["fresh_contexts"]
    steer_pos = positions * ctx * (sr["context_len"] - 1)
    calibrated = sr["strengths"] is None
    n_strengths = 1 if calibrated else len(sr["strengths"])
    linearised: set[str] = set()  # the linear response runs once per hook (shared by its SAEs)
    for i, e in enumerate(cfg.saes):
        est = _stats_seconds(e, st, rates, linearised) if rates else None
        steps.append(PlanStep("stats", e.name, f"{st['tokens']:,} tokens, every docs/method.md §1 "
                              "column", est))
        est = None
        if rates:
            est = (steer_pos * n_strengths * rates["steer_s_per_position"]
                   + rates["dose_stats_s_per_128_positions"] * sr["pass_positions"] / 128)
            if calibrated and i == 0:  # once per study (shared by the runs)
                est += (3 * sr["calibration_directions"] * sr["calibration_contexts"]
                        * (sr["context_len"] - 1) * rates["steer_s_per_position"])
        steps.append(PlanStep(
            "steer", e.name, f"{sr['features']} features + {sr['random_directions']} random "
            f"directions x {sr['contexts']} steering + {sr['fresh_contexts']} fresh contexts "
            f"of {sr['context_len']} tokens x {n_strengths} strength(s)"
            + (" (calibrated)" if calibrated else ""), est))
        est = fit_seconds(sr["features"], ft["n_repeats"], ft["n_permutations"]) if rates else None
        steps.append(PlanStep("fit", e.name, f"{ft['n_repeats']} x {ft['n_splits']}-fold CV, "
                              f"{ft['n_permutations']} permutations", est))
        steps.append(PlanStep("screen", e.name, f"rank every feature; steered text of the "
                              f"{CARD_FEATURES} cards' features (3 prompts x 24 tokens)",
                              CARD_FEATURES * rates["generate_s_per_feature"] if rates else None))
    if len(cfg.saes) > 1:
        steps.append(PlanStep("compare", "study", f"transfer between {len(cfg.saes)} runs",
                              10.0 if rates else None))
    steps.append(PlanStep("report", "study", "report.html, figures, summary.md",
                          10.0 if rates else None))
    return Plan(steps, PRESET_BUDGET_S.get(cfg.preset) if cfg.model in _CPU_RATES else None)


def format_duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


__all__ = ["Plan", "PlanStep", "format_duration", "make_plan"]


def describe_plan(plan: Plan) -> list[str]:
    """The plan as lines (the CLI prints a table; logs and tests use this)."""
    lines = [f"{s.stage:8s} {s.target:28s} {format_duration(s.estimate_s):>9s}  {s.work}"
             for s in plan.steps]
    total = plan.total_s
    budget = plan.budget_s
    if total is None:
        lines.append("estimated total: no time estimate for this model and device (estimates "
                     "cover the embedded models on CPU)")
    else:
        lines.append(f"estimated total {format_duration(total)}"
                     + (f" (budget {format_duration(budget)})" if budget else ""))
    return lines


def print_plan(cfg: StudyConfig, out: object, console: Any) -> Plan:
    """The plan as a table on ``console`` (stage, run, estimate, work) and its total."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    plan = make_plan(cfg)
    table = Table(title=f"study {escape(cfg.name)}: {escape(cfg.model)}, preset {cfg.preset}, "
                  f"{len(cfg.saes)} SAEs -> {escape(str(out))}")
    for col in ("stage", "run", "estimate", "work"):
        table.add_column(col)
    for step in plan.steps:
        table.add_row(step.stage, escape(step.target), format_duration(step.estimate_s),
                      escape(step.work))
    Console(stderr=True).print(table)
    console.print(escape(describe_plan(plan)[-1]))
    return plan
