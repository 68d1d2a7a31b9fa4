"""The supervisor of `kbs serve` with several workers: a lean process that imports the standard library only.

kbs.server.workers.supervise does what needs the broker's imports (configuration, first start, the listening
sockets, the private runtime directory) and then execs `python -m kbs.server.supervisor RUNTIME COUNT
LISTEN_FDS`: the same process and PID (what systemd watches), but about 15 MB instead of the 70 MB those imports
hold.  From here it starts each worker as `python -m kbs.server.workers RUNTIME INDEX COUNT FD LISTEN_FDS` (a
plain subprocess, so no multiprocessing resource tracker either), restarts workers that die, forwards
SIGTERM/SIGINT and writes the status file for `/healthz?all`.  It never reads the configuration: the workers
unpickle it from RUNTIME.

LISTEN_FDS are the broker's listening sockets (one per address of `listen`, comma-separated descriptor
numbers), made once before the exec and inherited by every worker, a restarted one too: the workers accept
from one queue (see kbs.server.workers).  The supervisor never accepts; it closes its copies when it stops,
so that once the workers have closed theirs, new connections are refused while the drain goes on.

Each worker gets one end of a socketpair as FD.  It writes its reports there as JSON lines
(`{"kind": "listening", "urls": [...]}`, `{"kind": "error", "message": "..."}`), and the supervisor never
writes to it: the worker's end becomes readable (EOF) only when the supervisor is gone, and it stops then.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("kbs.server.workers")  # the name these lines had before the supervisor was split off

# The runtime directory (mkdtemp, 0700), made by kbs.server.workers.supervise and removed here at exit.
CONFIG_FILE = "config.pickle"  # the Config, for the workers only
STATUS_FILE = "workers.json"  # every worker's pid and state (kbs.server.health)
METRICS_DIR = "metrics"  # prometheus-client's multiprocess directory (kbs.server.metrics)
WORKER_MODULE = "kbs.server.workers"
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})  # blocked from just before the exec until handled here

FLAP_SECONDS = 5.0  # a worker that dies sooner after starting counts as failing at start
MAX_FLAPS = 5  # such deaths in a row of one worker: the broker gives up
MAX_DELAY = 10.0  # the longest pause before restarting a failing worker
DRAIN_SECONDS = 25.0  # aiohttp's shutdown_timeout (10 s) and the app's clean-up, with room
START_SECONDS = 120.0  # a worker that has not listened by then is killed (and counts as failing)

# prometheus_client.multiprocess.mark_process_dead, re-done rather than imported: prometheus_client costs
# this process 12 MB.  These are its Gauge modes starting with "live" (tests/test_workers.py checks).
LIVE_GAUGE_MODES = ("liveall", "livemax", "livemin", "livemostrecent", "livesum")


def supervisor_command(runtime: Path, count: int, listen_fds: Sequence[int]) -> list[str]:
    return [sys.executable, "-m", "kbs.server.supervisor", str(runtime), str(count), fd_list(listen_fds)]


def worker_command(runtime: Path, index: int, count: int, fd: int, listen_fds: Sequence[int]) -> list[str]:
    return [sys.executable, "-m", WORKER_MODULE, str(runtime), str(index), str(count), str(fd), fd_list(listen_fds)]


def fd_list(fds: Sequence[int]) -> str:
    return ",".join(str(fd) for fd in fds)


def parse_fd_list(text: str) -> tuple[int, ...]:
    """LISTEN_FDS as given on the command line; ValueError unless one or more descriptor numbers."""
    fds = tuple(int(part) for part in text.split(","))
    if any(fd < 0 for fd in fds):
        raise ValueError(f"not descriptor numbers: {text!r}")
    return fds


def forget_live_gauges(metrics_dir: Path, pid: int) -> None:
    """A dead worker's live gauges leave the sums (their files go); its counters stay in them."""
    for mode in LIVE_GAUGE_MODES:
        with contextlib.suppress(FileNotFoundError):
            (metrics_dir / f"gauge_{mode}_{pid}.db").unlink()


class _Slot:
    """One worker position: its current process, and how its recent starts went."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen[bytes] | None = None
        self.reports: socket.socket | None = None  # the supervisor's end of the worker's socketpair
        self.unread = b""  # a report line not yet complete
        self.state = "starting"
        self.started = 0.0
        self.listening = False
        self.restarts = 0
        self.flaps = 0  # deaths in a row soon after starting
        self.restart_at: float | None = None
        self.last_error = ""


class Supervisor:
    def __init__(self, runtime: Path, count: int, listen_fds: Sequence[int]) -> None:
        self.runtime = runtime
        self.listen_fds = tuple(listen_fds)  # open until the stop: every worker started gets them
        self.status_file = runtime / STATUS_FILE
        self.metrics_dir = runtime / METRICS_DIR
        self.slots = [_Slot(i) for i in range(count)]
        self._selector = selectors.DefaultSelector()
        self._stopping = False
        self._announced = False

    def run(self) -> str:
        """Until SIGTERM/SIGINT (then "", once the workers drained), or the reason the broker cannot serve."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)  # any signal, SIGCHLD included, wakes `select` below
        for stop in STOP_SIGNALS:
            signal.signal(stop, self._on_stop)
        signal.signal(signal.SIGCHLD, _on_child)  # a Python handler, or the wakeup fd never hears of it
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a stop sent during the exec arrives now
        self._selector.register(wake_read, selectors.EVENT_READ)
        try:
            for slot in self.slots:
                if not self._stopping:  # a stop signal sent during the exec: no worker to start
                    self._start(slot)
            return self._loop(wake_read)
        finally:
            self._drain()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _loop(self, wake: int) -> str:
        while not self._stopping:
            timeout = self._due(time.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.fd == wake:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake, 512)
                else:
                    self._read(key.data)
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is not None:
                    failure = self._exited(slot)
                    if failure:
                        return failure
            if not self._announced and all(slot.listening for slot in self.slots):
                self._announce()
        return ""

    def _due(self, now: float) -> float:
        """Restart the slots whose delay is over, kill workers too slow to listen; seconds until the next."""
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                self._start(slot)
            elif not slot.listening and slot.process is not None and now - slot.started > START_SECONDS:
                slot.last_error = f"did not listen within {START_SECONDS:g} s"
                slot.process.kill()  # its exit is handled as a failure at start
        waits = [slot.restart_at - now for slot in self.slots if slot.restart_at is not None]
        return max(0.0, min([*waits, 1.0]))

    def _start(self, slot: _Slot) -> None:
        mine, theirs = socket.socketpair()
        try:
            command = worker_command(self.runtime, slot.index, len(self.slots), theirs.fileno(), self.listen_fds)
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       pass_fds=(theirs.fileno(), *self.listen_fds))
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()  # the worker's end lives in the worker only: its EOF is the supervisor's death
        mine.setblocking(False)
        self._selector.register(mine, selectors.EVENT_READ, slot)
        slot.process, slot.reports, slot.unread = process, mine, b""
        slot.state, slot.started, slot.listening, slot.restart_at = "starting", time.monotonic(), False, None
        log.info("worker started", extra={"worker": slot.index, "pid": process.pid})
        self._write_status()

    def _read(self, slot: _Slot) -> None:
        """The worker's reports so far; at EOF its socket leaves the selector (its exit is seen by poll)."""
        assert slot.reports is not None
        while True:
            try:
                data = slot.reports.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(slot.reports)
                return
            *lines, slot.unread = (slot.unread + data).split(b"\n")
            for line in lines:
                self._message(slot, line)

    def _message(self, slot: _Slot, line: bytes) -> None:
        try:
            message: dict[str, Any] = json.loads(line)
            kind = message["kind"]
        except (ValueError, TypeError, KeyError):
            return  # not a report: nothing to act on
        if kind == "listening":
            slot.listening, slot.state = True, "running"  # kbs.server.health.RUNNING
            self._write_status()
        elif kind == "error":
            slot.last_error = str(message.get("message", ""))

    def _exited(self, slot: _Slot) -> str:
        """Bookkeeping for a dead worker, and its restart; the reason to give up, if it is one."""
        assert slot.process is not None and slot.reports is not None
        self._read(slot)  # its last words (an error) may arrive with its death
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(slot.reports)
        slot.reports.close()
        pid, code = slot.process.pid, slot.process.wait()
        slot.process, slot.reports = None, None
        forget_live_gauges(self.metrics_dir, pid)
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
        """SIGTERM to every worker, then wait for them to drain; SIGKILL any still there after DRAIN_SECONDS.
        The supervisor's copies of the listening sockets are closed first: the listeners close when the workers
        close theirs, and new connections are refused instead of waiting in a queue nobody will accept from."""
        self._stopping = True
        self._close_listeners()
        live = [slot for slot in self.slots if slot.process is not None]
        for slot in live:
            assert slot.process is not None
            slot.state = "stopping"
            slot.process.send_signal(signal.SIGTERM)  # nothing if already reaped: never another's pid
        self._write_status()
        deadline = time.monotonic() + DRAIN_SECONDS
        for slot in live:
            assert slot.process is not None
            try:
                slot.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker did not drain in time: killed", extra={"worker": slot.index})
                slot.process.kill()
            self._exited(slot)

    def _close_listeners(self) -> None:
        for fd in self.listen_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.listen_fds = ()

    def _write_status(self) -> None:
        """The supervisor's view for /healthz?all, replaced atomically so a reader never sees half."""
        view = {"supervisor": os.getpid(), "workers": [
            {"index": slot.index, "pid": slot.process.pid if slot.process is not None else None,
             "state": slot.state, "restarts": slot.restarts} for slot in self.slots]}
        partial = self.status_file.with_suffix(".tmp")
        partial.write_text(json.dumps(view))
        partial.replace(self.status_file)


def _on_child(signum: int, frame: FrameType | None) -> None:
    """Nothing: SIGCHLD only has to reach the wakeup fd; the loop reaps."""


# -- log lines -------------------------------------------------------------------------------------

# A LogRecord's own attributes; any other attribute came from `extra` and is a field of the line.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """The lines kbs.server.app.setup_logging writes with python-json-logger (level, logger, message, any
    exc_info, the `extra` fields, time), made with json here so that the supervisor stays lean."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        line.update((key, value) for key, value in vars(record).items() if key not in _RECORD_FIELDS)
        line["time"] = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC).isoformat()
        return json.dumps(line, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level, handlers=[handler], force=True)


# -- the process -----------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    """Supervise COUNT workers with the runtime directory RUNTIME; 0 once they drained after a stop signal,
    1 with the `kbs: error: serve: …` line kbs.cli prints for a ServeError when they cannot serve."""
    try:
        runtime, count, listen_fds = Path(argv[0]), int(argv[1]), parse_fd_list(argv[2])
    except (IndexError, ValueError):
        print("usage: python -m kbs.server.supervisor RUNTIME COUNT LISTEN_FDS (started by `kbs serve`)",
              file=sys.stderr)
        return 2
    setup_logging(os.environ.get("KBS_LOG_LEVEL", "INFO"))
    try:
        failure = Supervisor(runtime, count, listen_fds).run()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    if failure:
        print(f"kbs: error: serve: {failure}", file=sys.stderr)
        return 1
    log.info("all workers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
