"""The unit files parse, and the broker's sandboxing scores well with `systemd-analyze security`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@needs_systemd
def test_broker_unit_exposure_is_low() -> None:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNITS / "kbs.service")],
                         capture_output=True, text=True, check=False)
    match = re.search(r"Overall exposure level for kbs.service: ([0-9.]+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= 2.0


def test_broker_unit_runs_unprivileged_with_the_kek_as_credential() -> None:
    text = (UNITS / "kbs.service").read_text()
    assert re.search(r"^User=kbs$", text, re.M) and "NoNewPrivileges=yes" in text
    assert "LoadCredentialEncrypted=kbs-kek:" in text and "ProtectSystem=strict" in text


def test_tls_key_is_a_credential_and_the_guest_verifies_the_broker() -> None:
    broker = (UNITS / "kbs.service").read_text()
    assert re.search(r"^LoadCredentialEncrypted=kbs-tls-key:", broker, re.M)  # private_key_credential's default
    example = (UNITS / "kbs-guest.conf.example").read_text()
    assert re.search(r"^KBS_URL=https://", example, re.M) and re.search(r"^KBS_CA_CERT=/etc/kbs-guest/", example, re.M)
    assert "--insecure" not in example and "EnvironmentFile=/etc/kbs-guest/%i.conf" in (
        UNITS / "kbs-guest@.service").read_text()
