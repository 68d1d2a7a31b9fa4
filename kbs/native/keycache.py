"""A bounded, thread-safe LRU of per-key precomputed tables, for any curve's key-table class.

P384KeyCache and P256KeyCache are this class over P384KeyTable and P256KeyTable.  The C cores are
stateless; this is the only state of the verification layer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

TableT = TypeVar("TableT")


class KeyTableCache(Generic[TableT]):
    """Tables keyed by the public-key bytes, built by `build(public_key)` on a key's
    `build_after`-th sighting (default 2: a key seen once, as most certificate keys are, costs
    nothing extra; a key signing every report or quote of its host gets a table on its second).
    At most `max_tables` tables are kept, least recently used first out; sightings of keys without
    a table are remembered for 8 * max_tables keys.  `build` runs outside the lock (the C work
    releases the GIL), so two threads may both build a new key's table: the first stored wins.
    """

    def __init__(self, build: Callable[[bytes], TableT], max_tables: int = 256, build_after: int = 2) -> None:
        if max_tables < 1 or build_after < 1:
            raise ValueError("max_tables and build_after must be at least 1")
        self.max_tables = max_tables
        self.build_after = build_after
        self._build = build
        self._lock = threading.Lock()
        self._tables: OrderedDict[bytes, TableT] = OrderedDict()
        self._sightings: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._tables)

    def get(self, public_key: bytes) -> TableT | None:
        """The key's table if one is cached (now the most recently used); never builds one, and
        does not count a sighting."""
        key = bytes(public_key)
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
            return table

    def table_for(self, public_key: bytes) -> TableT | None:
        """The key's table if it has (or now earns) one, else None after counting the sighting.

        Raises what `build` raises when a table is due but the key is not a valid point.
        """
        key = bytes(public_key)
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
            seen = self._sightings.pop(key, 0) + 1
            if seen < self.build_after:
                self._sightings[key] = seen
                while len(self._sightings) > 8 * self.max_tables:
                    self._sightings.popitem(last=False)
                return None
        table = self._build(key)
        with self._lock:
            table = self._tables.setdefault(key, table)
            self._tables.move_to_end(key)
            while len(self._tables) > self.max_tables:
                self._tables.popitem(last=False)
        return table
