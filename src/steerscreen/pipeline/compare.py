"""``compare``: transfer across runs, and every run's own headline side by side.

:func:`compare` reads each run folder's screening data and (when ``fit`` ran) its summary,
computes the transfer matrix (:func:`steerscreen.screening.transfer.transfer`) and tabulates
each run's primary endpoint, power and verdicts. :func:`write_comparison` saves both tables
atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from steerscreen.errors import ArtifactError
from steerscreen.files import atomic_path, path_kind, sha256_file, user_path, write_json
from steerscreen.layout import COMPARISON_RECORD as RECORD
from steerscreen.layout import PER_RUN, SCREENING, SUMMARY, TRANSFER, RunLayout, headline_row
from steerscreen.pipeline.checks import check_writable
from steerscreen.pipeline.fit import load_screening_data, read_summary
from steerscreen.screening.transfer import transfer


class Comparison(NamedTuple):
    transfer: pl.DataFrame
    """train, test, outcome, test_context_set, n_test, rho, lo, hi, p."""
    per_run: pl.DataFrame
    """run, n_features, strength, context_set, and the fit's headline numbers when it ran."""


def compare(runs: list[str | Path], *, seed: int = 0) -> Comparison:
    """Transfer between every ordered pair of ``runs`` and the runs' own headlines."""
    if len(runs) < 2:
        raise ArtifactError("compare needs at least two runs", "pass two or more run folders")
    datas = {str(r): load_screening_data(RunLayout(r)) for r in runs}
    per_run = []
    for name, d in datas.items():
        row: dict[str, Any] = {"run": name, "n_features": d.table.height,
                               "strength": d.strength, "context_set": d.primary_set}
        if (RunLayout(name).file(SCREENING) / SUMMARY).is_file():
            row |= headline_row(read_summary(RunLayout(name)))
        per_run.append(row)
    return Comparison(transfer(datas, seed=seed), pl.DataFrame(per_run, infer_schema_length=None))


def check_comparison_folder(out: str | Path) -> Path:
    """``out`` must be a folder (or not exist yet) whose ``transfer.parquet`` and
    ``runs.parquet``, if there, steerscreen wrote (``comparison.json`` records their hashes)."""
    check_writable(out, "--out")
    folder = user_path(out)
    record = _record(folder)
    for name in (TRANSFER, PER_RUN, RECORD):
        p = folder / name
        if not (p.exists() or p.is_symlink()):
            continue
        ours = record is not None and (name == RECORD or record.get(name) == _sha(p))
        if not ours:
            raise ArtifactError(f"refusing to overwrite {str(p)!r}: steerscreen did not write it "
                                "(or it changed since)", "move it away, or pass another --out")
    return folder


def write_comparison(c: Comparison, out: str | Path, *, owned: bool = False) -> None:
    """``transfer.parquet`` and ``runs.parquet`` in ``out``, each written atomically, and
    ``comparison.json`` with their hashes (what a later compare may replace). ``owned``: the
    folder is steerscreen's own (a study's ``comparison/``), written before the record
    existed."""
    folder = user_path(out) if owned else check_comparison_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, df in ((TRANSFER, c.transfer), (PER_RUN, c.per_run)):
        with atomic_path(folder / name) as tmp:
            df.write_parquet(tmp)
            hashes[name] = sha256_file(tmp)
    write_json(folder / RECORD, {"format": "steerscreen-comparison/1", **hashes})


def _record(folder: Path) -> dict[str, Any] | None:
    if path_kind(folder / RECORD) != "file":  # a FIFO would block the read
        return None
    try:
        data = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == "steerscreen-comparison/1" \
        else None


def _sha(p: Path) -> str | None:
    return sha256_file(p) if p.is_file() and not p.is_symlink() else None


def print_transfer(transfer: pl.DataFrame) -> None:
    """The transfer matrix as a table on stdout."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="transfer: fit on train, Spearman rho on test features")
    for col in ("train", "test", "outcome", "n", "rho [95% CI]"):
        table.add_column(col)
    for r in transfer.iter_rows(named=True):
        table.add_row(escape(r["train"]), escape(r["test"]), r["outcome"], str(r["n_test"]),
                      f"{r['rho']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]")
    Console().print(table)


__all__ = ["Comparison", "compare", "print_transfer", "write_comparison"]
