"""Group commit: the broker's store writes go through one writer thread, which runs every write that is
waiting in one transaction and answers each caller only after that transaction is durable.

In a storm, writes arrive faster than one fsync each can keep up with; waiting writers (each with its own
transaction, thread hop and fsync) are what made the latency tail.  Here a request's write costs a queue
put and a wake-up; the writer drains what has queued (up to `max_batch`) and commits once.  Each call
still behaves as its own transaction (a savepoint inside the batch: a call that fails is undone alone and
fails alone), and nothing is answered before the COMMIT: if it fails, every call of the batch fails, so a
request that depends on its write fails closed, as before.

A store that cannot batch (no `batch()` context manager) gets the same single thread running its writes
one by one; the broker does not use a writer for such a store (PostgreSQL commits concurrently, so its
writes stay on the I/O pool).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
DEFAULT_MAX_BATCH = 64


@dataclass(frozen=True, slots=True)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class GroupCommitWriter:
    def __init__(self, store: Any, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self._batch: Callable[[], AbstractContextManager[None]] | None = getattr(store, "batch", None)
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.batches = 0  # transactions committed (tests and metrics read these)
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="kbs-writer", daemon=True)
        self._thread.start()

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the store call `fn(*args)` on the writer; its result once its transaction is durable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, args, future, loop))
        return await future

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _jobs(self) -> Iterator[list[_Job]]:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            stop = False
            while len(jobs) < self._max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
            yield jobs
            if stop:
                return

    def _run(self) -> None:
        for jobs in self._jobs():
            results = self._execute(jobs)
            self.batches += 1
            self.writes += len(jobs)
            for job, (ok, value) in zip(jobs, results, strict=True):
                job.loop.call_soon_threadsafe(_settle, job.future, ok, value)

    def _execute(self, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        if self._batch is None:
            return [_call(job) for job in jobs]
        results: list[tuple[bool, Any]] = []
        try:
            with self._batch():
                results = [_call(job) for job in jobs]
        except Exception as exc:  # BEGIN or COMMIT failed: nothing of the batch is durable
            return [(False, exc)] * len(jobs)
        return results


def _call(job: _Job) -> tuple[bool, Any]:
    try:
        return True, job.fn(*job.args)
    except Exception as exc:  # the caller's own failure, delivered to it alone
        return False, exc
