"""An operator's first day, scripted with the commands the README gives, against real brokers.

`kbs init` -> `kbs serve --check-config` -> `kbs serve` -> a key, a JSON policy over a reference set
filled from `kbs measure snp`, bound -> a guest (kbs-guest over a synthetic configfs-tsm) gets the key
-> dry-run -> disable -> the guest is refused and `kbs log` says `disabled` -> backup -> restore into a
fresh state directory -> a broker on the restored state serves the same key again.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kbs.guest import cli as guest_cli
from tests.amd_synth import SyntheticAmd
from tests.broker import REPO, Broker, SnpGuest, free_port, wait_ready
from tests.test_guest import FakeTsm
from tests.test_measure import build_ovmf

SECRET = b"operator-day-one:" + bytes(range(200, 232))


def kbs(*argv: str, admin: Path | None = None, url: str | None = None) -> subprocess.CompletedProcess[str]:
    connection = ["--url", url, "--admin-key", str(admin)] if url and admin else []
    return subprocess.run([sys.executable, "-m", "kbs.cli", *connection, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args}: {done.stdout}{done.stderr}"
    return done.stdout


@contextmanager
def serving(config: Path, state: Path, log: Path) -> Iterator[Broker]:
    with open(log, "ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "kbs.cli", "serve", "--config", str(config)],
                                   stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    url = next(line.split('"')[1] for line in config.read_text().splitlines() if line.startswith("listen"))
    broker = Broker(f"http://{url}", state, process, log)
    try:
        wait_ready(broker)
        yield broker
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(40)


def guest_fetch(broker: Broker, guest: SnpGuest, tsm: Path, out: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`kbs-guest get-resource` as the VM runs it at boot (its configfs-tsm is synthetic)."""
    monkeypatch.setattr(guest_cli, "TsmReport", lambda root, **kw: FakeTsm(root, guest, **kw))
    tsm.mkdir(parents=True, exist_ok=True)
    capsys.readouterr()
    code = guest_cli.main(["get-resource", "kbs:///prod/key/disk", "--url", broker.url, "--tsm-path", str(tsm),
                           "--output", str(out), "--retries", "0"])
    return code, capsys.readouterr().err


def test_day_one(tmp_path: Path, synth_milan: SyntheticAmd, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
    # Setup: a production configuration, then this machine's particulars (port; the lab's AMD root).
    cfg = tmp_path / "etc"
    ok(kbs("init", "--dir", str(cfg)))
    config, admin = cfg / "kbs.toml", cfg / "admin-key.pem"
    (tmp_path / "ark.pem").write_bytes(synth_milan.ark_pem)
    port = free_port()
    lab = (f'\n[verifiers.snp]\ntrust_roots = ["{tmp_path / "ark.pem"}"]\noffline = true\n'
           f'cache_dir = "{tmp_path / "kds"}"\n')
    config.write_text(config.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{port}")
                      .replace("workers = 0", "workers = 1") + lab)
    assert "configuration OK" in ok(kbs("serve", "--config", str(config), "--check-config"))

    # The expected launch measurement of the guest's firmware, into a reference set.
    (tmp_path / "OVMF.fd").write_bytes(build_ovmf())
    measured = json.loads(ok(kbs("measure", "snp", "--ovmf", str(tmp_path / "OVMF.fd"), "--vcpus", "2",
                                 "--vcpu-type", "EPYC-Milan", "--json")))
    (tmp_path / "measure.json").write_text(json.dumps(measured))
    [digest] = measured["snp_launch_measurement"]["values"]
    guest = SnpGuest(synth_milan, measurement=bytes.fromhex(digest))
    policy = {"version": "1.0.0", "allOf": [{"authority": "local:snp", "allOf": [
        {"claim": "snp.measurement", "in": {"ref": "snp_launch_measurement"}},
        {"claim": "snp.policy_debug_allowed", "equals": False},
        {"claim": "submod.ear\\.status", "equals": "affirming"}]}]}
    (tmp_path / "disk.json").write_text(json.dumps(policy, indent=2))
    (tmp_path / "secret.bin").write_bytes(SECRET)

    log = tmp_path / "serve.log"
    with serving(config, cfg / "state", log) as broker:
        def admin_kbs(*argv: str) -> subprocess.CompletedProcess[str]:
            return kbs(*argv, admin=admin, url=broker.url)

        status = json.loads(ok(admin_kbs("status", "--json")))
        assert status["verifiers"] == ["snp", "tdx"] and status["store"] == "sqlite"
        ark = hashlib.sha256(x509.load_pem_x509_certificate(synth_milan.ark_pem).public_bytes(Encoding.DER))
        assert [(r["sha256"], r["source"]) for r in status["trust_roots"]["snp"]] == [(ark.hexdigest(), "configured")]
        ok(admin_kbs("refs", "put", "snp_launch_measurement", "--from-file", str(tmp_path / "measure.json")))
        ok(admin_kbs("key", "create", "kbs:///prod/key/disk", "--from-file", str(tmp_path / "secret.bin")))
        stored = admin_kbs("policy", "put", "disk", str(tmp_path / "disk.json"))
        assert "stored v1" in ok(stored) and "warning" not in stored.stderr  # every claim it names exists
        ok(admin_kbs("key", "bind", "prod/key/disk", "--policy", "disk"))

        got = tmp_path / "got.bin"
        code, err = guest_fetch(broker, guest, tmp_path / "tsm", got, monkeypatch, capsys)
        assert code == 0 and got.read_bytes() == SECRET, err
        [release] = json.loads(ok(admin_kbs("log", "--resource", "prod/key/disk", "--decision", "release",
                                            "--json")))
        assert release["policy_id"] == "disk" and release["tee"] == "snp"
        [identity] = json.loads(release["evidence"])  # the log says which VM got the key, not the key
        assert (identity["measurement"], identity["chip_id"]) == (digest, guest.chip.hex())
        assert release["refs_hash"] and release["tee_key"]
        dry = json.loads(ok(admin_kbs("policy", "dry-run", "disk", "--attestation", release["attestation_id"],
                                      "--resource", "prod/key/disk", "--json")))
        assert dry["allow"] is True

        ok(admin_kbs("key", "disable", "prod/key/disk"))
        code, err = guest_fetch(broker, guest, tmp_path / "tsm", tmp_path / "refused.bin", monkeypatch, capsys)
        assert code != 0 and not (tmp_path / "refused.bin").exists() and SECRET.decode("latin-1") not in err
        shown = ok(admin_kbs("log", "--resource", "prod/key/disk", "--decision", "deny"))
        assert "disabled" in shown, shown

        ok(kbs("backup", "--config", str(config), str(tmp_path / "kbs.backup")))  # while serving
    assert SECRET not in (tmp_path / "kbs.backup").read_bytes()  # sealed under the KEK, which stays out

    # A fresh state directory (a new machine, the same KEK and configuration) from the backup.
    restored = tmp_path / "restored"
    ok(kbs("restore", "--config", str(config), "--state-dir", str(restored), str(tmp_path / "kbs.backup")))
    config.write_text(config.read_text().replace(f'state_dir = "{cfg / "state"}"', f'state_dir = "{restored}"'))
    with serving(config, restored, log) as broker:
        keys = json.loads(ok(kbs("key", "list", "--json", admin=admin, url=broker.url)))
        assert [(k["path"], k["versions"][-1]["state"]) for k in keys] == [("prod/key/disk", "disabled")]
        ok(kbs("key", "enable", "prod/key/disk", admin=admin, url=broker.url))
        again = tmp_path / "again.bin"
        code, err = guest_fetch(broker, guest, tmp_path / "tsm", again, monkeypatch, capsys)
        assert code == 0 and again.read_bytes() == SECRET, err
    assert SECRET not in log.read_bytes()
