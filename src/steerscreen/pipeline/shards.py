"""Outcome shards of the steer stage: what makes it resumable.

Finished directions are written in small parquet shards (``RUN/steering_shards/``), each through
a temp file and a rename, so a shard holds whole directions or does not exist. The protocol:

1. **Write, then record.** :func:`write_shard` renames the shard into place and returns its
   name, sha256 and row count; the stage then records it in the manifest (``stages.steer.shards``,
   one small atomic manifest write per shard).
2. **Reconcile on resume.** :func:`reconcile` checks the folder against that record before
   anything is steered: a recorded shard whose hash no longer matches (or whose file is gone) is
   discarded and its directions are steered again; a shard on disk but not recorded (the process
   died between the rename and the manifest write) is read back in full and, if it is a whole
   readable shard, adopted (hashed and recorded), never recomputed; an unreadable one is deleted.
   Temp files of a write the process died in are deleted.
3. **Skip what is done.** :func:`done_keys` lists every (direction, strength, context set) the
   kept shards hold; the stage steers only the rest.

:func:`gather` turns the shards into the final outcome and Gram tables; the stage then deletes
the folder and drops the shard record (``RunDir.complete_stage``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from steerscreen.errors import ArtifactError
from steerscreen.files import atomic_path, sha256_file
from steerscreen.steering.engine import CleanCache, SteeringEngine
from steerscreen.steering.outcomes import OUTCOME_COLUMNS, EffectTokens

_KEY = ["feature", "strength_index", "context_set"]


def shard_rows(engine: SteeringEngine, cache: CleanCache, context_set: str,
               dirs_KD: torch.Tensor, ids: np.ndarray, strength: float, strength_index: int,
               alpha: float | Sequence[float], per_shard: int,
               advance: Callable[[int], None] | None = None, *, r: float | None = None,
               target_kl: float | None = None) -> Iterator[list[dict[str, Any]]]:
    """Steer ``dirs_KD`` (feature ids ``ids``; random directions < 0) on ``cache``'s contexts
    (the set ``context_set``) -> the outcome rows, ``per_shard`` directions per yielded list
    (a shard's rows).

    ``alpha`` one per direction (``--dose equal-kl``, with the residual norm ``r`` and the
    ``target_kl``): each row records its own alpha, its own strength ``alpha / r`` and the
    ``target_kl`` (the dose's label, :func:`steerscreen.layout.dose_groups`)."""
    per_dir = not isinstance(alpha, int | float)
    if per_dir and (r is None or target_kl is None):
        raise ValueError("per-direction alphas need the residual norm r and the target_kl")
    rows: list[dict[str, Any]] = []
    for k, out in engine.run(cache, dirs_KD, alpha, progress=advance):
        d = int(ids[k])
        a = float(alpha[k]) if per_dir else float(alpha)  # type: ignore[index,arg-type]
        dose = ({"strength": a / r, "alpha": a, "target_kl": float(target_kl)}  # type: ignore
                if per_dir else {"strength": float(strength), "alpha": a})
        rows.append({"feature": d, "direction": "feature" if d >= 0 else "random",
                     "strength": dose["strength"], "strength_index": strength_index,
                     "alpha": dose["alpha"], "context_set": context_set,
                     "n_contexts": cache.n_contexts, **out.values,
                     "downstream_targets": out.targets.astype(np.int64).tolist(),
                     "gram": out.gram.reshape(-1).tolist(),
                     **_token_columns(out.tokens),
                     **({"target_kl": dose["target_kl"]} if per_dir else {})})
        if len(rows) >= per_shard:
            yield rows
            rows = []
    if rows:
        yield rows


TOKEN_COLUMNS = ("promoted_ids", "promoted", "suppressed_ids", "suppressed")
"""A shard row's measured top effect tokens (:class:`~steerscreen.steering.outcomes.
EffectTokens`), as lists."""


def _token_columns(t: EffectTokens) -> dict[str, list]:
    return {"promoted_ids": t.promoted_ids.tolist(), "promoted": t.promoted.tolist(),
            "suppressed_ids": t.suppressed_ids.tolist(), "suppressed": t.suppressed.tolist()}


def write_shard(shard_dir: Path, rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Write one shard atomically -> (its file name, {sha256, rows}) for the manifest."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    first = rows[0]
    name = f"{first['context_set']}-s{first['strength_index']}-{first['feature']:+08d}.parquet"
    with atomic_path(shard_dir / name) as tmp:
        pl.DataFrame(rows).write_parquet(tmp)
        info = {"sha256": sha256_file(tmp), "rows": len(rows)}
    return name, info


def reconcile(shard_dir: Path, recorded: Mapping[str, Mapping[str, Any]]
              ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Check the shard folder against the manifest's shard record (step 2 of the protocol).

    Returns the shards to keep (name -> {sha256, rows}: what the manifest should now record)
    and one line per shard that was discarded or adopted. Discarded files are deleted.
    """
    kept: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    on_disk = sorted(shard_dir.glob("*.parquet")) if shard_dir.is_dir() else []
    for p in on_disk:
        rec = recorded.get(p.name)
        digest = sha256_file(p)
        if rec is not None and not _has_tokens(p):
            notes.append(f"shard {p.name} was written by an older steerscreen (no measured top "
                         "tokens): discarded, its directions are steered again")
            p.unlink(missing_ok=True)
            continue
        if rec is not None:
            if digest == rec.get("sha256"):
                kept[p.name] = {"sha256": digest, "rows": int(rec.get("rows", 0))}
                continue
            notes.append(f"shard {p.name} does not match its recorded sha256: discarded, its "
                         "directions are steered again")
            p.unlink(missing_ok=True)
            continue
        rows = _readable_rows(p)
        if rows is None:
            notes.append(f"shard {p.name} is unreadable and unrecorded: discarded, its "
                         "directions are steered again")
            p.unlink(missing_ok=True)
            continue
        kept[p.name] = {"sha256": digest, "rows": rows}
        notes.append(f"shard {p.name} was written but not recorded (interrupted): verified "
                     "and adopted")
    for name in sorted(set(recorded) - {p.name for p in on_disk}):
        notes.append(f"recorded shard {name} is missing: its directions are steered again")
    if shard_dir.is_dir():  # temp files of a write that never finished
        for tmp in shard_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    return kept, notes


def _has_tokens(p: Path) -> bool:
    """Whether a shard holds the top effect tokens (True for an unreadable one: the checks
    after this one discard it)."""
    try:
        names = pl.read_parquet_schema(p)
    except Exception:  # polars raises several types for a bad file
        return True
    return all(c in names for c in TOKEN_COLUMNS)


def _readable_rows(p: Path) -> int | None:
    """Rows of a whole, readable shard with every column this version writes, or None."""
    try:
        df = pl.read_parquet(p)
    except Exception:  # polars raises several types for a bad file
        return None
    if df.height == 0 or any(c not in df.columns for c in (*_KEY, *TOKEN_COLUMNS)):
        return None
    return df.height


def read_shards(shard_dir: Path) -> pl.DataFrame | None:
    frames = []
    for p in sorted(shard_dir.glob("*.parquet")) if shard_dir.is_dir() else []:
        try:
            frames.append(pl.read_parquet(p))
        except Exception:  # a damaged shard (disk trouble): drop it, its directions rerun
            p.unlink(missing_ok=True)
    # diagonal: a shard of an older steerscreen without the token columns gets nulls there
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def done_keys(shard_dir: Path) -> set[tuple[int, int, str]]:
    df = read_shards(shard_dir)
    if df is None:
        return set()
    return set(zip(df["feature"].to_list(), df["strength_index"].to_list(),
                   df["context_set"].to_list(), strict=True))


@dataclass(frozen=True)
class Gathered:
    """The steer stage's tables from its shards."""

    outcomes: pl.DataFrame
    """``steering_outcomes.parquet``."""
    gram: pl.DataFrame
    """``steering_gram.parquet``."""
    tokens: pl.DataFrame
    """The measured top effect tokens (:func:`effect_token_rows`), not yet decoded."""


def gather(shard_dir: Path, ids: np.ndarray, strengths: list[float], sets: list[str]
           ) -> Gathered:
    df = read_shards(shard_dir)
    want = len(ids) * len(strengths) * len(sets)
    if df is None or df.unique(_KEY).height != want:
        raise ArtifactError(f"the steering shards in {str(shard_dir)!r} are incomplete",
                            "rerun the same steer command to finish them")
    df = df.unique(_KEY, keep="first")
    order = {int(d): i for i, d in enumerate(ids)}
    df = (df.with_columns(pl.col("feature").replace_strict(order).alias("_o"),
                          pl.col("context_set").replace_strict(
                              {s: i for i, s in enumerate(sets)}).alias("_s"))
          .sort(["_s", "strength_index", "_o"]).drop(["_o", "_s"]))
    key = ["feature", "direction", "strength", "alpha", "context_set", "n_contexts"]
    if "target_kl" in df.columns:  # --dose equal-kl: the dose's label, beside each own s
        key.append("target_kl")
    outcomes = df.select([*key, *OUTCOME_COLUMNS, "downstream_targets"])
    gram = df.select(["feature", "direction", "strength", "context_set", "n_contexts", "gram"])
    return Gathered(outcomes, gram, effect_token_rows(df))


def effect_token_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Shard rows -> one row per (direction, strength, set, kind, rank): feature, direction,
    strength, context_set, kind (promoted | suppressed), rank (1 = the largest |m_v| of its
    kind), token_id, value (the entry of m). Rows without tokens (older shards) give none."""
    key = ["feature", "direction", "strength", "context_set"]
    frames = []
    for kind in ("promoted", "suppressed"):
        if kind not in df.columns:
            continue
        frames.append(df.select(*key, pl.col(f"{kind}_ids").alias("token_id"),
                                pl.col(kind).alias("value"))
                      .with_columns(pl.lit(kind).alias("kind"),
                                    pl.int_ranges(1, pl.col("token_id").list.len() + 1)
                                    .alias("rank"))
                      .explode("token_id", "value", "rank")
                      .filter(pl.col("token_id").is_not_null()))
    if not frames:
        return pl.DataFrame(schema={**{k: df.schema[k] for k in key}, "kind": pl.String,
                                    "rank": pl.Int64, "token_id": pl.Int64,
                                    "value": pl.Float64})
    return (pl.concat(frames).select(*key, "kind", pl.col("rank").cast(pl.Int64),
                                     pl.col("token_id").cast(pl.Int64),
                                     pl.col("value").cast(pl.Float64)))
