"""`kbs kek rotate`: every sealed value and row MAC moves to a new KEK in one transaction, on both backends.

The command runs as a subprocess, as an operator runs it; SIGKILL is delivered in the middle through the
KBS_TEST_KEK_ROTATE_KILL_AFTER hook (after the rotation's target is recorded, or after N rows were
rewritten).  After a kill every secret still opens under the old KEK, the new KEK is refused with a message
naming the unfinished rotation, and a re-run completes.  A real broker then serves the same key under the
new KEK, and a backup made before the rotation restores only under the old one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from kbs.audit.chain import REFUSALS, RELEASES, Head
from kbs.kek_cli import KILL_AFTER, fingerprint
from kbs.keys.jwe import decrypt
from kbs.keys.kek import Kek, KekError, load_kek
from kbs.policy.lifecycle import PolicyRegistry
from kbs.policy.refvalues import ReferenceSet
from kbs.server.tokens import SECRET_NAME
from kbs.store import OpenStore, open_store
from kbs.store.base import AttestationRecord, ReleaseRecord
from kbs.store.integrity import ROW_MAC_PURPOSE
from kbs.store.kek_state import KekMismatch
from kbs.store.schema import TABLES
from tests.broker import REPO, full_flow, run_broker
from tests.postgres import PostgresServer
from tests.test_server_e2e import admin

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
OLD_KEY, NEW_KEY = bytes(range(32)), bytes(range(100, 132))
SAMPLE_OK = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
    {"claim": "sample.svn", "equals": "1"}]}]})


def kbs(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "kbs.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**_environ(), **(env or {})})
    for key in (OLD_KEY, NEW_KEY):  # key material is never printed
        assert key.hex() not in done.stdout + done.stderr and repr(key) not in done.stdout + done.stderr
    return done


def _environ() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != KILL_AFTER}


def kek_file(path: Path, key: bytes) -> Path:
    path.write_bytes(key)
    path.chmod(0o600)
    return path


@dataclass
class Db:
    """One fresh database (a SQLite file or a PostgreSQL database) and a config naming it with a KEK file."""

    kind: str
    url: str  # sqlite:///PATH or postgresql://...
    config: Path
    old: Path  # the KEK the config names
    new: Path

    def open(self, key: bytes) -> OpenStore:
        return open_store(self.url, Kek(key).derive(ROW_MAC_PURPOSE))

    def dump(self) -> list[str]:
        """Every row of every table, to compare before and after."""
        out = []
        if self.kind == "sqlite":
            db = sqlite3.connect(self.url.removeprefix("sqlite://"))
            for table in TABLES:
                out += [f"{table.name}{row!r}" for row in db.execute(f"SELECT * FROM {table.name} ORDER BY 1, 2")]
            db.close()
            return out
        with psycopg.connect(self.url) as conn:
            for table in TABLES:
                out += [f"{table.name}{tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)!r}"
                        for row in conn.execute(f"SELECT * FROM {table.name} ORDER BY 1, 2")]
        return out

    def sealed_values(self) -> list[tuple[str, bytes]]:
        """(context, sealed) of every sealed value, read straight from the tables."""
        rows: list[tuple[str, bytes]]
        if self.kind == "sqlite":
            db = sqlite3.connect(self.url.removeprefix("sqlite://"))
            rows = [(n, v) for n, v in db.execute("SELECT name, value FROM secrets")]
            rows += [(f"resource:{p}", s) for p, s in db.execute("SELECT path, sealed FROM resources")]
            db.close()
            return rows
        with psycopg.connect(self.url) as conn:
            rows = [(n, bytes(v)) for n, v in conn.execute("SELECT name, value FROM secrets")]
            rows += [(f"resource:{p}", bytes(s)) for p, s in conn.execute("SELECT path, sealed FROM resources")]
        return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    server: PostgresServer | None = None
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'state' / 'kbs.sqlite3'}"
    else:
        server = request.getfixturevalue("postgres")
        url = server.create_database("kbs_kek")
    old, new = kek_file(tmp_path / "old.kek", OLD_KEY), kek_file(tmp_path / "new.kek", NEW_KEY)
    config = tmp_path / "kbs.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\ndatabase_url = "{url}"\nkek_file = "{old}"\n')
    try:
        yield Db(request.param, url, config, old, new)
    finally:
        if server is not None:
            server.drop_database(url)


def seed(db: Db) -> dict[str, bytes]:
    """A store with something in every table that holds sealed values or MACs; the plaintexts by context."""
    kek, store = Kek(OLD_KEY), db.open(OLD_KEY)
    values = {SECRET_NAME: b"the token signing key"}
    store.get_or_create_secret(SECRET_NAME, kek.seal(values[SECRET_NAME], SECRET_NAME))
    PolicyRegistry(store).put("sample-ok", SAMPLE_OK, created_by="ops", at=NOW)
    store.put_reference_set(ReferenceSet("m", ("aa",)))
    for i in range(4):
        path = f"lab/key/{i}"
        for version in range(1, 3):
            plaintext = f"secret {i} v{version}".encode()
            store.put_resource(path, kek.seal(plaintext, f"resource:{path}"), "sample-ok", "ops", NOW)
            values[f"resource:{path}@{version}"] = plaintext
    store.set_resource_state("lab/key/3", None, "disabled")
    store.record_attestation(AttestationRecord("att1", NOW, "s", "sample", {"sample": {"svn": "1"}}))
    for i in range(5):
        for chain in (RELEASES, REFUSALS):
            store.append_log(chain, ReleaseRecord(NOW + dt.timedelta(seconds=i), "deny", "policy", f"lab/key/{i}",
                                                  1, "s", "sample", "sample-ok", "h", None))
    store.purge_refusals(NOW + dt.timedelta(seconds=2))  # the refusal chain now starts from an anchor
    store.close()
    return values


def readable(db: Db, key: bytes, values: dict[str, bytes]) -> list[Head]:
    """Everything the broker reads, read under `key`: every sealed value opens to what was stored."""
    kek, store = Kek(key), db.open(key)
    try:
        assert kek.unseal(store.get_or_create_secret(SECRET_NAME, b"unused"), SECRET_NAME) == values[SECRET_NAME]
        for path in store.resource_paths():
            for v in store.resource_versions(path):
                assert kek.unseal(v.sealed, f"resource:{path}") == values[f"resource:{path}@{v.version}"]
        assert len(store.resource_paths()) == 4 and store.active_resource("lab/key/3") is None
        assert PolicyRegistry(store).current("sample-ok").text == SAMPLE_OK
        assert store.reference_values().get("m") is not None
        attestation = store.get_attestation("att1")
        assert attestation is not None and attestation.claims == {"sample": {"svn": "1"}}
        assert [e.resource for e in store.log_entries(REFUSALS)] == ["lab/key/2", "lab/key/3", "lab/key/4"]
        return store.verify_logs()
    finally:
        store.close()


def rotate(db: Db, *extra: str, kill_after: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {KILL_AFTER: str(kill_after)} if kill_after is not None else None
    return kbs("kek", "rotate", "--config", str(db.config), "--new-kek", str(db.new), *extra, env=env)


def test_rotation_moves_everything_to_the_new_kek(db: Db) -> None:
    values = seed(db)
    heads = readable(db, OLD_KEY, values)
    old_id, new_id = fingerprint(Kek(OLD_KEY)), fingerprint(Kek(NEW_KEY))
    done = rotate(db)
    assert done.returncode == 0, done.stderr
    assert f"from KEK {old_id} to KEK {new_id}" in done.stdout and "9 sealed values re-sealed" in done.stdout
    assert f"keep KEK {old_id}" in done.stdout
    assert readable(db, NEW_KEY, values) == heads  # same chains: entry hashes kept elsewhere still verify
    with pytest.raises(KekMismatch, match=f"sealed under KEK {new_id}, not under the configured KEK {old_id}"):
        db.open(OLD_KEY)
    for context, sealed in db.sealed_values():  # the old KEK opens nothing any more
        with pytest.raises(KekError, match="does not open"):
            Kek(OLD_KEY).unseal(sealed, context)
    again = rotate(db)  # a second run (say, after a kill just past the commit) changes nothing
    assert again.returncode == 0 and f"already sealed under KEK {new_id}: nothing to do" in again.stdout
    status = kbs("kek", "status", "--config", str(db.config), "--kek", str(db.new))
    assert status.returncode == 0 and f"sealed under KEK {new_id}, the configured KEK" in status.stdout


def test_wrong_current_kek_is_refused_and_nothing_changes(db: Db, tmp_path: Path) -> None:
    seed(db)
    before = db.dump()
    wrong = kek_file(tmp_path / "wrong.kek", bytes(32))
    done = rotate(db, "--kek", str(wrong))
    assert done.returncode == 1
    assert (f"sealed under KEK {fingerprint(Kek(OLD_KEY))}, not under the configured KEK "
            f"{fingerprint(Kek(bytes(32)))}") in done.stderr
    same = kbs("kek", "rotate", "--config", str(db.config), "--new-kek", str(db.old))
    assert same.returncode == 2 and "is the configured KEK" in same.stderr
    db.new.chmod(0o644)
    loose = rotate(db)
    assert loose.returncode == 1 and "readable or writable by others" in loose.stderr
    assert db.dump() == before


def _kill_points() -> list[tuple[str, int]]:
    # 0: right after the target is recorded; 1: the first value re-sealed; 12: among the policies, sets and
    # log entries; 20: the last row rewritten (9 sealed values, 1 policy, 1 set, 1 attestation, 5 + 3 log
    # entries), before the read-back and the commit.
    return [("sqlite", 0), ("sqlite", 1), ("sqlite", 12), ("sqlite", 20), ("postgresql", 12)]


@pytest.mark.parametrize(("db", "kill_after"), _kill_points(), indirect=["db"])
def test_sigkill_in_the_middle_then_a_rerun_completes(db: Db, kill_after: int, tmp_path: Path) -> None:
    values = seed(db)
    new_id = fingerprint(Kek(NEW_KEY))
    killed = rotate(db, kill_after=kill_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    readable(db, OLD_KEY, values)  # nothing lost: the database is wholly under the old KEK
    with pytest.raises(KekMismatch, match=f"rotation to KEK {new_id} incomplete: .* run `kbs kek rotate"):
        db.open(NEW_KEY)
    status = kbs("kek", "status", "--config", str(db.config))
    assert status.returncode == 0 and f"rotation to KEK {new_id} was begun and did not finish" in status.stdout
    if db.kind == "sqlite":  # the broker's own start-up says it too
        serve = kbs("serve", "--config", str(_with_kek(db, tmp_path)), "--check-config")
        assert serve.returncode != 0 and f"rotation to KEK {new_id} incomplete" in serve.stderr, serve.stderr

    done = rotate(db)
    assert done.returncode == 0, done.stderr
    readable(db, NEW_KEY, values)
    with pytest.raises(KekMismatch):
        db.open(OLD_KEY)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_the_kill_points_fall_inside_the_rewrite(db: Db) -> None:
    """The last kill point above is the last row rewritten: one more and the rotation completes."""
    seed(db)
    assert rotate(db, kill_after=21).returncode == 0


def _with_kek(db: Db, tmp_path: Path) -> Path:
    """A copy of the config naming the new KEK (the broker as an operator would restart it too early)."""
    config = tmp_path / "kbs-new.toml"
    config.write_text(db.config.read_text().replace(str(db.old), str(db.new)))
    return config


def test_a_database_from_before_schema_4_gets_its_kek_id_only_under_its_kek(db: Db) -> None:
    values = seed(db)
    _execute(db, "DELETE FROM kek_state")  # as a broker before schema 4 left it
    with pytest.raises(KekMismatch, match="rows do not authenticate under the configured KEK"):
        db.open(NEW_KEY)
    assert _count(db, "SELECT count(*) FROM kek_state") == 0  # nothing written under the wrong KEK
    readable(db, OLD_KEY, values)
    status = kbs("kek", "status", "--config", str(db.config))
    assert status.returncode == 0 and f"sealed under KEK {fingerprint(Kek(OLD_KEY))}" in status.stdout


def _execute(db: Db, sql: str) -> None:
    if db.kind == "sqlite":
        conn = sqlite3.connect(db.url.removeprefix("sqlite://"))
        conn.execute(sql)
        conn.commit()
        conn.close()
    else:
        with psycopg.connect(db.url, autocommit=True) as pg:
            pg.execute(sql)


def _count(db: Db, sql: str) -> int:
    if db.kind == "sqlite":
        conn = sqlite3.connect(db.url.removeprefix("sqlite://"))
        n = int(conn.execute(sql).fetchone()[0])
        conn.close()
        return n
    with psycopg.connect(db.url) as pg:
        row = pg.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


HOLD_OPEN = ("import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1]); db.execute('SELECT count(*) FROM "
             "resources').fetchall(); print('open', flush=True); time.sleep(60)")


def test_refused_while_another_process_or_connection_uses_the_database(db: Db) -> None:
    seed(db)
    before = db.dump()
    if db.kind == "sqlite":  # another process with the database open, as a running broker has
        with subprocess.Popen([sys.executable, "-c", HOLD_OPEN, db.url.removeprefix("sqlite://")],
                              stdout=subprocess.PIPE, text=True) as holder:
            try:
                assert holder.stdout is not None and holder.stdout.readline() == "open\n"
                done = rotate(db)
                assert done.returncode == 1 and f"is open in process {holder.pid} (a running broker?)" in done.stderr
            finally:
                holder.kill()
    else:  # another connection, as a replica on another host holds
        with psycopg.connect(db.url, application_name="kbs-replica"):
            done = rotate(db)
            assert done.returncode == 1 and "1 other connection(s)" in done.stderr and "kbs-replica" in done.stderr
    assert db.dump() == before  # not even the target was recorded
    assert rotate(db).returncode == 0  # once it is gone


def test_rotate_then_serve_and_old_backups_need_the_old_kek(tmp_path: Path) -> None:
    """The operator's path on a real broker: provision, back up, stop, rotate, restart with the new KEK."""
    state = tmp_path / "state"
    with run_broker(tmp_path, state_dir=state) as broker:
        async def provision() -> None:
            assert (await admin(broker, "PUT", "/kbs/v0/admin/policies/sample-ok", data=SAMPLE_OK))[0] == 200
            status, _ = await admin(broker, "POST", "/kbs/v0/resource/lab/key/kept?policy=sample-ok", data=b"kept")
            assert status == 200
        asyncio.run(provision())
        backup = tmp_path / "before.backup"
        assert kbs("backup", str(backup), "--state-dir", str(state)).returncode == 0
    old_kek = (state / "kek").read_bytes()
    new = tmp_path / "new.kek"
    generated = kbs("kek", "generate", str(new))
    assert generated.returncode == 0 and new.stat().st_mode & 0o777 == 0o600
    new_id = fingerprint(load_kek(new, None))
    assert f"KEK id {new_id}" in generated.stdout and new.read_bytes().hex() not in generated.stdout
    assert kbs("kek", "generate", str(new)).returncode == 2  # never overwritten
    assert kbs("kek", "id", str(new)).stdout == f"kbs: {new} is KEK {new_id}\n"
    done = kbs("kek", "rotate", "--state-dir", str(state), "--new-kek", str(new))
    assert done.returncode == 0, done.stderr
    assert old_kek.hex() not in done.stdout + done.stderr and new.read_bytes().hex() not in done.stdout

    with pytest.raises(RuntimeError, match=f"sealed under KEK {new_id}, not under the configured KEK"), \
            run_broker(tmp_path, state_dir=state):
        pass  # the old KEK: refused at start, naming the KEK to configure
    shutil.copy2(new, state / "kek")  # install the new KEK (dev mode reads <state_dir>/kek)
    with run_broker(tmp_path, state_dir=state) as broker:
        status, out, key = asyncio.run(full_flow(broker.url, "sample", "lab/key/kept"))
        assert status == 200 and decrypt(out, key.private_key) == b"kept"
        for method, path in (("GET", "/kbs/v0/admin/keys"), ("GET", "/kbs/v0/admin/release-log/verify"),
                             ("POST", "/kbs/v0/admin/keys/lab/key/kept/rotate")):  # reads and writes, new KEK
            answer = asyncio.run(admin(broker, method, path))
            assert answer[0] == 200, answer

    # A backup from before the rotation: refused under the new KEK, restored under the old one.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy2(new, fresh / "kek")
    refused = kbs("restore", str(backup), "--state-dir", str(fresh))
    assert refused.returncode == 1 and "does not verify under this broker's KEK" in refused.stderr
    kek_file(fresh / "kek", old_kek)
    assert kbs("restore", str(backup), "--state-dir", str(fresh)).returncode == 0
