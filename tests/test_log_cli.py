"""`kbs log key|checkpoint|verify|prove|receipts|verify-receipt` (kbs.log_cli) against real brokers over HTTP: the
log verifies after releases and refusals, kept checkpoints stay consistent, every receipt verifies offline with
the broker stopped, and a database edited behind the broker's back (entries deleted, rewritten, reordered, with
or without the tree recomputed to match) is caught by `kbs log verify --checkpoint OLD`, naming the first bad
index."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kbs.audit import merkle
from kbs.audit.note import Checkpoint, NoteSigner, NoteVerifier
from kbs.audit.tiles import Tile, unbundle
from kbs.cli import main
from kbs.keys.jwe import generate_tee_key
from kbs.log_cli import check_receipt
from tests.broker import Broker, attest, attestation, auth, full_flow, jar, run_broker

CONFIG = '[log]\norigin = "kbs.test/log"\ncheckpoint_seconds = 0.5\n'
SAMPLE_POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
    {"claim": "sample.svn", "equals": "1"}]}]})
FLOWS = 8  # after the two admin entries (indexes 0, 1), each flow's attestation summary then its decision:
RELEASES = [5, 9, 13, 17]  # attestations at 2, 4, ..., 16, denials at 3, 7, 11, 15, releases here
SIZE = 2 + 2 * FLOWS


def admin(broker: Broker, method: str, path: str, data: bytes = b"") -> tuple[int, bytes]:
    request = urllib.request.Request(broker.url + path, data=data if method != "GET" else None, method=method,
                                     headers=broker.admin_headers())
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get(broker: Broker, path: str) -> bytes:
    with urllib.request.urlopen(broker.url + path, timeout=10) as r:
        body: bytes = r.read()
        return body


def flow(broker: Broker, release: bool) -> None:
    path = "lab/key/one" if release else "lab/key/none"
    assert asyncio.run(full_flow(broker.url, "sample", path))[0] == (200 if release else 401)


def populate(broker: Broker, on_flow: Callable[[int], None] = lambda size: None) -> None:
    """Two admin entries, then denials and releases in turn (each after its attestation's summary), a checkpoint
    signed after each flow; `on_flow` gets the log's size then."""
    assert admin(broker, "PUT", "/kbs/v0/admin/policies/sample-ok", SAMPLE_POLICY.encode())[0] == 200
    assert admin(broker, "POST", "/kbs/v0/resource/lab/key/one?policy=sample-ok", b"secret-one")[0] == 200
    for i in range(FLOWS):
        flow(broker, release=bool(i % 2))
        assert admin(broker, "POST", "/kbs/v0/admin/log/checkpoint")[0] == 200
        on_flow(2 + 2 * (i + 1))


async def attest_status(url: str) -> int:
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        nonce = await auth(http, url, "sample")
        return (await attest(http, url, attestation(nonce, generate_tee_key("EC-P256"), "sample")))[0]


def leaves(broker: Broker, size: int) -> list[bytes]:
    return unbundle(get(broker, f"/kbs/v0/log/{Tile(None, 0, size).path}"))


class Kbs:
    """`kbs ...` in-process: (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def kbs(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kbs:
    monkeypatch.chdir(tmp_path)  # no default admin key here: these are a key owner's commands
    for name in ("KBS_URL", "KBS_ADMIN_KEY", "KBS_LOG_KEY"):
        monkeypatch.delenv(name, raising=False)
    return Kbs(capsys)


# -- a live broker ---------------------------------------------------------------------------------

@dataclass
class Live:
    broker: Broker
    vkey: str
    stages: list[Path]  # checkpoints kept at sizes 4, 10, 16
    witness: Path  # one file advanced at every stage


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("log-cli")
    with run_broker(tmp, CONFIG) as b:
        vkey = get(b, "/kbs/v0/log/key").decode().strip()
        stages: list[Path] = []

        def keep(size: int) -> None:
            if size in (4, 10, 16):
                stages.append(tmp / f"stage-{size}.checkpoint")
                assert main(["log", "checkpoint", "--url", b.url, "--key", vkey, "--out", str(stages[-1])]) == 0
                assert main(["log", "checkpoint", "--url", b.url, "--key", vkey, "--out", str(tmp / "witness")]) == 0
        populate(b, keep)
        yield Live(b, vkey, stages, tmp / "witness")


def test_verify_passes_after_releases_and_refusals_and_is_consistent_with_kept_checkpoints(
        live: Live, kbs: Kbs) -> None:
    code, out, err = kbs("log", "key", "--url", live.broker.url)
    assert code == 0 and out.strip() == live.vkey and NoteVerifier.from_vkey(out).name == "kbs.test/log"
    assert [s.read_text().split("\n")[1] for s in live.stages] == ["4", "10", "16"]
    kept = [arg for stage in live.stages for arg in ("--checkpoint", str(stage))]
    code, out, err = kbs("log", "verify", "--url", live.broker.url, "--key", live.vkey, *kept)
    assert code == 0, err
    assert f"{SIZE} entries: each hashes to its stored leaf" in out and "warning" not in err
    assert all(f"consistent with your checkpoint {stage}" in out for stage in live.stages)
    answer = json.loads(kbs("log", "verify", "--url", live.broker.url, "--key", live.vkey, "--json", *kept)[1])
    assert answer["size"] == SIZE and answer["entries_checked"] == SIZE and answer["findings"] == []
    assert answer["history_checked"] >= FLOWS and answer["first_bad_index"] is None
    code, out, err = kbs("log", "verify", "--url", live.broker.url)  # no pinned key: trust on first use, said
    assert code == 0 and "trust on first use" in err and f"--key {live.vkey}" in err
    other = NoteSigner("kbs.test/log", Ed25519PrivateKey.generate()).verifier.vkey()
    code, _, err = kbs("log", "verify", "--url", live.broker.url, "--key", other)
    assert code == 1 and "kbs: log: the broker's checkpoint does not verify with the log key" in err
    code, _, err = kbs("log", "key", "--url", live.broker.url, "--key", other)
    assert code == 1 and "not the pinned" in err


def test_checkpoint_out_advances_a_witness_file_only_over_a_proof(live: Live, kbs: Kbs, tmp_path: Path) -> None:
    assert live.witness.read_text().split("\n")[1] == "16"  # advanced three times, each over a consistency proof
    flow(live.broker, release=False)  # the log grows; the next checkpoint must extend the witness's
    assert admin(live.broker, "POST", "/kbs/v0/admin/log/checkpoint")[0] == 200
    code, out, _ = kbs("log", "checkpoint", "--url", live.broker.url, "--key", live.vkey, "--out", str(live.witness))
    assert code == 0 and "proven to extend" in out and live.witness.read_text().split("\n")[1] == str(SIZE + 2)
    code, out, _ = kbs("log", "checkpoint", "--url", live.broker.url, "--key", live.vkey, "--out", str(live.witness))
    assert code == 0 and "already holds it" in out
    code, out, _ = kbs("log", "checkpoint", "--url", live.broker.url, "--key", live.vkey)
    assert code == 0 and out == live.witness.read_text()  # without --out: the note itself
    forged = NoteSigner("kbs.test/log", Ed25519PrivateKey.generate())  # another key claiming the log's name
    for name, text in (("garbage", "not a checkpoint\n"),
                       ("forged", forged.sign(Checkpoint("kbs.test/log", 11, bytes(32)).text()))):
        kept = tmp_path / name
        kept.write_text(text)
        code, _, err = kbs("log", "checkpoint", "--url", live.broker.url, "--key", live.vkey, "--out", str(kept))
        assert code == 1 and "not overwritten" in err and kept.read_text() == text


def test_prove_every_entry_under_the_newest_and_an_earlier_checkpoint(live: Live, kbs: Kbs) -> None:
    verifier = NoteVerifier.from_vkey(live.vkey)
    code, out, _ = kbs("log", "checkpoint", "--url", live.broker.url, "--key", live.vkey, "--json")
    size = json.loads(out)["size"]
    for index in range(size):
        code, out, err = kbs("log", "prove", str(index), "--url", live.broker.url, "--key", live.vkey)
        assert code == 0, err
        receipt = json.loads(out)
        assert receipt["index"] == index and receipt["size"] == size
        assert check_receipt(receipt, verifier) == receipt["entry"]
    code, out, _ = kbs("log", "prove", "2", "--size", "6", "--url", live.broker.url, "--key", live.vkey)
    assert code == 0 and json.loads(out)["size"] == 6
    assert kbs("log", "prove", "6", "--size", "6", "--url", live.broker.url, "--key", live.vkey)[0] == 1
    assert kbs("log", "prove", "1", "--size", "9999", "--url", live.broker.url, "--key", live.vkey)[0] == 1
    assert kbs("log", "prove", "x", "--url", live.broker.url, "--key", live.vkey)[0] == 2


# -- a stopped broker, its receipts, and its database edited -------------------------------------------

@dataclass
class Golden:
    state: Path
    vkey: str
    old: Path  # the checkpoint of size SIZE a key owner kept
    leaves: list[bytes]
    receipts: Path
    receipts_run: tuple[int, str, str]


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Golden:
    tmp = tmp_path_factory.mktemp("log-golden")
    with run_broker(tmp, CONFIG) as b:
        populate(b)
        vkey = get(b, "/kbs/v0/log/key").decode().strip()
        old = tmp / "old.checkpoint"
        assert main(["log", "checkpoint", "--url", b.url, "--key", vkey, "--out", str(old)]) == 0
        receipts = tmp / "receipts"
        run = main(["log", "receipts", "--resource", "kbs:///lab/key/one", "--out", str(receipts),
                    "--url", b.url, "--key", vkey]), "", ""
        entries = leaves(b, SIZE)
    assert b.process.poll() is not None  # stopped: what follows is offline
    return Golden(b.state_dir, vkey, old, entries, receipts, run)


def test_receipts_verify_offline_with_only_the_key(golden: Golden, kbs: Kbs, tmp_path: Path) -> None:
    assert golden.receipts_run[0] == 0 and golden.old.read_text().split("\n")[1] == str(SIZE)
    files = sorted(golden.receipts.glob("*.json"), key=lambda p: int(p.stem))
    assert [int(p.stem) for p in files] == RELEASES
    code, out, err = kbs("log", "verify-receipt", *map(str, files), "--key", golden.vkey)
    assert code == 0, err
    assert out.count("release(policy) of lab/key/one v1") == len(RELEASES) and "tee sample" in out
    for path in files:  # what each receipt proves: a release of that key, to an attested TEE, under a policy
        entry = json.loads(path.read_text())["entry"]
        assert entry["decision"] == "release" and entry["resource"] == "lab/key/one" and entry["tee"] == "sample"
        assert entry["attestation_id"] and entry["policy_id"] == "sample-ok" and entry["policy_hash"]
    receipt = json.loads(files[0].read_text())
    other = NoteSigner("kbs.test/log", Ed25519PrivateKey.generate()).verifier.vkey()
    changes: list[tuple[Callable[[dict[str, Any]], object], str]] = [
        (lambda r: r["entry"].update(tee="tdx"), "does not hash to its leaf_hash"),
        (lambda r: r.update(index=r["index"] + 1), "does not lead to the root"),
        (lambda r: r["proof"].reverse(), "does not lead to the root"),
        (lambda r: r.update(checkpoint=r["checkpoint"].replace(f"\n{SIZE}\n", f"\n{SIZE + 1}\n")), "does not verify")]
    for change, message in changes:
        forged = json.loads(json.dumps(receipt))
        change(forged)
        (tmp_path / "forged.json").write_text(json.dumps(forged))
        code, _, err = kbs("log", "verify-receipt", str(tmp_path / "forged.json"), "--key", golden.vkey)
        assert code == 1 and message in err, err
    code, _, err = kbs("log", "verify-receipt", str(files[0]), "--key", other)
    assert code == 1 and "does not verify with the log key" in err
    assert kbs("log", "verify-receipt", str(files[0]))[0] == 2  # no key: a receipt proves nothing


def rebuild_tree(db: sqlite3.Connection, entries: list[bytes]) -> None:
    """What a careful forger does: the tree recomputed from the edited entries."""
    stored: dict[tuple[int, int], bytes] = {}
    for index, entry in enumerate(entries):
        stored.update({(lv, ix): h for lv, ix, h in merkle.hashes_to_store(index, merkle.leaf_hash(entry),
                                                                            lambda w: [stored[k] for k in w])})
    db.execute("DELETE FROM log_tree")
    db.executemany("INSERT INTO log_tree (level, idx, hash) VALUES (?, ?, ?)",
                   [(lv, ix, h) for (lv, ix), h in stored.items()])


def as_deny(entry: bytes) -> bytes:
    return rfc8785.dumps({**json.loads(entry), "decision": "deny"})


@contextmanager
def tampered(golden: Golden, tmp: Path, edit: Callable[[sqlite3.Connection], None]) -> Iterator[Broker]:
    """The stopped broker's database edited with sqlite3, then the broker started on it again."""
    state = tmp / "state"
    shutil.copytree(golden.state, state)
    db = sqlite3.connect(state / "kbs.sqlite3")
    with db:
        edit(db)
    db.close()
    with run_broker(tmp, CONFIG, state_dir=state) as b:
        yield b


def swap(db: sqlite3.Connection, seq_a: int, seq_b: int) -> None:
    db.execute("UPDATE release_log SET seq = -1 WHERE seq = ?", (seq_a,))
    db.execute("UPDATE release_log SET seq = ? WHERE seq = ?", (seq_a, seq_b))
    db.execute("UPDATE release_log SET seq = ? WHERE seq = -1", (seq_b,))


def verify(kbs: Kbs, broker: Broker, golden: Golden, *extra: str) -> tuple[int, str, str]:
    return kbs("log", "verify", "--url", broker.url, "--key", golden.vkey, *extra)


def test_deleting_the_newest_entry_is_caught_by_a_kept_checkpoint(golden: Golden, kbs: Kbs, tmp_path: Path) -> None:
    def delete_newest(db: sqlite3.Connection) -> None:  # entry, its tree rows and the checkpoints that cover it
        db.execute("DELETE FROM release_log WHERE seq = ?", (SIZE,))
        for level in range(6):
            db.execute("DELETE FROM log_tree WHERE level = ? AND idx = ?", (level, (SIZE - 1) >> level))
        db.execute("DELETE FROM log_checkpoints WHERE size >= ?", (SIZE,))

    with tampered(golden, tmp_path, delete_newest) as b:
        assert admin(b, "POST", "/kbs/v0/admin/log/checkpoint")[0] == 200  # the broker signs what it now holds
        code, out, err = verify(kbs, b, golden)
        assert code == 0 and f"{SIZE - 1} entries" in out  # self-consistent: only a kept checkpoint can tell
        code, _, err = verify(kbs, b, golden, "--checkpoint", str(golden.old))
        assert code == 1 and f"first missing index {SIZE - 1}" in err
        assert f"kbs: log: first bad index: {SIZE - 1}\n" in err
        kept = golden.old.read_text()
        code, _, err = kbs("log", "checkpoint", "--url", b.url, "--key", golden.vkey, "--out", str(golden.old))
        assert code == 1 and "older than the one in" in err and golden.old.read_text() == kept


@pytest.mark.parametrize("rebuilt", [False, True], ids=["tree-left", "tree-rebuilt"])
def test_rewriting_a_release_as_a_deny_names_it(golden: Golden, kbs: Kbs, tmp_path: Path, rebuilt: bool) -> None:
    expected = [*golden.leaves[:5], as_deny(golden.leaves[5]), *golden.leaves[6:]]

    def rewrite(db: sqlite3.Connection) -> None:
        db.execute("UPDATE release_log SET decision = 'deny' WHERE seq = 6")
        if rebuilt:
            rebuild_tree(db, expected)

    with tampered(golden, tmp_path, rewrite) as b:
        assert leaves(b, SIZE) == expected  # the broker serves the edited entry
        code, _, err = verify(kbs, b, golden, "--checkpoint", str(golden.old))
        # The stored leaf hashes pin index 5; a rebuilt tree leaves only the signed sizes (4, 6, ...) to bound it.
        assert code == 1 and ("kbs: log: first bad index: between 4 and 5" if rebuilt else
                              "kbs: log: first bad index: 5\n") in err, err
        assert "do not reproduce the root of your checkpoint" in err
        assert ("entry 5 does not hash to the tree's stored leaf hash 5" in err) != rebuilt
        if rebuilt:  # the tree no longer gives the root of the broker's MAC'd head: nothing more is released
            assert asyncio.run(attest_status(b.url)) == 503  # already at /attest, whose summary goes in the log
            # and signs nothing over the edited tree: its newest checkpoint is still the one from before the edit
            status, body = admin(b, "POST", "/kbs/v0/admin/log/checkpoint")
            assert status == 200 and body.decode().split("\n")[:3] == golden.old.read_text().split("\n")[:3]
            code, _, err = verify(kbs, b, golden)  # even without a kept checkpoint: the broker's own history
            assert code == 1 and "kbs: log: first bad index: between 4 and 5" in err
            assert "reproduce every one up to size 4" in err


@pytest.mark.parametrize("rebuilt", [False, True], ids=["tree-left", "tree-rebuilt"])
def test_reordering_two_entries_names_the_first(golden: Golden, kbs: Kbs, tmp_path: Path, rebuilt: bool) -> None:
    expected = [*golden.leaves[:4], golden.leaves[5], golden.leaves[4], *golden.leaves[6:]]

    def reorder(db: sqlite3.Connection) -> None:
        swap(db, 5, 6)
        if rebuilt:
            rebuild_tree(db, expected)

    with tampered(golden, tmp_path, reorder) as b:
        assert leaves(b, SIZE) == expected
        code, _, err = verify(kbs, b, golden, "--checkpoint", str(golden.old))
        assert code == 1 and ("kbs: log: first bad index: between 4 and 5" if rebuilt else
                              "kbs: log: first bad index: 4\n") in err, err


def test_a_rewrite_re_signed_over_deleted_history_is_bounded_by_what_was_signed(
        golden: Golden, kbs: Kbs, tmp_path: Path) -> None:
    """The forger also deletes the checkpoints after the edit, so the broker signs the rewritten tree: only the
    kept checkpoint catches it, and the signed sizes left bound the first bad index to a range."""
    expected = [*golden.leaves[:5], as_deny(golden.leaves[5]), *golden.leaves[6:]]

    def rewrite(db: sqlite3.Connection) -> None:
        db.execute("UPDATE release_log SET decision = 'deny' WHERE seq = 6")
        rebuild_tree(db, expected)
        db.execute("DELETE FROM log_checkpoints WHERE size > 5")

    with tampered(golden, tmp_path, rewrite) as b:
        status, note = admin(b, "POST", "/kbs/v0/admin/log/checkpoint")  # signed: it extends size 4
        assert status == 200 and note.split(b"\n")[1] == str(SIZE).encode()
        assert verify(kbs, b, golden)[0] == 0  # the broker's own story is now self-consistent
        code, _, err = verify(kbs, b, golden, "--checkpoint", str(golden.old))
        assert code == 1 and f"kbs: log: first bad index: between 4 and {SIZE - 1}" in err, err
        assert f"two different trees of size {SIZE}" in err


def test_a_log_for_auditors_needs_the_admin_key(kbs: Kbs, tmp_path: Path) -> None:
    with run_broker(tmp_path, CONFIG + 'read = "auditor"\n') as b:
        flow(b, release=False)
        code, _, err = kbs("log", "verify", "--url", b.url)
        assert code == 1 and "HTTP 401" in err and "give --admin-key" in err
        code, out, err = kbs("log", "verify", "--url", b.url, "--admin-key", str(b.state_dir / "admin-key.pem"))
        assert code == 0, err
        assert "each hashes to its stored leaf" in out and "release log: entries 1.." in out  # and the broker's check
