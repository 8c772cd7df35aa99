"""steerscreen: predict which SAE features will steer cleanly, before steering them.

The pipeline reads top to bottom: ``models`` (specs, loading, hook adapter) -> ``saes`` (loading,
training) -> ``corpus`` -> statistics -> steering -> screening -> report. See ``docs/method.md``
for the measurement method this package implements.

The notebook API (:mod:`steerscreen.notebook`) is re-exported here lazily (PEP 562), so that
``import steerscreen`` stays cheap and nothing below the top layer loads it::

    import steerscreen as ss
    study = ss.Study.open("study")
    res = ss.screen(model=..., tokenizer=..., sae=..., corpus=texts, predictor=...)
"""

from typing import Any

__version__ = "0.1.0"

_NOTEBOOK = ("Run", "Screen", "Study", "screen")


def __getattr__(name: str) -> Any:
    if name in _NOTEBOOK:
        from steerscreen import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'steerscreen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_NOTEBOOK])
