"""Read a RUN folder or a STUDY folder (docs/method.md §5) into the dataclasses the report renders.

A run's tables are optional: each is ``None`` until the stage that writes it has run, and the
report says which command produces it. A table that exists but cannot be read raises an
:class:`~steerscreen.errors.ArtifactError` (a corrupt file is a problem to fix, not to hide).

A study is ``STUDY/study.json`` + ``STUDY/runs/NAME/`` (one run folder per SAE) +
``STUDY/comparison/{transfer,runs}.parquet`` from :func:`steerscreen.screening.transfer.compare`.
Only ``runs`` in ``study.json`` is read strictly; without it the runs are found by scanning
``runs/*/``. ``compare`` names runs by the path it was given, so those names are mapped back to
the study's run names here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from steerscreen.errors import ArtifactError, SteerscreenError
from steerscreen.files import path_kind, require_file, user_path
from steerscreen.layout import (
    COMPARISON,
    PER_RUN,
    RUNS,
    SCREENING,
    STUDY_FILE,
    SUMMARY,
    TRANSFER,
    analysed_strength,
    dose_groups,
    screening_file,
)
from steerscreen.layout import FEATURE_DOSE_STATS as DOSE_STATS
from steerscreen.layout import FEATURE_LOGIT_TOKENS as LOGIT_TOKENS
from steerscreen.layout import SCREEN_TABLE as SCREEN
from steerscreen.layout import RunLayout as RunDir


@dataclass(frozen=True)
class RunData:
    """What the report reads from one run folder; ``None`` where the stage has not run."""

    name: str
    path: Path
    manifest: dict[str, Any]
    stats: pl.DataFrame | None
    """``feature_stats.parquet`` (stats stage)."""
    dose_stats: pl.DataFrame | None
    """``feature_dose_stats.parquet`` (steer stage)."""
    logit_tokens: pl.DataFrame | None
    """``feature_logit_tokens.parquet``: feature, rank, token_id, token, dl (stats stage)."""
    outcomes: pl.DataFrame | None
    """``steering_outcomes.parquet`` (steer stage), ``strength`` as the analysis groups it
    (equal-KL rows: their target_kl label, own s in ``row_strength``; ``dose_groups``)."""
    summary: dict[str, Any] | None
    """``screening/summary.json`` (fit stage)."""
    cv: pl.DataFrame | None
    comparisons: pl.DataFrame | None
    heldout: pl.DataFrame | None
    predictions: pl.DataFrame | None

    @property
    def screen(self) -> pl.DataFrame | None:
        """``screen.parquet``: every feature ranked by the run's own predictor (written after
        the fit; read on each access, as only the screen section needs it)."""
        return _table(RunDir(self.path), SCREEN)

    @property
    def has_examples(self) -> bool:
        return self.path.joinpath(RunDir.FEATURE_EXAMPLES).is_file()

    def examples(self, features: Sequence[int]) -> pl.DataFrame | None:
        """Top activating examples of ``features`` only (the file holds every feature's)."""
        if not self.has_examples:
            return None
        try:
            return (pl.scan_parquet(self.path / RunDir.FEATURE_EXAMPLES)
                    .filter(pl.col("feature").is_in(list(features))).sort(["feature", "rank"])
                    .collect())
        except Exception as e:  # polars raises several types for a bad file
            raise ArtifactError(f"{str(self.path / RunDir.FEATURE_EXAMPLES)!r} is not readable "
                                f"({e})", "rerun `steerscreen stats` for this run") from e

    @property
    def strength(self) -> float | None:
        """The strength the fit used (else the first recorded): the one every view shows."""
        if self.summary is not None and self.summary.get("strength") is not None:
            return float(self.summary["strength"])
        # Before a fit: the first nonzero strength (s = 0 is the exactness check, all NaN).
        recorded = [float(s) for s in self.manifest.get("strengths") or []]
        if not recorded and self.outcomes is not None:
            recorded = sorted(set(self.outcomes["strength"].to_list()))
        chosen = analysed_strength(recorded)
        return chosen if chosen is not None else (recorded[0] if recorded else None)

    @property
    def equal_kl(self) -> bool:
        """Steered with ``--dose equal-kl`` (each direction at its own alpha)."""
        return self.manifest.get("dose_mode") == "equal-kl"

    def dose_accuracy(self) -> dict[str, Any] | None:
        """Measured KL against the target (equal-kl) or against alpha^2 exp(lin_kl)."""
        from steerscreen.screening.dose_accuracy import dose_accuracy

        return dose_accuracy(self.outcomes, self.stats, self.strength)

    @property
    def primary_set(self) -> str:
        """Fresh contexts when the run has them (the primary endpoint, docs/method.md §4)."""
        if self.summary is not None and self.summary.get("primary_context_set"):
            return str(self.summary["primary_context_set"])
        if self.outcomes is not None and "fresh" in set(self.outcomes["context_set"].to_list()):
            return "fresh"
        return "steering"

    def at_strength(self) -> pl.DataFrame | None:
        """Outcome rows at :attr:`strength`, every direction and context set."""
        if self.outcomes is None or self.strength is None:
            return None
        return self.outcomes.filter((pl.col("strength") - self.strength).abs() < 1e-12)

    def stage_status(self, name: str) -> str | None:
        rec = self.manifest.get("stages", {}).get(name)
        return None if rec is None else str(rec.get("status"))

    @property
    def sae(self) -> dict[str, Any]:
        return self.manifest.get("sae") or {}

    @property
    def steering_tokens(self) -> pl.DataFrame | None:
        """``steering_tokens.parquet``: feature, direction, strength (the row's own s),
        context_set, kind, rank, token_id, token, value (steer stage; None before it wrote
        the table)."""
        return _table(RunDir(self.path), RunDir.STEERING_TOKENS)

    @property
    def steered_text(self) -> pl.DataFrame | None:
        """``steered_text.parquet`` (``steerscreen.pipeline.generate.run_generations``): one
        row per feature, prompt and condition (clean | 1x | 2x)."""
        return _table(RunDir(self.path), RunDir.STEERED_TEXT)


@dataclass(frozen=True)
class StudyRun:
    """One SAE of a study: ``study.json``'s entry, and its run folder when it exists."""

    name: str
    path: Path
    arch: str | None
    width: int | None
    hook: str | None
    roles: tuple[str, ...]
    data: RunData | None
    """None when the run folder does not exist (yet)."""


@dataclass(frozen=True)
class StudyData:
    path: Path
    meta: dict[str, Any]
    """``study.json`` (empty when the study has none)."""
    runs: list[StudyRun]
    transfer: pl.DataFrame | None
    """train, test (run names), outcome, test_context_set, n_test, rho, lo, hi."""
    per_run: pl.DataFrame | None
    """run (run name), n_features, strength, context_set, rho_full, ... verdict_*."""

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.resolve().name)


def is_run(path: Path) -> bool:
    return (path / RunDir.MANIFEST).is_file() or (path / RunDir.FEATURE_STATS).is_file()


def is_study(path: Path) -> bool:
    if (path / STUDY_FILE).is_file():
        return True
    return not is_run(path) and any(is_run(p) for p in _scan(path))


def _scan(path: Path) -> list[Path]:
    runs = path / RUNS
    return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def load(path: str | Path) -> RunData | StudyData:
    """A run or a study, whichever ``path`` is; a clear error when it is neither."""
    p = user_path(path)
    if not p.is_dir():
        raise SteerscreenError(f"{str(p)!r} is not a folder",
                               "pass a run folder (the --out of `steerscreen stats`) or a study "
                               "folder (the --out of `steerscreen run`)")
    if is_study(p):
        return load_study(p)
    if is_run(p):
        return load_run(p)
    raise SteerscreenError(
        f"{str(p)!r} is neither a run folder (no manifest.json or feature_stats.parquet) nor a "
        "study folder (no study.json or runs/*/)",
        "pass a run folder (the --out of `steerscreen stats`) or a study folder (the --out of "
        "`steerscreen run`)")


def _outcomes(run: RunDir) -> pl.DataFrame | None:
    df = _table(run, RunDir.STEERING_OUTCOMES)
    return None if df is None else dose_groups(df)


def load_run(path: str | Path, name: str | None = None) -> RunData:
    run = RunDir(path)
    screening = run.file(SCREENING)
    return RunData(
        name=name or run.path.resolve().name, path=run.path, manifest=run.read_manifest(),
        stats=_table(run, RunDir.FEATURE_STATS), dose_stats=_table(run, DOSE_STATS),
        logit_tokens=_table(run, LOGIT_TOKENS), outcomes=_outcomes(run),
        summary=_json(screening / SUMMARY),
        cv=_table(run, screening_file("cv_metrics")),
        comparisons=_table(run, screening_file("comparisons")),
        heldout=_table(run, screening_file("heldout")),
        predictions=_table(run, screening_file("predictions")))


def _table(run: RunDir, name: str) -> pl.DataFrame | None:
    return run.read_table(name) if run.file(name).is_file() else None


def _json(path: Path) -> dict[str, Any] | None:
    if path_kind(path) == "missing":
        return None
    require_file(path, "run file", "rerun the stage that writes it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{str(path)!r} is not valid JSON ({e})",
                            "rerun the stage that writes it") from e
    if not isinstance(data, dict):
        raise ArtifactError(f"{str(path)!r} is not a JSON object", "rerun the stage that writes it")
    return data


def load_study(path: str | Path) -> StudyData:
    root = user_path(path)
    meta = _json(root / STUDY_FILE) or {}
    entries = meta.get("runs") or [{"name": p.name, "path": str(p.relative_to(root))}
                                   for p in _scan(root) if is_run(p)]
    if not isinstance(entries, list):
        raise ArtifactError(f"`runs` in {str(root / STUDY_FILE)!r} is not a list",
                            "rewrite the study with `steerscreen run`")
    runs = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str | None)
                                               for k in ("path", "name", "arch", "hook")):
            raise ArtifactError(f"entry {i} of {str(root / STUDY_FILE)!r} is not an object "
                                "of strings (path, name, arch, hook)",
                                "rewrite the study with `steerscreen run`")
        rel = e.get("path") or f"{RUNS}/{e.get('name', i)}"
        run_path = Path(rel) if Path(rel).is_absolute() else root / rel
        name = str(e.get("name") or Path(rel).name)
        data = load_run(run_path, name) if is_run(run_path) else None
        sae = data.sae if data else {}
        # study.json leaves arch/width empty for SAEs it did not train: take the manifest's.
        width = e.get("width") or sae.get("d_sae")
        runs.append(StudyRun(
            name=name, path=run_path, arch=e.get("arch") or sae.get("architecture"),
            width=int(width) if width is not None else None,
            hook=e.get("hook") or (data.manifest.get("hook") if data else None),
            roles=tuple(e.get("roles") or ()), data=data))
    cmp_dir = RunDir(root / COMPARISON)
    transfer = _table(cmp_dir, TRANSFER)
    per_run = _table(cmp_dir, PER_RUN)
    names = _name_map(root, runs, [*(transfer["train"].to_list() if transfer is not None else []),
                                   *(transfer["test"].to_list() if transfer is not None else []),
                                   *(per_run["run"].to_list() if per_run is not None else [])])
    if transfer is not None:
        transfer = transfer.with_columns(pl.col("train").replace(names),
                                         pl.col("test").replace(names))
    if per_run is not None:
        per_run = per_run.with_columns(pl.col("run").replace(names))
    return StudyData(root, meta, runs, transfer, per_run)


def _name_map(root: Path, runs: list[StudyRun], raw: list[str]) -> dict[str, str]:
    """``compare``'s run labels (the paths it was given) -> the study's run names."""
    by_path = {r.path.resolve(): r.name for r in runs}
    by_base = {r.path.name: r.name for r in runs}
    out = {}
    for label in set(raw):
        p = Path(label)
        candidates = [p] if p.is_absolute() else [root / p, Path.cwd() / p]
        hit = next((by_path[c.resolve()] for c in candidates if c.resolve() in by_path), None)
        out[label] = hit or by_base.get(p.name, label)
    return out
