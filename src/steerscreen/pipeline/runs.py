"""Writing a run folder: ``manifest.json``, stage records and the config guard.

:class:`RunDir` is a :class:`~steerscreen.layout.RunLayout` (the file names and the reads) that
the pipeline writes. A run folder holds one SAE's results. Its ``manifest.json`` records the
environment (versions,
platform), the inputs (model, SAE, corpus: descriptions and hashes), the steering set-up
docs/method.md §5 names, and a ``stages`` map: one record per pipeline stage with its config, the
identity of its inputs, timings, results and the sha256 of every file it wrote.

The guard (:meth:`RunDir.check_stage`): a stage whose recorded config or inputs differ from the
new ones is refused with an actionable error unless ``force``; the same config with a complete
record whose files are intact is skipped. An incomplete record (status ``running``) with the same
config and inputs is resumed by the stage itself from the progress it recorded while running
(:meth:`RunDir.update_stage`): the steer stage's shards, the stats stage's checkpoint. These
progress records (:data:`PROGRESS_KEYS`) name files that only live while the stage runs, so
:meth:`RunDir.complete_stage` drops them. :meth:`RunDir.require_resumable` is ``--resume``'s
check that there is a recorded stage to continue at all.

Every write is atomic (temp file + rename): manifests via :func:`steerscreen.files.write_json`,
tables via :meth:`RunDir.write_table`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from steerscreen import __version__
from steerscreen.errors import ArtifactError, SteerscreenError
from steerscreen.files import atomic_path, sha256_file, sha256_json, utc_now, write_json
from steerscreen.layout import MANIFEST_FORMAT, PROGRESS_KEYS, RunLayout, steerscreen_temp


def environment(device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """Versions and platform for a manifest (packages that are not installed read ``None``)."""
    from importlib import metadata

    versions: dict[str, str | None] = {"steerscreen": __version__}
    for pkg in ("torch", "transformers", "sae-lens", "numpy", "polars", "pyarrow"):
        try:
            versions[pkg.replace("-", "_")] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg.replace("-", "_")] = None
    env: dict[str, Any] = {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if device is not None:
        env["device"] = device
    if dtype is not None:
        env["dtype"] = dtype
    return env


class StageConflict(SteerscreenError):
    """A run folder already holds this stage with another config or other inputs."""


@dataclass(frozen=True)
class StageCheck:
    """What :meth:`RunDir.check_stage` decided."""

    action: Literal["run", "skip"]
    """``run``: compute the stage; ``skip``: a complete, intact record with this config exists."""
    reason: str
    """One line for the user (why it runs or is skipped)."""
    record: dict[str, Any] | None
    """The existing stage record, if any."""


class RunDir(RunLayout):
    """One run folder as the pipeline writes it: the manifest, the stage records, the guard."""

    def update_manifest(self, updates: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``updates`` into the manifest (nested dicts merge, other values replace) and
        write it atomically; returns the new manifest."""
        manifest = _jsonable(_deep_merge(self.read_manifest(), updates))
        manifest["format"] = MANIFEST_FORMAT
        manifest.setdefault("created_utc", utc_now())
        manifest["updated_utc"] = utc_now()
        write_json(self.manifest_path, manifest)
        return manifest

    def discard_temp_files(self) -> list[str]:
        """Delete what atomic writes of steerscreen's own files killed part-way left in the
        folder (:func:`~steerscreen.layout.steerscreen_temp`: exactly the temp names its writes
        make, never a user's) -> their names. One process writes a run folder at a time, so
        none of them belongs to a live write."""
        gone = []
        for p in self.path.glob(".*") if self.path.is_dir() else []:
            if not steerscreen_temp(p.name) or p.is_symlink():
                continue
            if p.is_file():
                p.unlink(missing_ok=True)
            elif p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
        return gone

    # --- writing only what is steerscreen's ---------------------------------------------------
    def claim(self, name: str) -> Path:
        """The path of ``name``, refused (ArtifactError) when a file of that name is there that
        steerscreen did not write (not in the manifest's ``files`` or any stage's outputs)."""
        p = self.file(name)
        if p.exists() or p.is_symlink():
            m = self.read_manifest()
            ours = name in (m.get("files") or {}) or any(
                name in (rec.get("outputs") or {}) for rec in m["stages"].values())
            if not ours:
                raise ArtifactError(
                    f"refusing to overwrite {str(p)!r}: steerscreen did not write it",
                    "move that file away, or choose another output folder")
        return p

    def record_file(self, name: str, sha256: str) -> None:
        """Note that steerscreen wrote ``name`` (so a rerun may replace it)."""
        if self.manifest_path.is_file():
            self.update_manifest({"files": {name: sha256}})

    def write_table(self, name: str, df: pl.DataFrame) -> dict[str, Any]:
        """Write ``df`` as parquet to ``name`` via a temp file + rename -> {sha256, rows, bytes}.
        A file of that name steerscreen did not write is refused (:meth:`claim`)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.claim(name)) as tmp:
            df.write_parquet(tmp, compression="zstd", statistics=True)
            info = {"sha256": sha256_file(tmp), "rows": df.height, "bytes": tmp.stat().st_size}
        self.record_file(name, info["sha256"])
        return info

    def write_bytes(self, name: str, data: bytes) -> dict[str, Any]:
        """Write ``data`` to ``name`` (atomically, claimed and recorded) -> {sha256}."""
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.claim(name)) as tmp:
            tmp.write_bytes(data)
            info = {"sha256": sha256_file(tmp)}
        self.record_file(name, info["sha256"])
        return info

    def update_stage(self, name: str, **fields: Any) -> dict[str, Any]:
        """Set ``fields`` in stage ``name``'s record (one atomic manifest write) -> the record."""
        rec = self.stage(name)
        if rec is None:
            raise RuntimeError(f"stage {name!r} was never begun in {self.path}")
        return self.update_manifest({"stages": {name: {**rec, **fields}}})["stages"][name]

    def require_resumable(self, name: str, *, force: bool = False) -> None:
        """``--resume``: the folder must already record stage ``name`` (a typo in the path
        fails here, not after hours of work) and ``--force`` must not be given with it."""
        if force:
            raise SteerscreenError(
                "--resume and --force contradict each other (--resume never recomputes a "
                "recorded stage with another config, --force does)",
                "pass --resume to continue the recorded run, or --force to recompute it")
        if not self.manifest_path.is_file():
            raise SteerscreenError(
                f"nothing to resume: {str(self.path)!r} holds no steerscreen run",
                "check the folder path, or drop --resume to start a new run there")
        if self.stage(name) is None:
            raise SteerscreenError(
                f"nothing to resume: {str(self.path)!r} holds no {name} stage",
                f"check the folder path, or drop --resume to start the {name} stage there")

    # --- the guard ----------------------------------------------------------------------------
    def check_stage(self, name: str, config: Mapping[str, Any], *, force: bool = False,
                    inputs: Mapping[str, Any] | None = None) -> StageCheck:
        """Decide whether stage ``name`` runs, is skipped, or is refused (raises).

        ``config`` is the stage's result-defining configuration and ``inputs`` the identity of
        what it reads (content hashes); with ``inputs=None`` only the config is compared (a
        cheap first check before anything is loaded).
        """
        if self.path.exists() and not self.path.is_dir():
            raise SteerscreenError(f"run folder {str(self.path)!r} is a file",
                                   "choose a folder path for --out")
        if (self.path.is_dir() and not self.manifest_path.is_file()
                and any(self.path.iterdir()) and not force):
            raise SteerscreenError(
                f"{str(self.path)!r} is a non-empty folder without a steerscreen manifest",
                "choose a new or empty --out folder (or pass --force to write into it anyway)")
        record = self.stage(name)
        if record is None:
            return StageCheck("run", f"no {name} stage recorded in {self.path}", None)
        if record.get("status") == "stale":  # an input stage was recomputed: redo, no --force
            why = record.get("stale_because", "its inputs changed")
            return StageCheck("run", f"{name} is stale ({why}): recomputing it", record)
        diffs = _differences(record.get("config", {}), config, "")
        if inputs is not None:
            diffs += _differences(record.get("inputs", {}), inputs, "inputs.")
        if diffs:
            if not force:
                shown = "; ".join(diffs[:6]) + (f"; ... ({len(diffs)} in all)"
                                                if len(diffs) > 6 else "")
                raise StageConflict(
                    f"{str(self.path)!r} already holds a {name} stage with a different config "
                    f"(recorded -> new: {shown})",
                    f"write to another --out folder, rerun with the recorded config, or pass "
                    f"--force to recompute the {name} stage (later stages that used it are "
                    "then marked stale)")
            return StageCheck("run", f"config changed and --force given: recomputing {name}",
                              record)
        if inputs is None:  # the config matches; the inputs still have to be compared
            return StageCheck("run", f"{name} config matches; inputs not yet compared", record)
        if record.get("status") != "complete":
            return StageCheck("run", f"an incomplete {name} stage is recorded: running it again",
                              record)
        broken = self.damaged_outputs(record)
        if broken:
            return StageCheck("run", f"{name} outputs {', '.join(broken)} are missing or "
                              "changed: recomputing", record)
        if force:
            return StageCheck("run", f"--force given: recomputing {name}", record)
        return StageCheck("skip", f"{name} is already complete in {self.path} with the same "
                          "config and inputs (pass --force to recompute)", record)

    def damaged_outputs(self, record: Mapping[str, Any]) -> list[str]:
        """Output files of a stage record that are missing or whose sha256 changed."""
        bad = []
        for fname, meta in (record.get("outputs") or {}).items():
            p = self.file(fname)
            if not p.is_file() or sha256_file(p) != meta.get("sha256"):
                bad.append(fname)
        return bad

    # --- stage records --------------------------------------------------------------------------
    def begin_stage(self, name: str, config: Mapping[str, Any], inputs: Mapping[str, Any], *,
                    depends_on: Iterable[str] = (), extra: Mapping[str, Any] | None = None
                    ) -> None:
        """Record that stage ``name`` started (status ``running``), replacing any old record;
        stages that depend on ``name`` and were computed from another config become stale."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.discard_temp_files()
        manifest = self.read_manifest()
        old = manifest["stages"].get(name)
        changed = old is not None and old.get("config_sha256") != _stage_hash(config, inputs)
        stages = dict(manifest["stages"])
        if changed:
            for other, rec in stages.items():
                if name in (rec.get("depends_on") or []) and rec.get("status") == "complete":
                    stages[other] = {**rec, "status": "stale",
                                     "stale_because": f"{name} was recomputed {utc_now()}"}
        stages[name] = {"status": "running", "started_utc": utc_now(), "config": dict(config),
                        "inputs": dict(inputs), "config_sha256": _stage_hash(config, inputs),
                        "depends_on": list(depends_on)}
        manifest["stages"] = stages
        self.update_manifest({**manifest, **(extra or {})})

    def complete_stage(self, name: str, *, outputs: Mapping[str, Mapping[str, Any]],
                       timings: Mapping[str, float], results: Mapping[str, Any] | None = None,
                       extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Mark stage ``name`` complete with its outputs (name -> {sha256, ...}), timings (s)
        and results; ``extra`` is merged into the manifest's top level."""
        manifest = self.read_manifest()
        rec = manifest["stages"].get(name)
        if rec is None:
            raise RuntimeError(f"stage {name!r} was never begun in {self.path}")
        rec = {k: v for k, v in rec.items() if k not in PROGRESS_KEYS}  # their files go next
        rec = {**rec, "status": "complete", "finished_utc": utc_now(),
               "timings_s": {k: round(float(v), 4) for k, v in timings.items()},
               "outputs": {k: dict(v) for k, v in outputs.items()},
               "results": dict(results or {})}
        return self.update_manifest({**(extra or {}), "stages": {name: rec}})


def _stage_hash(config: Mapping[str, Any], inputs: Mapping[str, Any]) -> str:
    return sha256_json({"config": dict(config), "inputs": dict(inputs)})


def _deep_merge(base: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in updates.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k != "stages":
            out[k] = _deep_merge(out[k], v)
        elif k == "stages" and isinstance(v, Mapping):
            out[k] = {**out.get(k, {}), **{n: dict(r) for n, r in v.items()}}
        else:
            out[k] = v
    return out


def _jsonable(v: Any) -> Any:
    """Strict JSON: NaN and infinities become null (``json`` would write bare ``NaN``)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str) -> list[str]:
    """``key: old -> new`` for every key whose JSON value differs (missing = absent)."""
    def norm(v: Any) -> Any:
        return json.loads(json.dumps(v, sort_keys=True, default=str))

    out = []
    for k in sorted(set(old) | set(new)):
        a, b = norm(old.get(k, "<absent>")), norm(new.get(k, "<absent>"))
        if a != b:
            out.append(f"{prefix}{k}: {_short(a)} -> {_short(b)}")
    return out


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 40 else s[:18] + "..." + s[-18:]
