"""The release log as a transparency log, over HTTP against a real broker: signed checkpoints, C2SP tiles and
entry bundles anyone can check with the RFC 9162 algorithms, proofs, the witness hook, and read access."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from kbs.audit import merkle
from kbs.audit.note import NoteVerifier, open_checkpoint
from kbs.audit.tiles import TILE_WIDTH, Tile, unbundle
from tests.broker import Broker, full_flow, run_broker

SAMPLE_POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
    {"claim": "sample.svn", "equals": "1"}]}]})


def get(broker: Broker, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(broker.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def admin(broker: Broker, method: str, path: str, data: bytes = b"") -> bytes:
    request = urllib.request.Request(broker.url + path, data=data if method != "GET" else None, method=method,
                                     headers=broker.admin_headers())
    with urllib.request.urlopen(request, timeout=10) as r:
        return cast(bytes, r.read())


@pytest.fixture(scope="module")
def hook_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hook") / "checkpoints.txt"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, hook_out: Path) -> Iterator[Broker]:
    tmp = tmp_path_factory.mktemp("tlog")
    hook = tmp / "witness.sh"
    hook.write_text(f"#!/bin/sh\ncat >> {hook_out}\necho '--' >> {hook_out}\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    config = f'[log]\norigin = "kbs.test/log"\ncheckpoint_seconds = 0.5\nwitness_hook = "{hook}"\n'
    with run_broker(tmp, config) as b:
        admin(b, "PUT", "/kbs/v0/admin/policies/sample-ok", SAMPLE_POLICY.encode())
        admin(b, "POST", "/kbs/v0/resource/lab/key/one?policy=sample-ok", b"secret-one")
        yield b


def wait_for_checkpoint(broker: Broker, size: int, verifier: NoteVerifier) -> tuple[str, int, bytes]:
    deadline = time.monotonic() + 20
    while True:
        status, body, _ = get(broker, "/kbs/v0/log/checkpoint")
        assert status == 200
        checkpoint = open_checkpoint(body.decode(), verifier)
        if checkpoint.size >= size or time.monotonic() > deadline:
            return body.decode(), checkpoint.size, checkpoint.root
        time.sleep(0.2)


def fetch_leaves(broker: Broker, size: int) -> list[bytes]:
    leaves: list[bytes] = []
    for n in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
        width = min(TILE_WIDTH, size - n * TILE_WIDTH)
        status, body, headers = get(broker, f"/kbs/v0/log/{Tile(None, n, width).path}")
        assert status == 200 and headers["Content-Type"] == "application/octet-stream"
        leaves += unbundle(body)
    return leaves


def test_checkpoints_tiles_and_proofs_verify_with_nothing_but_the_key(broker: Broker, hook_out: Path) -> None:
    status, vkey, _ = get(broker, "/kbs/v0/log/key")
    verifier = NoteVerifier.from_vkey(vkey.decode())
    assert status == 200 and verifier.name == "kbs.test/log"
    _, first_size, first_root = wait_for_checkpoint(broker, 1, verifier)  # the admin changes above
    for i in range(6):  # releases and denials
        path = "lab/key/one" if i % 2 else "lab/key/none"
        assert asyncio.run(full_flow(broker.url, "sample", path))[0] == (200 if i % 2 else 401)
    note, size, root = wait_for_checkpoint(broker, first_size + 6, verifier)
    assert size >= first_size + 6
    leaves = fetch_leaves(broker, size)
    assert len(leaves) == size
    entries = [json.loads(leaf) for leaf in leaves]
    assert {e["decision"] for e in entries} >= {"admin", "release", "deny"}
    assert not any(b"secret-one" in leaf for leaf in leaves)  # no key material in the log
    [released, *_] = [e for e in entries if e["decision"] == "release"]
    assert released["evidence"] == [{"submod": "cpu0", "verifier": "sample", "svn": "1", "launch_digest": "abcde"}]
    assert len(released["tee_key"]) == 43 and len(released["refs_hash"]) == 64  # RFC 7638, SHA-256
    assert all("tee_key" not in e and "evidence" not in e for e in entries if e["decision"] == "admin")
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    stored: dict[tuple[int, int], bytes] = {}
    for i, h in enumerate(hashes):
        stored.update({(lv, ix): v for lv, ix, v in merkle.hashes_to_store(i, h, lambda w: [stored[k] for k in w])})
    assert merkle.tree_hash(size, lambda w: [stored[k] for k in w]) == root
    status, tile, _ = get(broker, f"/kbs/v0/log/{Tile(0, 0, size).path}")  # the level-0 tile: the leaf hashes
    assert status == 200 and tile == b"".join(hashes)
    for index in range(size):
        status, body, _ = get(broker, f"/kbs/v0/log/proof/inclusion?index={index}&size={size}")
        proof = [base64.b64decode(h) for h in json.loads(body)["proof"]]
        merkle.verify_inclusion(hashes[index], index, size, proof, root)
        status, body, _ = get(broker, f"/kbs/v0/log/entries/{index}")
        assert status == 200 and body == leaves[index]
    status, body, _ = get(broker, f"/kbs/v0/log/proof/consistency?old={first_size}&new={size}")
    merkle.verify_consistency(first_size, size, first_root, root,
                              [base64.b64decode(h) for h in json.loads(body)["proof"]])
    history = json.loads(get(broker, "/kbs/v0/log/checkpoints")[1])
    assert [c["size"] for c in history] == sorted({c["size"] for c in history}) and history[-1]["note"] == note
    for kept in history:  # every checkpoint the log ever signed is consistent with the newest
        old = open_checkpoint(kept["note"], verifier)
        if 0 < old.size < size:
            body = get(broker, f"/kbs/v0/log/proof/consistency?old={old.size}&new={size}")[1]
            merkle.verify_consistency(old.size, size, old.root, root,
                                      [base64.b64decode(h) for h in json.loads(body)["proof"]])
    deadline = time.monotonic() + 10
    while note not in (hook_out.read_text() if hook_out.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert note in hook_out.read_text()  # the witness hook got the checkpoint


def test_on_demand_checkpoint_and_bounds(broker: Broker) -> None:
    note = admin(broker, "POST", "/kbs/v0/admin/log/checkpoint").decode()
    verifier = NoteVerifier.from_vkey(get(broker, "/kbs/v0/log/key")[1].decode())
    size = open_checkpoint(note, verifier).size
    for path, status in [(f"/kbs/v0/log/entries/{size}", 404), ("/kbs/v0/log/entries/-1", 404),
                         ("/kbs/v0/log/entries/99999999999999999999999", 404),
                         (f"/kbs/v0/log/tile/0/000.p/{size + 1}", 404), ("/kbs/v0/log/tile/0/001", 404),
                         ("/kbs/v0/log/tile/0/x000/000", 404), ("/kbs/v0/log/tile/../../admin/keys", 404),
                         (f"/kbs/v0/log/proof/inclusion?index={size}&size={size}", 404),
                         ("/kbs/v0/log/proof/inclusion?index=a&size=1", 400),
                         (f"/kbs/v0/log/proof/consistency?old={size}&new={size + 1}", 404),
                         ("/kbs/v0/log/proof/consistency?old=0&new=1", 400),
                         ("/kbs/v0/log/checkpoints?limit=0", 400)]:
        assert get(broker, path)[0] == status, path
    assert broker.process.poll() is None


def test_a_tree_damaged_behind_the_broker_is_a_409_not_a_crash(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with run_broker(tmp_path, "", state_dir=state) as b:
        for i in range(3):
            admin(b, "POST", f"/kbs/v0/resource/lab/key/k{i}", b"x")
        admin(b, "POST", "/kbs/v0/admin/log/checkpoint")
    db = sqlite3.connect(state / "kbs.sqlite3")
    with db:
        db.execute("DELETE FROM log_tree WHERE level = 0 AND idx = 1")
    db.close()
    with run_broker(tmp_path, "", state_dir=state) as b:
        status, body, _ = get(b, "/kbs/v0/log/tile/0/000.p/3")
        assert status == 409 and b"tree misses hashes at level 0" in body
        assert get(b, "/kbs/v0/log/proof/inclusion?index=0&size=3")[0] == 409
        assert get(b, "/readyz")[0] == 200  # the broker serves on (its releases stop: the tree is not its head's)


def test_auditors_only(tmp_path: Path) -> None:
    with run_broker(tmp_path, '[log]\nread = "auditor"\n') as b:
        assert get(b, "/kbs/v0/log/checkpoint")[0] == 401
        assert get(b, "/kbs/v0/log/tile/entries/000.p/1")[0] == 401
        status, body, _ = get(b, "/kbs/v0/log/checkpoint", b.admin_headers())
        assert status == 200 and body.decode().split("\n")[0].startswith("kbs-log/")

