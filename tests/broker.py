"""Test helpers: start a real `kbs serve` process on loopback, and talk to it as a guest and as an admin."""

from __future__ import annotations

import base64
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization

from kbs.evidence.binding import primary_runtime_digest
from kbs.evidence.snp_coco import report_to_coco
from kbs.keys.jwe import TeeKey, generate_tee_key
from tests.amd_synth import SyntheticAmd, Vek, build_report, sign_report

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Broker:
    url: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def admin_token(self, lifetime: int = 300, key_path: Path | None = None) -> str:
        key = serialization.load_pem_private_key((key_path or self.state_dir / "admin-key.pem").read_bytes(), None)
        now = int(time.time())
        return jwt.encode({"sub": "tests", "iat": now, "exp": now + lifetime}, key, algorithm="EdDSA")  # type: ignore[arg-type]

    def admin_headers(self, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token(**kwargs)}"}

    def log(self) -> str:
        return self.log_path.read_text()


def write_config(path: Path, port: int, state_dir: Path, extra: str = "") -> Path:
    path.write_text(f'listen = "127.0.0.1:{port}"\nstate_dir = "{state_dir}"\ndev_mode = true\n{extra}')
    return path


@contextmanager
def run_broker(tmp: Path, extra_config: str = "", state_dir: Path | None = None,
               env: dict[str, str] | None = None) -> Iterator[Broker]:
    """A `kbs serve` subprocess, ready (readyz 200) when yielded, stopped with SIGTERM after."""
    port = free_port()
    state = state_dir or tmp / "state"
    config = write_config(tmp / f"kbs-{port}.toml", port, state, extra_config)
    log_path = tmp / f"kbs-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kbs.cli", "serve", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **(env or {})})
    broker = Broker(f"http://127.0.0.1:{port}", state, proc, log_path)
    try:
        wait_ready(broker)
        yield broker
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(broker: Broker, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            raise RuntimeError(f"broker exited with {broker.process.returncode}:\n{broker.log()}")
        try:
            with urllib.request.urlopen(f"{broker.url}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"broker not ready after {timeout}s:\n{broker.log()}")


# -- guest side ------------------------------------------------------------------------------

@dataclass
class SnpGuest:
    """A synthetic SNP guest: its VCEK signs reports carrying whatever report_data the protocol needs."""

    pki: SyntheticAmd
    chip: bytes = bytes(range(3, 67))
    vek: Vek = field(init=False)
    measurement: bytes = b"\x5a" * 48
    policy: int = 0x30000

    def __post_init__(self) -> None:
        self.vek = self.pki.issue_vek(hwid=self.chip)

    def evidence(self, report_data: bytes, host_data: bytes = b"") -> dict[str, Any]:
        assert self.vek.private_key is not None
        report = sign_report(build_report(chip_id=self.chip, report_data=report_data, measurement=self.measurement,
                                          host_data=host_data, policy=self.policy), self.vek.private_key)
        return report_to_coco(report, [("VCEK", self.vek.der), ("ASK", self.pki.ask_der), ("ARK", self.pki.ark_der)])


def jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1


async def auth(http: aiohttp.ClientSession, url: str, tee: str, version: str = "0.4.0") -> str:
    async with http.post(f"{url}/kbs/v0/auth", json={"version": version, "tee": tee, "extra-params": {}}) as r:
        assert r.status == 200, await r.text()
        nonce: str = (await r.json())["nonce"]
        return nonce


def attestation(nonce: str, key: TeeKey, tee: str, guest: SnpGuest | None = None, *,
                report_nonce: str | None = None, init_data: str | None = None,
                host_data: bytes = b"") -> dict[str, Any]:
    """The /attest body; `report_nonce` lets a test bind a different nonce into the evidence."""
    digest = primary_runtime_digest(report_nonce or nonce, key.jwk, "")
    if tee == "sample":
        evidence: Any = {"svn": "1", "report_data": base64.b64encode(digest).decode()}
    else:
        assert guest is not None
        evidence = guest.evidence(digest + bytes(16), host_data)
    return {"init-data": {"format": "toml", "body": init_data} if init_data else None,
            "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk},
            "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""}}


async def attest(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{url}/kbs/v0/attest", json=body) as r:
        return r.status, await r.json(content_type=None)


async def get_resource(http: aiohttp.ClientSession, url: str, path: str,
                       token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{url}/kbs/v0/resource/{path}", headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def full_flow(url: str, tee: str, path: str, key_kind: str = "EC-P256", guest: SnpGuest | None = None,
                    bearer: bool = False) -> tuple[int, dict[str, Any], TeeKey]:
    key = generate_tee_key(key_kind)
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        nonce = await auth(http, url, tee)
        status, body = await attest(http, url, attestation(nonce, key, tee, guest))
        assert status == 200, body
        if bearer:
            async with aiohttp.ClientSession() as fresh:  # no cookie: the token alone
                status, out = await get_resource(fresh, url, path, token=body["token"])
        else:
            status, out = await get_resource(http, url, path)
        return status, out, key


def expires(seconds: int) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()
