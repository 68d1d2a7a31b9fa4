"""`systemd/install.sh` from nothing to a running unit, with systemd's part played by the test.

The script runs under a scratch ROOT with this environment's kbs (KBS_VENV).  Then the test does what
systemd would do with the installed unit: decrypt the credentials it names (`systemd-creds decrypt`)
into a CREDENTIALS_DIRECTORY, run ExecStartPre (the configuration check), then ExecStart, and talk to
the broker with the admin key `kbs init` made.  The unit's absolute paths are mapped into ROOT.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.broker import REPO, Broker, free_port, wait_ready

SCRIPT = REPO / "systemd" / "install.sh"
needs_creds = pytest.mark.skipif(shutil.which("systemd-creds") is None or os.geteuid() != 0,
                                 reason="needs systemd-creds and root (its host key)")


def install(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ROOT": str(root), "KBS_VENV": sys.prefix}
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


@needs_creds
def test_install_then_start_as_systemd_would(tmp_path: Path) -> None:
    root = tmp_path / "root"
    done = install(root)
    assert done.returncode == 0, done.stdout + done.stderr
    etc = root / "etc" / "kbs"
    modes = {p.name: p.stat().st_mode & 0o777 for p in etc.iterdir()}
    assert modes == {"kbs.toml": 0o644, "admin-key.pub.pem": 0o644, "admin-key.pem": 0o600, "kek": 0o600,
                     "kbs-kek.cred": 0o644}
    assert etc.stat().st_mode & 0o777 == 0o755
    config = (etc / "kbs.toml").read_text()
    assert "\n# kek_file = " in config and "\nkek_file" not in config  # the daemon reads the credential only
    assert (etc / "kek").read_bytes() not in (etc / "kbs-kek.cred").read_bytes()

    unit = (root / "etc" / "systemd" / "system" / "kbs.service").read_text()
    [pre], [start] = unit_values(unit, "ExecStartPre"), unit_values(unit, "ExecStart")
    assert start.startswith(f"{sys.prefix}/bin/kbs serve ") and pre == f"{start} --check-config"
    assert unit_values(unit, "LoadCredentialEncrypted") == ["kbs-kek:/etc/kbs/kbs-kek.cred"]  # no TLS key yet
    assert "# (no TLS key yet) LoadCredentialEncrypted=kbs-tls-key:" in unit

    # Running it again keeps the configuration, keys and credential as they are.
    before = {p.name: p.read_bytes() for p in etc.iterdir()}
    again = install(root)
    assert again.returncode == 0 and {p.name: p.read_bytes() for p in etc.iterdir()} == before, again.stderr

    # systemd's part: the credential, the state directory, ExecStartPre, ExecStart.
    port = free_port()
    (etc / "kbs.toml").write_text(config.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
                                  .replace("workers = 0", "workers = 1"))
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    for entry in unit_values(unit, "LoadCredentialEncrypted"):
        name, path = entry.split(":", 1)
        subprocess.run(["systemd-creds", "decrypt", f"--name={name}", str(root) + path, str(credentials / name)],
                       check=True, capture_output=True, timeout=30)
        (credentials / name).chmod(0o400)  # as systemd leaves them
    state = tmp_path / "var-lib-kbs"
    state.mkdir(mode=0o700)

    def command(line: str) -> list[str]:
        return [str(root) + word if word.startswith("/etc/kbs/") else str(state) if word == "/var/lib/kbs" else word
                for word in shlex.split(line)]
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
    checked = subprocess.run(command(pre), env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0 and "configuration OK" in checked.stdout, checked.stdout + checked.stderr

    log = tmp_path / "kbs.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(command(start), env=env, stdout=sink, stderr=subprocess.STDOUT)
    broker = Broker(f"http://127.0.0.1:{port}", state, process, log)
    try:
        wait_ready(broker)
        status = subprocess.run([f"{sys.prefix}/bin/kbs", "status", "--url", broker.url, "--admin-key",
                                 str(etc / "admin-key.pem")], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "verifiers snp, tdx" in status.stdout, status.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(40) == 0
    assert (state / "kbs.db").exists() or any(state.iterdir())

    # Without the credential the broker does not start (the KEK is nowhere else), and says why.
    (credentials / "kbs-kek").unlink()
    refused = subprocess.run(command(pre), env=env, capture_output=True, text=True, timeout=120)
    expected = "kbs: error: kek: no key encryption key: the systemd credential 'kbs-kek' is not in "
    assert refused.returncode == 1 and refused.stderr.startswith(expected), refused.stderr
