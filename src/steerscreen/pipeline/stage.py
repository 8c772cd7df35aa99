"""The skeleton every stage shares: guard, checks, cluster session, timings, progress.

A stage (``stats``, ``steer``, ``fit``) runs on one run folder in the same order:

1. **guard** (:func:`stage`): ``--resume`` must find a recorded stage, and a recorded stage with
   another config is refused unless ``--force`` (:meth:`RunDir.check_stage`, config only: before
   anything is loaded, so a typo costs a second);
2. the stage's own cheap **checks** (its ``check_*`` function), then, with ``--backend ray``, a
   **cluster session** (:meth:`StageRun.cluster`);
3. **load** its inputs and compare their hashes with the record (:meth:`StageRun.check`): the
   same config and inputs with intact outputs are **skipped**;
4. **compute**, with its pieces timed (:meth:`StageRun.timed`) and a progress bar
   (:func:`progress`), recording resumable progress as it goes;
5. **complete** the record with outputs, timings and results (``timings["total"]`` included).

:class:`Timer` is the timing part alone (the study times its steps with it too).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.progress import ProgressColumn, Task
from rich.text import Text

from steerscreen.pipeline import cluster
from steerscreen.pipeline.runs import RunDir, StageCheck

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class StageResult:
    """What every stage returns: its run folder, whether it was skipped, its timings."""

    run: RunDir
    skipped: bool
    """True when a complete stage with the same config and inputs was already there."""
    seconds: float
    """Wall time of this call (of the original run when skipped)."""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Timer:
    """Named wall-clock timings of one job (seconds)."""

    timings: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def timed(self, key: str, fn: Callable[[], T]) -> T:
        t = time.perf_counter()
        value = fn()
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t
        return value

    @contextlib.contextmanager
    def span(self, key: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t

    def total(self) -> dict[str, float]:
        """The timings with ``total`` (since the start) filled in."""
        self.timings["total"] = time.perf_counter() - self.start
        return self.timings


@dataclass
class StageRun(Timer):
    """One stage running on one run folder (see the module docstring)."""

    name: str = ""
    run: RunDir = field(default_factory=lambda: RunDir("."))
    config: Mapping[str, Any] = field(default_factory=dict)
    """The stage's result-defining config (``cfg.record()``)."""
    force: bool = False
    log: Callable[[str], None] | None = None
    hold: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def check(self, inputs: Mapping[str, Any]) -> StageCheck:
        """Config and input hashes against the record: run or skip (or raise on a conflict)."""
        return self.run.check_stage(self.name, self.config, force=self.force, inputs=inputs)

    def cluster(self, opts: Any, device: str) -> None:
        """With ``backend == "ray"``: Ray up and able to run a task before anything heavy
        loads; the session ends with the stage."""
        if opts.backend == "ray":
            self.hold.enter_context(cluster.session(opts, device, self.name))


@contextlib.contextmanager
def stage(name: str, folder: str | Path, config: Mapping[str, Any], *, force: bool = False,
          resume: bool = False, log: Callable[[str], None] | None = None,
          outputs: Iterable[str] = ()) -> Iterator[StageRun]:
    """Guard a stage (``--resume``, the config check, and no file among its ``outputs`` that
    steerscreen did not write: :meth:`RunDir.claim`) and hold its resources."""
    run = RunDir(folder)
    if resume:
        run.require_resumable(name, force=force)
    run.check_stage(name, config, force=force)
    for output in outputs:
        run.claim(output)
    with contextlib.ExitStack() as hold:
        yield StageRun(name=name, run=run, config=config, force=force, log=log, hold=hold)


@contextlib.contextmanager
def progress(enabled: bool, total: int, *, label: str, unit: str, completed: int = 0
             ) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (done / total, rate, elapsed, ETA) -> its advance, or a no-op."""
    if not enabled:
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               _Rate(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total, completed=completed)
        yield lambda n: bar.advance(task, n)


class _Rate(ProgressColumn):
    """Units per second."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = {"tokens": "tok"}.get(unit, unit)

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"? {self.unit}/s" if speed is None else f"{speed:,.1f} {self.unit}/s"
                    if speed < 100 else f"{speed:,.0f} {self.unit}/s", style="cyan")
