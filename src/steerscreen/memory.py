"""Memory: how much is free, and refusing a request that cannot fit before anything loads.

A stage estimates what it will hold (model weights, accumulators, activation buffers, steered
batches) from its config and the model's shape, and :func:`check_fits` compares the sum with
what the device has free now: a request several times too large fails in a second, naming the
option to lower, instead of after minutes of loading or in the kernel's OOM killer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from steerscreen.errors import ResourceError

# Environment override (bytes), for machines whose limit neither /proc nor cgroups show.
MEMORY_ENV = "STEERSCREEN_MEMORY_BYTES"


def available_bytes(device: str = "cpu") -> int | None:
    """Bytes free on ``device`` now (host RAM: MemAvailable, capped by a cgroup limit), or None
    when it cannot be told."""
    override = os.environ.get(MEMORY_ENV, "").strip()
    if override.isdigit():
        return int(override)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    known = [x for x in (_meminfo_available(), _cgroup_free()) if x is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_free() -> int | None:
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def human(n: float) -> str:
    """``1.5 GiB`` style."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def check_fits(what: str, parts: Mapping[str, int], device: str, fix: str) -> None:
    """Raise ResourceError when the parts of ``what`` (name -> bytes) need more than ``device``
    has free. Only what is certain to fail is refused: estimates are lower bounds."""
    need = sum(parts.values())
    free = available_bytes(device)
    if free is None or need <= free:
        return
    where = "GPU" if device.startswith("cuda") else "host"
    shown = ", ".join(f"{k} {human(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
                      if v > 0)
    raise ResourceError(f"{what} needs at least {human(need)} of {where} memory ({shown}), but "
                        f"only {human(free)} is free", fix)


__all__ = ["MEMORY_ENV", "available_bytes", "check_fits", "human"]
