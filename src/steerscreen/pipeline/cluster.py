"""Where a stage's shards run: in this process (``local``, the default) or as Ray tasks (``ray``).

The two heavy stages are cut into shards whose results do not depend on where they ran: the
stats pass into runs of contexts whose accumulator states merge exactly (in shard order), the
steer stage into runs of directions whose outcome rows are computed independently. With
``--backend ray`` each shard is one Ray task; the driver (the process you started) keeps the run
folder: it writes and records every finished shard as it arrives, so

- a task whose worker dies (killed, out of memory, node lost) is retried by Ray up to
  ``max_retries`` times: its shard is redone, no finished shard is;
- a driver that dies loses nothing recorded: rerunning the command resumes with the shards
  still missing.

This module owns the Ray side only: the options every stage shares
(:class:`~steerscreen.config.ClusterOptions`, part of the stage configs, so they are also the
CLI's options), connecting to or starting a
cluster, running tasks with resources and retries, turning failures into actionable errors,
and a per-process cache so a worker loads the model once for all the tasks it runs. Ray is an
optional extra (``pip install 'steerscreen[ray]'``) and is imported only when asked for.

On a cluster every worker must be able to load the run's model and SAEs by the same specs (the
same paths on every node, or hub specs); each task checks the sha256 of what it loaded against
the driver's, so a different file on some node is an error, never a silently mixed result. The
driver loads the model too (tokenising, hashing, and the steer stage's dose calibration).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from steerscreen.config import ClusterOptions
from steerscreen.errors import SteerscreenError

CLUSTER_FIELDS = ClusterOptions.FIELDS
"""ClusterOptions' fields: where a stage runs, never what it computes (not in its record)."""
RAY_EXTRA = "pip install 'steerscreen[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or an error that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise SteerscreenError(f"--backend ray needs Ray, which is not installed ({e})",
                               f"{RAY_EXTRA}, or run with --backend local") from None
    return ray


@contextlib.contextmanager
def connected(opts: ClusterOptions) -> Iterator[Any]:
    """Ray, initialised: joined to ``opts.address``, or a local instance started for this
    block (and stopped after it). A session this process already opened is reused as is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # Workers' output (progress bars of every model load) stays in Ray's logs; their errors
    # come back as exceptions.
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                              "log_to_driver": False}
    if opts.address is None:
        kwargs["num_cpus"] = opts.workers
    else:
        _check_reachable(opts.address)
    try:
        ray.init(address=opts.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = opts.address or "a local Ray instance"
        raise SteerscreenError(f"could not start or join {where}: {e}",
                               "check --address (e.g. `ray start --head` prints it), or drop "
                               "it to start a local instance") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once when nothing listens at a HOST:PORT address: Ray itself keeps retrying
    an unreachable one for minutes. ``auto`` (and an address without a port) is left to Ray,
    which fails fast when it finds no cluster."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise SteerscreenError(f"could not start or join {address}: nothing answers there "
                               f"({e})",
                               "check --address (e.g. `ray start --head` prints it), or drop "
                               "it to start a local instance") from None


@contextlib.contextmanager
def session(opts: ClusterOptions, device: str, what: str) -> Iterator[Any]:
    """:func:`connected`, checked: Ray is installed and reachable and the cluster has the CPUs
    and GPUs one ``what`` task asks for. A stage opens it before it loads anything, so a bad
    setting fails in seconds, and every call of :func:`run_tasks` inside reuses it."""
    with connected(opts) as ray:
        res, total = opts.resources(device), ray.cluster_resources()
        for key, need in (("CPU", res["num_cpus"]), ("GPU", res["num_gpus"])):
            if need > total.get(key, 0.0):
                raise SteerscreenError(
                    f"each {what} task needs {need:g} {key}(s) but the Ray cluster has "
                    f"{total.get(key, 0.0):g}",
                    "lower --task-cpus / --task-gpus, or add nodes with them")
        yield ray


def run_tasks(opts: ClusterOptions, device: str, fn: Callable[[Any], Any],
              payloads: Sequence[Any], on_result: Callable[[int, Any], None], *,
              what: str) -> None:
    """Run ``fn(payload)`` for every payload as Ray tasks; ``on_result(i, value)`` is called in
    this process as each finishes (in completion order).

    Each task gets ``opts.resources(device)`` and ``max_retries`` reruns when its worker dies;
    an exception raised by ``fn`` itself is not retried (it would fail again) and is raised
    here: a :class:`SteerscreenError` as it is, anything else wrapped with the shard named.
    On an error or Ctrl-C the tasks still running are cancelled.
    """
    with session(opts, device, what) as ray:
        remote = ray.remote(fn).options(**opts.resources(device),
                                        max_retries=opts.max_retries, retry_exceptions=False,
                                        name=f"steerscreen-{what}")
        index = {remote.remote(p): i for i, p in enumerate(payloads)}
        pending = list(index)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    on_result(index[ref], _get(ray, ref, what, index[ref]))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def _get(ray: Any, ref: Any, what: str, i: int) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)  # the exception the task raised
        if isinstance(cause, SteerscreenError):  # a user error found on the worker, as it is
            raise SteerscreenError(cause.what, cause.fix) from None
        raise SteerscreenError(f"{what} shard {i} failed on a Ray worker: {e}",
                               "fix the cause shown above and rerun: finished shards are "
                               "kept") from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
            ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError) as e:
        raise SteerscreenError(f"{what} shard {i}: its worker died more than --max-retries "
                               f"times ({type(e).__name__})",
                               "check the workers' memory (--task-cpus / --task-gpus reserve "
                               "more per task) and rerun: finished shards are kept") from None


_CACHE: dict[Any, Any] = {}


def worker_cached(key: Any, load: Callable[[], Any]) -> Any:
    """``load()`` once per process and key: a Ray worker process runs many tasks, and loads the
    model and SAEs for the first only. One entry is kept (a new key drops the old one)."""
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = load()
    return _CACHE[key]


def task_threads(task_cpus: float) -> None:
    """Give a task's torch the CPUs it reserved (Ray sets OMP_NUM_THREADS only when it
    starts a worker, and a worker may run tasks that reserved other counts)."""
    import torch

    n = max(1, int(task_cpus))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


__all__ = ["CLUSTER_FIELDS", "RAY_EXTRA", "connected",
           "import_ray", "run_tasks", "session", "task_threads", "worker_cached"]
