"""`kbs init` writes what a production broker needs; the result passes --check-config and serves."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.broker import REPO, Broker, free_port, wait_ready


def kbs(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kbs.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_init_check_config_serve(tmp_path: Path) -> None:
    out = tmp_path / "cfg"
    done = kbs("init", "--dir", str(out))
    assert done.returncode == 0 and "systemd-creds encrypt --name=kbs-kek" in done.stdout, done.stderr
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"kbs.toml": 0o600, "kek": 0o600, "admin-key.pem": 0o600, "admin-key.pub.pem": 0o644}
    assert len((out / "kek").read_bytes()) == 32 and out.stat().st_mode & 0o777 == 0o700
    config = out / "kbs.toml"
    text = config.read_text()
    assert "dev_mode = false" in text and "systemd" in text and "\n# [metrics]\n# token_file = " in text
    port = free_port()
    config.write_text(text.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("workers = 0", "workers = 1"))
    done = kbs("serve", "--config", str(config), "--check-config")
    assert done.returncode == 0 and "configuration OK" in done.stdout and "dev mode" not in done.stdout, done.stderr
    again = kbs("init", "--dir", str(out))  # never overwrites
    assert again.returncode == 2 and "never overwrites" in again.stderr

    log = tmp_path / "serve.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "kbs.cli", "serve", "--config", str(config)],
                                   stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    broker = Broker(f"http://127.0.0.1:{port}", out / "state", process, log)
    try:
        wait_ready(broker)
        listed = kbs("--url", broker.url, "--admin-key", str(out / "admin-key.pem"), "key", "list")
        assert listed.returncode == 0 and listed.stdout.strip() == "no keys", listed.stderr
        refused = kbs("--url", broker.url, "--admin-key", str(tmp_path / "nope.pem"), "key", "list")
        assert refused.returncode != 0
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(40)
