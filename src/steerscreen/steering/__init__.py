"""Steering (docs/method.md §2-3): what to steer, the engine that steers it, and the outcomes.

- ``sampling``: feature samples, random null directions, context sets.
- ``outcomes``: the §3 columns, per-row sums and the per-direction reduction.
- ``engine``: :class:`SteeringEngine` (cached clean runs, batched steered rows from the hook).
- ``dose``: calibration of the strength against random directions.
- ``stage``: the ``steer`` stage (run folder, shards, resume).
"""

from steerscreen.steering.engine import CleanCache, SteeringEngine
from steerscreen.steering.outcomes import OUTCOME_COLUMNS, DirectionOutcome

__all__ = ["OUTCOME_COLUMNS", "CleanCache", "DirectionOutcome", "SteeringEngine"]
