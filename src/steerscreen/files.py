"""Small file utilities every stage shares: the user cache folder, atomic writes, hashing.

Everything that lands on disk goes through a temp file (or folder) in the same directory and an
``os.replace``, so a crash or a full disk leaves the previous version intact.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def utc_now() -> str:
    """Now, UTC, to the second (ISO 8601)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def user_path(path: str | Path) -> Path:
    """``path`` with a leading ``~`` expanded; ``~name`` of no such user is the user's error
    (pathlib raises RuntimeError), answered like any other bad input."""
    from steerscreen.errors import SteerscreenError

    try:
        return Path(path).expanduser()
    except (RuntimeError, ValueError) as e:  # no such user; a NUL byte in the path
        raise SteerscreenError(f"cannot expand the path {str(path)!r} ({e})",
                               "write the full path") from e


def path_kind(path: Path) -> str:
    """``"file"``, ``"folder"``, ``"missing"`` or what else it is (``"FIFO"``, ``"socket"``,
    ``"device"``), without opening it: reading a FIFO where a file was expected would hang."""
    import errno
    import stat

    try:
        mode = path.stat().st_mode
    except ValueError:  # a NUL byte: no such file can exist
        return "missing"
    except OSError as e:  # a parent that is a file, a link loop, a name too long: as pathlib
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP, errno.ENAMETOOLONG):
            return "missing"
        raise
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def require_file(path: Path, what: str, fix: str, error: type[Exception] | None = None) -> None:
    """Raise ``error`` (an ArtifactError by default) unless ``path`` is a regular file, saying
    which of "does not exist", "is a folder" or "is a FIFO/socket/device" it is."""
    from steerscreen.errors import ArtifactError

    kind = path_kind(path)
    if kind == "file":
        return
    why = {"missing": "does not exist", "folder": "is a folder, not a file"}.get(
        kind, f"is a {kind}, not a regular file")
    raise (error or ArtifactError)(f"{what} {str(path)!r} {why}", fix)


def cache_dir(*parts: str) -> Path:
    """``$STEERSCREEN_CACHE``, else ``$XDG_CACHE_HOME/steerscreen`` or ``~/.cache/steerscreen``."""
    root = os.environ.get("STEERSCREEN_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "steerscreen")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-able object (keys sorted), e.g. a config used as a cache key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
"""The temp file :func:`atomic_path` makes beside NAME: ``.NAME.XXXXXXXX.tmp`` (mkstemp)."""
TEMP_DIR = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-[0-9a-f]{8}$")
"""The temp and set-aside folders :func:`atomic_dir` makes beside NAME."""


def umask() -> int:
    """The process's umask: from /proc on Linux, else by setting and restoring it (a thread
    creating a file in that instant would get 022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` in one rename. The
    file gets the permissions the user's umask gives a new file (mkstemp's are 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it takes ``path``'s place.

    The files written into it are fsynced before the rename makes them visible. An existing
    ``path`` is moved aside, replaced, then deleted (rename cannot replace a non-empty folder);
    if the final rename fails, the old folder is put back. On any error the temp folder goes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A sibling (same file system, so the last step is a rename, never a copy), made with the
    # default permissions, not mkdtemp's 0o700: it becomes the user's folder.
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if not path.exists():
            os.replace(tmp, path)
            return
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
