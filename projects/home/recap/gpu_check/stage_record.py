"""What stages share about a stage's record: Skip, how a stage says it cannot run here, and read_stage, how one
stage reads another's result. Kept apart from the runner (stage.py) so stage modules import it without importing
the runner, which itself imports the stage modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Skip(Exception):
    """The stage cannot run on this machine; the message says why (it is not a failure)."""


def read_stage(out: Path, name: str) -> dict[str, Any] | None:
    """Another stage's record (e.g. the matmul peak), None if it did not succeed."""
    path = out / "stages" / f"{name}.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record.get("status") == "ok" else None
