"""The main job: a whole study (several SAEs on one model) from config to report.

``config`` (the study file, presets, validation), ``plan`` (what will run and roughly how long),
``job`` (running it, resumably).
"""

from steerscreen.study.config import PRESETS, SAEEntry, StudyConfig, load_config
from steerscreen.study.job import StudyResult, describe_plan, run_study
from steerscreen.study.plan import Plan, make_plan

__all__ = ["PRESETS", "Plan", "SAEEntry", "StudyConfig", "StudyResult", "describe_plan",
           "load_config", "make_plan", "run_study"]
