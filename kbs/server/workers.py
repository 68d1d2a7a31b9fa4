"""`kbs serve` on every core: a supervisor process and N worker processes sharing one port.

Each worker is a whole broker (event loop, thread pools, Rego pool, store connections) listening on
the same HOST:PORT with SO_REUSEPORT, so the kernel spreads new connections across them and no
process relays requests for another.  The supervisor serves nothing itself.  It

- does the first-start work once, before any worker exists: dev keys (`bootstrap_dev`, already done
  by the caller), then the app's own start-up run and torn down (store schema, token signing secret,
  default policy), so workers never race on them and a bad configuration fails once, clearly;
- checks that the port is free with a plain bind (a second broker using SO_REUSEPORT would otherwise
  share it silently) and fixes port 0 to one port for all workers;
- makes a private directory for prometheus-client's multiprocess mode (kbs.server.metrics) and a
  status file with every worker's pid and state (`/healthz?all`, kbs.server.health);
- restarts a worker that dies: at once if it had served for FLAP_SECONDS, after a growing delay if it
  keeps dying young, and gives up (exit 1) after MAX_FLAPS such deaths in a row, or at once when a
  worker fails at the first start (a port or configuration problem no restart cures);
- turns SIGTERM/SIGINT into SIGTERM to each worker, which drains its requests, then exits 0.

Workers are spawned, not forked: each imports prometheus_client after PROMETHEUS_MULTIPROC_DIR is
set, and no thread or lock of the supervisor is copied into them.  A worker stops when its pipe to
the supervisor closes, so a SIGKILLed supervisor leaves no orphan serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from aiohttp import web
from prometheus_client import multiprocess

from kbs.errors import KbsError
from kbs.server.app import make_app, run_loop, serve_app, setup_logging
from kbs.server.config import Config
from kbs.server.errors import ServeError
from kbs.server.health import RUNNING, WorkerIdentity
from kbs.server.metrics import MULTIPROC_ENV
from kbs.server.tls import server_ssl_context

log = logging.getLogger("kbs.server.workers")

FLAP_SECONDS = 5.0  # a worker that dies sooner after starting counts as failing at start
MAX_FLAPS = 5  # such deaths in a row of one worker: the broker gives up
MAX_DELAY = 10.0  # the longest pause before restarting a failing worker
DRAIN_SECONDS = 25.0  # aiohttp's shutdown_timeout (10 s) and the app's clean-up, with room
START_SECONDS = 120.0  # a worker that has not listened by then is killed (and counts as failing)


def worker_count(configured: int) -> int:
    """`[server] workers`, or with 0 one per core this process may run on."""
    if configured > 0:
        return configured
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+: honours the affinity mask
    if counter is not None:
        return int(counter() or 1)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def supervise(config: Config, count: int) -> int:
    """Run `count` workers until SIGTERM/SIGINT; 0 once they drained.  ServeError when they cannot serve."""
    asyncio.run(_first_start(config))
    host, port = config.host_port
    port = probe_port(host, port, config.listen)
    config = replace(config, listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    runtime = Path(tempfile.mkdtemp(prefix="kbs-workers-"))  # 0700: metrics and status are this user's
    metrics_dir = runtime / "metrics"
    metrics_dir.mkdir()
    os.environ[MULTIPROC_ENV] = str(metrics_dir)  # inherited by every worker spawned from here on
    try:
        return Supervisor(config, count, runtime).run()
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(runtime, ignore_errors=True)


async def _first_start(config: Config) -> None:
    """The app's start-up and clean-up once: the schema, secrets and default policy exist afterwards."""
    runner = web.AppRunner(make_app(config), handle_signals=False)
    await runner.setup()
    await runner.cleanup()


def probe_port(host: str, port: int, listen: str) -> int:
    """Bind HOST:PORT without SO_REUSEPORT and let go: fails if anything listens there; port 0 chosen."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ServeError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    probes: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            probes.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds it
            sock.bind((address[0], port, *address[2:]))
            port = port or sock.getsockname()[1]  # port 0: the first address's choice for all
    except OSError as exc:
        raise ServeError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    finally:
        for sock in probes:
            sock.close()
    return port


@dataclass
class _Slot:
    """One worker position: its current process, and how its recent starts went."""

    index: int
    process: BaseProcess | None = None
    pipe: Connection | None = None
    state: str = "starting"
    started: float = 0.0
    listening: bool = False
    restarts: int = 0
    flaps: int = 0  # deaths in a row soon after starting
    restart_at: float | None = None
    last_error: str = ""


class Supervisor:
    def __init__(self, config: Config, count: int, runtime: Path) -> None:
        self.config = config
        self.runtime = runtime
        self.status_file = runtime / "workers.json"
        self.metrics_dir = runtime / "metrics"
        self.slots = [_Slot(i) for i in range(count)]
        self._context = multiprocessing.get_context("spawn")
        self._stopping = False
        self._announced = False

    def run(self) -> int:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        previous_wakeup = signal.set_wakeup_fd(wake_write)  # a signal wakes `wait` below
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in self.slots:
                self._start(slot)
            failure = self._loop(wake_read)
        finally:
            self._drain()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_read)
            os.close(wake_write)
        if failure:
            raise ServeError(failure)
        log.info("all workers stopped")
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _loop(self, wake: int) -> str:
        """Until a stop signal (""), or the reason the broker cannot serve."""
        while not self._stopping:
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    self._start(slot)
                elif not slot.listening and slot.process is not None and now - slot.started > START_SECONDS:
                    slot.last_error = f"did not listen within {START_SECONDS:g} s"
                    slot.process.kill()  # its exit is handled below, as a failure at start
            waits = [s.restart_at - now for s in self.slots if s.restart_at is not None]
            objects: list[Connection | int] = [wake]
            for slot in self.slots:
                if slot.process is not None and slot.pipe is not None:
                    objects += [slot.process.sentinel, slot.pipe]
            ready = wait(objects, timeout=max(0.0, min([*waits, 1.0])))
            if wake in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake, 512)
            for slot in self.slots:
                if slot.pipe is not None and slot.pipe in ready:
                    self._message(slot)
            for slot in self.slots:
                if slot.process is not None and slot.process.sentinel in ready:
                    failure = self._exited(slot)
                    if failure:
                        return failure
            if not self._announced and all(slot.listening for slot in self.slots):
                self._announce()
        return ""

    def _start(self, slot: _Slot) -> None:
        parent, child = self._context.Pipe(duplex=True)
        identity = WorkerIdentity(slot.index, len(self.slots), self.status_file)
        process = self._context.Process(target=_worker_main, args=(self.config, identity, child),
                                        name=f"kbs-worker-{slot.index}")
        process.start()
        child.close()  # the worker's end lives in the worker only: its EOF is the supervisor's death
        slot.process, slot.pipe = process, parent
        slot.state, slot.started, slot.listening, slot.restart_at = "starting", time.monotonic(), False, None
        log.info("worker started", extra={"worker": slot.index, "pid": process.pid})
        self._write_status()

    def _message(self, slot: _Slot) -> None:
        assert slot.pipe is not None
        try:
            kind, detail = slot.pipe.recv()
        except (EOFError, OSError, ValueError):
            return  # the worker is gone; its sentinel says so
        if kind == "listening":
            slot.listening, slot.state = True, RUNNING
            self._write_status()
        elif kind == "error":
            slot.last_error = str(detail)

    def _exited(self, slot: _Slot) -> str:
        """Bookkeeping for a dead worker, and its restart; the reason to give up, if it is one."""
        assert slot.process is not None and slot.pipe is not None
        if slot.pipe.poll():
            self._message(slot)  # its last words (an error) may arrive with its death
        slot.process.join()
        pid, code = slot.process.pid, slot.process.exitcode
        slot.pipe.close()
        slot.process.close()
        slot.process, slot.pipe = None, None
        if pid is not None:
            # its live gauges leave the sums; its counters stay in them
            multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        why = slot.last_error or f"exited with status {code}"
        young = not slot.listening or time.monotonic() - slot.started < FLAP_SECONDS
        slot.flaps = slot.flaps + 1 if young else 0
        slot.last_error, slot.listening = "", False
        if self._stopping:
            slot.state = "stopped"
            self._write_status()
            return ""
        log.warning("worker died", extra={"worker": slot.index, "pid": pid, "status": code, "reason": why})
        if not self._announced or slot.flaps >= MAX_FLAPS:
            # The first start failing is a port or configuration problem: restarting cannot cure it.
            return (f"worker {slot.index} failed at start: {why}" if not self._announced
                    else f"worker {slot.index} keeps failing at start ({slot.flaps} times in a row): {why}")
        delay = 0.0 if slot.flaps == 0 else min(MAX_DELAY, 0.25 * 2 ** slot.flaps)
        slot.restarts += 1
        slot.state, slot.restart_at = "restarting", time.monotonic() + delay
        self._write_status()
        return ""

    def _announce(self) -> None:
        self._announced = True  # from now on a dying worker is restarted, not a reason to give up
        log.info("all workers listening", extra={"workers": len(self.slots)})

    def _drain(self) -> None:
        """SIGTERM to every worker, then wait for them to drain; SIGKILL any still there after DRAIN_SECONDS."""
        self._stopping = True
        live = [slot for slot in self.slots if slot.process is not None]
        for slot in live:
            assert slot.process is not None and slot.process.pid is not None
            slot.state = "stopping"
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid, signal.SIGTERM)
        self._write_status()
        deadline = time.monotonic() + DRAIN_SECONDS
        for slot in live:
            assert slot.process is not None
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.exitcode is None:
                log.warning("worker did not drain in time: killed", extra={"worker": slot.index})
                slot.process.kill()
                slot.process.join()
            self._exited(slot)

    def _write_status(self) -> None:
        """The supervisor's view for /healthz?all, replaced atomically so a reader never sees half."""
        view = {"supervisor": os.getpid(), "workers": [
            {"index": slot.index, "pid": slot.process.pid if slot.process is not None else None,
             "state": slot.state, "restarts": slot.restarts} for slot in self.slots]}
        partial = self.status_file.with_suffix(".tmp")
        partial.write_text(json.dumps(view))
        partial.replace(self.status_file)


def _worker_main(config: Config, identity: WorkerIdentity, supervisor: Connection) -> None:
    """A worker process: serve until SIGTERM or the supervisor's end; report listening or why not."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the supervisor forwards it
    setup_logging(os.environ.get("KBS_LOG_LEVEL", "INFO"))
    try:
        run_loop(serve_app(make_app(config), *config.host_port, ssl_context=server_ssl_context(config),
                              worker=identity, on_listening=lambda urls: supervisor.send(("listening", urls)),
                              stop_when_readable=supervisor.fileno()))
    except KbsError as exc:
        _last_words(supervisor, str(exc))
    except Exception as exc:  # anything else: logged in full, named to the supervisor, and a failed exit
        log.exception("worker failed", extra={"worker": identity.index})
        _last_words(supervisor, f"{type(exc).__name__}: {exc}")


def _last_words(supervisor: Connection, message: str) -> None:
    with contextlib.suppress(OSError):
        supervisor.send(("error", message))
    sys.exit(1)
