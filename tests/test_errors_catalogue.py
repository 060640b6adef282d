"""docs/errors.md, the bad-input catalogue: every row names a test, and every named test exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "docs" / "errors.md"
TEST_ID = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def _rows() -> list[str]:
    lines = CATALOGUE.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.startswith("| ") and not line.startswith(("| input |", "|---"))]


def test_every_catalogue_row_names_a_test_that_exists() -> None:
    rows = _rows()
    assert len(rows) >= 150, f"docs/errors.md lists only {len(rows)} inputs"
    missing = []
    for row in rows:
        ids = TEST_ID.findall(row)
        assert ids, f"catalogue row without a test: {row[:120]}"
        for path, name in ids:
            source = ROOT / path
            if not source.is_file() or not re.search(rf"^def {name}\(", source.read_text(encoding="utf-8"), re.M):
                missing.append(f"{path}::{name}")
    assert not missing, f"docs/errors.md names tests that do not exist: {sorted(set(missing))}"
