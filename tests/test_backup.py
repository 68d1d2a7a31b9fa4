"""`kbs backup` while the broker serves, `kbs restore` into a fresh state directory, checked against the KEK."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

from kbs.keys.jwe import decrypt
from tests.broker import REPO, full_flow, run_broker
from tests.test_server_e2e import admin

SAMPLE_OK = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
    {"claim": "sample.svn", "equals": "1"}]}]})
SECRET = b"backed-up-secret"


def kbs(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kbs.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_backup_while_serving_and_restore_into_a_fresh_state_dir(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    backup = tmp_path / "kbs.backup"
    with run_broker(tmp_path, state_dir=first) as broker:
        async def provision() -> None:
            assert (await admin(broker, "PUT", "/kbs/v0/admin/policies/sample-ok", data=SAMPLE_OK))[0] == 200
            status, _ = await admin(broker, "POST", "/kbs/v0/resource/lab/key/kept?policy=sample-ok", data=SECRET)
            assert status == 200
        asyncio.run(provision())
        done = kbs("backup", str(backup), "--state-dir", str(first))  # while it serves
        assert done.returncode == 0 and "the KEK is not in it" in done.stdout, done.stderr
        assert backup.stat().st_mode & 0o777 == 0o600
        assert SECRET not in backup.read_bytes() and (first / "kek").read_bytes() not in backup.read_bytes()
        assert kbs("backup", str(backup), "--state-dir", str(first)).returncode == 1  # never overwritten

    # Another KEK: refused, nothing left behind.
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "kek").write_bytes(bytes(range(32)))
    (wrong / "kek").chmod(0o600)
    done = kbs("restore", str(backup), "--state-dir", str(wrong))
    assert done.returncode == 1 and "does not verify under this broker's KEK" in done.stderr, done
    assert not (wrong / "kbs.sqlite3").exists()

    second.mkdir()
    for name in ("kek", "admin-key.pem"):  # what travels separately from the backup
        shutil.copy2(first / name, second / name)
    done = kbs("restore", str(backup), "--state-dir", str(second))
    assert done.returncode == 0 and "verify under the KEK" in done.stdout, done.stderr
    assert kbs("restore", str(backup), "--state-dir", str(second)).returncode == 1  # not over a database
    with run_broker(tmp_path, state_dir=second) as broker:
        status, out, key = asyncio.run(full_flow(broker.url, "sample", "lab/key/kept"))
        assert status == 200 and decrypt(out, key.private_key) == SECRET
