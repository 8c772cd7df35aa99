"""The steer stage on Ray: one task per outcome shard, written and recorded by the driver.

The driver does everything but the steering itself, as locally: contexts, features, the dose
calibration and ``feature_dose_stats``. The directions still to steer are cut exactly as the
local backend cuts them into shards (``shard_directions`` per (context set, strength), in the
same order), and each shard is one Ray task (:func:`steer_shard`): the worker loads the model
and S' by their specs (once per worker process, sha256 checked against the driver's), runs the
set's clean pass (kept for the worker's next task on the same set) and steers the shard's
directions. The driver writes each arriving shard through :func:`~.shards.write_shard` and
records it in the manifest, so resuming after a lost driver is the local protocol unchanged
(:mod:`.shards`), and a task whose worker died is rerun by Ray.

Rows per forward must be the same in every task for the rows to round the same way: the
recorded or given ``--batch-rows``, or else one probe task sizes it from a worker's free
memory, and the stage records it before any shard runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerscreen.corpus import Contexts
from steerscreen.errors import ArtifactError
from steerscreen.models import load_model, model_sha256
from steerscreen.pipeline import cluster, shards
from steerscreen.saes.io import load_sae
from steerscreen.steering.engine import SteeringEngine, aligned_rows, cache_bytes


@dataclass(frozen=True)
class Setup:
    """What every steer task shares: the model, S', hooks and the outcome options."""

    model: str
    dtype: str
    device: str
    trust_remote_code: bool
    hook: str
    down_sae: str
    down_hook: str
    model_sha256: str
    down_sha256: str
    n_targets: int
    n_out: int
    n_target_tokens: int
    task_cpus: float


@dataclass(frozen=True)
class SteerTask:
    """One shard: ``dirs`` (float32 [k, D], feature ids ``ids``) on one context set."""

    setup: Setup
    context_set: str
    token_ids: np.ndarray
    batch_rows: int
    dirs: np.ndarray
    ids: np.ndarray
    strength: float
    strength_index: int
    alpha: float | tuple[float, ...]
    """One dose, or one per direction (--dose equal-kl, with r and target_kl)."""
    per_shard: int
    r: float | None = None
    target_kl: float | None = None


def steer_shard(task: SteerTask) -> list[dict[str, Any]]:
    """Steer one shard's directions -> its outcome rows. Runs on a Ray worker."""
    worker = _worker(task.setup)
    key = (task.context_set, hashlib.sha256(task.token_ids.tobytes()).hexdigest(),
           task.batch_rows)
    if worker["cache_key"] != key:  # one clean pass per set and worker, not per task
        worker["cache"], worker["cache_key"] = None, None  # free the last set's first
        worker["cache"] = worker["engine"].clean(np.array(task.token_ids),  # Ray's: read-only
                                                 batch_rows=task.batch_rows)
        worker["cache_key"] = key
    return [row for rows in shards.shard_rows(
        worker["engine"], worker["cache"], task.context_set, torch.tensor(task.dirs),
        np.array(task.ids), task.strength, task.strength_index, task.alpha, task.per_shard,
        r=task.r, target_kl=task.target_kl) for row in rows]


def probe_rows(setup: Setup, sizes: list[tuple[int, int]]) -> list[int]:
    """Rows per forward a worker's free memory allows for each (contexts, context_len) set
    (what the local engine would choose there). Runs on a Ray worker."""
    engine: SteeringEngine = _worker(setup)["engine"]
    model, g = engine.model, engine.down.d_sae if engine.down is not None else 0
    return [engine.batch_rows(c, t, reserved=cache_bytes(c, t, model.vocab_size, model.d_model,
                                                         g)) for c, t in sizes]


def _worker(setup: Setup) -> dict[str, Any]:
    cluster.task_threads(setup.task_cpus)
    return cluster.worker_cached(("steer", setup), lambda: _load(setup))


def _load(setup: Setup) -> dict[str, Any]:
    down = load_sae(setup.down_sae, device=setup.device)
    if down.sha256 != setup.down_sha256:
        raise ArtifactError(f"the downstream SAE {setup.down_sae!r} on this Ray worker differs "
                            "from the driver's", "give every node the same SAE files")
    model = load_model(setup.model, setup.device, setup.dtype,
                       trust_remote_code=setup.trust_remote_code)
    if model_sha256(model) != setup.model_sha256:
        raise ArtifactError(f"the model {setup.model!r} on this Ray worker differs from the "
                            "driver's", "give every node the same model files (or a hub spec)")
    engine = SteeringEngine(model, setup.hook, down, setup.down_hook,
                            n_targets=setup.n_targets, n_out=setup.n_out,
                            n_target_tokens=setup.n_target_tokens)
    return {"engine": engine, "cache": None, "cache_key": None}


def ray_steer(opts: cluster.ClusterOptions, setup: Setup, sets: dict[str, Contexts],
              todo: dict[tuple[str, int], list[int]], dirs: torch.Tensor, ids: np.ndarray,
              strengths: list[float], r: float, per_shard: int,
              batch_rows: dict[str, int | None], record_rows: Callable[[str, int], None],
              save: Callable[[list[dict[str, Any]]], None],
              advance: Callable[[int], None], alphas: np.ndarray | None = None,
              target_kl: float | None = None) -> int:
    """Steer every ``todo`` direction as Ray tasks -> directions computed.

    ``alphas``: each direction's own alpha (--dose equal-kl, one label strength) instead of
    ``s * r``.

    ``batch_rows``: each set's rows per forward (given or recorded; None: probed on a worker),
    passed to ``record_rows`` before its first task; ``save`` gets each shard's rows."""
    names = [n for n in sets if any(todo.get((n, si)) for si in range(len(strengths)))]
    if not names:
        return 0
    with cluster.connected(opts):
        rows = {n: aligned_rows(b, len(sets[n])) for n in names
                if (b := batch_rows.get(n)) is not None}
        unsized = [n for n in names if n not in rows]
        if unsized:
            probe = [(len(sets[n]), sets[n].context_len) for n in unsized]
            cluster.run_tasks(opts, setup.device, _probe, [(setup, probe)],
                              lambda _i, v: rows.update(zip(unsized, v, strict=True)),
                              what="steer-probe")
        for n in names:
            record_rows(n, rows[n])
        tasks = []
        for n in names:
            ids_CT = np.ascontiguousarray(sets[n].token_ids, dtype=np.int64)
            for si, s in enumerate(strengths):
                idx = todo.get((n, si)) or []
                for i0 in range(0, len(idx), per_shard):  # the local backend's shards
                    part = idx[i0:i0 + per_shard]
                    alpha: float | tuple[float, ...] = (
                        float(s) * r if alphas is None
                        else tuple(float(a) for a in alphas[part]))
                    tasks.append(SteerTask(setup, n, ids_CT, rows[n],
                                           dirs[part].float().numpy(), ids[part], float(s),
                                           si, alpha, per_shard,
                                           r=None if alphas is None else r,
                                           target_kl=None if alphas is None else target_kl))
        computed = 0

        def on_result(i: int, out: list[dict[str, Any]]) -> None:
            nonlocal computed
            save(out)
            computed += len(out)
            advance(len(out) * len(sets[tasks[i].context_set]))

        cluster.run_tasks(opts, setup.device, steer_shard, tasks, on_result, what="steer")
    return computed


def _probe(args: tuple[Setup, list[tuple[int, int]]]) -> list[int]:
    return probe_rows(*args)


__all__ = ["Setup", "SteerTask", "probe_rows", "ray_steer", "steer_shard"]
