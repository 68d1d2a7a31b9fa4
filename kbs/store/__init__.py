"""Storage: one narrow interface (`kbs.store.base.Store`) and its SQLite implementation.

Everything the broker must share between replicas lives here: sessions and their nonces,
the token signing key, resources (encrypted), policies and reference values, attestations
and the release log.  The interface is synchronous and small; the server calls it from
worker threads so the event loop never blocks on I/O.
"""
