"""Group commit: the guest protocol's store writes are gathered into one transaction per batch, and each
caller is answered only after its batch is durable.

In a storm, writes arrive faster than one fsync each can keep up with; waiting writers (each with its own
transaction and fsync) were what made the latency tail.  Here a request's write joins the batch being
gathered; one batch at a time is written: the write lock is taken (at once when it is free, else on a
thread, so the loop never waits for another process's commit), the batch's writes are taken from the queue
(those that arrived while it waited for the lock join it), the calls run on the event loop, and the
COMMIT, which waits for the disk, runs on a thread.  The calls run first without a savepoint each (every
call usually succeeds; a savepoint is two more statements a call, two more round trips on a network
database); if one fails, the whole transaction is rolled back and the batch runs again with each call in
its own savepoint, so that the failing call is undone alone and fails alone.  Nothing is answered before
the COMMIT returns: if it fails, every call of the batch fails, so a request that depends on its write
fails closed.

Why the calls run on the loop: a store call is Python (rows, MACs, canonical JSON) between short SQLite
steps.  On a writer thread, every step released and re-took the GIL in competition with the loop, and
that hand-off cost more than the calls (measured: ~0.5 ms of CPU per release).  On the loop the calls are
a few tens of microseconds each and the only thread hops are the commit's (and the lock's, when taken).

The store must offer the batch steps (try_begin_batch, begin_batch, batch_calls, commit_batch, rollback_batch).
A store whose calls wait on the network (PostgreSQL: `calls_on_loop = False`) has each whole batch run on the
writer's thread instead: one thread hop per batch, and one transaction (so one wait for the logs' heads, which
replicas share) for many appends, where each append was a transaction queueing on those heads.  Such a store may
hold the first run's rows back and send them with the COMMIT (one round trip fewer while the heads are locked);
a row refused there (BatchRowRefused) sends the batch round again with a savepoint a call, as a call that failed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard, TypeVar

from kbs.store.base import BatchRowRefused, StoreError

T = TypeVar("T")
DEFAULT_MAX_BATCH = 64
log = logging.getLogger(__name__)


class BatchingStore(Protocol):
    def try_begin_batch(self) -> bool: ...
    def begin_batch(self) -> None: ...
    def batch_calls(self, savepoints: bool = True) -> Any: ...  # a context manager
    def commit_batch(self) -> None: ...
    def rollback_batch(self) -> None: ...


def can_batch(store: object) -> TypeGuard[BatchingStore]:
    return all(hasattr(store, name) for name in ("try_begin_batch", "begin_batch", "batch_calls",
                                                  "commit_batch", "rollback_batch"))


@dataclass(frozen=True, slots=True)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


# Told of each committed batch, after its callers are answered: its number of writes, the seconds from its
# (last) BEGIN to its COMMIT's return (the write lock's hold, across processes: what writers queue behind in a
# storm), and whether it ran again with savepoints (a call failed the first time).  The broker's metrics.
BatchObserver = Callable[[int, float, bool], None]


class GroupCommitWriter:
    def __init__(self, store: BatchingStore, max_batch: int = DEFAULT_MAX_BATCH,
                 observe: BatchObserver | None = None) -> None:
        self._store = store
        self._max_batch = max_batch
        self._observe = observe
        self._pending: list[_Job] = []
        self._in_flight: list[_Job] = []  # the batch being written (answered if the loop goes away meanwhile)
        self._taking = threading.Lock()  # `_take` runs on the loop or on the commit thread (see there)
        self._flushing: asyncio.Task[None] | None = None
        # Commits and contended lock waits: one batch at a time, so one thread.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kbs-commit")
        self.batches = 0  # transactions committed (tests and metrics read these)
        self.writes = 0
        self.retried = 0  # batches run again with a savepoint per call, after a call failed without

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the store call `fn(*args)` in the next batch; its result once that batch is durable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Job(fn, args, future))
        if self._flushing is None:
            self._flushing = loop.create_task(self._flush())
        return await future

    async def close(self) -> None:
        """Finish what is queued, then stop the commit thread."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        self._thread.shutdown(wait=True)

    async def _flush(self) -> None:
        try:
            while self._pending:
                try:
                    await self._write_batch()
                    self._in_flight = []
                except asyncio.CancelledError:  # the loop is going away: nobody is left waiting for an answer
                    in_flight, queued = self._take_the_rest()
                    _settle_all(in_flight, StoreError("the broker stopped during the write (it may be durable)"))
                    _settle_all(queued, StoreError("the broker stopped before the write"))
                    raise
        finally:
            self._flushing = None

    def _take(self, count: int | None = None) -> list[_Job]:
        """The next batch's jobs, taken once its transaction is open: the writes that arrived while it waited for
        the lock join it, instead of waiting a whole batch more.  Taken on the commit thread too (a whole batch
        there), while the loop only appends, except when it stops: then it takes what is left, under the same
        lock, so no job is both failed by the loop and written by the thread."""
        with self._taking:
            count = min(len(self._pending), self._max_batch if count is None else count)
            jobs = self._pending[:count]
            del self._pending[:count]
            self._in_flight = jobs
            return jobs

    def _take_the_rest(self) -> tuple[list[_Job], list[_Job]]:
        """As the loop stops: the batch in flight and every job still queued, which the commit thread, under the
        same lock, can no longer take."""
        with self._taking:
            in_flight, queued = self._in_flight, self._pending[:]
            self._pending.clear()
            self._in_flight = []
            return in_flight, queued

    async def _write_batch(self) -> None:
        loop = asyncio.get_running_loop()
        retried = self.retried
        if not getattr(self._store, "calls_on_loop", True):
            # Shielded: once begun, the batch ends (committed or rolled back) whatever happens to this task.
            jobs, outcome = await asyncio.shield(loop.run_in_executor(self._thread, self._whole_batch))
            if isinstance(outcome, Exception):  # no transaction, or its COMMIT failed: nothing of it is durable
                _settle_all(jobs, outcome)
            else:
                self._settled(jobs, *outcome, self.retried != retried)
            return
        try:
            begun = await self._begin(loop)
        except Exception as exc:  # no transaction: nothing of the batch ran
            _settle_all(self._take(), exc)
            return
        jobs = self._take()
        try:
            results = self._optimistic(jobs)
            if results is None:  # a call failed: everything was undone; again, each call in a savepoint
                begun = await self._begin(loop)
                results = self._with_savepoints(jobs)
        except Exception as exc:  # the batch could not be undone or begun again: nothing of it is durable
            _settle_all(jobs, exc)
            return
        await self._commit(loop, jobs, results, begun, self.retried != retried)

    async def _commit(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], results: list[tuple[bool, Any]],
                      begun: float, retried: bool) -> None:
        try:
            # Shielded: once begun, the COMMIT finishes (and releases the lock) whatever happens to this task.
            committed = await asyncio.shield(loop.run_in_executor(self._thread, self._timed_commit))
        except Exception as exc:  # COMMIT failed: nothing of the batch is durable
            _settle_all(jobs, exc)
            return
        self._settled(jobs, results, committed - begun, retried)

    async def _begin(self, loop: asyncio.AbstractEventLoop) -> float:
        """Open the batch's transaction: at once when the write lock is free, else waiting for it on the thread.
        When it was begun (the lock taken), by perf_counter."""
        if self._store.try_begin_batch():
            return time.perf_counter()
        begin = loop.run_in_executor(self._thread, self._timed_begin)
        try:
            return await asyncio.shield(begin)
        except asyncio.CancelledError:  # the thread still gets the lock: give it back
            begin.add_done_callback(lambda f: None if f.exception() else self._store.rollback_batch())
            raise

    def _timed_begin(self) -> float:
        self._store.begin_batch()
        return time.perf_counter()

    def _timed_commit(self) -> float:
        """Commit; when the lock was let go (on this thread: the loop may take a while to hear of it)."""
        self._store.commit_batch()
        return time.perf_counter()

    def _optimistic(self, jobs: list[_Job]) -> list[tuple[bool, Any]] | None:
        """The calls in the open batch without a savepoint each (the common case: every call succeeds, and a
        savepoint is two more statements a call, two more round trips on a network database).  If one fails,
        the whole transaction is rolled back and None returned: the caller runs the batch again, each call in
        its own savepoint, so that the failing call fails alone."""
        try:
            with self._store.batch_calls(savepoints=False):
                return [(True, job.fn(*job.args)) for job in jobs]
        except BaseException as exc:
            self._store.rollback_batch()
            if not isinstance(exc, Exception):
                raise
            self.retried += 1
            return None

    def _whole_batch(self) -> tuple[list[_Job], tuple[list[tuple[bool, Any]], float] | Exception]:
        """Begin, take the jobs, the calls, commit: on the writer's thread, for a store whose calls wait on the
        network.  The jobs, and their results with the seconds from the (last) BEGIN to the COMMIT's return, or
        the exception that failed them all."""
        try:
            begun = self._timed_begin()
        except Exception as exc:  # no transaction: nothing of the batch ran
            return self._take(), exc
        jobs = self._take()
        if not jobs:  # the loop stopped and failed them while this waited for the lock
            self._store.rollback_batch()
            return jobs, ([], 0.0)
        try:
            results = self._optimistic(jobs)
            if results is not None:
                try:
                    return jobs, (results, self._timed_commit() - begun)
                except BatchRowRefused:  # its COMMIT sent the run's rows, and one was refused: nothing is durable
                    self.retried += 1
            begun = self._timed_begin()
            results = self._with_savepoints(jobs)
            return jobs, (results, self._timed_commit() - begun)
        except Exception as exc:
            return jobs, exc

    def _with_savepoints(self, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        """The calls in the open batch, each in its own savepoint: a call that fails is undone and fails alone."""
        try:
            with self._store.batch_calls():
                return [_call(job) for job in jobs]
        except BaseException:
            self._store.rollback_batch()
            raise

    def _settled(self, jobs: list[_Job], results: list[tuple[bool, Any]], held: float, retried: bool) -> None:
        self.batches += 1
        self.writes += len(jobs)
        for job, (ok, value) in zip(jobs, results, strict=True):
            _settle(job.future, ok, value)
        if self._observe is not None:
            try:  # after the answers: an observer's failure must never leave a caller waiting
                self._observe(len(jobs), held, retried)
            except Exception:
                log.exception("the group commit's batch observer failed")


def _call(job: _Job) -> tuple[bool, Any]:
    try:
        return True, job.fn(*job.args)
    except Exception as exc:  # the caller's own failure, delivered to it alone
        return False, exc


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # cancelled by its caller, or answered already (a batch cut short by the loop's end)
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _settle_all(jobs: list[_Job], exc: Exception) -> None:
    for job in jobs:
        _settle(job.future, False, exc)
