"""Rego evaluation in a small pool of worker processes, so that a policy can cost one evaluation,
never the broker.

regopy (rego-cpp) can be made to crash (`json.unmarshal` / `yaml.unmarshal` of a deeply nested
string: SIGSEGV), to allocate without bound (`numbers.range(1, 4000000000)`) or to run for tens
of seconds (cross products) by a policy that passes upload and only misbehaves on some claims.
Each evaluation therefore runs in a worker process (`kbs.policy.rego_worker`) with a deadline
(past it the worker is killed) and an address-space limit, and any loss of the worker is a deny
naming why, with a label usable as a metrics label:

    rego.crash     the worker died (signal or exit status; the engine's last words in the detail)
    rego.timeout   no answer within `timeout` seconds: the worker was killed
    rego.memory    the worker ran out of its memory budget (std::bad_alloc, MemoryError)
    rego.start     a worker did not start (or not within `start_timeout`)
    rego.protocol  a worker sent something that is not a bounded JSON reply
    rego.busy      no worker became free within `queue_timeout`
    rego.too_large the request exceeds `max_message_bytes`
    rego.closed    the pool was closed
    rego.error     the engine reported an error (compile or evaluation): a deny, the worker lives on

A lost worker is replaced at once while restarts are cheap, then at most one restart per
`restart_interval` seconds (default 0.5) for the whole pool (a token bucket of `2 * workers` restarts), so a
policy that crashes on every evaluation cannot turn the pool into a fork bomb; requests wait
for a worker meanwhile (up to `queue_timeout`).  Workers cache compiled bundles per (policy
content hash, data document hash); the pool remembers which worker holds which and prefers it.

Thread-safe: `evaluate` and `check` block the calling thread (meant for a dedicated thread pool)
and never wait longer than the queue, start and evaluation deadlines allow.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from kbs import cpus
from kbs.errors import KbsError
from kbs.policy.model import Decision, Explanation, PolicyInvalid
from kbs.policy.rego_worker import HEADER, ProtocolError, decode_body, encode_frame

CRASH, TIMEOUT, MEMORY = "rego.crash", "rego.timeout", "rego.memory"
START, PROTOCOL, BUSY, TOO_LARGE, CLOSED, ERROR = (
    "rego.start", "rego.protocol", "rego.busy", "rego.too_large", "rego.closed", "rego.error")
FAILURE_LABELS = (CRASH, TIMEOUT, MEMORY, START, PROTOCOL, BUSY, TOO_LARGE, CLOSED, ERROR)
COUNTERS = ("evaluations", "checks", "restarts", *FAILURE_LABELS)

DEFAULT_WORKERS = 2
DEFAULT_TIMEOUT = 2.0  # seconds per evaluation, compile included
DEFAULT_MEMORY = 512 << 20  # address space a worker may add after start-up
RESTART_INTERVAL = 0.5  # seconds per restart once the burst allowance is spent
MAX_REPLY_BYTES = 64 << 10  # replies are small by construction (clipped messages, previews)
STDERR_TAIL = 4096  # bytes of a worker's stderr kept to explain its death
_MEMORY_SIGNS = (b"bad_alloc", b"MemoryError", b"Cannot allocate memory", b"out of memory")

_SRC = str(Path(__file__).resolve().parents[2])  # the directory holding the `kbs` package
_BOOTSTRAP = f"import sys; sys.path.insert(0, {_SRC!r}); from kbs.policy.rego_worker import main; main()"


class RegoUnavailable(KbsError):
    """The pool could not run the request (closed, saturated, or workers do not start): not the policy's fault."""

    check = "rego.unavailable"


class _Lost(Exception):
    """The request could not be answered by a worker; `label` says why (one of FAILURE_LABELS)."""

    def __init__(self, label: str, detail: str) -> None:
        super().__init__(f"{label}: {detail}")
        self.label = label
        self.detail = detail


@dataclass(eq=False)  # compared and hashed by identity
class _Worker:
    """One worker process and the parent's ends of its pipes."""

    proc: subprocess.Popen[bytes]
    to_worker: int
    from_worker: int
    errors: int | None  # None once at end of file (the other two stay open until close_fds)
    ready: bool = False
    pending: bytearray = field(default_factory=bytearray)
    stderr_tail: bytearray = field(default_factory=bytearray)
    known: OrderedDict[str, None] = field(default_factory=OrderedDict)  # keys it likely has compiled

    def close_fds(self) -> None:
        """Once only (a closed descriptor's number may already belong to someone else)."""
        for fd in (self.to_worker, self.from_worker, self.errors):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.to_worker = self.from_worker = -1
        self.errors = None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()

    def stop(self) -> None:
        """Kill, reap, close; never blocks for long (a process stuck in the kernel is left to init)."""
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.close_fds()

    # -- I/O with a deadline -------------------------------------------------------------------

    def send(self, payload: bytes, deadline: float) -> None:
        view = memoryview(encode_frame(payload))
        while view:
            try:
                view = view[os.write(self.to_worker, view):]
            except BlockingIOError:  # the pipe is full: wait until the worker reads (or the deadline)
                self._wait(select.POLLOUT, self.to_worker, deadline)
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    raise self._died() from exc
                raise

    def hung_up(self) -> bool:
        """An idle worker has nothing to say: anything readable (or a hang-up) means it is gone or broken."""
        poller = select.poll()
        poller.register(self.from_worker, select.POLLIN)
        return bool(poller.poll(0))

    def receive(self, deadline: float) -> dict[str, Any]:
        while True:
            if len(self.pending) >= HEADER.size:
                (size,) = HEADER.unpack_from(self.pending)
                if size > MAX_REPLY_BYTES:
                    raise _Lost(PROTOCOL, f"a Rego worker sent a reply of {size} bytes (limit {MAX_REPLY_BYTES})")
                if len(self.pending) >= HEADER.size + size:
                    body = bytes(self.pending[HEADER.size: HEADER.size + size])
                    del self.pending[: HEADER.size + size]
                    try:
                        return decode_body(body)
                    except ProtocolError as exc:
                        raise _Lost(PROTOCOL, f"a Rego worker sent a malformed reply: {exc}") from exc
            self._wait(select.POLLIN, self.from_worker, deadline)
            try:
                chunk = os.read(self.from_worker, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                raise self._died()
            self.pending += chunk

    def _wait(self, event: int, fd: int, deadline: float) -> None:
        """Until `fd` is ready for `event`, draining stderr meanwhile; _Lost(TIMEOUT) at the deadline."""
        poller = select.poll()
        poller.register(fd, event)
        if self.errors is not None:
            poller.register(self.errors, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Lost(TIMEOUT, "")
            for ready_fd, _ in poller.poll(max(1, int(left * 1000) + 1)):
                if ready_fd == fd:
                    return
                if ready_fd == self.errors and not self._drain_stderr():
                    poller.unregister(ready_fd)

    def _drain_stderr(self) -> bool:
        """Read what stderr holds into the bounded tail; False at end of file."""
        if self.errors is None:
            return False
        try:
            chunk = os.read(self.errors, 1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        if not chunk:
            os.close(self.errors)
            self.errors = None
            return False
        self.stderr_tail += chunk
        del self.stderr_tail[:-STDERR_TAIL]
        return True

    def _died(self) -> _Lost:
        """The worker closed its pipe: reap it and say how it died (memory exhaustion or a crash)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)
        end = time.monotonic() + 1
        while self.errors is not None and time.monotonic() < end:
            if not select.select([self.errors], [], [], max(0.0, end - time.monotonic()))[0]:
                break
            self._drain_stderr()
        code = self.proc.poll()
        if code is None:
            how = "closed its pipe"
        elif code < 0:
            how = f"signal {_signal_name(-code)}"
        else:
            how = f"exit status {code}"
        last = " ".join((self.stderr_tail.decode("utf-8", "replace").strip().splitlines()[-1:] or [""])[0].split())
        said = f": {last[:300]}" if last else ""
        if any(sign in self.stderr_tail for sign in _MEMORY_SIGNS):
            return _Lost(MEMORY, f"the Rego engine ran out of its memory budget ({how}){said}")
        return _Lost(CRASH, f"the Rego engine crashed ({how}){said}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


@dataclass
class _Slot:
    worker: _Worker | None = None
    busy: bool = False
    last_used: float = 0.0
    started: bool = False  # a worker was started here before (a new one is then a restart)


class RegoWorkerPool:
    """Worker processes running regopy: `evaluate` (a Decision, never raises) and `check` (upload).

    `workers` processes are started at once (with `lazy`, each on its first use); each evaluation has
    `timeout` seconds (compile on a cache miss included) and each worker `memory_bytes` of address space
    beyond its start-up size (None: no limit).  `stats()` gives the counters in COUNTERS and
    `workers_alive`; `on_event(name)` is called (outside any lock; exceptions ignored) for every
    increment of one of them.
    """

    def __init__(self, workers: int = DEFAULT_WORKERS, timeout: float = DEFAULT_TIMEOUT,
                 memory_bytes: int | None = DEFAULT_MEMORY, *, queue_timeout: float | None = None,
                 start_timeout: float = 30.0, cache_entries: int = 64, cache_bytes: int = 64 << 20,
                 max_message_bytes: int = 16 << 20, restart_interval: float = RESTART_INTERVAL,
                 on_event: Callable[[str], None] | None = None, lazy: bool = False) -> None:
        if workers < 1:
            raise ValueError("a Rego worker pool needs at least one worker")
        if timeout <= 0 or start_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.workers = workers
        self.timeout = timeout
        self.memory_bytes = memory_bytes
        self.queue_timeout = 5 * timeout if queue_timeout is None else queue_timeout
        self.start_timeout = start_timeout
        self.cache_entries = cache_entries
        self.max_message_bytes = max_message_bytes
        self.restart_interval = restart_interval
        self._config = json.dumps({"parent": os.getpid(), "memory_bytes": memory_bytes or 0,
                                   "cache_entries": cache_entries, "cache_bytes": cache_bytes,
                                   "max_message_bytes": max_message_bytes})
        self._on_event = on_event
        self._cond = threading.Condition()
        self._closed = False
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._tokens = float(2 * workers)  # restarts allowed right now (refilled over time)
        self._token_time = time.monotonic()
        self._slots = [_Slot() for _ in range(workers)]
        self._workers: set[_Worker] = set()  # every live process, for close() and the finalizer
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)
        for slot in [] if lazy else self._slots:  # lazy: each started on first use (no Rego policy, no process)
            try:
                slot.worker = self._spawn()
                slot.started = True
            except _Lost as exc:  # retried (and reported to the caller) on first use
                self._count(exc.label)

    # -- public API ----------------------------------------------------------------------------

    def evaluate(self, text: str, content_hash: str, input_document: Any,
                 data_document: Mapping[str, Any]) -> Decision:
        """data.policy.allow of `text` with this input and data; any failure is a deny that says why."""
        self._count("evaluations")
        try:
            input_json = _dumps(input_document, sort_keys=False)
            data_json = _dumps(data_document, sort_keys=True)
        except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
            return _deny(f"claims document cannot be handed to the Rego engine: {exc}")
        try:
            source = _dumps(text, sort_keys=False)
        except (TypeError, UnicodeEncodeError) as exc:
            return _deny(f"policy text cannot be handed to the Rego engine: {exc}")
        key = f"{content_hash}:{hashlib.sha256(data_json.encode()).hexdigest()}"
        head = json.dumps({"op": "eval", "key": key})[:-1]
        short = f'{head},"input":{input_json}}}'.encode()
        full = f'{head},"text":{source},"data":{data_json},"input":{input_json}}}'.encode()
        if len(full) > self.max_message_bytes:
            self._count(TOO_LARGE)
            return _deny(f"{TOO_LARGE}: the request to the Rego engine is {len(full)} bytes "
                         f"(limit {self.max_message_bytes})")
        try:
            reply = self._call(key, short, full)
        except _Lost as lost:
            return _deny(f"{lost.label}: {lost.detail}")
        except Exception as exc:  # never raise: a failure of the pool itself is a deny too
            return _deny(f"{PROTOCOL}: the Rego worker pool failed: {type(exc).__name__}: {exc}")
        decision = _decision(reply)
        if reply.get("status") == "error":
            self._count(ERROR)
        return decision

    def check(self, text: str, data_document: Mapping[str, Any] | None = None) -> None:
        """Compile and query allow once with an empty input, in a worker.

        PolicyInvalid (with the engine's line) when the engine refuses the policy, or crashes,
        runs out of memory or out of time on it; RegoUnavailable when the pool cannot run it.
        """
        self._count("checks")
        try:
            payload = _dumps({"op": "check", "text": text, "data": dict(data_document or {})},
                             sort_keys=False).encode()
        except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
            raise PolicyInvalid(f"the policy cannot be handed to the Rego engine: {exc}") from exc
        if len(payload) > self.max_message_bytes:
            raise PolicyInvalid(f"the policy is too large for the Rego engine ({len(payload)} bytes, "
                                f"limit {self.max_message_bytes})")
        try:
            reply = self._call(None, payload, payload)
        except _Lost as lost:
            if lost.label in (CRASH, MEMORY, TIMEOUT):
                raise PolicyInvalid(f"{lost.detail} while checking this policy ({lost.label})") from lost
            raise RegoUnavailable(f"the policy could not be checked: {lost}", check=lost.label) from lost
        if reply.get("status") == "error":
            raise PolicyInvalid(str(reply.get("message") or "the Rego engine refused the policy"),
                                line=reply.get("line") if isinstance(reply.get("line"), int) else None)
        if reply.get("status") != "ok":
            raise RegoUnavailable(f"unexpected answer from a Rego worker: {reply.get('status')!r}")

    def stats(self) -> dict[str, int]:
        """Counters since the pool started (monotonic: Prometheus counters) under the names in COUNTERS:
        evaluations, checks, restarts (worker processes started to replace one) and one per label in
        FAILURE_LABELS (rego.crash, rego.timeout, ...); plus workers_alive, a gauge (processes running
        or starting)."""
        with self._cond:
            out = dict(self._counts)
            out["workers_alive"] = sum(1 for s in self._slots if s.worker is not None)
            return out

    def worker_pids(self) -> list[int]:
        with self._cond:
            return [s.worker.proc.pid for s in self._slots if s.worker is not None]

    def close(self) -> None:
        """Stop every worker; evaluations in flight end as a deny (rego.closed), later ones too."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            idle = [s for s in self._slots if not s.busy and s.worker is not None]
            in_use = [s.worker for s in self._slots if s.busy and s.worker is not None]
            for slot in idle:
                slot.busy = True
        for worker in in_use:
            worker.kill()  # its thread sees the end of file, closes the pipes and retires it
        for slot in idle:
            self._retire(slot)
            with self._cond:
                slot.busy = False

    def __enter__(self) -> RegoWorkerPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- one request -----------------------------------------------------------------------------

    def _call(self, key: str | None, short: bytes, full: bytes) -> dict[str, Any]:
        slot = self._acquire(key)
        lost: _Lost | None = None
        try:
            worker = self._ready_worker(slot)
            deadline = time.monotonic() + self.timeout
            try:
                reply = self._ask(worker, key, short, full, deadline)
            except _Lost as exc:
                if exc.label != TIMEOUT:
                    raise
                raise _Lost(TIMEOUT, f"the Rego engine did not finish within {self.timeout:g} s; "
                                     "its worker was stopped") from exc
            if reply.get("status") == "memory":
                raise _Lost(MEMORY, "the Rego engine ran out of its memory budget (MemoryError)")
            return reply
        except _Lost as exc:
            lost = exc
            if not self._closed:
                raise
            lost = _Lost(CLOSED, "the Rego worker pool is closed")
            raise lost from exc
        except Exception as exc:  # mid-message, the worker's state is unknown: replace it
            lost = _Lost(PROTOCOL, f"talking to a Rego worker failed: {type(exc).__name__}: {exc}")
            raise lost from exc
        except BaseException:  # KeyboardInterrupt and the like: replace the worker, let it through
            lost = _Lost(PROTOCOL, "interrupted")
            raise
        finally:
            self._release(slot, lost)

    def _ask(self, worker: _Worker, key: str | None, short: bytes, full: bytes, deadline: float) -> dict[str, Any]:
        known = key is not None and key in worker.known
        worker.send(short if known else full, deadline)
        reply = worker.receive(deadline)
        if reply.get("status") == "miss":  # the worker evicted it: send the source again
            worker.send(full, deadline)
            reply = worker.receive(deadline)
        if key is not None and reply.get("status") != "miss":
            worker.known[key] = None
            worker.known.move_to_end(key)
            while len(worker.known) > self.cache_entries:
                worker.known.popitem(last=False)
        return reply

    def _ready_worker(self, slot: _Slot) -> _Worker:
        """The slot's worker, started and past its handshake (a worker found dead is replaced once)."""
        for _ in range(2):
            if slot.worker is None:
                slot.worker = self._spawn()
                if slot.started:
                    self._count("restarts")
                slot.started = True
            worker = slot.worker
            if worker.proc.poll() is not None or (worker.ready and worker.hung_up()):
                self._retire(slot)  # died while idle (killed from outside): not this request's doing
                continue
            if not worker.ready:
                try:
                    hello = worker.receive(time.monotonic() + self.start_timeout)
                except _Lost as exc:
                    detail = (f"did not start within {self.start_timeout:g} s" if exc.label == TIMEOUT
                              else exc.detail)
                    raise _Lost(START, f"a Rego worker {detail}") from exc
                if hello.get("status") != "ready":
                    raise _Lost(START, f"a Rego worker sent {hello.get('status')!r} instead of ready")
                worker.ready = True
            return worker
        raise _Lost(START, "Rego workers die as soon as they start")

    # -- slots, workers, restarts ---------------------------------------------------------------

    def _acquire(self, key: str | None) -> _Slot:
        """A free slot, preferring a live worker that holds `key`; waits (bounded) for one."""
        give_up = time.monotonic() + self.queue_timeout
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                free = [s for s in self._slots if not s.busy]
                live = [s for s in free if s.worker is not None]
                chosen: _Slot | None = None
                if live:
                    chosen = max(live, key=lambda s: (key is not None and s.worker is not None
                                                      and key in s.worker.known, s.last_used))
                elif free and self._take_token(now):
                    chosen = free[0]
                if chosen is not None:
                    chosen.busy = True
                    chosen.last_used = now
                    return chosen
                if now >= give_up:
                    break
                wake = give_up
                if free:  # dead slots wait for the next restart token
                    wake = min(wake, now + (1 - self._tokens) * self.restart_interval)
                self._cond.wait(max(0.001, wake - now))
        lost = (_Lost(CLOSED, "the Rego worker pool is closed") if self._closed
                else _Lost(BUSY, f"no Rego worker became free within {self.queue_timeout:g} s"))
        self._count(lost.label)
        raise lost

    def _take_token(self, now: float) -> bool:
        """The restart budget: a burst of 2 * workers, then one per restart_interval.  Caller holds the lock."""
        refill = (now - self._token_time) / self.restart_interval if self.restart_interval > 0 else float("inf")
        self._tokens = min(2.0 * self.workers, self._tokens + refill)
        self._token_time = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _release(self, slot: _Slot, lost: _Lost | None) -> None:
        if lost is not None:
            self._retire(slot)
            self._count(lost.label)
            with self._cond:  # replace it now while restarts are cheap; else the next request will
                restart = not self._closed and self._take_token(time.monotonic())
            if restart:
                try:
                    slot.worker = self._spawn()
                    self._count("restarts")
                except _Lost as exc:
                    self._count(exc.label)
        if self._closed and slot.worker is not None:
            self._retire(slot)
        with self._cond:
            slot.busy = False
            self._cond.notify()

    def _retire(self, slot: _Slot) -> None:
        worker, slot.worker = slot.worker, None
        if worker is not None:
            worker.stop()
            with self._cond:
                self._workers.discard(worker)

    def _spawn(self) -> _Worker:
        """Start a worker process (its handshake is read on first use, so this does not wait)."""
        env = {name: os.environ[name] for name in ("LD_LIBRARY_PATH",) if name in os.environ}
        env["LC_ALL"] = "C.UTF-8"  # nothing else: `opa.runtime().env` would show a policy the broker's environment
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-c", _BOOTSTRAP, self._config], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True)
        except OSError as exc:
            raise _Lost(START, f"cannot start a Rego worker: {exc}") from exc
        cpus.unpin(proc.pid)  # a broker worker pinned to one CPU (kbs.cpus): Rego runs on any
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        # Own the descriptors: the pool reads and writes them with poll and deadlines, not file objects.
        fds = [os.dup(f.fileno()) for f in (proc.stdin, proc.stdout, proc.stderr)]
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
        for fd in fds:
            os.set_blocking(fd, False)
        worker = _Worker(proc=proc, to_worker=fds[0], from_worker=fds[1], errors=fds[2])
        with self._cond:
            self._workers.add(worker)
            if self._closed:
                self._workers.discard(worker)
                worker.stop()
                raise _Lost(CLOSED, "the Rego worker pool is closed")
        return worker

    def _count(self, name: str) -> None:
        with self._cond:
            self._counts[name] += 1
        if self._on_event is not None:
            with contextlib.suppress(Exception):
                self._on_event(name)


def _stop_all(workers: set[_Worker]) -> None:
    for worker in list(workers):
        worker.stop()
    workers.clear()


def _dumps(value: Any, *, sort_keys: bool) -> str:
    """Strict JSON (no NaN, string keys only), refusing text that is not valid Unicode."""
    text = json.dumps(value, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                      default=_refuse)
    text.encode("utf-8")  # lone surrogates raise UnicodeEncodeError here, not in the worker
    return text


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def _decision(reply: Mapping[str, Any]) -> Decision:
    """A worker's reply as a decision: only boolean true allows."""
    status = reply.get("status")
    if status == "ok" and reply.get("allow") is True:
        return Decision(allow=True, explanation=Explanation(kind="policy", ok=True, detail="data.policy.allow is true",
                                                            where="data.policy.allow", seen=True))
    if status == "ok" and reply.get("allow") is False:
        return _deny("data.policy.allow is false", seen=False)
    if status == "undefined":
        return _deny("data.policy.allow is undefined (no allow rule matched and there is no default)")
    if status == "value":
        shown = json.dumps(reply["value"], sort_keys=True) if "value" in reply else str(reply.get("preview"))
        return _deny(f"data.policy.allow is not a boolean: {shown}", seen=reply.get("value"))
    message = str(reply.get("message") or "unknown engine error")
    phase = reply.get("phase")
    if phase == "compile":
        line = reply.get("line")
        return _deny(f"policy does not compile for this request: {message}" + (f" (line {line})" if line else ""))
    if phase == "input":
        return _deny(f"claims document cannot be handed to the Rego engine: {message}")
    if status == "error":
        return _deny(f"evaluating data.policy.allow failed: {message}")
    return _deny(f"{PROTOCOL}: unexpected answer from a Rego worker: {status!r}")


def _deny(reason: str, seen: Any = None) -> Decision:
    return Decision(allow=False, explanation=Explanation(kind="policy", ok=False, detail=reason,
                                                         where="data.policy.allow", seen=seen))
