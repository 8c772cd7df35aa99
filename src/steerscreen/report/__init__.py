"""The self-contained HTML report of a run or a study (``steerscreen report``).

- ``load``: read a run folder or a study folder into dataclasses (missing stages are ``None``).
- ``headline``: the verdicts and the numbers they rest on, shared by the page and summary.md.
- ``figures``: matplotlib figures as PNG bytes; ``cards``: the feature cards.
- ``sections`` (one run) and ``study`` (overview, comparison, one section per run).
- ``html``: escaping, number formatting, the page template; ``summary``: summary.md.
- ``build``: :func:`write_report`.

Data flows one way: this package reads the stages' outputs and never writes back into them.
"""

from steerscreen.report.build import ReportResult, write_report

__all__ = ["ReportResult", "write_report"]
