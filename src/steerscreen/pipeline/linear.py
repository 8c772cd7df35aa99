"""The stats stage's linear-response step: the ``lin_*`` columns (:mod:`steerscreen.stats.linear`).

The forms depend on the model, the hook and the ``linearisation`` contexts, never on the SAE, so
they are computed once per process for each (model, hook, contexts) and every SAE of a study at
that hook reuses them (:data:`_CACHE`, the last one computed). The stage writes:

- ``linear_contexts.parquet``: the linearisation contexts (``contexts.parquet``'s schema, ``set``
  = ``"linearisation"``): the stats pass's first ``linear_contexts`` contexts (stats split),
  cut to ``linear_len`` tokens;
- ``linear_forms.safetensors``: the three d x d forms and the counts, so any direction's
  ``lin_kl`` (the steer stage's equal-KL dose for its random directions) needs no model.

With ``--backend ray`` each context is one Ray task (:func:`linear_context`: the worker loads the
model by its spec and checks its sha256) and the driver folds the partial sums in context order,
which gives the local backend's bits.

Interrupted, it resumes: after each context (at most every ``checkpoint_s`` seconds) the running
sums are saved in ``RUN/.linear_checkpoint/`` (tensors, then a JSON naming their sha256 and the
key of model, hook and contexts), and a rerun continues after the last saved context. The sums
are folded in context order, so a resumed pass gives the same bits.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from steerscreen.config import StatsConfig
from steerscreen.corpus import Contexts
from steerscreen.files import atomic_path, sha256_file
from steerscreen.layout import LINEAR_CHECKPOINT, LINEAR_CONTEXTS, LINEAR_FORMS
from steerscreen.models import HookedModel, HookPoint
from steerscreen.pipeline import cluster
from steerscreen.pipeline.runs import RunDir
from steerscreen.pipeline.stage import progress
from steerscreen.stats.linear import LinearForms, context_forms, linear_columns, linearise

FORMAT = "steerscreen-linear-checkpoint/1"
_CACHE: dict[str, LinearForms] = {}


def linear_contexts(cfg: StatsConfig, stats_contexts: Contexts) -> Contexts:
    """The first ``cfg.linear_contexts`` contexts of the stats pass (all of them when it has
    fewer), cut to their first ``cfg.linear_len`` tokens (default: whole)."""
    n = min(cfg.linear_contexts, len(stats_contexts))
    t = min(cfg.linear_len or stats_contexts.context_len, stats_contexts.context_len)
    return Contexts(stats_contexts.token_ids[:n, :t].copy(), stats_contexts.doc_ids[:n].copy(),
                    stats_contexts.starts[:n].copy())


def forms_key(model_sha256: str, hook: str, token_ids: np.ndarray) -> str:
    h = hashlib.sha256(f"{model_sha256}|{hook}|".encode())
    h.update(np.ascontiguousarray(token_ids, dtype=np.int64).tobytes())
    return h.hexdigest()


def linear_step(run: RunDir, cfg: StatsConfig, model: HookedModel, hook: HookPoint,
                stats_contexts: Contexts, model_sha256: str, W_dec_FD: torch.Tensor,
                top_ids_FK: np.ndarray | None, say: Callable[[str], None], show: bool = False
                ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """(``lin_*`` columns, {file: output record}, the stage's ``linear`` record); ``show``: a
    progress bar over the contexts."""
    ctx = linear_contexts(cfg, stats_contexts)
    if len(ctx) < 2:
        say(f"linear response skipped: the stats pass has {len(ctx)} context(s), it needs 2")
        return {}, {}, {"contexts": len(ctx), "skipped": True}
    key = forms_key(model_sha256, hook.name, ctx.token_ids)
    t0 = time.perf_counter()
    forms = _CACHE.get(key)
    reused = forms is not None
    if forms is None:
        folder = run.file(LINEAR_CHECKPOINT)
        partial = _load_partial(folder, key, model.device, say)
        start = partial.n_contexts if partial is not None else 0
        say(f"linear response: {len(ctx)} contexts x {ctx.context_len} tokens, {model.d_model} "
            f"basis directions at {hook.name}"
            + (f" (resuming after context {start})" if start else ""))
        saver = _Saver(folder, key, cfg.checkpoint_s, len(ctx))
        with progress(show, len(ctx), label="linear response", unit="contexts",
                      completed=start) as advance:
            def done(f: LinearForms) -> None:
                saver(f)
                advance(1)

            if cfg.backend == "ray":
                forms = _ray_forms(cfg, model, hook, ctx.token_ids, model_sha256, partial,
                                   done).finish()
            else:
                forms = linearise(model, hook, ctx.token_ids, forms=partial, on_context=done)
        _CACHE.clear()
        _CACHE[key] = forms
    else:
        say("linear response: reusing this process's forms for the same model, hook and "
            "contexts")
    seconds_forms = time.perf_counter() - t0
    t1 = time.perf_counter()
    ids = torch.tensor(np.asarray(top_ids_FK)) if top_ids_FK is not None else None
    cols = linear_columns(forms, W_dec_FD.detach().float(), ids)
    seconds_cols = time.perf_counter() - t1
    outputs = {LINEAR_CONTEXTS: run.write_table(LINEAR_CONTEXTS, contexts_table(ctx)),
               LINEAR_FORMS: _write_forms(run, forms, key)}
    record = {"contexts": len(ctx), "context_len": ctx.context_len,
              "positions": forms.n_positions, "key": key, "reused": reused,
              "seconds_forms": seconds_forms, "seconds_columns": seconds_cols}
    return cols, outputs, record


@dataclass(frozen=True)
class LinearTask:
    """One linearisation context for a Ray worker."""

    index: int
    token_ids: np.ndarray  # int64 [1, T]
    model: str
    dtype: str
    device: str
    trust_remote_code: bool
    hook: str
    model_sha256: str
    task_cpus: float


def linear_context(task: LinearTask) -> dict[str, torch.Tensor]:
    """One context's partial forms (``LinearForms.state``, on the CPU). Runs on a Ray worker."""
    from steerscreen.pipeline.stats_ray import worker_model

    cluster.task_threads(task.task_cpus)

    def load() -> HookedModel:
        return worker_model(task.model, task.device, task.dtype, task.trust_remote_code,
                            task.model_sha256)

    model = cluster.worker_cached(("linear", task.model, task.dtype, task.device,
                                   task.model_sha256), load)
    part = context_forms(model, model.hook_point(task.hook),
                         torch.as_tensor(np.array(task.token_ids, dtype=np.int64)))
    return {k: v.cpu() for k, v in part.state().items()}


def _ray_forms(cfg: StatsConfig, model: HookedModel, hook: HookPoint, token_ids: np.ndarray,
               model_sha256: str, partial: LinearForms | None,
               done: Callable[[LinearForms], None]) -> LinearForms:
    """The running sums with one Ray task per context not yet in ``partial``, folded in
    context order as they arrive (the same bits as the local backend)."""
    forms = partial or LinearForms.zeros(model.d_model, model.vocab_size, model.device)
    start = forms.n_contexts
    tasks = [LinearTask(c, token_ids[c:c + 1], cfg.model, cfg.dtype, cfg.device,
                        cfg.trust_remote_code, hook.name, model_sha256, cfg.task_cpus)
             for c in range(start, token_ids.shape[0])]
    waiting: dict[int, dict[str, torch.Tensor]] = {}

    def on_result(i: int, state: dict[str, torch.Tensor]) -> None:
        waiting[start + i] = state
        while forms.n_contexts in waiting:
            forms.add(LinearForms.from_state(waiting.pop(forms.n_contexts)))
            done(forms)

    cluster.run_tasks(cfg, cfg.device, linear_context, tasks, on_result,
                      what="linear response")
    return forms


def contexts_table(ctx: Contexts) -> pl.DataFrame:
    return pl.DataFrame({
        "context_id": np.arange(len(ctx), dtype=np.int64), "set": ["linearisation"] * len(ctx),
        "token_ids": pl.Series(ctx.token_ids.astype(np.int32)).cast(pl.List(pl.Int32)),
        "doc_id": ctx.doc_ids, "start": ctx.starts})


def _write_forms(run: RunDir, forms: LinearForms, key: str) -> dict[str, Any]:
    tensors = {k: v.detach().cpu().contiguous() for k, v in forms.state().items()
               if k in ("M_sum", "M_ctx", "M_pos", "counts")}
    path = run.claim(LINEAR_FORMS)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"key": key, "format": "steerscreen-linear/1"})
        digest = sha256_file(tmp)
    run.record_file(LINEAR_FORMS, digest)
    return {"sha256": digest, "bytes": path.stat().st_size}


def read_forms(path: str | Path, device: torch.device | str = "cpu") -> LinearForms:
    """The d x d forms a stats stage wrote (enough for :meth:`LinearForms.kl_rate`; the d x V
    maps are empty)."""
    t = load_file(str(path), device=str(device))
    d = t["M_pos"].shape[0]
    empty = torch.zeros(d, 0, device=device)
    n_c, n_p, _ = (int(x) for x in t["counts"])
    return LinearForms(t["M_sum"], t["M_ctx"], t["M_pos"], empty, empty, n_c, n_p, True)


class _Saver:
    """After each context: save the running sums when ``interval_s`` has passed."""

    def __init__(self, folder: Path, key: str, interval_s: float, total: int) -> None:
        self.folder, self.key, self.interval_s, self.total = folder, key, interval_s, total
        self.last = time.monotonic()

    def __call__(self, forms: LinearForms) -> None:
        if forms.n_contexts >= self.total:
            return  # done: the stage completes next
        if self.interval_s > 0 and time.monotonic() - self.last < self.interval_s:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in forms.state().items()}
        with atomic_path(self.folder / "forms.safetensors") as tmp:
            save_file(tensors, str(tmp))
            digest = sha256_file(tmp)
        doc = {"format": FORMAT, "key": self.key, "n_contexts": forms.n_contexts,
               "tensors_sha256": digest}
        with atomic_path(self.folder / "forms.json") as tmp:
            tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
        self.last = time.monotonic()


def _load_partial(folder: Path, key: str, device: torch.device, say: Callable[[str], None]
                  ) -> LinearForms | None:
    meta_path = folder / "forms.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("key") != key:
            raise ValueError("it belongs to another model, hook or contexts")
        tensors = folder / "forms.safetensors"
        if sha256_file(tensors) != meta["tensors_sha256"]:
            raise ValueError("it is damaged")
        forms = LinearForms.from_state(load_file(str(tensors), device=str(device)))
        if forms.n_contexts != int(meta["n_contexts"]):
            raise ValueError("its counts disagree")
        return forms
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        say(f"the linear-response checkpoint is not used ({e}): starting over")
        return None


def discard(run: RunDir) -> None:
    shutil.rmtree(run.file(LINEAR_CHECKPOINT), ignore_errors=True)


__all__ = ["contexts_table", "discard", "forms_key", "linear_contexts", "linear_step",
           "read_forms"]
