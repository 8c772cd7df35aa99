"""Checkpoints of the stats pass: what makes a long stats stage resumable.

Every ``interval_s`` seconds (at a batch boundary) the pass saves its accumulator state in
``RUN/.stats_checkpoint/`` as ``state-NEXT.safetensors`` (every tensor) and then
``state-NEXT.json`` (the scalars, the next context to process, the stage's config hash and the
tensors' file name and sha256), each through a temp file and a rename; older checkpoints are
deleted only once the new one is whole, so a kill at any moment leaves at least one complete
checkpoint (after the first). Each is then recorded in the manifest (``stages.stats.checkpoint``:
next context, both files' sha256). Safetensors and JSON only: no pickle.

On a rerun with the same config and inputs the stage loads the checkpoint and continues the pass
at its next context. The tables are then bit-identical to an uninterrupted pass's: nothing in the
accumulators is random or order-dependent beyond the batch sequence (counts are integers, the
float64 sums get the same batch sums in the same order, reservoirs and examples are selected by
a total order on the firing), the restored state is the saved bits, and the remaining batches are
the same ones (same batch size; another ``--batch-size`` changes only the float64 sums' rounding).

The newest whole checkpoint (its JSON parses and names this config, its tensors match the
hash the JSON records) is used; when its hashes differ from the manifest's record it is adopted
(the process died between writing and recording it). Damaged or foreign ones are skipped; with
none left the pass starts over. The stage deletes the folder once it completes. Saving costs a
write of the whole state, so saves are spaced at least ten times the last save's duration apart
(at most ~10 % overhead for a large SAE), unless ``interval_s`` is 0 (a save after every batch).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from steerscreen.files import atomic_path, sha256_file
from steerscreen.layout import CHECKPOINT
from steerscreen.stats.accumulators import StatsAccumulator

CHECKPOINT_DIR = CHECKPOINT
FORMAT = "steerscreen-stats-checkpoint/1"


def write_state(folder: Path, stem: str, acc: StatsAccumulator, key: str,
                **meta: Any) -> dict[str, str]:
    """Write ``STEM.safetensors`` (every tensor) and then ``STEM.json`` (the scalars, ``key``,
    ``meta`` and the tensors' sha256), each atomically -> {file name: sha256}.

    The state files of a checkpoint and of a Ray stats shard (:mod:`.stats_ray`)."""
    state = acc.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()
               if isinstance(v, torch.Tensor)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    with atomic_path(folder / f"{stem}.safetensors") as tmp:
        save_file(tensors, str(tmp))
        files[f"{stem}.safetensors"] = sha256_file(tmp)
    doc = {"format": FORMAT, "key": key, **meta, "tensors": f"{stem}.safetensors",
           "tensors_sha256": files[f"{stem}.safetensors"], "state": scalars}
    with atomic_path(folder / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        files[f"{stem}.json"] = sha256_file(tmp)
    return files


def read_state(meta_path: Path, key: str, device: torch.device | str | None
               ) -> tuple[StatsAccumulator | None, dict[str, Any], dict[str, str]]:
    """Read back what :func:`write_state` wrote -> (accumulator, its JSON, {file: sha256});
    ``device`` None only verifies the files (no accumulator is built: None).

    Raises ValueError when the files are foreign (another format or config) or damaged (the
    tensors' hash differs), and OSError / KeyError / TypeError when unreadable."""
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("key") != key:
        raise ValueError("it belongs to another config")
    tensors = meta_path.parent / Path(meta["tensors"]).name  # never outside the folder
    files = {tensors.name: sha256_file(tensors), meta_path.name: sha256_file(meta_path)}
    if files[tensors.name] != meta["tensors_sha256"]:
        raise ValueError("it is damaged (its tensors' hash differs from the one it records)")
    if device is None:
        return None, meta, files
    acc = StatsAccumulator.from_state_dict({**meta["state"], **load_file(tensors)},
                                           device=device)
    return acc, meta, files


def try_read_state(meta_path: Path, key: str, device: torch.device | str | None,
                   say: Callable[[str], None], what: str, outcome: str
                   ) -> tuple[StatsAccumulator | None, dict[str, Any], dict[str, str]] | None:
    """:func:`read_state`, or None after saying why the files are ``outcome`` ("not used",
    "redone"); ``what`` names them ("the stats checkpoint")."""
    try:
        return read_state(meta_path, key, device)
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:  # truncated files
        say(f"{what} {meta_path.name} is unreadable ({e}): {outcome}")
    except ValueError as e:  # foreign or damaged
        say(f"{what} {meta_path.name} is {outcome}: {e}")
    return None


def save(folder: Path, acc: StatsAccumulator, next_context: int, key: str) -> dict[str, Any]:
    """Write checkpoint ``state-NEXT`` (tensors, then the JSON naming them), drop older ones
    -> its manifest record."""
    files = write_state(folder, f"state-{int(next_context):010d}", acc, key,
                        next_context=int(next_context))
    for old in folder.iterdir():  # older ones and stray temp files, once the new one is whole
        if old.name not in files and old.is_file():
            old.unlink(missing_ok=True)
    return {"next_context": int(next_context), "files": files}


def load(folder: Path, key: str, recorded: Mapping[str, Any] | None,
         device: torch.device | str, say: Callable[[str], None]
         ) -> tuple[StatsAccumulator, int, dict[str, Any]] | None:
    """The newest whole checkpoint of this config: (accumulator, next context, its manifest
    record), or None (there is none; the pass starts over)."""
    for meta_path in sorted(folder.glob("state-*.json"), reverse=True):
        got = try_read_state(meta_path, key, device, say, "the stats checkpoint", "not used")
        if got is None:
            continue
        acc, meta, files = got
        assert acc is not None  # a device was given
        if files != (recorded or {}).get("files"):
            say(f"the stats checkpoint {meta_path.name} was written but not recorded "
                "(interrupted): verified and adopted")
        return acc, int(meta["next_context"]), {"next_context": int(meta["next_context"]),
                                                "files": files}
    return None


class Checkpointer:
    """Called after each batch of the pass; saves when ``interval_s`` has passed."""

    def __init__(self, folder: Path, key: str, total: int, interval_s: float,
                 record: Callable[[dict[str, Any]], None]) -> None:
        self.folder, self.key, self.total = folder, key, total
        self.interval_s, self.record = interval_s, record
        self.last = time.monotonic()
        self.spacing = interval_s

    def __call__(self, next_context: int, acc: StatsAccumulator) -> None:
        now = time.monotonic()
        if next_context >= self.total or now - self.last < self.spacing:
            return  # the last batch needs none: the stage completes next
        self.record(save(self.folder, acc, next_context, self.key))
        self.last = time.monotonic()
        if self.interval_s > 0:  # 0 asks for every batch (tests, flaky machines)
            self.spacing = max(self.interval_s, 10 * (self.last - now))


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
