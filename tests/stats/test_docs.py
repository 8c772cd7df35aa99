"""docs/statistics.md is generated from the column registry and kept up to date."""

from __future__ import annotations

from pathlib import Path

from steerscreen.stats import COLUMNS
from steerscreen.stats.docs import markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "statistics.md"


def test_docs_match_the_registry() -> None:
    text = markdown()
    for name in COLUMNS:
        assert f"| `{name}` |" in text, name
    assert DOC.read_text(encoding="utf-8") == text, (
        "docs/statistics.md is stale: run `python -m steerscreen.stats.docs --write "
        "docs/statistics.md`")
