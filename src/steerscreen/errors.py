"""User-facing errors: each says what was wrong and what to do about it.

The CLI turns any :class:`SteerscreenError` into a two-line message and exit code 2, with no
traceback. Library callers catch the subclasses they care about.
"""

from __future__ import annotations


class SteerscreenError(Exception):
    """A problem with the user's input or environment, with an actionable fix."""

    exit_code = 2

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = what
        self.fix = fix
        super().__init__(what if not fix else f"{what}\n  fix: {fix}")


class SpecError(SteerscreenError):
    """A model, SAE, corpus or hook specification that cannot be parsed or resolved."""


class OfflineError(SteerscreenError):
    """A spec that needs the network (a hub download) while none is available."""


class PairingError(SteerscreenError):
    """An SAE that does not fit the model or hook it is used with."""


class CorpusError(SteerscreenError):
    """A corpus that is empty, too short, or not readable text."""


class ArtifactError(SteerscreenError):
    """A saved file (SAE, table, manifest) that is missing, truncated or corrupt."""


class NumericsError(SteerscreenError):
    """NaN or Inf where numbers must be finite: a model's activations at a hook."""


class ResourceError(SteerscreenError):
    """A request that cannot fit in the memory available (estimated before anything loads)."""


def check_seed(seed: int) -> None:
    """Seeds feed numpy's and torch's generators, which take 0 <= seed < 2**63."""
    if not 0 <= seed < 2**63:
        raise SpecError(f"seed must be a non-negative integer below 2**63, got {seed}",
                        "pass e.g. --seed 0 (study config: seed = 0)")


# errno -> what to do: the file-system failures a user can fix themselves. A full or read-only
# disk only ever fails a write; a permission can fail a read too, so it says "access".
_WRITE_ERRNOS = {
    "ENOSPC": "free space or choose another --out; rerun the same command to resume",
    "EDQUOT": "free space (disk quota) or choose another --out; rerun the same command to resume",
    "EROFS": "choose an --out folder on a writable disk",
}
_ACCESS_ERRNOS = {"EACCES", "EPERM"}


def from_os_error(e: OSError) -> SteerscreenError | None:
    """The user-facing error for a disk that is full or read-only or a permission denied, or
    None for any other OSError (a bug or a missing file: those keep their own handling)."""
    import errno

    name = errno.errorcode.get(e.errno or -1, "")
    path = e.filename if e.filename is not None else "a file"
    if name in _WRITE_ERRNOS:
        return SteerscreenError(f"could not write {path}: {e.strerror or name}",
                                _WRITE_ERRNOS[name])
    if name in _ACCESS_ERRNOS:
        return SteerscreenError(f"could not access {path}: {e.strerror or name}",
                                "fix its permissions, or choose an --out folder you can write "
                                "to; rerun the same command to resume")
    return None
