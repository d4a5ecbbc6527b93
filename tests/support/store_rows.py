"""What the gateway's SQLite store holds, read from its file (while the gateway is not running)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from gateway.store.sqlite import DB_NAME


def committed_rows(state_dir: Path) -> set[int]:
    """The ``seq`` of every message the store had committed and not yet deleted."""
    path = state_dir / DB_NAME
    if not path.exists():
        return set()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT seq FROM messages")}
