"""docs/steering.md documents every outcome column."""

from pathlib import Path

from steerscreen.steering import OUTCOME_COLUMNS

DOC = Path(__file__).resolve().parents[2] / "docs" / "steering.md"


def test_every_outcome_column_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [name for name in OUTCOME_COLUMNS if f"| `{name}` |" not in text]
    assert not missing, f"docs/steering.md lacks rows for {missing}"
