"""The stats pass on Ray: one task per shard of contexts, merged in shard order.

The pass over the stats split is cut into shards of ``shard_contexts`` contexts (the local
backend cuts it the same way, :func:`~steerscreen.stats.collect.collect_stats`). Each shard is
one Ray task (:func:`stats_shard`): the worker loads the model and SAE by their specs (once per
worker process), checks their sha256 against the driver's, runs the shard's contexts from a
fresh accumulator and returns its state. The driver

1. saves each arriving state in ``RUN/.stats_shards/shard-NNNNNN.{safetensors,json}`` (through
   temp files) and records it in the manifest (``stages.stats.shards``: name -> files' sha256),
   so a driver that dies loses no finished shard;
2. merges the states in shard order as soon as the next one is there (a state that arrives early
   waits on disk), so it holds at most the running total and one shard;
3. on a rerun with the same config and inputs, keeps every recorded shard whose files still
   match their hashes, adopts a whole one written but not yet recorded, and runs only the rest.

The merged state equals the local backend's bit for bit (counts are integers, reservoirs and
examples are chosen by a total order on firings, the float64 sums fold per shard in shard
order; :mod:`steerscreen.stats.accumulators`), given the same ``batch_size`` and
``shard_contexts`` and the same hardware and library versions.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerscreen.corpus import Contexts
from steerscreen.errors import ArtifactError
from steerscreen.layout import STATS_SHARDS
from steerscreen.models import HookedModel, load_model, model_sha256
from steerscreen.pipeline import checkpoint, cluster
from steerscreen.pipeline.runs import RunDir
from steerscreen.saes.io import load_sae
from steerscreen.stats.accumulators import StatsAccumulator, StatsOptions
from steerscreen.stats.collect import collect_stats

SHARD_DIR = STATS_SHARDS


@dataclass(frozen=True)
class ShardTask:
    """What one worker needs for one shard (small: the shard's token ids, specs and hashes)."""

    index: int
    start: int
    """The shard's first context in the pass (its contexts keep their pass indices)."""
    token_ids: np.ndarray
    """int64 [n, T]: the shard's contexts."""
    model: str
    dtype: str
    device: str
    trust_remote_code: bool
    sae: str
    hook: str
    model_sha256: str
    sae_sha256: str
    options: dict[str, Any]
    batch_size: int
    final_norm_contexts: int
    task_cpus: float


def stats_shard(task: ShardTask) -> dict[str, Any]:
    """Run one shard from a fresh accumulator -> its state (``StatsAccumulator.state_dict``,
    tensors on the CPU). Runs on a Ray worker."""
    cluster.task_threads(task.task_cpus)
    model, sae = cluster.worker_cached(
        ("stats", task.model, task.dtype, task.device, task.sae, task.model_sha256,
         task.sae_sha256), lambda: _load(task))
    n = task.token_ids.shape[0]
    ctx = Contexts(np.array(task.token_ids, dtype=np.int64), np.zeros(n, np.int64),
                   np.zeros(n, np.int64))  # a copy: Ray hands arrays over read-only
    # Context i of the shard is context start + i of the pass: its id, and whether it is one of
    # the pass's first final_norm_contexts, follow from that.
    acc = collect_stats(model, sae, ctx, task.hook, options=StatsOptions(**task.options),
                        batch_size=task.batch_size, ctx_id_offset=task.start,
                        final_norm_contexts=task.final_norm_contexts - task.start)
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v
            for k, v in acc.state_dict().items()}


def _load(task: ShardTask):  # type: ignore[no-untyped-def]
    sae = load_sae(task.sae, device=task.device)
    if sae.sha256 != task.sae_sha256:
        raise ArtifactError(f"the SAE {task.sae!r} on this Ray worker differs from the driver's "
                            f"(sha256 {sae.sha256[:12]} vs {task.sae_sha256[:12]})",
                            "give every node the same SAE files (or a hub spec)")
    return worker_model(task.model, task.device, task.dtype, task.trust_remote_code,
                        task.model_sha256), sae


def worker_model(spec: str, device: str, dtype: str, trust_remote_code: bool, sha256: str
                 ) -> HookedModel:
    """The model a Ray worker loads by its spec, refused when it is not the driver's."""
    model = load_model(spec, device, dtype, trust_remote_code=trust_remote_code)
    got = model_sha256(model)
    if got != sha256:
        raise ArtifactError(f"the model {spec!r} on this Ray worker differs from the "
                            f"driver's (sha256 {got[:12]} vs {sha256[:12]})",
                            "give every node the same model files (or a hub spec)")
    return model


def shard_bounds(n_contexts: int, shard_contexts: int) -> list[tuple[int, int]]:
    """The pass's shards as (start, stop) context ranges."""
    return [(i, min(i + shard_contexts, n_contexts)) for i in range(0, n_contexts,
                                                                     shard_contexts)]


def reconcile(folder: Path, key: str, recorded: dict[str, Any] | None,
              bounds: list[tuple[int, int]], say: Callable[[str], None]
              ) -> dict[str, dict[str, Any]]:
    """The shard states in ``folder`` that can be kept -> {shard index as str: record}.

    A recorded shard whose files no longer match the record is dropped (and redone); a whole
    state written but not recorded (the driver died in between) is adopted; a shard cut with
    another ``shard_contexts`` (its contexts are not this pass's shard ``bounds[i]``) and
    anything else in the folder (temp files, damaged or foreign states) is deleted."""
    kept: dict[str, dict[str, Any]] = {}
    recorded = recorded or {}
    if not folder.is_dir():
        return kept
    for meta_path in sorted(folder.glob("shard-*.json")):
        got = checkpoint.try_read_state(meta_path, key, None, say, "the stats shard", "redone")
        if got is None:
            continue
        _, meta, files = got
        name, i = str(int(meta["index"])), int(meta["index"])
        if i >= len(bounds) or (int(meta["start"]), int(meta["stop"])) != bounds[i]:
            say(f"the stats shard {meta_path.name} was cut for another --shard-contexts: redone")
            continue
        rec = recorded.get(name)
        if rec is not None and rec.get("files") != files:
            say(f"the stats shard {meta_path.name} differs from its record: redone")
            continue
        if rec is None:
            say(f"the stats shard {meta_path.name} was written but not recorded (interrupted): "
                "verified and adopted")
        kept[name] = {"start": int(meta["start"]), "stop": int(meta["stop"]), "files": files}
    keep = {f for rec in kept.values() for f in rec["files"]}
    for p in folder.iterdir():
        if p.is_file() and p.name not in keep:
            p.unlink(missing_ok=True)
    return kept


def ray_pass(cfg: Any, run: RunDir, contexts: Contexts, hook: str, inputs: dict[str, Any],
             key: str, recorded: dict[str, dict[str, Any]], say: Callable[[str], None],
             progress: Callable[[int], None]) -> StatsAccumulator:
    """The stats pass with one Ray task per shard (``cfg``: the stage's ``StatsConfig``;
    ``recorded``: the shards :func:`reconcile` kept, already recorded in the manifest)."""
    folder = run.file(SHARD_DIR)
    bounds = shard_bounds(len(contexts), cfg.shard_contexts)
    done = {int(i) for i in recorded}
    for i in done:
        progress(int(contexts.token_ids[bounds[i][0]:bounds[i][1]].size))
    shards = dict(recorded)
    todo = [i for i in range(len(bounds)) if i not in done]
    say(f"stats pass on Ray: {len(bounds)} shards of up to {cfg.shard_contexts} contexts"
        + (f" ({len(done)} already done)" if done else ""))
    merged = _Merge(folder, key, len(bounds))

    def on_result(j: int, state: dict[str, Any]) -> None:
        i = todo[j]
        acc = StatsAccumulator.from_state_dict(state)
        start, stop = bounds[i]
        files = checkpoint.write_state(folder, _stem(i), acc, key, index=i, start=start,
                                       stop=stop)
        shards[str(i)] = {"start": start, "stop": stop, "files": files}
        run.update_stage("stats", shards=shards)
        progress(int(contexts.token_ids[start:stop].size))
        merged.add(i, acc)

    tasks = [ShardTask(index=i, start=bounds[i][0],
                       token_ids=np.ascontiguousarray(contexts.token_ids[slice(*bounds[i])],
                                                      dtype=np.int64),
                       model=cfg.model, dtype=cfg.dtype, device=cfg.device,
                       trust_remote_code=cfg.trust_remote_code, sae=cfg.sae, hook=hook,
                       model_sha256=inputs["model_sha256"], sae_sha256=inputs["sae_sha256"],
                       options=StatsOptions.of(cfg).__dict__.copy(), batch_size=cfg.batch_size,
                       final_norm_contexts=cfg.final_norm_contexts, task_cpus=cfg.task_cpus)
             for i in todo]
    merged.drain()  # the recorded shards that lead the pass
    if tasks:
        cluster.run_tasks(cfg, cfg.device, stats_shard, tasks, on_result, what="stats")
    return merged.finish()


class _Merge:
    """The running merge in shard order: shards that arrive early wait on disk."""

    def __init__(self, folder: Path, key: str, n: int) -> None:
        self.folder, self.key, self.n = folder, key, n
        self.total: StatsAccumulator | None = None
        self.next = 0

    def add(self, i: int, acc: StatsAccumulator) -> None:
        """Shard ``i`` arrived (already saved): merge it now if it is the next one."""
        if i == self.next:
            self._take(acc)
        self.drain()

    def _take(self, acc: StatsAccumulator) -> None:
        self.total = acc if self.total is None else self.total.merge(acc)
        self.next += 1

    def drain(self) -> None:
        """Merge the saved shards that continue the merged prefix."""
        while self.next < self.n and (self.folder / f"{_stem(self.next)}.json").is_file():
            acc, _, _ = checkpoint.read_state(self.folder / f"{_stem(self.next)}.json",
                                              self.key, "cpu")
            assert acc is not None
            self._take(acc)

    def finish(self) -> StatsAccumulator:
        self.drain()
        if self.next != self.n or self.total is None:
            raise ArtifactError(f"the stats shards in {self.folder} are incomplete ({self.next} "
                                f"of {self.n} merged)", "rerun the same command to redo them")
        return self.total


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _stem(i: int) -> str:
    return f"shard-{i:06d}"


__all__ = ["SHARD_DIR", "ShardTask", "discard", "ray_pass", "reconcile", "shard_bounds",
           "stats_shard", "worker_model"]
