"""steerscreen: predict which SAE features will steer cleanly, before steering them.

The pipeline reads top to bottom: ``models`` (specs, loading, hook adapter) -> ``saes`` (loading,
training) -> ``corpus`` -> statistics -> steering -> screening -> report. See ``docs/method.md``
for the measurement method this package implements.
"""

__version__ = "0.1.0"
