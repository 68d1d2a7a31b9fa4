"""Caches bounded by bytes, not entries: what an unauthenticated client can fill must have a size.

A thin, thread-safe wrapper over `cachetools.LRUCache` with a `getsizeof`: every entry is
charged what the caller says it costs (its bytes, or an estimate for a decoded object), an
entry bigger than the whole budget is never stored, and the least recently used entries are
evicted until the total fits.  Used for verified tokens, parsed certificates, collateral
bodies and compiled policies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import cachetools

K = TypeVar("K")
V = TypeVar("V")


class ByteBoundedCache(Generic[K, V]):
    """An LRU map whose entries' charged sizes never sum above `max_bytes`."""

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._lru: cachetools.LRUCache[K, V] = cachetools.LRUCache(maxsize=max(max_bytes, 1), getsizeof=size_of)
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._lru.get(key)

    def put(self, key: K, value: V) -> bool:
        """Store `value`; False (and nothing stored) when it alone exceeds the budget."""
        if self.max_bytes == 0 or self._size_of(value) > self.max_bytes:
            return False
        with self._lock:
            self._lru[key] = value
        return True

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._lru.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return int(self._lru.currsize)

    def __len__(self) -> int:
        with self._lock:
            return len(self._lru)
