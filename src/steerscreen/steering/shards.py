"""Outcome shards of the steer stage: what makes it resumable.

Finished directions are written in small parquet shards (``RUN/steering_shards/``), each through
a temp file and a rename, so a shard holds whole directions or does not exist. A resumed run
reads the shards (:func:`done_keys`) and skips every (direction, strength, context set) already
there; a shard that cannot be read (disk trouble) is deleted and its directions rerun.
:func:`gather` turns the shards into the final outcome and Gram tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from steerscreen.errors import ArtifactError
from steerscreen.files import atomic_path
from steerscreen.steering.outcomes import OUTCOME_COLUMNS


def write_shard(shard_dir: Path, rows: list[dict[str, Any]]) -> None:
    shard_dir.mkdir(parents=True, exist_ok=True)
    first = rows[0]
    name = f"{first['context_set']}-s{first['strength_index']}-{first['feature']:+08d}.parquet"
    with atomic_path(shard_dir / name) as tmp:
        pl.DataFrame(rows).write_parquet(tmp)


def read_shards(shard_dir: Path) -> pl.DataFrame | None:
    frames = []
    for p in sorted(shard_dir.glob("*.parquet")) if shard_dir.is_dir() else []:
        try:
            frames.append(pl.read_parquet(p))
        except Exception:  # a damaged shard (disk trouble): drop it, its directions rerun
            p.unlink(missing_ok=True)
    return pl.concat(frames, how="vertical_relaxed") if frames else None


def done_keys(shard_dir: Path) -> set[tuple[int, int, str]]:
    df = read_shards(shard_dir)
    if df is None:
        return set()
    return set(zip(df["feature"].to_list(), df["strength_index"].to_list(),
                   df["context_set"].to_list(), strict=True))


def gather(shard_dir: Path, ids: np.ndarray, strengths: list[float], sets: list[str]
            ) -> tuple[pl.DataFrame, pl.DataFrame]:
    df = read_shards(shard_dir)
    want = len(ids) * len(strengths) * len(sets)
    if df is None or df.unique(["feature", "strength_index", "context_set"]).height != want:
        raise ArtifactError(f"the steering shards in {str(shard_dir)!r} are incomplete",
                            "rerun the same steer command to finish them")
    df = df.unique(["feature", "strength_index", "context_set"], keep="first")
    order = {int(d): i for i, d in enumerate(ids)}
    df = (df.with_columns(pl.col("feature").replace_strict(order).alias("_o"),
                          pl.col("context_set").replace_strict(
                              {s: i for i, s in enumerate(sets)}).alias("_s"))
          .sort(["_s", "strength_index", "_o"]).drop(["_o", "_s"]))
    key = ["feature", "direction", "strength", "alpha", "context_set", "n_contexts"]
    outcomes = df.select([*key, *OUTCOME_COLUMNS, "downstream_targets"])
    gram = df.select(["feature", "direction", "strength", "context_set", "n_contexts", "gram"])
    return outcomes, gram
