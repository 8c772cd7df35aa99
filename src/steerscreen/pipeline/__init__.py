"""Orchestration: the stages run on run folders, the study, its plan and cost, Ray."""
