"""Steered text for the report's feature cards: ``RUN/steered_text.parquet``.

:func:`run_generations` takes a run folder with a complete steer stage and, for each requested
feature, greedily continues ``n_prompts`` fixed prompts (the first ``prompt_tokens`` tokens of
the first fresh contexts in ``contexts.parquet``) by ``new_tokens`` tokens: clean, steered at the
run's dose for that feature, and at twice that dose (:mod:`steerscreen.steering.generate`). The
dose is the ``alpha`` of the feature's outcome row at the analysed strength on the primary
context set (equal-KL runs: its own alpha); a feature that was not steered takes its alpha from
``feature_dose_stats.parquet``. The clean continuations are computed once per call (or reused
from the table) and copied to every feature's rows.

A second call appends only the features the table lacks (at the same prompts, lengths and dose);
the table is rewritten atomically and its cost recorded in the manifest (``generation``: seconds
and tokens, summed over calls), which the report's methods section states.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from steerscreen.errors import SpecError, SteerscreenError
from steerscreen.layout import FEATURE_DOSE_STATS, STEERED_TEXT
from steerscreen.models import HookedModel, load_model
from steerscreen.pipeline.runs import RunDir
from steerscreen.report.cards import measured, pick
from steerscreen.report.load import is_run, load_run
from steerscreen.saes.io import LoadedSAE, load_sae
from steerscreen.stats.table import decode_rows
from steerscreen.steering.generate import greedy, logprob_rise, unit_direction

CONDITIONS = ("clean", "1x", "2x")
"""The three continuations of each prompt: clean, at the run's dose, at twice it."""
FEATURES_PER_BATCH = 8
"""Features generated together (2 x n_prompts rows each): one KV-cached pass for all."""
SETTINGS = ("n_prompts", "new_tokens", "prompt_tokens")


@dataclass(frozen=True)
class GenerationResult:
    """What :func:`run_generations` did."""

    path: Path
    """``RUN/steered_text.parquet``."""
    features: list[int]
    """Every feature the table now holds."""
    generated: list[int]
    """The features this call generated (empty: all were there already)."""
    seconds: float
    """Wall time of this call (model loading excluded)."""
    tokens: int
    """Tokens this call generated (every condition and prompt)."""


def card_features(run: str | Path) -> list[int]:
    """The features the report's cards show for ``run`` (the cleanest and the least clean by
    measured cleanliness; :func:`steerscreen.report.cards.pick`)."""
    values = measured(load_run(run))
    return [] if values is None else [p.feature for p in pick(values)]


def requested(run: str | Path, features: Sequence[int],
              log: Callable[[str], None] | None = None) -> GenerationResult | None:
    """``steerscreen report --feature``: steered text for features the user names (a run
    folder only: a study's cards are its runs')."""
    if not features:
        return None
    if not is_run(Path(run)):
        raise SpecError(f"--feature needs a run folder, and {str(run)!r} is not one",
                        "pass --run STUDY/runs/NAME (or a run folder) with --feature")
    return run_generations(run, features, log=log)


def run_generations(run: str | Path, features: Sequence[int], *,
                    model: HookedModel | None = None, sae: LoadedSAE | None = None,
                    n_prompts: int = 3, new_tokens: int = 24, prompt_tokens: int = 16,
                    log: Callable[[str], None] | None = None) -> GenerationResult:
    """Write (or extend) ``steered_text.parquet`` in ``run`` for ``features`` (see the module
    docstring). ``model`` / ``sae``: already loaded ones instead of the recorded specs."""
    say = log or (lambda _m: None)
    rd = RunDir(run)
    settings = {"n_prompts": n_prompts, "new_tokens": new_tokens, "prompt_tokens": prompt_tokens}
    stats = _complete(rd, "stats")
    _complete(rd, "steer")
    alphas = _alphas(rd, [int(f) for f in dict.fromkeys(features)])
    old = _kept(rd, settings, alphas)
    done = set(old["feature"].to_list()) if old is not None else set()
    todo = [f for f in alphas if f not in done]
    path = rd.file(STEERED_TEXT)
    if not todo:
        return GenerationResult(path, sorted(done), [], 0.0, 0)
    sc = stats["config"]
    device = _device(rd)
    model = model or load_model(sc["model"], device, sc.get("dtype", "float32"))
    sae = sae or load_sae(sc["sae"], device=device)
    prompts = _prompts(rd, n_prompts, prompt_tokens)
    say(f"generating steered text for {len(todo)} feature(s): {n_prompts} prompts x "
        f"{new_tokens} tokens, clean, 1x and 2x the dose")
    t0 = time.perf_counter()
    rows, n_tok = _generate(model, sae, stats["inputs"]["hook"], prompts, todo, alphas, old,
                            new_tokens)
    seconds = time.perf_counter() - t0
    new = pl.DataFrame(rows, schema=_SCHEMA)
    table = new if old is None else pl.concat([old, new])
    table = table.sort(["feature", "prompt", "condition_index"])
    rd.write_table(STEERED_TEXT, table)
    _record(rd, settings, table, seconds, n_tok, replace=old is None)
    say(f"steered text: {len(todo)} feature(s), {n_tok} tokens in {seconds:.1f} s")
    return GenerationResult(path, sorted(set(table["feature"].to_list())), todo, seconds, n_tok)


_SCHEMA = {"feature": pl.Int64, "prompt": pl.Int64, "context_id": pl.Int64,
           "prompt_text": pl.String, "prompt_ids": pl.List(pl.Int64), "condition": pl.String,
           "condition_index": pl.Int64, "alpha": pl.Float64, "token_ids": pl.List(pl.Int64),
           "tokens": pl.List(pl.String), "logprob_rise": pl.List(pl.Float64)}


@dataclass(frozen=True)
class _Prompts:
    ids: torch.Tensor  # int64 [P, prompt_tokens], BOS first
    context_ids: list[int]


def _complete(rd: RunDir, stage: str) -> dict[str, Any]:
    rec = rd.stage(stage) if rd.manifest_path.is_file() else None
    if rec is None or rec.get("status") != "complete":
        raise SteerscreenError(f"{str(rd.path)!r} holds no complete {stage} stage",
                               f"run `steerscreen {stage}` for it first")
    return rec


def _device(rd: RunDir) -> str:
    rec = rd.stage("steer") or {}
    runtime = (rec.get("results") or {}).get("runtime") or {}
    return str(runtime.get("device") or (rec.get("config") or {}).get("device") or "cpu")


def _alphas(rd: RunDir, features: list[int]) -> dict[int, float]:
    """Each feature's dose: its outcome row's alpha at the analysed strength on the primary
    set, else (not steered) feature_dose_stats' alpha."""
    data = load_run(rd.path)
    rows = data.at_strength()
    own: dict[int, float] = {}
    if rows is not None:
        feat = rows.filter((pl.col("direction") == "feature")
                           & (pl.col("context_set") == data.primary_set))
        own = dict(zip(feat["feature"].to_list(), feat["alpha"].to_list(), strict=True))
    missing = [f for f in features if f not in own]
    if missing and rd.file(FEATURE_DOSE_STATS).is_file():
        dose = rd.read_table(FEATURE_DOSE_STATS, ("feature", "alpha"))
        own |= {int(f): float(a) for f, a in zip(dose["feature"].to_list(),
                                                 dose["alpha"].to_list(), strict=True)
                if f in set(missing)}
    bad = [f for f in features if not math.isfinite(own.get(f, math.nan))]
    if bad:
        raise SteerscreenError(f"no dose recorded for feature(s) {bad[:8]} in {str(rd.path)!r}",
                               "pass features of the run's SAE that the steer stage covers")
    return {f: float(own[f]) for f in features}


def _kept(rd: RunDir, settings: dict[str, int], alphas: dict[int, float]) -> pl.DataFrame | None:
    """The existing table's rows that still hold: same settings, each feature at its dose
    (None: no table, or it was made otherwise and is regenerated)."""
    path = rd.file(STEERED_TEXT)
    rec = rd.read_manifest().get("generation") or {}
    if not path.is_file() or {k: rec.get(k) for k in SETTINGS} != settings:
        return None
    old = rd.read_table(STEERED_TEXT, tuple(_SCHEMA))
    ones = old.filter(pl.col("condition") == "1x")
    stale = {int(f) for f, a in zip(ones["feature"].to_list(), ones["alpha"].to_list(),
                                    strict=True) if f in alphas and a != alphas[f]}
    return old.filter(~pl.col("feature").is_in(list(stale)))


def _prompts(rd: RunDir, n: int, length: int) -> _Prompts:
    ctx = rd.read_table(RunDir.CONTEXTS, ("context_id", "set", "token_ids"))
    sets = set(ctx["set"].to_list())
    use = "fresh" if "fresh" in sets else "steering"
    rows = ctx.filter(pl.col("set") == use).sort("context_id").head(n)
    if rows.height == 0:
        raise SteerscreenError(f"{str(rd.path)!r} records no steering contexts",
                               "rerun `steerscreen steer` for it")
    ids = np.array([r[:length] for r in rows["token_ids"].to_list()], dtype=np.int64)
    return _Prompts(torch.as_tensor(ids), rows["context_id"].to_list())


def _decode(model: HookedModel, ids_NW: np.ndarray) -> list[str | None]:
    tok = getattr(model, "tokenizer", None)
    if ids_NW.size == 0 or not callable(getattr(tok, "batch_decode", None)):
        return [None] * ids_NW.shape[0]
    return decode_rows(tok, ids_NW)


def _generate(model: HookedModel, sae: LoadedSAE, hook: str, prompts: _Prompts,
              todo: list[int], alphas: dict[int, float], old: pl.DataFrame | None,
              new_tokens: int) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``todo`` -> (rows, tokens generated). Clean once (or from ``old``)."""
    p = prompts.ids.shape[0]
    text = _decode(model, prompts.ids[:, 1:].numpy())
    clean = _old_clean(old, p)
    n_tok = 0
    if clean is None:
        c = greedy(model, hook, prompts.ids, None, new_tokens)
        clean = [(ids, [0.0] * new_tokens) for ids in c.token_ids.cpu().tolist()]
        n_tok += p * new_tokens
    rows: list[dict[str, Any]] = []
    W = sae.sae.W_dec
    for i in range(0, len(todo), FEATURES_PER_BATCH):
        chunk = todo[i:i + FEATURES_PER_BATCH]
        # rows: feature-major, then 1x / 2x, then prompt
        shift = torch.stack([m * alphas[f] * unit_direction(W, f) for f in chunk
                             for m in (1.0, 2.0) for _ in range(p)])
        ids = prompts.ids.repeat(2 * len(chunk), 1)
        out = greedy(model, hook, ids, shift, new_tokens)
        rise = logprob_rise(model, ids, out).cpu().tolist()
        gen = out.token_ids.cpu().tolist()
        n_tok += len(gen) * new_tokens
        for j, f in enumerate(chunk):
            for k, cond in enumerate(CONDITIONS):
                for q in range(p):
                    r = (j * 2 + k - 1) * p + q
                    g, lr = clean[q] if cond == "clean" else (gen[r], rise[r])
                    mult = (0.0, 1.0, 2.0)[k]
                    rows.append({"feature": f, "prompt": q, "context_id": prompts.context_ids[q],
                                 "prompt_text": text[q], "prompt_ids": prompts.ids[q].tolist(),
                                 "condition": cond, "condition_index": k,
                                 "alpha": mult * alphas[f], "token_ids": g, "tokens": None,
                                 "logprob_rise": lr})
    strings = _decode(model, np.array([t for r in rows for t in r["token_ids"]])[:, None])
    for n, r in enumerate(rows):
        r["tokens"] = strings[n * new_tokens:(n + 1) * new_tokens]
    return rows, n_tok


def _old_clean(old: pl.DataFrame | None, p: int) -> list[tuple[list[int], list[float]]] | None:
    """The clean continuations already in the table (they do not depend on the feature)."""
    if old is None:
        return None
    clean = old.filter(pl.col("condition") == "clean")
    if clean.height == 0:
        return None
    first = clean.filter(pl.col("feature") == clean["feature"][0]).sort("prompt")
    if first.height != p:
        return None
    return [(r["token_ids"], r["logprob_rise"]) for r in first.iter_rows(named=True)]


def _record(rd: RunDir, settings: dict[str, int], table: pl.DataFrame, seconds: float,
            tokens: int, *, replace: bool) -> None:
    """The manifest's ``generation`` record: settings, features, cost summed over calls."""
    rec = {} if replace else dict(rd.read_manifest().get("generation") or {})
    n = table["feature"].n_unique()
    total_s = float(rec.get("seconds", 0.0)) + seconds
    rd.update_manifest({"generation": {
        **settings, "conditions": list(CONDITIONS), "n_features": n,
        "seconds": total_s, "tokens": int(rec.get("tokens", 0)) + tokens,
        "seconds_per_feature": total_s / n if n else None,
        "prompts": "the first tokens of the first fresh contexts (contexts.parquet)",
        "decoding": "greedy, KV cache; steered as the steer stage steers"}})


__all__ = ["CONDITIONS", "GenerationResult", "card_features", "run_generations"]
