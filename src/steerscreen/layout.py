"""Where everything lives: every run and study file name, and the manifest schema.

A **run** folder holds one SAE's results (docs/method.md §5); a **study** folder holds one run
per SAE under ``runs/NAME/``, the comparison tables and the study report. This module names
every file and folder of both, once, and reads them back: :class:`RunLayout` is a run folder
seen read-only (the report and the analyses read through it; the pipeline's
:class:`~steerscreen.pipeline.runs.RunDir` adds the writes and the stage guard).

The manifest (``manifest.json``) is a JSON object: ``format`` (:data:`MANIFEST_FORMAT`),
``created_utc`` / ``updated_utc``, the run's set-up (``model``, ``hook``, ``sae``,
``sae_path``, ``corpus``, ``seeds``, ``environment``; after ``steer``: ``dose_mode``,
``strengths``, ``alpha``, ``residual_norm``, ``downstream_hook``, ``downstream_sae``,
``downstream_sae_path``), ``stages``: one record per stage (:data:`STAGE_RECORD_KEYS`), and
after a run's own screen (``pipeline.screen.screen_run``) ``screen``: the hashes and
``target_kl`` that ``screen.parquet`` was ranked from.

Torch-free and cheap to import: reading a manifest must not cost a model library.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from steerscreen.errors import ArtifactError
from steerscreen.files import TEMP_DIR, TEMP_FILE, path_kind, require_file, user_path

MANIFEST_FORMAT = "steerscreen-run/1"
STUDY_FORMAT = "steerscreen-study/1"
STAGES = ("stats", "steer", "fit")
"""The stages a run folder records, in order."""
STAGE_RECORD_KEYS = ("status", "started_utc", "finished_utc", "config", "inputs",
                     "config_sha256", "depends_on", "timings_s", "outputs", "results",
                     "stale_because")
"""A stage record: ``status`` (running | complete | stale), its result-defining ``config``, the
content hashes of its ``inputs``, ``outputs`` (file -> sha256, rows, bytes), ``timings_s``,
``results`` and, while it runs, its resumable progress (:data:`PROGRESS_KEYS`)."""
PROGRESS_KEYS = ("shards", "checkpoint")
"""Stage-record keys a running stage keeps its resumable progress under."""

# --- a run folder ---------------------------------------------------------------------------
MANIFEST = "manifest.json"
FEATURE_STATS = "feature_stats.parquet"
FEATURE_EXAMPLES = "feature_examples.parquet"
FEATURE_LOGIT_TOKENS = "feature_logit_tokens.parquet"
FEATURE_DOSE_STATS = "feature_dose_stats.parquet"
CONTEXTS = "contexts.parquet"
STEERING_OUTCOMES = "steering_outcomes.parquet"
STEERING_GRAM = "steering_gram.parquet"
STEERING_TOKENS = "steering_tokens.parquet"
"""The steer stage's measured top-10 promoted and suppressed tokens per steered row."""
STEERED_TEXT = "steered_text.parquet"
"""Greedy continuations clean, at the run's dose and at twice it (``pipeline.generate``)."""
SCREENING = "screening"
SCREENING_TABLES = ("cv_metrics", "comparisons", "confounds", "heldout", "predictions")
"""``screening/NAME.parquet``, written by ``fit``."""
PREDICTOR = "predictor.json"
SUMMARY = "summary.json"
SCREEN_TABLE = "screen.parquet"
SCREEN_CSV = "screen.csv"
REPORT = "report.html"
REPORT_SUMMARY = "summary.md"
FIGURES = "figures"
STATS_SHARDS = ".stats_shards"
"""Finished shards of a ``--backend ray`` stats pass (only while the stage runs)."""
STEER_SHARDS = "steering_shards"
"""Finished outcome shards of a steer stage (only while the stage runs)."""
CHECKPOINT = ".stats_checkpoint"
"""The local stats pass's checkpoint (only while the stage runs)."""
LINEAR_CONTEXTS = "linear_contexts.parquet"
"""The stats stage's linearisation contexts (``contexts.parquet``'s schema)."""
LINEAR_FORMS = "linear_forms.safetensors"
"""The linear response's d x d forms (``steerscreen.stats.linear``)."""
LINEAR_CHECKPOINT = ".linear_checkpoint"
"""The linear response's running sums (only while the stats stage runs)."""

RUN_OUTPUTS = frozenset({MANIFEST, FEATURE_STATS, FEATURE_EXAMPLES, FEATURE_LOGIT_TOKENS,
                         FEATURE_DOSE_STATS, CONTEXTS, STEERING_OUTCOMES, STEERING_GRAM,
                         STEERING_TOKENS, STEERED_TEXT, SCREENING,
                         SCREEN_TABLE, SCREEN_CSV, REPORT, REPORT_SUMMARY,
                         FIGURES, STATS_SHARDS, STEER_SHARDS, CHECKPOINT, LINEAR_CONTEXTS,
                         LINEAR_FORMS, LINEAR_CHECKPOINT})
"""Every name steerscreen writes at the top of a run folder: only their temp files are its own."""
TRAINING_SUMMARY = "training_summary.json"
"""Beside a trained SAE's files: its config, held-out evaluation and cache key."""

# --- a study folder -------------------------------------------------------------------------
STUDY_FILE = "study.json"
RUNS = "runs"
COMPARISON = "comparison"
TRANSFER = "transfer.parquet"
PER_RUN = "runs.parquet"
COMPARISON_RECORD = "comparison.json"
"""Beside the comparison tables: their sha256, so a later compare replaces only its own."""


WRITTEN_BY = {**dict.fromkeys((FEATURE_STATS, FEATURE_EXAMPLES, FEATURE_LOGIT_TOKENS,
                               LINEAR_CONTEXTS, LINEAR_FORMS),
                             "`steerscreen stats`"),
              **dict.fromkeys((FEATURE_DOSE_STATS, CONTEXTS, STEERING_OUTCOMES, STEERING_GRAM,
                               STEERING_TOKENS), "`steerscreen steer`"),
              STEERED_TEXT: "`steerscreen.pipeline.generate.run_generations` (the study runs "
                            "it for the report's cards)"}
"""Which command regenerates a run file (for the fix line of an error about it)."""


def analysed_strength(strengths: Sequence[float]) -> float | None:
    """The strength a run is analysed at by default: the first positive one recorded (s = 0
    is the exactness check, where every outcome is 0 or NaN). None when there is none."""
    return next((float(s) for s in strengths if s > 0), None)


EQUAL_KL_MODE = "equal-kl"
"""The manifest's ``dose_mode`` of a ``--dose equal-kl`` steer stage."""


def equal_kl_alpha(target_kl: float, kl_rate: Any) -> Any:
    """The equal-KL dose (docs/method.md §2): ``alpha = sqrt(target_kl / kl_rate)`` with
    ``kl_rate = exp(lin_kl)``, the predicted KL per unit alpha^2 (NaN where the rate is not a
    positive number)."""
    import numpy as np

    rate = np.asarray(kl_rate, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(rate) & (rate > 0), np.sqrt(target_kl / rate), np.nan)


def dose_groups(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Outcome rows with ``strength`` as the analysis groups them.

    Rows of a ``--dose equal-kl`` steer stage (a non-null ``target_kl``) each record their own
    s = alpha / r; together they are one dose, labelled by its target KL: their ``strength``
    becomes ``target_kl`` (the label the manifest's ``strengths`` records) and the row's own s
    moves to ``row_strength``. Other rows are unchanged. Applying it twice changes nothing."""
    if "target_kl" not in outcomes.columns or "row_strength" in outcomes.columns:
        return outcomes
    eq = pl.col("target_kl").is_not_null() & pl.col("target_kl").is_not_nan()
    return outcomes.with_columns(
        pl.col("strength").alias("row_strength"),
        pl.when(eq).then(pl.col("target_kl")).otherwise(pl.col("strength")).alias("strength"))


def steerscreen_temp(name: str, outputs: frozenset[str] = RUN_OUTPUTS) -> bool:
    """Whether ``name`` is a temp file or folder an atomic write of one of ``outputs`` left
    (``.NAME.XXXXXXXX.tmp``, ``.NAME.tmp-xxxxxxxx``, ``.NAME.old-xxxxxxxx``): a user's
    ``.notes.tmp`` or ``.cache.tmp-keep`` is not."""
    m = TEMP_FILE.match(name) or TEMP_DIR.match(name)
    return m is not None and m.group("name") in outputs


def screening_file(name: str) -> str:
    """``screening/NAME.parquet`` for a table name, ``screening/NAME`` for a file name."""
    return f"{SCREENING}/{name}" if "." in name else f"{SCREENING}/{name}.parquet"


LIN_FIELDS = ("rho_lin", "rho_lin_lo", "rho_lin_hi", "rho_full", "rho_full_lo", "rho_full_hi",
              "rho_full_lin", "rho_full_lin_lo", "rho_full_lin_hi", "delta_rho", "delta_lo",
              "delta_hi", "p_holm", "mde", "verdict")
"""The fields of a fit summary's ``linear`` rows (METHOD v2 §4: rho of ``lin``, ``full`` and
``full+lin``, and ``full+lin`` - ``full``) that a headline row carries, per outcome."""


def lin_key(outcome: str, field: str) -> str:
    """``lin_cleanliness_delta_rho``: a linear-response field of a flat headline row."""
    return f"lin_{outcome}_{field}"


def headline_row(summary: dict[str, Any]) -> dict[str, Any]:
    """A fit summary's primary endpoint, power and verdicts as one flat row (and, when the run
    had ``lin_*`` columns, its linear-response rows: :func:`lin_key`)."""
    p = summary.get("primary_endpoint") or {}
    row = {"rho_full": p.get("rho_full"), "rho_freq_mag": p.get("rho_baseline"),
           "delta_rho": p.get("delta_rho"), "delta_lo": p.get("delta_lo"),
           "delta_hi": p.get("delta_hi"),
           "n_fit": p.get("n"), "detectable_delta_rho": p.get("mde"),
           "primary_verdict": p.get("verdict")}
    row |= {f"verdict_{k}": v for k, v in (summary.get("verdicts") or {}).items()}
    for r in summary.get("linear") or []:
        row |= {lin_key(r["outcome"], f): r.get(f) for f in LIN_FIELDS}
    return row


def lin_rows(row: dict[str, Any], outcomes: tuple[str, ...]) -> list[dict[str, Any]]:
    """A flat headline row's linear-response fields back as one dict per outcome (only the
    outcomes it has: none for a run without ``lin_*`` columns)."""
    out = []
    for o in outcomes:
        if row.get(lin_key(o, "verdict")) is None:
            continue
        out.append({"outcome": o, **{f: row.get(lin_key(o, f)) for f in LIN_FIELDS}})
    return out


_RECORD_DICTS = ("config", "inputs", "outputs", "results", "timings_s")


def check_manifest(data: Any, path: Path) -> None:
    """A run manifest's shape: an object of this format (a newer format is refused, not
    misread) whose ``stages`` map names to records with the types the stages rely on."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{str(path)!r} is not a steerscreen run manifest",
                            "choose another --out folder")
    fmt = data.get("format", MANIFEST_FORMAT)
    if fmt != MANIFEST_FORMAT:
        newer = isinstance(fmt, str) and fmt.startswith(MANIFEST_FORMAT.split("/")[0] + "/")
        raise ArtifactError(
            f"{str(path)!r} has manifest format {fmt!r}; this steerscreen reads "
            f"{MANIFEST_FORMAT!r}" + (" (a newer steerscreen wrote it)" if newer else ""),
            "upgrade steerscreen to read it" if newer else "choose another --out folder")
    stages = data.get("stages", {})
    if not (isinstance(stages, dict) and all(isinstance(r, dict) for r in stages.values())):
        raise ArtifactError(f"{str(path)!r} is not a steerscreen run manifest",
                            "choose another --out folder")
    for name, rec in stages.items():
        bad = [k for k in _RECORD_DICTS if k in rec and not isinstance(rec[k], dict)]
        if rec.get("status") in ("complete", "running"):
            bad += [k for k in ("config", "inputs") if k not in rec]
        if "status" in rec and rec["status"] not in ("running", "complete", "stale"):
            bad.append("status")
        if bad:
            raise ArtifactError(
                f"{str(path)!r}: the {name!r} stage record is damaged ({', '.join(bad)})",
                "write to a new run folder (or delete its manifest.json, and the stages are "
                "computed again there)")


class RunLayout:
    """One run folder, read-only: its file names, manifest, stage records and tables."""

    MANIFEST = MANIFEST
    FEATURE_STATS = FEATURE_STATS
    FEATURE_EXAMPLES = FEATURE_EXAMPLES
    CONTEXTS = CONTEXTS
    STEERING_OUTCOMES = STEERING_OUTCOMES
    STEERING_GRAM = STEERING_GRAM
    STEERING_TOKENS = STEERING_TOKENS
    STEERED_TEXT = STEERED_TEXT
    SCREENING = SCREENING
    REPORT = REPORT

    def __init__(self, path: str | Path) -> None:
        self.path = user_path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, checked against the schema (:func:`check_manifest`), or an empty
        skeleton when the folder has none yet."""
        p = self.manifest_path
        if not (p.exists() or p.is_symlink()):
            return {"format": MANIFEST_FORMAT, "stages": {}}
        if not p.is_file():
            raise ArtifactError(f"{str(p)!r} is not a regular file",
                                "remove it (or choose another --out folder)")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{str(p)!r} is not valid JSON ({e})",
                                "the manifest is corrupt: remove the run folder (or pass "
                                "--force to start it again) and rerun") from e
        check_manifest(data, p)
        data.setdefault("stages", {})
        return data

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.read_manifest()["stages"].get(name)

    def read_table(self, name: str, columns: Sequence[str] = ()) -> pl.DataFrame:
        """A table of the run; ``columns``: the ones the caller needs (a table without them
        is refused with the stage that writes it)."""
        p = self.file(name)
        if path_kind(p) == "missing":
            raise ArtifactError(f"{str(p)!r} does not exist",
                                "run the stage that writes it first")
        require_file(p, "run table", "move it away and rerun the stage that writes it")
        try:
            df = pl.read_parquet(p)
        except Exception as e:  # polars raises several types for a bad file
            raise ArtifactError(f"{str(p)!r} is not a readable parquet file ({e})",
                                "rerun the stage that writes it (with --force)") from e
        missing = [c for c in columns if c not in df.columns]
        if missing:
            stage = WRITTEN_BY.get(name, "the stage that writes it")
            raise ArtifactError(f"{str(p)!r} lacks the columns {', '.join(missing)}",
                                f"regenerate it: rerun {stage} with --force")
        return df
