"""A real PostgreSQL for the tests: a private, throwaway cluster, or the server KBS_TEST_POSTGRES_URL names.

The cluster lives in its own temporary directory under /tmp (short: its unix socket sits there),
listens on that socket only (no TCP port to collide on, so each pytest-xdist worker can start
its own), trusts local connections, runs without fsync (it is thrown away) and is stopped and
removed when the test session ends.  initdb refuses to run as root, so as root the cluster is
run as the `postgres` system user (Debian's package creates it) through runuser.

Missing binaries fail the tests that need them, saying what to install: the store contract suite
must really run on PostgreSQL, in CI (.ci/run installs it) as on a developer's machine.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ENV_URL = "KBS_TEST_POSTGRES_URL"
INSTALL_HINT = ("PostgreSQL's server binaries (initdb, pg_ctl) were not found under /usr/lib/postgresql/*/bin: "
                "install them (apt-get install postgresql), or set KBS_TEST_POSTGRES_URL to a server the tests "
                "may create databases on")


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin holding initdb and pg_ctl (or the ones on PATH)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead (query parameters such as host= are kept)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@dataclass
class PostgresServer:
    """A server the tests may create and drop databases on; `url` connects to its maintenance database."""

    url: str

    def create_database(self, prefix: str = "kbs_test") -> str:
        """A fresh, empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # a name made above: letters, digits, underscores
        return with_database(self.url, name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _cluster_owner() -> pwd.struct_passwd | None:
    """initdb and postgres refuse root: as root, the cluster belongs to the postgres system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root, and there is no `postgres` system user to run the test cluster as "
                           "(apt-get install postgresql creates it)") from exc


def _as(owner: pwd.struct_passwd | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", owner.pw_name, "--", *argv] if owner is not None else argv


@contextmanager
def throwaway_cluster() -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a fresh /tmp directory; stopped and removed on exit."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(INSTALL_HINT)
    root = Path(tempfile.mkdtemp(prefix="kbs-pg-", dir="/tmp"))  # short: a unix socket path is at most 107 bytes
    data, log = root / "data", root / "postgres.log"
    owner = _cluster_owner()
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    port = 5432  # the socket file is named after the port; the directory is ours alone
    started = False
    try:
        _run(_as(owner, [str(bindir / "initdb"), "-D", str(data), "-U", "kbs", "-A", "trust", "-E", "UTF8",
                                "--no-sync", "--no-instructions"]), "initdb")
        options = f"-k {root} -p {port} -c listen_addresses='' -c fsync=off -c full_page_writes=off " \
                  "-c max_connections=200 -c shared_buffers=32MB"
        _run(_as(owner, [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                "-o", options, "start"]), "pg_ctl start", log)
        started = True
        yield PostgresServer(f"postgresql://kbs@/postgres?host={root}&port={port}")
    finally:
        if started:
            subprocess.run(_as(owner, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                              "stop"]), capture_output=True, check=False, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _run(argv: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        server_log = log.read_text() if log is not None and log.exists() else ""
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}{server_log}")


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """KBS_TEST_POSTGRES_URL's server when set, else a throwaway cluster of our own."""
    url = os.environ.get(ENV_URL)
    if url:
        yield PostgresServer(url)
        return
    with throwaway_cluster() as server:
        yield server
