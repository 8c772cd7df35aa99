"""Every setting of steerscreen, once: one dataclass per stage, the Ray options, the study.

Each field carries its default, its docstring (the string right below it) and its validation.
The CLI's options, a study file's sections, the record a stage stores in its manifest, the
Python API and ``docs/study.md`` are all derived from these classes:

- :mod:`.stages`: ``TrainConfig``, ``StatsConfig``, ``SteerConfig``, ``FitConfig``,
  ``ScreenConfig``, their study-settable parts (``*Settings``) and ``ClusterOptions``;
- :mod:`.study`: ``StudyConfig`` (the model, the SAEs, S' and the nested settings), presets, and
  reading a study file.

Torch-free: validating a config costs no model library.
"""

from steerscreen.config import stages, study
from steerscreen.config.stages import *  # noqa: F403  (the package re-exports both modules)
from steerscreen.config.study import *  # noqa: F403

__all__ = [*stages.__all__, *study.__all__]  # pyright: ignore[reportUnsupportedDunderAll]
