"""What the collateral fetchers report, for whoever watches (the server's metrics): a hook, so that
`kbs.trust` never imports the server.

`kbs.trust.fetch.Fetcher` calls the functions below; each passes the event to every observer
registered with `watch`.  A source is the fetcher's service name ("kds", "pcs", "nvidia-ocsp",
"nvidia-rim"): a handful, so they make fine metric labels.  Results are short fixed words:

- cache lookups: "hit" (memory or disk), "miss" (the service must be asked), "negative" (a failure
  remembered for this key answers instead, see `Fetcher`); callers that join a fetch already in flight
  are counted once, with it;
- fetches (the service had to be asked): "ok", or why not ("not_found", "http", "unavailable",
  "throttled", "rate_limited", "busy", "offline", "invalid", "error");
- expiries: an artefact that expires was served or cached, valid until a time (the key it is
  cached under tells copies of one artefact apart from different artefacts).

Observers must not raise; with none registered (`kbs verify`, `kbs collateral`) the calls cost a loop
over an empty list.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Protocol

FETCH_RESULTS = frozenset({"ok", "not_found", "http", "unavailable", "throttled", "rate_limited", "busy",
                           "offline", "invalid", "error"})


class CollateralObserver(Protocol):
    def collateral_cache(self, source: str, result: str) -> None: ...

    def collateral_fetch(self, source: str, result: str) -> None: ...

    def collateral_expiry(self, source: str, key: Hashable, valid_until: datetime, offline: bool) -> None: ...


_observers: list[CollateralObserver] = []


def watch(observer: CollateralObserver) -> Callable[[], None]:
    """Register `observer`; returns the function that unregisters it."""
    _observers.append(observer)

    def unwatch() -> None:
        if observer in _observers:
            _observers.remove(observer)
    return unwatch


def cache(source: str, result: str) -> None:
    for observer in _observers:
        observer.collateral_cache(source, result)


def fetched(source: str, result: str) -> None:
    for observer in _observers:
        observer.collateral_fetch(source, result if result in FETCH_RESULTS else "error")


def expiry(source: str, key: Hashable, valid_until: datetime | None, offline: bool) -> None:
    if valid_until is None:  # immutable artefacts (VCEKs, chains, RIMs) never expire
        return
    for observer in _observers:
        observer.collateral_expiry(source, key, valid_until, offline)
