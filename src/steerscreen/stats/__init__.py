"""Pre-intervention feature statistics (docs/method.md §1): one streaming pass, mergeable state,
columns.

- ``registry``: every column's name, group, formula and units (:data:`COLUMNS`).
- ``accumulators``: :class:`StatsAccumulator` (mergeable streaming state) and its options.
- ``baselines``, ``geometry``, ``activation``, ``coactivation``, ``logits``: one module per
  predictor group, each turning merged state + SAE weights (+ unembedding) into columns.
- ``table``: the per-feature and examples tables; ``collect``: the pass over a model and SAE.

``collect`` imports the model and SAE glue; the rest needs only torch, numpy and polars.
"""

from steerscreen.stats.accumulators import StatsAccumulator, StatsOptions
from steerscreen.stats.registry import COLUMNS, Column, columns_in_group, register
from steerscreen.stats.table import TableOptions, examples_table, feature_stats

__all__ = [
    "COLUMNS",
    "Column",
    "StatsAccumulator",
    "StatsOptions",
    "TableOptions",
    "columns_in_group",
    "examples_table",
    "feature_stats",
    "register",
]
