"""Test helpers: start a real `kbs serve` process on loopback, and talk to it as a guest and as an admin."""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import jwt
import trustme
from cryptography.hazmat.primitives import serialization

from kbs.evidence.binding import primary_runtime_digest
from kbs.evidence.snp.coco import report_to_coco
from kbs.keys.jwe import TeeKey, generate_tee_key
from tests.amd_synth import SyntheticAmd, Vek, build_report, sign_report

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS broker (made by `issue_tls`): the CA that issued its certificate, the certificate
    chain and key, and an optional client CA (the admin API then needs a client certificate from it)."""

    ca: Path
    certificate: Path
    private_key: Path
    client_ca: Path | None = None

    def config(self) -> str:
        client = f'client_ca = "{self.client_ca}"\n' if self.client_ca else ""
        return f'[tls]\ncertificate = "{self.certificate}"\nprivate_key = "{self.private_key}"\n{client}'

    def client_context(self, cert: Path | None = None) -> ssl.SSLContext:
        """Verifies the broker against `ca`; `cert` (PEM with key) is presented as the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if cert is not None:
            context.load_cert_chain(str(cert))
        return context


def issue_tls(tmp: Path, *, client_ca: trustme.CA | None = None, name: str = "tls") -> TlsFiles:
    """A fresh CA and a server certificate for 127.0.0.1, ::1 and localhost, written under tmp/name."""
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "::1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    (folder / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(folder / "key.pem"))
    client_ca_path = None
    if client_ca is not None:
        client_ca_path = folder / "client-ca.pem"
        client_ca.cert_pem.write_to_path(str(client_ca_path))
    return TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem", client_ca_path)


@dataclass
class Broker:
    url: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    tls: TlsFiles | None = None

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The client context that verifies this broker (None for plain HTTP)."""
        return self.tls.client_context() if self.tls else None

    def admin_token(self, lifetime: int = 300, key_path: Path | None = None, **claims: Any) -> str:
        """A token shaped as kbs.admin_client makes them (aud "KBS", a random jti); `claims` override the
        defaults, and a claim given as None is left out."""
        key = serialization.load_pem_private_key((key_path or self.state_dir / "admin-key.pem").read_bytes(), None)
        now = int(time.time())
        payload: dict[str, Any] = {"sub": "tests", "aud": "KBS", "jti": uuid.uuid4().hex, "iat": now,
                                   "exp": now + lifetime, **claims}
        return jwt.encode({k: v for k, v in payload.items() if v is not None}, key,  # type: ignore[arg-type]
                          algorithm="EdDSA")

    def admin_headers(self, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token(**kwargs)}"}

    def log(self) -> str:
        return self.log_path.read_text()


# Tests hammer one broker from one address: per-client rate limits are off and the per-client
# connection cap is high, unless a test sets them itself.
TEST_LIMITS = {"auth_per_second": "0", "attest_per_second": "0", "resource_per_second": "0",
               "max_connections_per_client": "512"}


def write_config(path: Path, port: int, state_dir: Path, extra: str = "", host: str = "127.0.0.1",
                 workers: int = 1) -> Path:
    """A broker's config; one worker process unless `workers` (or `extra`'s [server] workers) says otherwise,
    as the per-client limits and caps these tests check are per worker."""
    extra = _with_defaults(extra, "limits", {k: v for k, v in TEST_LIMITS.items() if k not in extra})
    extra = _with_defaults(extra, "server", {} if re.search(r"(?m)^workers\s*=", extra) else {"workers": str(workers)})
    dev = "" if "dev_mode" in extra else "dev_mode = true\n"
    path.write_text(f'listen = "{host}:{port}"\nstate_dir = "{state_dir}"\n{dev}{extra}')
    return path


def _with_defaults(extra: str, table: str, defaults: dict[str, str]) -> str:
    """`extra` with these keys added to its [table] (which is made when it has none)."""
    lines = "".join(f"{k} = {v}\n" for k, v in defaults.items())
    if f"[{table}]\n" in extra:
        return extra.replace(f"[{table}]\n", f"[{table}]\n{lines}", 1)
    return f"{extra}\n[{table}]\n{lines}"


@contextmanager
def run_broker(tmp: Path, extra_config: str = "", state_dir: Path | None = None,
               env: dict[str, str] | None = None, tls: TlsFiles | None = None,
               host: str = "127.0.0.1", workers: int = 1) -> Iterator[Broker]:
    """A `kbs serve` subprocess, ready (readyz 200) when yielded, stopped with SIGTERM after.

    With `tls`, the broker serves HTTPS (its `[tls]` section is appended to `extra_config`) and `url` is
    https://; `host` is what it listens on (the URL stays 127.0.0.1); `workers` as in `write_config`."""
    port = free_port()
    state = state_dir or tmp / "state"
    extra = f"{extra_config}\n{tls.config()}" if tls else extra_config
    config = write_config(tmp / f"kbs-{port}.toml", port, state, extra, host, workers)
    log_path = tmp / f"kbs-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kbs.cli", "serve", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **(env or {})})
    broker = Broker(f"{'https' if tls else 'http'}://127.0.0.1:{port}", state, proc, log_path, tls)
    try:
        wait_ready(broker)
        yield broker
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)  # a supervisor waits up to 25 s for its workers to drain
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(broker: Broker, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            raise RuntimeError(f"broker exited with {broker.process.returncode}:\n{broker.log()}")
        try:
            with urllib.request.urlopen(f"{broker.url}/readyz", timeout=1, context=broker.ssl_context) as r:
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
    vmpl: int = 0

    def __post_init__(self) -> None:
        self.vek = self.pki.issue_vek(hwid=self.chip)

    def evidence(self, report_data: bytes, host_data: bytes = b"") -> dict[str, Any]:
        assert self.vek.private_key is not None
        report = sign_report(build_report(chip_id=self.chip, report_data=report_data, measurement=self.measurement,
                                          host_data=host_data, policy=self.policy, vmpl=self.vmpl),
                             self.vek.private_key)
        return report_to_coco(report, [("VCEK", self.vek.der), ("ASK", self.pki.ask_der), ("ARK", self.pki.ark_der)])


def jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1


async def auth(http: aiohttp.ClientSession, url: str, tee: str, version: str = "0.4.0") -> str:
    async with http.post(f"{url}/kbs/v0/auth", json={"version": version, "tee": tee, "extra-params": {}}) as r:
        assert r.status == 200, await r.text()
        nonce: str = (await r.json())["nonce"]
        return nonce


class Guest(Protocol):
    """A synthetic guest of a hardware TEE (SnpGuest, tests.tdx_synth.TdxGuest)."""

    def evidence(self, report_data: bytes, host_data: bytes = b"") -> dict[str, Any]: ...


def attestation(nonce: str, key: TeeKey, tee: str, guest: Guest | None = None, *,
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


async def full_flow(url: str, tee: str, path: str, key_kind: str = "EC-P256", guest: Guest | None = None,
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
