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
fails closed.  Each wait on the thread comes back to the loop as one callback that runs the batch's next
step there, so a batch costs the fewest passes of a busy loop (see `_on_thread`).

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
        self._flushing: asyncio.Task[None] | None = None  # while batches are written (see _flush)
        self._active = False  # batches are being written: a new write joins them, it starts nothing
        self._drained: asyncio.Future[None] | None = None  # done when no write is left
        self._loop: asyncio.AbstractEventLoop | None = None
        self._epoch = 0  # outcomes from the thread of an earlier epoch reach nobody (the loop stopped the writer)
        self._retried_before = 0
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
        if not self._active:
            self._active = True
            self._flushing = loop.create_task(self._flush())
        return await future

    async def close(self) -> None:
        """Finish what is queued, then stop the commit thread."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        self._thread.shutdown(wait=True)

    async def _flush(self) -> None:
        """The writer among the loop's tasks while it has writes: the batches themselves go on as callbacks
        (`_next_batch` and the steps after it), this waits until none is left.  If it is cancelled (the loop is
        going away), the callers still waiting are answered at once, and what the thread still does reaches
        nobody (a lock it gets after that is given back)."""
        self._loop = asyncio.get_running_loop()
        self._epoch += 1
        drained = self._drained = self._loop.create_future()
        self._next_batch()
        try:
            await drained
        except asyncio.CancelledError:  # the loop is going away: nobody is left waiting for an answer
            self._epoch += 1
            self._active = False
            in_flight, queued = self._take_the_rest()
            _settle_all(in_flight, StoreError("the broker stopped during the write (it may be durable)"))
            _settle_all(queued, StoreError("the broker stopped before the write"))
            raise
        finally:
            if self._flushing is asyncio.current_task():
                self._flushing = None

    # -- the batches: one step per pass of the loop --------------------------------------------------------
    #
    # Each step that waits (for the lock held by another process, for the COMMIT's fsync) does so on the
    # commit thread, whose outcome comes back to the loop as one callback (`_on_thread`), and the next step runs
    # in that callback.  Awaiting run_in_executor under a shield took three passes of the loop instead (the
    # executor's future, the shield's, the task's wakeup), each queued behind everything the loop had to do
    # meanwhile (~1 ms a pass under load, up to ~7); the callers were answered a pass after that, and a
    # contended batch held the write lock through all of it.

    def _next_batch(self) -> None:
        """Begin the next batch, or stop when no write is left."""
        self._in_flight = []
        if not self._pending:
            self._active = False
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)
            return
        self._retried_before = self.retried
        if not getattr(self._store, "calls_on_loop", True):
            self._on_thread(self._whole_batch, self._whole_batch_ended)
            return
        self._begin(self._first_run, lambda exc: self._failed(self._take(), exc))

    def _begin(self, then: Callable[[float], None], failed: Callable[[Exception], None]) -> None:
        """Open the batch's transaction, then `then(begun)` (perf_counter when the lock was taken): at once when
        the write lock is free, else in the pass after the thread got it.  `failed(exc)`: no transaction."""
        try:
            if self._store.try_begin_batch():
                then(time.perf_counter())
                return
        except Exception as exc:
            failed(exc)
            return
        self._on_thread(self._timed_begin, lambda ok, value: then(value) if ok else failed(value),
                        orphaned=self._give_back)

    def _first_run(self, begun: float) -> None:
        jobs = self._take()
        try:
            results = self._optimistic(jobs)
        except Exception as exc:  # the batch could not be undone: nothing of it is durable
            self._failed(jobs, exc)
            return
        if results is None:  # a call failed: everything was undone; again, each call in a savepoint
            self._begin(lambda again: self._savepoint_run(jobs, again), lambda exc: self._failed(jobs, exc))
            return
        self._commit(jobs, results, begun)

    def _savepoint_run(self, jobs: list[_Job], begun: float) -> None:
        try:
            results = self._with_savepoints(jobs)
        except Exception as exc:
            self._failed(jobs, exc)
            return
        self._commit(jobs, results, begun)

    def _commit(self, jobs: list[_Job], results: list[tuple[bool, Any]], begun: float) -> None:
        retried = self.retried != self._retried_before

        def committed(ok: bool, value: Any) -> None:
            if ok:
                self._settled(jobs, results, value - begun, retried)
            else:  # COMMIT failed: nothing of the batch is durable
                _settle_all(jobs, value)
            self._next_batch()
        # Once begun, the COMMIT finishes (and releases the lock) on its thread whatever happens on the loop.
        self._on_thread(self._timed_commit, committed)

    def _whole_batch_ended(self, ok: bool, value: Any) -> None:
        jobs, batch = value  # _whole_batch answers its own failures: it returns, never raises
        if isinstance(batch, Exception):  # no transaction, or its COMMIT failed: nothing of it is durable
            _settle_all(jobs, batch)
        else:
            results, held = batch
            self._settled(jobs, results, held, self.retried != self._retried_before)
        self._next_batch()

    def _failed(self, jobs: list[_Job], exc: Exception) -> None:
        """No transaction, or one that could not be undone: every call of the batch fails; the next batch begins
        in the loop's next pass (never recursively: every batch could fail the same way)."""
        _settle_all(jobs, exc)
        self._in_flight = []
        assert self._loop is not None
        self._loop.call_soon(self._next_batch_of, self._epoch)

    def _next_batch_of(self, epoch: int) -> None:
        if epoch == self._epoch:
            self._next_batch()

    def _on_thread(self, fn: Callable[[], Any], then: Callable[[bool, Any], None], *,
                   orphaned: Callable[[bool, Any], None] | None = None) -> None:
        """`fn()` on the commit thread, then `then(True, result)` or `then(False, exception)` on the loop, in
        one pass.  `orphaned` instead when nobody waits any more: the writer was stopped meanwhile, or the loop
        is closed (then on the thread)."""
        loop, epoch = self._loop, self._epoch
        assert loop is not None

        def deliver(ok: bool, value: Any) -> None:
            if epoch != self._epoch:
                if orphaned is not None:
                    orphaned(ok, value)
                return
            try:
                then(ok, value)
            except Exception as exc:  # a bug: its batch fails, and the writes after it still go on
                log.exception("the group commit's step failed")
                self._failed(self._in_flight, StoreError(f"the write failed: {exc}"))

        def run() -> None:
            try:
                ok, value = True, fn()
            except Exception as exc:
                ok, value = False, exc
            try:
                loop.call_soon_threadsafe(deliver, ok, value)
            except RuntimeError:  # the loop is closed: nobody will take the outcome
                if orphaned is not None:
                    orphaned(ok, value)

        self._thread.submit(run)

    def _give_back(self, ok: bool, value: Any) -> None:
        """The lock came after the writer was stopped: roll back, which lets it go."""
        if ok:
            self._store.rollback_batch()

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
