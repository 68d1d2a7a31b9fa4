"""`kbs serve` on every core: a supervisor process and N worker processes sharing one port.

Each worker is a whole broker (event loop, thread pools, Rego pool, store connections) accepting from
the same listening socket, made once here and inherited by every worker: one accept queue, from which
whichever worker is free first takes the next connection, and no process relays requests for another.
The supervisor serves nothing itself.  (Not SO_REUSEPORT, which gives each worker a queue of its own and
spreads connections over them by a hash of their addresses, blind to how busy each worker is: with the
workers pinned to CPUs (kbs.cpus), a burst hashed to one of them waited while the other idled.  Measured
in alternating runs: the p99 at ~70% of the saturated rate lower in 7 of 8, the closed loop's p99 lower in
8 of 8; README.  And a worker that dies or stalls strands no connection in a queue of its own.)

This module is the side of it that needs the broker's imports.  `supervise`, in the `kbs serve` process,

- does the first-start work once, before any worker exists: dev keys (`bootstrap_dev`, already done
  by the caller), then the app's own start-up run and torn down (store schema, token signing secret,
  default policy), so workers never race on them and a bad configuration fails once, clearly;
- makes the listening sockets (one per address of `listen`; port 0 fixed to one port for all), so a port
  in use is one clear error before any worker starts;
- makes a private runtime directory (mkdtemp, 0700) holding the Config pickled for the workers (0600),
  the directory for prometheus-client's multiprocess mode (kbs.server.metrics) and, later, a status
  file with every worker's pid and state (`/healthz?all`, kbs.server.health);
- then execs the lean supervisor, kbs.server.supervisor: the same PID (what systemd watches) without
  the 70 MB those imports hold.  It starts each worker as `python -m kbs.server.workers` (`main` below),
  restarts a worker that dies (at once if it had served for FLAP_SECONDS, after a growing delay if it
  keeps dying young; it gives up with exit 1 after MAX_FLAPS such deaths in a row, or at once when a
  worker fails at the first start, a port or configuration problem no restart cures), and turns
  SIGTERM/SIGINT into SIGTERM to each worker, which drains its requests, then exits 0.

The process tree is the supervisor and its workers (and their Rego processes): workers are plain
subprocesses, not multiprocessing's, so there is no resource tracker, and each imports prometheus_client
with PROMETHEUS_MULTIPROC_DIR already set.  A worker tells the supervisor it listens (or why it cannot)
in JSON lines over a socketpair, and stops when that socketpair's other end closes, so a SIGKILLed
supervisor leaves no orphan serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

from kbs import cpus
from kbs.errors import KbsError
from kbs.server.app import LISTEN_BACKLOG, make_app, run_loop, serve_app, setup_logging
from kbs.server.config import Config
from kbs.server.errors import ServeError
from kbs.server.health import WorkerIdentity
from kbs.server.metrics import MULTIPROC_ENV
from kbs.server.supervisor import (
    CONFIG_FILE,
    METRICS_DIR,
    STATUS_FILE,
    STOP_SIGNALS,
    parse_fd_list,
    supervisor_command,
)
from kbs.server.tls import server_ssl_context

log = logging.getLogger("kbs.server.workers")


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


def supervise(config: Config, count: int) -> NoReturn:
    """Prepare `count` workers, then become the lean supervisor (exec, same PID); ServeError when they cannot
    serve.  What the supervisor prints and returns from then on is kbs.server.supervisor's."""
    asyncio.run(first_start(config))
    host, port = config.host_port
    listeners = listen_sockets(host, port, config.listen)
    try:
        _exec_with_listeners(config, count, listeners)
    finally:  # only reached when the exec failed: the supervisor would have owned them
        for sock in listeners:
            sock.close()


def _exec_with_listeners(config: Config, count: int, listeners: list[socket.socket]) -> NoReturn:
    config = replace(config, listen=_host_port(config.host_port[0], listeners[0].getsockname()[1]))
    if config.metrics_host_port is not None:  # [metrics] listen: checked free, and port 0 fixed, likewise
        metrics_host, metrics_port = config.metrics_host_port
        metrics_port = probe_port(metrics_host, metrics_port, f"[metrics] listen {config.metrics_listen}")
        config = replace(config, metrics_listen=_host_port(metrics_host, metrics_port))
    runtime = Path(tempfile.mkdtemp(prefix="kbs-workers-"))  # 0700: configuration, metrics, status
    try:
        (runtime / METRICS_DIR).mkdir()
        _write_private(runtime / CONFIG_FILE, pickle.dumps(config))
        env = {**os.environ, MULTIPROC_ENV: str(runtime / METRICS_DIR)}  # inherited by every worker
        sys.stdout.flush()
        sys.stderr.flush()
        _exec_supervisor(supervisor_command(runtime, count, [sock.fileno() for sock in listeners]), env)
    except OSError as exc:
        shutil.rmtree(runtime, ignore_errors=True)
        raise ServeError(f"cannot start the supervisor: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(runtime, ignore_errors=True)
        raise


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _exec_supervisor(command: list[str], env: dict[str, str]) -> NoReturn:
    """Become the supervisor.  SIGTERM and SIGINT stay blocked across the exec (the mask survives it) until
    the supervisor's handlers are in place: a stop signal meanwhile waits instead of killing it mid-start,
    which would leave the runtime directory behind."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        os.execve(command[0], command, env)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # only reached when exec failed


def _write_private(path: Path, data: bytes) -> None:
    """A new file only this user may read: the configuration may hold a database password."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


async def first_start(config: Config) -> None:
    """The app's start-up and clean-up once: the schema, secrets and default policy exist afterwards (and
    everything the configuration names has been loaded: `kbs serve --check-config` stops here)."""
    runner = web.AppRunner(make_app(config), handle_signals=False)
    await runner.setup()
    await runner.cleanup()


def _bound_sockets(host: str, port: int, listen: str) -> list[socket.socket]:
    """A socket bound to HOST:PORT for each of its addresses (no SO_REUSEPORT: a port anything listens on is
    refused); port 0: the first address's choice for all."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ServeError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds it
            sock.bind((address[0], port, *address[2:]))
            port = port or sock.getsockname()[1]
    except OSError as exc:
        for sock in bound:
            sock.close()
        raise ServeError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    return bound


def listen_sockets(host: str, port: int, listen: str) -> list[socket.socket]:
    """The broker's listening sockets for its workers to share: bound, listening, inherited across exec."""
    sockets = _bound_sockets(host, port, listen)
    for sock in sockets:
        sock.listen(LISTEN_BACKLOG)
        sock.set_inheritable(True)
    return sockets


def probe_port(host: str, port: int, listen: str) -> int:
    """Bind HOST:PORT without SO_REUSEPORT and let go: fails if anything listens there; port 0 chosen.  For
    [metrics] listen, which each worker binds itself with SO_REUSEPORT (a scrape needs no balancing)."""
    sockets = _bound_sockets(host, port, listen)
    port = sockets[0].getsockname()[1]
    for sock in sockets:
        sock.close()
    return port


# -- a worker process ------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kbs.server.workers RUNTIME INDEX COUNT FD LISTEN_FDS`, started by kbs.server.supervisor: serve
    on the inherited listening sockets until SIGTERM or the supervisor's end; report listening, or why not, on
    FD."""
    parser = argparse.ArgumentParser(prog="python -m kbs.server.workers",
                                     description="one worker of `kbs serve`, started by its supervisor")
    parser.add_argument("runtime", type=Path)
    parser.add_argument("index", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("fd", type=int, help="this worker's end of its socketpair with the supervisor")
    parser.add_argument("listen_fds", type=parse_fd_list, help="the broker's listening sockets, comma-separated")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the supervisor forwards it
    for fd in (args.fd, *args.listen_fds):
        os.set_inheritable(fd, False)  # the worker's own children (Rego) have no business with them
    supervisor = socket.socket(fileno=args.fd)
    listeners = [socket.socket(fileno=fd) for fd in args.listen_fds]
    setup_logging(os.environ.get("KBS_LOG_LEVEL", "INFO"))
    identity = WorkerIdentity(args.index, args.count, args.runtime / STATUS_FILE)
    try:
        config = _load_config(args.runtime / CONFIG_FILE)
        if config.pin_workers:  # before the worker starts a thread: they inherit it
            cpu = cpus.pin(args.index, args.count)
            if cpu is not None:
                log.info("pinned to a CPU", extra={"worker": args.index, "cpu": cpu})
        run_loop(serve_app(make_app(config), *config.host_port, ssl_context=server_ssl_context(config),
                           worker=identity, listeners=listeners,
                           on_listening=lambda urls: _tell(supervisor, kind="listening", urls=urls),
                           stop_when_readable=supervisor.fileno()))
    except KbsError as exc:
        return _last_words(supervisor, str(exc))
    except Exception as exc:  # anything else: logged in full, named to the supervisor, and a failed exit
        log.exception("worker failed", extra={"worker": identity.index})
        return _last_words(supervisor, f"{type(exc).__name__}: {exc}")
    return 0


def _load_config(path: Path) -> Config:
    """The Config `supervise` pickled into the private runtime directory (no one else can write there)."""
    try:
        config = pickle.loads(path.read_bytes())
    except (OSError, pickle.UnpicklingError) as exc:
        raise ServeError(f"cannot read the workers' configuration {path}: {exc}") from exc
    if not isinstance(config, Config):
        raise ServeError(f"{path} does not hold a configuration")
    return config


def _tell(supervisor: socket.socket, **report: Any) -> None:
    """One JSON line to the supervisor (kbs.server.supervisor reads them)."""
    supervisor.sendall(json.dumps(report).encode() + b"\n")


def _last_words(supervisor: socket.socket, message: str) -> int:
    with contextlib.suppress(OSError):
        _tell(supervisor, kind="error", message=message)
    return 1


if __name__ == "__main__":
    sys.exit(main())
