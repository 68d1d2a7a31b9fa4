"""What the request handlers share, built once per app in `app.py`'s cleanup context."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kbs.keys.kek import Kek
from kbs.keys.shares import ShareKey
from kbs.policy.lifecycle import PolicyRegistry
from kbs.server.attestation import Attestor
from kbs.server.config import Config
from kbs.server.decisions import DecisionInputs, ReleaseInputs
from kbs.server.metrics import Metrics
from kbs.server.sessions import AttestedSessions, SessionCookies
from kbs.server.tokens import TokenSigner
from kbs.store.base import Store, StoreError
from kbs.store.group_commit import GroupCommitWriter

if TYPE_CHECKING:
    from kbs.server.tlog import Checkpointer

T = TypeVar("T")


@dataclass
class AdminIdentity:
    name: str
    role: str
    key: Ed25519PublicKey


@dataclass
class BrokerState:
    config: Config
    store: Store  # the narrow interface: handlers never see the backend
    kek: Kek
    signer: TokenSigner
    registry: PolicyRegistry
    attestor: Attestor
    metrics: Metrics
    admins: list[AdminIdentity]
    sessions: SessionCookies
    decisions: DecisionInputs
    io: ThreadPoolExecutor  # store calls: blocking I/O off the event loop
    policy: ThreadPoolExecutor  # policy evaluation: a slow policy never holds up the store's threads
    writer: GroupCommitWriter | None = None  # the guest protocol's writes, group-committed
    log: Checkpointer | None = None  # the release log's checkpoints and tiles (kbs.server.tlog)
    shares: ShareKey | None = None  # what owners' shares and TEEs' deposits are encrypted to (issue 15)
    attested: AttestedSessions = field(default_factory=lambda: AttestedSessions(1 << 20))  # sized by the config
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking store call on the I/O pool."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)
        except StoreError as exc:
            self._store_failed(exc)
            raise

    async def write(self, fn: Callable[..., T], *args: object) -> T:
        """Run a store write of the guest protocol: through the group-commit writer (answered once durable)."""
        if self.writer is None:
            return await self.run(fn, *args)
        try:
            return await self.writer.write(fn, *args)
        except StoreError as exc:
            self._store_failed(exc)
            raise

    def _store_failed(self, exc: StoreError) -> None:
        """Every store failure of the broker's calls, counted (kbs_store_errors_total) by its check label."""
        self.metrics.store_errors.labels(check=exc.check if exc.check.startswith("store") else "store").inc()

    async def read(self, fn: Callable[..., T], *args: object) -> T:
        """Run a store read: on the loop when the store says its reads never wait (SQLite in WAL mode reads
        a local file and is never blocked by writers: a thread hop would cost more than the read), else
        on the I/O pool like any store call (a network database)."""
        if getattr(self.store, "reads_inline", False):
            try:
                return fn(*args)
            except StoreError as exc:
                self._store_failed(exc)
                raise
        return await self.run(fn, *args)

    async def decision_generation(self) -> int:
        """The store's decision generation: on the event loop where the store can (PostgreSQL), else as `read`."""
        on_loop = getattr(self.store, "decision_generation_async", None)
        if on_loop is None:
            return await self.read(self.store.decision_generation)
        try:
            generation: int = await on_loop()
        except StoreError as exc:
            self._store_failed(exc)
            raise
        return generation

    async def release_inputs(self, path: str) -> ReleaseInputs:
        """`decisions.get(path)` for a request: the generation read as `decision_generation` does, and the inputs
        cached for it taken without a thread hop; a miss reads them as `read`."""
        generation = await self.decision_generation()
        cached = self.decisions.cached(path, generation)
        return cached if cached is not None else await self.read(self.decisions.get_at, path, generation)

    async def evaluate(self, fn: Callable[..., T], *args: object) -> T:
        """Run a policy evaluation on its own pool (Rego goes on to a worker process from there)."""
        return await asyncio.get_running_loop().run_in_executor(self.policy, fn, *args)
