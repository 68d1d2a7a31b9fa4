"""Storage: one narrow interface (`kbs.store.base.Store`) and its SQLite and PostgreSQL implementations.

Everything the broker must share between replicas lives here: sessions and their nonces,
the token signing key, resources (encrypted), policies and reference values, attestations
and the release log.  The interface is synchronous and small; the server calls it from
worker threads so the event loop never blocks on I/O.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from kbs.store.base import Store, StoreError


class OpenStore(Store, Protocol):
    """A store as the daemon holds it: the interface, plus releasing its connections at shutdown."""

    def close(self) -> None: ...


def open_store(database: Path | str, row_key: bytes) -> OpenStore:
    """The store `database` names: a SQLite file (a Path or sqlite:///PATH) or a postgresql:// URL.

    The PostgreSQL driver is imported only when one is asked for, so SQLite-only brokers and
    tools never load it.
    """
    if isinstance(database, Path):
        from kbs.store.sqlite import SqliteStore

        return SqliteStore(database, row_key)
    if database.startswith("sqlite:///"):
        from kbs.store.sqlite import SqliteStore

        return SqliteStore(Path(database.removeprefix("sqlite://")), row_key)
    if database.startswith(("postgresql://", "postgres://")):
        from kbs.store.postgres import PostgresStore

        return PostgresStore(database, row_key)
    raise StoreError(f"no store for database {database.partition(':')[0]!r}: use sqlite:///PATH or postgresql://")
