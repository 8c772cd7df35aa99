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
