"""`kbs kek generate|id|status|rotate`: make a KEK, name one, see which one a database is under, move it to another.

Rotation runs with every broker stopped (it refuses while another process or connection has the database
open): a running broker holds the old KEK in memory and would go on writing rows under it.  It is one
transaction (kbs.store.kek_state), so a crash at any point leaves the database wholly under the old KEK
(the broker starts with it and names the unfinished rotation if given the new one) or wholly under the
new one.  Nothing here prints key material: KEKs are named by their ids.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

from kbs.errors import KbsError, UsageError
from kbs.keys.kek import Kek, create_exclusive, load_kek
from kbs.store.integrity import ROW_MAC_PURPOSE, RowAuthenticator
from kbs.store.kek_state import KekMismatch, RotatableStore, kek_id

# Test hook: SIGKILL this process after the rotation's target is recorded (0) or after N rows are rewritten.
KILL_AFTER = "KBS_TEST_KEK_ROTATE_KILL_AFTER"
_CONTEXTS = {"secret": "{}", "resource": "resource:{}"}  # what each kind is sealed with (tokens.py, admin.py)


class RotationFailed(KbsError):
    check = "kek.rotate"


def add_kek_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kek = commands.add_parser("kek", help="the key encryption key: generate one, show, rotate",
                              description="The key encryption key: write a new one, name one by its id, see which "
                                          "one a database is sealed under, rotate a database to another.")
    verbs = kek.add_subparsers(dest="verb", required=True)
    generate = verbs.add_parser("generate", help="write a fresh KEK (32 random bytes, 0600; never overwrites)")
    generate.add_argument("out", metavar="OUT", type=Path)
    generate.set_defaults(func=run_generate)
    show = verbs.add_parser("id", help="the id of a KEK file (what the database and the messages name it by)")
    show.add_argument("file", metavar="FILE", type=Path)
    show.set_defaults(func=run_id)
    for name, what in (("status", "which KEK the database is sealed under, and any rotation left unfinished"),
                       ("rotate", "re-seal every secret and re-authenticate every row under a new KEK (brokers "
                                  "stopped; one transaction: crash-safe)")):
        verb = verbs.add_parser(name, help=what, description=what)
        verb.add_argument("--config", type=Path, help="the broker's TOML configuration (default: dev mode)")
        verb.add_argument("--state-dir", type=Path, help="override `state_dir`")
        verb.add_argument("--kek", type=Path, metavar="PATH",
                          help="the current KEK from this file instead of as configured (e.g. a systemd "
                               "credential decrypted to a private tmpfs)")
        if name == "rotate":
            verb.add_argument("--new-kek", type=Path, metavar="PATH", required=True,
                              help="the new KEK (a file as `kbs kek generate` writes: 0600)")
        verb.set_defaults(func=run_status if name == "status" else run_rotate)


def fingerprint(kek: Kek) -> str:
    """The KEK's public id (kbs.store.kek_state.kek_id): what the database records, never the key."""
    return kek_id(RowAuthenticator(kek.derive(ROW_MAC_PURPOSE)))


def run_generate(args: argparse.Namespace) -> int:
    out: Path = args.out
    key = os.urandom(32)
    if not create_exclusive(out, key):
        raise UsageError(f"{out} exists: kbs kek generate never overwrites; give a new file")
    print(f"kbs: wrote a new KEK to {out} (0600), KEK id {fingerprint(Kek(key))}")
    return 0


def run_id(args: argparse.Namespace) -> int:
    print(f"kbs: {args.file} is KEK {fingerprint(load_kek(args.file, None))}")
    return 0


def _config(args: argparse.Namespace) -> tuple[Path | str, str, Kek]:
    """The database (a SQLite path or a PostgreSQL URL), how to name it, and the current KEK."""
    from dataclasses import replace

    from kbs.server.config import load_config

    config = load_config(args.config)
    if args.state_dir:
        config = replace(config, state_dir=args.state_dir)
    if args.kek:
        kek = load_kek(args.kek, None)
    else:
        kek = load_kek(config.kek_file or (config.kek_path if config.dev_mode else None), config.kek_credential)
    database = config.database
    if isinstance(database, Path):
        if not database.exists():
            raise UsageError(f"no database at {database} (check --config / --state-dir)")
        return database, str(database), kek
    from kbs.store.postgres import describe

    return database, describe(database), kek


def _open(database: Path | str, kek: Kek) -> RotatableStore:
    if isinstance(database, str):  # one connection: other_users must not count this store's own pool
        from kbs.store.postgres import PostgresStore

        return PostgresStore(database, kek.derive(ROW_MAC_PURPOSE), pool_size=1)
    from kbs.store.sqlite import SqliteStore

    return SqliteStore(database, kek.derive(ROW_MAC_PURPOSE))


def run_status(args: argparse.Namespace) -> int:
    database, name, kek = _config(args)
    store = _open(database, kek)  # KekMismatch (exit 1) names the database's KEK and any rotation begun
    try:
        state = store.kek_state()
    finally:
        store.close()
    assert state is not None  # the store wrote it when it opened
    pending = (f"; a rotation to KEK {state.rotating_to} was begun and did not finish: run kbs kek rotate again"
               if state.rotating_to else "")
    since = datetime.fromtimestamp(state.changed_at, UTC).isoformat(timespec="seconds")
    print(f"kbs: {name} is sealed under KEK {state.kek_id}, the configured KEK (recorded {since}){pending}")
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    logging.getLogger("kbs.store").setLevel(logging.ERROR)  # not "a rotation did not finish: rotate again" here
    database, name, old = _config(args)
    new = load_kek(args.new_kek, None)
    old_id, new_id = fingerprint(old), fingerprint(new)
    if old_id == new_id:
        raise UsageError(f"{args.new_kek} is the configured KEK ({old_id}): give a new one (kbs kek generate OUT)")
    try:
        store = _open(database, old)
    except KekMismatch as mismatch:
        try:  # already under the new KEK (a rotation that finished)?  Else the configured KEK is wrong.
            _open(database, new).close()
        except KekMismatch:
            raise mismatch from None
        print(f"kbs: {name} is already sealed under KEK {new_id}: nothing to do; install {args.new_kek} as the "
              "KEK and start the broker")
        return 0
    try:
        return _rotate(store, name, old, new, args.new_kek)
    finally:
        store.close()


def _rotate(store: RotatableStore, name: str, old: Kek, new: Kek, new_path: Path) -> int:
    kill_after = int(os.environ.get(KILL_AFTER, "-1"))
    store.begin_kek_rotation(fingerprint(new), datetime.now(UTC))
    if kill_after == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    rewritten = 0

    def tick() -> None:
        nonlocal rewritten
        rewritten += 1
        if rewritten == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def reseal(kind: str, record: str, sealed: bytes) -> bytes:
        return old.reseal(sealed, _CONTEXTS[kind].format(record), new)

    def unseal_new(kind: str, record: str, sealed: bytes) -> bytes:
        return new.unseal(sealed, _CONTEXTS[kind].format(record))

    started = time.monotonic()
    try:
        counts = store.rotate_kek(new.derive(ROW_MAC_PURPOSE), reseal, unseal_new, datetime.now(UTC), tick)
    except KbsError as exc:
        raise RotationFailed(f"{exc.check}: {exc} (rolled back: {name} is still sealed under KEK "
                             f"{fingerprint(old)})") from exc
    sealed = counts["secrets"] + counts["resources"]
    macs = sum(counts.values()) - counts["secrets"]
    print(f"kbs: {name} moved from KEK {fingerprint(old)} to KEK {fingerprint(new)} in "
          f"{time.monotonic() - started:.1f} s: {sealed} sealed values re-sealed ({counts['secrets']} broker "
          f"secrets, {counts['resources']} resource versions), {macs} rows re-authenticated\n"
          f"  next: install {new_path} as the KEK (kek_file, or systemd-creds encrypt --name=kbs-kek {new_path} "
          "/etc/kbs/kbs-kek.cred), then start the brokers; they refuse the old KEK from now on\n"
          f"  keep KEK {fingerprint(old)} as long as you keep backups made before now: they open only under it")
    return 0
