"""`kbs backup` / `kbs restore` for the SQLite store: a consistent copy while the broker serves.

SQLite's online backup API copies the database page by page and restarts if a writer changes it
meanwhile, so the copy is one committed state (WAL included) without stopping the broker.  What the
copy holds is what the database holds: sealed values and MAC'd rows, never the KEK, which must travel
separately (a backup is useless without it, and a restore is checked against it: every row MAC and
both log chains must verify under the KEK the restored broker will use).

PostgreSQL deployments use pg_dump / pg_restore (README); the same rule about the KEK applies.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from kbs.store.base import StoreError
from kbs.store.schema import SCHEMA_VERSION


def backup_sqlite(database: Path, out: Path) -> int:
    """Copy `database` to a new file `out` (0600; refused if it exists); the number of pages copied."""
    if not database.exists():
        raise StoreError(f"no database at {database}")
    _create_private(out)
    try:
        with _connect(database) as source, _connect(out) as target:
            source.backup(target)
            pages = int(target.execute("PRAGMA page_count").fetchone()[0])
            _check_integrity(target, out)
    except (sqlite3.Error, StoreError) as exc:
        out.unlink(missing_ok=True)
        raise StoreError(f"backup of {database} failed: {exc}") from exc
    return pages


def restore_sqlite(backup: Path, database: Path) -> None:
    """Copy a backup into a fresh `database` (refused if one exists: restore into a new state directory)."""
    if database.exists():
        raise StoreError(f"{database} exists: restore into a fresh state directory (or move it away first)")
    with _connect(backup) as source:
        _check_integrity(source, backup)
        version = int(source.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(f"{backup} has schema {version}, newer than this broker's {SCHEMA_VERSION}")
        database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _create_private(database)
        try:
            with _connect(database) as target:
                source.backup(target)
        except sqlite3.Error as exc:
            database.unlink(missing_ok=True)
            raise StoreError(f"restore into {database} failed: {exc}") from exc


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=30, isolation_level=None)


def _create_private(path: Path) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise StoreError(f"{path} exists; give a new file") from None


def _check_integrity(db: sqlite3.Connection, path: Path) -> None:
    result = db.execute("PRAGMA integrity_check").fetchone()[0]
    if result != "ok":
        raise StoreError(f"{path} fails SQLite's integrity check: {result}")
