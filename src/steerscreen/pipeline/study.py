"""The main job: train the SAEs a study needs, then stats -> steer -> fit -> screen per SAE,
compare, report.

Layout (docs/method.md §5)::

    STUDY/study.json            the resolved config, the runs, stage timings, the headline
    STUDY/saes/NAME/            SAEs steerscreen trained (SAELens folders, with their summary)
    STUDY/runs/NAME/            one run folder per SAE compared, with its own screen of every
                                feature (screen.parquet/csv, ranked by its predictor)
    STUDY/comparison/           transfer.parquet, runs.parquet (steerscreen compare)
    STUDY/report.html           plus figures/ and summary.md

Every stage is cached and resumable on its own (trained SAEs by config key, run stages by their
manifest records, steering by shards), so rerunning the same command continues where it stopped
and a finished study reruns in seconds. The model is loaded once and shared by every stage; the
dose calibration is computed once and shared by the runs (it does not depend on the SAE).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from steerscreen import __version__, config
from steerscreen.config import SAEEntry, StudyConfig, study_terms
from steerscreen.errors import ArtifactError, OfflineError, SteerscreenError
from steerscreen.files import atomic_dir, utc_now, write_json
from steerscreen.layout import COMPARISON, RUNS, SCREENING, STUDY_FILE, STUDY_FORMAT, SUMMARY
from steerscreen.pipeline.plan import Plan, describe_plan, format_duration, make_plan
from steerscreen.pipeline.runs import StageConflict, environment
from steerscreen.pipeline.stage import Timer
from steerscreen.pipeline.train import SUMMARY as TRAIN_SUMMARY

T = TypeVar("T")


@dataclass(frozen=True)
class StudyRun:
    """One SAE's run inside the study."""

    name: str
    path: str  # relative to the study folder
    sae: str  # the spec the run used (a study-local folder for trained SAEs)
    hook: str | None
    arch: str | None
    width: int | None
    roles: list[str]


@dataclass(frozen=True)
class Headline:
    """The three numbers a study ends on (the first SAE's run, docs/method.md §4)."""

    run: str
    delta_rho: float | None  # primary endpoint: full vs freq+mag, cleanliness @ fresh
    delta_ci: tuple[float | None, float | None]
    residual_rho: float | None  # cleanliness after regressing out the baselines
    residual_ci: tuple[float | None, float | None]
    payoff: float | None  # held-out: top-20% by prediction vs random, cleanliness @ fresh
    payoff_ci: tuple[float | None, float | None]
    n: int | None = None  # steered features behind the fit
    detectable: float | None = None  # delta rho detectable at 80% power (alpha 0.05)
    verdict: str | None = None  # the primary endpoint's verdict

    def lines(self) -> list[str]:
        def ci(v: float | None, c: tuple[float | None, float | None]) -> str:
            if v is None:
                return "n/a"
            lo, hi = c
            return f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None \
                else f"{v:+.3f}"
        verdict = self.verdict or "n/a"
        if self.detectable is not None and "detectable" not in verdict:
            verdict += (f" (n = {self.n}, detectable delta rho >= {self.detectable:.2f} at 80% "
                        "power)")
        return [
            f"primary endpoint, delta rho (full vs freq+mag): {ci(self.delta_rho, self.delta_ci)}"
            f" -> {verdict}",
            f"rho after regressing out freq and mag: {ci(self.residual_rho, self.residual_ci)}",
            f"held-out payoff vs random selection: {ci(self.payoff, self.payoff_ci)}"]


@dataclass
class StudyResult:
    folder: Path
    runs: list[StudyRun]
    plan: Plan
    report: Path | None = None
    headline: Headline | None = None
    timings: dict[str, float] = field(default_factory=dict)


def check_study(cfg: StudyConfig, out: str | Path | None = None) -> None:
    """Everything a study can be checked for before anything loads or is written (so a study
    that would fail later never writes study.json first): the model, corpus and SAE specs name
    something that exists, and every stage's own preflight runs for every SAE (hooks against
    the model's layers, widths, pairings, feature counts, memory) with its fix line in the
    study file's keys. ``out``: the study is about to run there, so also check that it can be
    written, and refuse a model only a download (forbidden by HF offline mode) would bring;
    without it (``plan``, validating a config) such a model's shape is just unknown."""
    from steerscreen.corpus import check_corpus_spec
    from steerscreen.models import ModelSpec
    from steerscreen.saes.io import check_sae_spec

    ModelSpec.parse(cfg.model)
    check_corpus_spec(cfg.corpus)
    for e in [*cfg.saes, cfg.downstream]:
        if e is not None and not e.trained:
            with _where(e):
                check_sae_spec(e.spec or "")
    if out is not None:
        from steerscreen.pipeline.checks import check_writable

        check_writable(out)
    _check_stages(cfg, offline_ok=out is None)


def _check_stages(cfg: StudyConfig, offline_ok: bool) -> None:
    from steerscreen.models.shape import read_model_shape
    from steerscreen.pipeline.stats import check_stats
    from steerscreen.pipeline.steer import check_steer_inputs
    from steerscreen.pipeline.train import check_train

    down = cfg.downstream
    assert down is not None
    try:
        # Read once for every check below; None when only a download would tell.
        shape = read_model_shape(cfg.model)
    except OfflineError:
        if not offline_ok:
            raise
        return  # every stage check starts from the model's shape; the run will fetch it
    trained = [e for e in [*cfg.saes, down] if e.trained]
    if trained:
        with _where(None, "train"):
            check_train([cfg.train_config(e) for e in trained], None, model=shape)
    d_model = shape.d_model if shape is not None else 0
    headers = {e.name: _header(e, d_model) for e in [*cfg.saes, down]}
    down_spec = down.spec or f"[downstream] {down.name}"
    for e in cfg.saes:
        head = headers[e.name]
        with _where(e, "stats"):
            scfg = cfg.stats_config(head.spec if head else e.spec or "", e.hook)
            hp = check_stats(scfg, None, model=shape, sae=head)
        if cfg.steer_config(down_spec, down.hook).dose == "equal-kl" and (
                scfg.linear_contexts == 0):
            from steerscreen.errors import SpecError

            raise SpecError("[steer] dose = \"equal-kl\" needs the stats stage's linear "
                            "response, but [stats] linear_contexts = 0",
                            "set [stats] linear_contexts = 16, or [steer] dose = \"calibrated\"")
        if head is None:
            continue
        with _where(e, "steer"):
            check_steer_inputs(cfg.steer_config(down_spec, down.hook), cfg.model, cfg.dtype,
                               hp.name if hp is not None else e.hook, head.d_sae,
                               model=shape, down=headers[down.name])


def _header(e: SAEEntry, d_model: int) -> Any:
    """What the preflight knows of an SAE: its cfg.json (None for a release or uncached hub
    SAE), or, for one the study trains, its configured width at its hook."""
    from steerscreen.saes.io import SAEHeader, read_sae_header

    if not e.trained:
        return read_sae_header(e.spec or "")
    if not d_model:
        return None
    return SAEHeader(f"[[sae]] {e.name}" if e.name != "downstream" else "[downstream]",
                     d_model, int(e.width or 0), e.hook, None)


@contextmanager
def _where(e: SAEEntry | None, section: str | None = None) -> Iterator[None]:
    """Say which [[sae]] an error is about, with the fix in study-file keys (``[steer]
    features``, not ``--features``)."""
    try:
        yield
    except SteerscreenError as err:
        if e is not None:
            err.what = f"{_entry_name(e)}: {err.what}"
        if section is not None:
            err.fix = study_terms(section, err.fix)
        err.args = (f"{err.what}\n  fix: {err.fix}" if err.fix else err.what,)
        raise


def _entry_name(e: SAEEntry) -> str:
    return "[downstream]" if e.name == "downstream" else f"[[sae]] {e.name!r}"


def run_study(cfg: StudyConfig, out: str | Path, *, force: bool = False,
              make_report: bool = True, model: Any = None,
              log: Callable[[str], None] | None = None, progress: bool = True,
              resume: bool = False) -> StudyResult:
    """Run (or resume) the study ``cfg`` in the folder ``out``.

    ``model``: an already-loaded :class:`~steerscreen.models.HookedModel` to use instead of
    loading ``cfg.model`` (tests, notebooks). ``resume``: fail unless ``out`` already holds a
    study (``--resume``; a rerun resumes anyway)."""
    say = log or (lambda _m: None)
    folder = Path(out)
    check_study(cfg, folder)
    plan = make_plan(cfg)
    if resume:
        _require_study(folder, force)
    _guard(folder, cfg, force)
    folder.mkdir(parents=True, exist_ok=True)
    job = _Job(folder, {"format": STUDY_FORMAT, "steerscreen_version": __version__,
                        "name": cfg.name, "preset": cfg.preset, "source": cfg.source,
                        "config": cfg.record(), "status": "running", "started_utc": utc_now(),
                        "environment": environment(cfg.device, cfg.dtype),
                        "plan": [asdict(s) for s in plan.steps], "timings": {}})
    if model is None:
        from steerscreen.models import load_model

        say(f"loading {cfg.model} on {cfg.device}")
        model = job.timed("load_model", lambda: load_model(
            cfg.model, cfg.device, cfg.dtype, trust_remote_code=cfg.trust_remote_code))
    paths = job.timed("train", lambda: _train(cfg, folder, model, say))
    runs = _run_all(cfg, job, paths, model, force, progress, say)
    if len(runs) > 1:
        say("comparing runs (transfer)")
        job.timed("compare", lambda: _compare(cfg, folder, runs))
    result = StudyResult(folder, runs, plan, timings=job.record["timings"])
    result.headline = headline(folder, runs[0])
    job.record["headline"] = asdict(result.headline) if result.headline else None
    job.record |= {"status": "complete", "finished_utc": utc_now()}
    job.save()
    if make_report:  # last: it reads study.json (status, timings) like any other reader
        say("writing the report")
        from steerscreen.report import write_report

        for r in runs:  # each run folder gets its own report too
            job.timed(f"report/{r.name}", lambda r=r: write_report(folder / r.path))
        result.report = Path(job.timed("report", lambda: write_report(folder)).html)
    return result


@dataclass
class _Job:
    """The study's record (study.json), saved after every timed step."""

    folder: Path
    record: dict[str, Any]

    def __post_init__(self) -> None:
        self.save()

    def save(self) -> None:
        write_json(self.folder / STUDY_FILE, self.record)

    def timed(self, key: str, fn: Callable[[], T]) -> T:
        timer = Timer()
        value = timer.timed(key, fn)
        self.record["timings"][key] = round(timer.timings[key], 3)
        self.save()  # progress survives an interruption
        return value


def _run_all(cfg: StudyConfig, job: _Job, paths: dict[str, str], model: Any, force: bool,
             progress: bool, say: Callable[[str], None]) -> list[StudyRun]:
    """stats -> steer -> fit -> screen for every SAE (one run folder each, one S' and dose
    for all), and the steered text of the features the report's cards will show."""
    from steerscreen.pipeline.fit import run_fit
    from steerscreen.pipeline.generate import card_features, run_generations
    from steerscreen.pipeline.screen import screen_run
    from steerscreen.pipeline.stats import run_stats
    from steerscreen.pipeline.steer import run_steer
    from steerscreen.saes.io import load_sae

    down = cfg.downstream
    assert down is not None
    down_spec = paths.get(down.name, down.spec or "")
    down_sae = load_sae(down_spec, device=cfg.device)
    runs = [StudyRun(e.name, f"{RUNS}/{e.name}", paths.get(e.name, e.spec or ""), e.hook,
                     e.arch if e.trained else None, e.width, list(e.roles)) for e in cfg.saes]
    job.record["runs"] = [asdict(r) for r in runs]
    job.record["downstream"] = {"name": down.name, "sae": down_spec, "hook": down.hook}
    calibrations: dict = {}
    for i, r in enumerate(runs):
        run_dir, step = job.folder / r.path, f"[{i + 1}/{len(runs)}] {r.name}"
        say(f"{step}: stats")
        job.timed(f"stats/{r.name}", lambda r=r, run_dir=run_dir: _stage(
            force, lambda f: run_stats(cfg.stats_config(r.sae, r.hook), run_dir, force=f,
                                       model=model, progress=progress, log=say)))
        say(f"{step}: steer")
        job.timed(f"steer/{r.name}", lambda run_dir=run_dir: _stage(
            force, lambda f: run_steer(cfg.steer_config(down_spec, down.hook), run_dir,
                                       force=f, model=model, down=down_sae,
                                       calibrations=calibrations, progress=progress, log=say)))
        say(f"{step}: fit")
        job.timed(f"fit/{r.name}", lambda run_dir=run_dir: _stage(
            force, lambda f: run_fit(cfg.fit_config(), run_dir, force=f, log=say)))
        job.timed(f"screen/{r.name}", lambda run_dir=run_dir: screen_run(run_dir, log=say))
        job.timed(f"generate/{r.name}", lambda run_dir=run_dir: run_generations(
            run_dir, card_features(run_dir), model=model, log=say))
    return runs


# -- stages ------------------------------------------------------------------------------------
def _stage(force: bool, fn: Callable[[bool], Any]) -> Any:
    """Run a stage; with ``force``, recompute it only where its recorded config or inputs
    differ (an unchanged stage is still skipped, and a stale one reruns by itself)."""
    try:
        return fn(False)
    except StageConflict:
        if not force:
            raise
        return fn(True)


def _require_study(folder: Path, force: bool) -> None:
    """``--resume``: the folder must already hold a study, and ``--force`` must not be given."""
    if force:
        raise ArtifactError(
            "--resume and --force contradict each other (--resume never recomputes a recorded "
            "stage with another config, --force does)",
            "pass --resume to continue the recorded study, or --force to recompute it")
    if not (folder / STUDY_FILE).is_file():
        raise ArtifactError(f"nothing to resume: {folder} holds no study ({STUDY_FILE})",
                            "check the --out path, or drop --resume to start a new study there")


def _guard(folder: Path, cfg: StudyConfig, force: bool) -> None:
    """Refuse a folder holding another study (or something else) unless ``force``."""
    import json

    path = folder / STUDY_FILE
    if not path.exists():
        if folder.exists() and any(folder.iterdir()) and not force:
            raise ArtifactError(f"{folder} is not empty and holds no study",
                                "pick a new --out folder, or pass --force to use it anyway")
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path} is unreadable ({e})",
                            "delete it (the runs inside are kept) or pick a new --out") from e
    new = json.loads(json.dumps(cfg.record()))  # as stored: tuples read back as lists
    if old.get("config") != new and not force:
        changed = sorted(k for k in set(old.get("config", {})) | set(new)
                         if old.get("config", {}).get(k) != new.get(k))
        raise ArtifactError(
            f"{folder} holds a study with another config (differs in: {', '.join(changed)})",
            "rerun with the same config and preset to resume, write to a new --out, or pass "
            "--force to recompute what changed")


def _train(cfg: StudyConfig, folder: Path, model: Any, say: Callable[[str], None]
           ) -> dict[str, str]:
    """Train (or take from the cache) every SAE without a spec; -> name: study-local folder."""
    from steerscreen.pipeline.train import train_saes

    entries: list[SAEEntry] = [e for e in [*cfg.saes, cfg.downstream]
                               if e is not None and e.trained]
    if not entries:
        return {}
    configs = [cfg.train_config(e) for e in entries]
    summaries = train_saes(configs, model=model, log=say)
    paths: dict[str, str] = {}
    for e, s in zip(entries, summaries, strict=True):
        dest = folder / "saes" / e.name
        summary_file = dest / TRAIN_SUMMARY
        if not (summary_file.is_file() and _same_key(summary_file, s.cache_key)):
            with atomic_dir(dest) as tmp:
                shutil.copytree(s.sae_path, tmp, dirs_exist_ok=True)
        paths[e.name] = str(dest)
        say(f"{e.name}: {e.arch} {e.width} at {e.hook}: explained variance "
            f"{s.explained_variance:.3f}, L0 {s.mean_l0:.1f}, dead {s.dead_fraction:.1%}"
            + (" (cached)" if s.cached else ""))
    return paths


def _same_key(summary_file: Path, key: str) -> bool:
    import json

    try:
        return json.loads(summary_file.read_text()).get("cache_key") == key
    except (OSError, ValueError):
        return False


def _compare(cfg: StudyConfig, folder: Path, runs: list[StudyRun]) -> None:
    import polars as pl

    from steerscreen.pipeline.compare import compare, write_comparison

    c = compare([folder / r.path for r in runs], seed=cfg.seed)
    names = {str(folder / r.path): r.name for r in runs}
    # Run names, not absolute paths: the study folder can move.
    write_comparison(c._replace(
        transfer=c.transfer.with_columns(pl.col("train").replace(names),
                                         pl.col("test").replace(names)),
        per_run=c.per_run.with_columns(pl.col("run").replace(names))), folder / COMPARISON,
        owned=True)


def headline(folder: Path, run: StudyRun) -> Headline | None:
    import json

    path = folder / run.path / SCREENING / SUMMARY
    try:
        s = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    p = s.get("primary_endpoint") or {}
    res = next((r for r in s.get("residualised") or [] if r.get("outcome") == "cleanliness"),
               {})
    pay = next((h for h in s.get("heldout") or [] if h.get("outcome") == "cleanliness"
                and h.get("selector") == "full"), {})
    return Headline(run.name, p.get("delta_rho"), (p.get("delta_lo"), p.get("delta_hi")),
                    res.get("rho"), (res.get("rho_lo"), res.get("rho_hi")),
                    pay.get("payoff_vs_random"), (pay.get("vs_random_lo"),
                                                  pay.get("vs_random_hi")),
                    p.get("n"), p.get("mde"), p.get("verdict"))


def load_config(path: str | Path | None, preset: str | None = None) -> StudyConfig:
    """:func:`steerscreen.config.load_config` plus :func:`check_study`: what ``run`` and
    ``plan`` read."""
    cfg = config.load_config(path, preset)
    check_study(cfg)
    return cfg


def build_config(raw: dict[str, Any], preset: str, source: str | None = None) -> StudyConfig:
    """:func:`steerscreen.config.build_config` plus :func:`check_study`."""
    cfg = config.build_config(raw, preset, source)
    check_study(cfg)
    return cfg


def print_result(res: StudyResult, console: Any) -> None:
    """The study's closing lines: its time, the headline (with power), the report."""
    from rich.markup import escape

    total = sum(v for k, v in res.timings.items() if "/" in k or k in (
        "load_model", "train", "compare", "report"))
    console.print(f"[bold]study complete[/] in {format_duration(total)}")
    if res.headline is not None:
        console.print(f"headline ({escape(res.headline.run)}, cleanliness on fresh contexts):")
        for line in res.headline.lines():
            console.print(f"  {escape(line)}")
    if res.report is not None:
        console.print(f"report: {escape(str(res.report))}")


__all__ = [
    "STUDY_FILE",
    "Headline",
    "StudyResult",
    "StudyRun",
    "build_config",
    "check_study",
    "describe_plan",
    "headline",
    "load_config",
    "print_result",
    "run_study",
]
