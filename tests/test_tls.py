"""HTTPS, mutual TLS for the admin API, the loopback rule, and the admin token rules, against real
`kbs serve` processes on loopback (certificates from trustme)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from kbs.admin_client import AdminClient, AdminError
from kbs.cli import _parser as kbs_parser
from kbs.guest import cli as guest_cli
from kbs.server.config import Config, ConfigError
from kbs.server.tls import server_ssl_context
from tests.broker import REPO, Broker, TlsFiles, free_port, issue_tls, run_broker

SECRET = b"tls-sample-key:" + bytes(range(32))
SAMPLE_POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
    {"claim": "sample.svn", "equals": "1"}]}]})
TEN_YEARS = 10 * 365 * 24 * 3600


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def tls(tmp: Path) -> TlsFiles:
    return issue_tls(tmp)


def provision(broker: Broker) -> None:
    """A sample-TEE policy and key, through the project's admin client over HTTPS."""
    assert broker.tls is not None
    client = AdminClient(broker.url, broker.state_dir / "admin-key.pem", ca_cert=broker.tls.ca)
    client.put_policy("sample-ok", SAMPLE_POLICY)
    client.put_key("lab/key/sample", SECRET, "sample-ok")


@pytest.fixture(scope="module")
def broker(tmp: Path, tls: TlsFiles) -> Iterator[Broker]:
    with run_broker(tmp, tls=tls, env={"KBS_LOG_LEVEL": "WARNING"}) as b:
        provision(b)
        yield b


async def call(broker: Broker, method: str, path: str, token: str | None = None, data: bytes | None = None,
               ssl_context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    """One request over HTTPS (verified against the broker's CA unless `ssl_context` says otherwise)."""
    assert broker.tls is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(ssl=ssl_context or broker.tls.client_context())
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.request(method, f"{broker.url}{path}", headers=headers, data=data) as r:
        return r.status, await r.json(content_type=None)


def admin_get(broker: Broker, token: str, ssl_context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    return asyncio.run(call(broker, "GET", "/kbs/v0/admin/keys", token, ssl_context=ssl_context))


def guest(url: str, *extra: str) -> list[str]:
    return ["get-resource", "kbs:///lab/key/sample", "--url", url, "--tee", "sample", "--retries", "3",
            "--backoff", "5", *extra]


# -- HTTPS for guests ---------------------------------------------------------------------------------

def test_startup_line_says_https(broker: Broker) -> None:
    assert re.search(r"kbs: listening on https://127\.0\.0\.1:\d+", broker.log()), broker.log()


def test_guest_gets_key_over_https_with_ca_cert(broker: Broker, tls: TlsFiles, tmp_path: Path,
                                                capsysbinary: pytest.CaptureFixture[bytes],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "key"
    assert guest_cli.main(guest(broker.url, "--ca-cert", str(tls.ca), "--output", str(out))) == 0, \
        capsysbinary.readouterr().err
    assert out.read_bytes() == SECRET
    monkeypatch.setenv("KBS_CA_CERT", str(tls.ca))  # what kbs-guest@.service passes from its config file
    assert guest_cli.main(guest(broker.url, "--bearer")) == 0
    assert capsysbinary.readouterr().out == SECRET


def test_guest_with_wrong_ca_gets_nothing(broker: Broker, tmp: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    stranger = issue_tls(tmp, name="stranger")  # a CA the broker's certificate does not come from
    out = tmp_path / "key"
    for extra in (["--ca-cert", str(stranger.ca)], []):  # a wrong CA, and the system store (no test CA in it)
        started = time.monotonic()
        code = guest_cli.main(guest(broker.url, *extra, "--output", str(out)))
        err = capsys.readouterr().err
        assert code == 1 and not out.exists()
        assert err.startswith("kbs-guest: guest.tls:") and "certificate" in err, err
        assert time.monotonic() - started < 5  # refused at once, not retried with backoff


@contextmanager
def impostor(files: TlsFiles) -> Iterator[tuple[str, list[str]]]:
    """A man in the middle: TLS with a certificate for 127.0.0.1 from his own CA; answers anything."""
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"nonce": "AAAA", "token": "x", "protected": "x"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(files.certificate), str(files.private_key))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}", seen
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_guest_refuses_a_man_in_the_middle(tls: TlsFiles, tmp: Path, tmp_path: Path,
                                           capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    with impostor(issue_tls(tmp, name="mitm")) as (url, seen):
        code = guest_cli.main(guest(url, "--ca-cert", str(tls.ca), "--output", str(tmp_path / "key")))
        captured = capsysbinary.readouterr()
    assert code == 1 and captured.out == b"" and not (tmp_path / "key").exists()
    assert b"guest.tls" in captured.err and seen == []  # not even /auth reached him


def test_plain_http_to_the_tls_port_fails(broker: Broker) -> None:
    port = int(broker.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        try:
            while chunk := s.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert b"HTTP/1.1" not in answer and b"ok" not in answer

    async def plain() -> int:
        async with aiohttp.ClientSession() as http, http.get(broker.url.replace("https:", "http:") + "/healthz") as r:
            return r.status
    with pytest.raises(aiohttp.ClientError):
        asyncio.run(plain())
    assert broker.process.poll() is None  # still serving


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_versions(broker: Broker, tls: TlsFiles) -> None:
    port = int(broker.url.rsplit(":", 1)[1])
    context = tls.client_context()
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        assert s.version() == "TLSv1.3"
    old = tls.client_context()
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port)) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="127.0.0.1")
    tls12 = tls.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            tls12.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        suite = s.cipher()
        assert s.version() == "TLSv1.2" and suite is not None and ("GCM" in suite[0] or "CHACHA20" in suite[0])
    tls12.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256")  # CBC: refused
    with socket.create_connection(("127.0.0.1", port)) as raw, pytest.raises(ssl.SSLError):
        tls12.wrap_socket(raw, server_hostname="127.0.0.1")


# -- the admin CLI over HTTPS -------------------------------------------------------------------------

def kbs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    args = kbs_parser().parse_args(list(argv))
    code: int = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_admin_cli_over_https(broker: Broker, tls: TlsFiles, tmp: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    key = str(broker.state_dir / "admin-key.pem")
    code, out, err = kbs(capsys, "key", "create", "ops/key/https", "--generate", "--url", broker.url,
                         "--admin-key", key, "--ca-cert", str(tls.ca))
    assert code == 0 and "ops/key/https: version 1 stored" in out, err
    monkeypatch.setenv("KBS_CA_CERT", str(tls.ca))
    code, out, _ = kbs(capsys, "key", "list", "--url", broker.url, "--admin-key", key)
    assert code == 0 and "ops/key/https" in out and "lab/key/sample" in out
    monkeypatch.delenv("KBS_CA_CERT")
    for extra in (["--ca-cert", str(issue_tls(tmp, name="other").ca)], []):
        code, out, err = kbs(capsys, "key", "list", "--url", broker.url, "--admin-key", key, *extra)
        assert code == 1 and out == "" and "is not who it claims to be" in err and "--ca-cert" in err, err
    code, _, err = kbs(capsys, "key", "list", "--url", broker.url, "--admin-key", key, "--ca-cert", key)
    assert code == 2 and "cannot load CA certificates" in err and key in err


# -- mutual TLS for the admin API ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA(organization_name="kbs admins")


@pytest.fixture(scope="module")
def mtls_broker(tmp: Path, client_ca: trustme.CA) -> Iterator[Broker]:
    files = issue_tls(tmp, client_ca=client_ca, name="mtls")
    with run_broker(tmp, tls=files, state_dir=tmp / "mtls-state", env={"KBS_LOG_LEVEL": "WARNING"}) as b:
        yield b


def client_files(ca: trustme.CA, folder: Path) -> tuple[Path, Path]:
    leaf = ca.issue_cert("ops@example.com", common_name="ops")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "ops.pem", folder / "ops.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def test_admin_api_needs_a_client_certificate(mtls_broker: Broker, client_ca: trustme.CA, tmp_path: Path) -> None:
    files = mtls_broker.tls
    assert files is not None and files.client_ca is not None
    status, body = admin_get(mtls_broker, mtls_broker.admin_token())
    assert status == 401 and "TLS client certificate" in body["detail"] and "client_ca" in body["detail"]
    cert, key = client_files(client_ca, tmp_path)
    (tmp_path / "both.pem").write_bytes(key.read_bytes() + cert.read_bytes())
    status, body = admin_get(mtls_broker, mtls_broker.admin_token(), files.client_context(tmp_path / "both.pem"))
    assert status == 200 and isinstance(body, list)
    # The client certificate does not replace the token.
    status, body = admin_get(mtls_broker, "junk", files.client_context(tmp_path / "both.pem"))
    assert status == 401
    # A certificate from another CA does not get through the handshake.
    stranger, stranger_key = client_files(trustme.CA(), tmp_path / "stranger")
    (tmp_path / "stranger.pem").write_bytes(stranger_key.read_bytes() + stranger.read_bytes())
    with pytest.raises(aiohttp.ClientError):
        admin_get(mtls_broker, mtls_broker.admin_token(), files.client_context(tmp_path / "stranger.pem"))


def test_admin_cli_with_client_certificate_and_guest_without(
        mtls_broker: Broker, client_ca: trustme.CA, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = mtls_broker.tls
    assert files is not None
    cert, key = client_files(client_ca, tmp_path)
    common = ["--url", mtls_broker.url, "--admin-key", str(mtls_broker.state_dir / "admin-key.pem"),
              "--ca-cert", str(files.ca)]
    code, _, err = kbs(capsys, "key", "list", *common)
    assert code == 1 and "kbs: refused: the admin API needs a TLS client certificate" in err, err
    policy = tmp_path / "p.json"
    policy.write_text(SAMPLE_POLICY)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    mtls = ["--client-cert", str(cert), "--client-key", str(key)]
    assert kbs(capsys, "policy", "put", "sample-ok", str(policy), *common, *mtls)[0] == 0
    code, _, err = kbs(capsys, "key", "create", "lab/key/sample", "--from-file", str(secret), "--policy",
                       "sample-ok", *common, *mtls)
    assert code == 0, err
    code, _, err = kbs(capsys, "key", "list", *common, "--client-key", str(key))
    assert code == 2 and "--client-key goes with --client-cert" in err
    out = tmp_path / "key"  # guests need no client certificate
    assert guest_cli.main(guest(mtls_broker.url, "--ca-cert", str(files.ca), "--output", str(out))) == 0
    assert out.read_bytes() == SECRET


# -- plain HTTP only on loopback ----------------------------------------------------------------------

def serve_fails(tmp_path: Path, config: str) -> str:
    """Start `kbs serve` on a configuration that must be refused: its stderr (the process must exit)."""
    path = tmp_path / "kbs.toml"
    path.write_text(config)
    done = subprocess.run([sys.executable, "-m", "kbs.cli", "serve", "--config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0, done.stderr
    return done.stderr


def test_non_loopback_plain_http_refused_at_start(tmp_path: Path) -> None:
    port = free_port()
    err = serve_fails(tmp_path, f'listen = "0.0.0.0:{port}"\nstate_dir = "{tmp_path / "s"}"\ndev_mode = true\n')
    assert "refusing to serve plain HTTP on 0.0.0.0:" in err and "insecure_http = true" in err, err
    assert "[tls] certificate" in err
    assert not (tmp_path / "s" / "kek").exists()  # refused before anything was generated


def test_non_loopback_plain_http_with_insecure_http(tmp_path: Path) -> None:
    with run_broker(tmp_path, "insecure_http = true\n", host="0.0.0.0") as b:
        assert b.url.startswith("http://") and "insecure_http" in b.log()
        assert re.search(r"kbs: listening on http://0\.0\.0\.0:\d+", b.log())


def test_bad_tls_files_named_at_start(tmp_path: Path, tls: TlsFiles, tmp: Path) -> None:
    other = issue_tls(tmp, name="mismatch")
    base = f'listen = "127.0.0.1:{free_port()}"\nstate_dir = "{tmp_path / "s"}"\ndev_mode = true\n[tls]\n'
    err = serve_fails(tmp_path, base + f'certificate = "{tls.certificate}"\nprivate_key = "{other.private_key}"\n')
    assert f"private_key {other.private_key} does not match the certificate {tls.certificate}" in err, err
    missing = tmp_path / "absent.pem"
    err = serve_fails(tmp_path, base + f'certificate = "{missing}"\nprivate_key = "{tls.private_key}"\n')
    assert f"[tls] certificate {missing}: cannot read it" in err, err


@pytest.mark.parametrize(("case", "message"), [
    ("cert-missing", "certificate {missing}: cannot read it"),
    ("cert-not-pem", "certificate {junk} is not a PEM certificate"),
    ("key-not-pem", "private_key {junk} is not a PEM private key"),
    ("key-encrypted", "private_key {encrypted} is encrypted"),
    ("key-mismatch", "private_key {other_key} does not match the certificate {cert}"),
    ("client-ca-not-pem", "client_ca {junk} is not a PEM certificate"),
    ("no-key", "no private key"),
])
def test_tls_file_errors_name_the_file(case: str, message: str, tls: TlsFiles, tmp: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    other = issue_tls(tmp, name="other-key")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a pem file\n")
    encrypted = tmp_path / "encrypted.pem"
    key = serialization.load_pem_private_key(tls.private_key.read_bytes(), None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pw")))
    names = {"missing": tmp_path / "missing.pem", "junk": junk, "encrypted": encrypted,
             "other_key": other.private_key, "cert": tls.certificate}
    cert, key_path, client_ca = tls.certificate, tls.private_key, None
    match case:
        case "cert-missing":
            cert = names["missing"]
        case "cert-not-pem":
            cert = junk
        case "key-not-pem":
            key_path = junk
        case "key-encrypted":
            key_path = encrypted
        case "key-mismatch":
            key_path = other.private_key
        case "client-ca-not-pem":
            client_ca = junk
    config = Config(tls_certificate=cert, tls_private_key=None if case == "no-key" else key_path,
                    tls_client_ca=client_ca)
    with pytest.raises(ConfigError) as info:
        server_ssl_context(config)
    assert message.format(**names) in str(info.value)


def test_private_key_from_systemd_credential(tls: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kbs-tls-key").write_bytes(tls.private_key.read_bytes())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    context = server_ssl_context(Config(tls_certificate=tls.certificate))
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    with_ca = server_ssl_context(Config(tls_certificate=tls.certificate, tls_client_ca=tls.ca))
    assert with_ca is not None and with_ca.verify_mode == ssl.CERT_OPTIONAL


# -- admin tokens -------------------------------------------------------------------------------------

def test_token_lifetime_bounded(broker: Broker) -> None:
    now = int(time.time())
    status, body = admin_get(broker, broker.admin_token(lifetime=TEN_YEARS))
    assert status == 401 and "at most 900 s" in body["detail"] and "max_token_lifetime_seconds" in body["detail"]
    status, body = admin_get(broker, broker.admin_token(iat=now - 3600, exp=now + 60))  # long-lived, nearly over
    assert status == 401 and "lives 3660 s" in body["detail"]
    assert admin_get(broker, broker.admin_token(lifetime=900))[0] == 200
    status, body = admin_get(broker, broker.admin_token(exp=None))
    assert status == 401 and "exp" in body["detail"]


def test_token_audience(broker: Broker) -> None:
    status, body = admin_get(broker, broker.admin_token(aud="other-kbs"))
    assert status == 401 and "audience 'other-kbs'" in body["detail"] and "'KBS'" in body["detail"]
    assert admin_get(broker, broker.admin_token(aud=["other-kbs"]))[0] == 401
    assert admin_get(broker, broker.admin_token(aud=["KBS"]))[0] == 200
    assert admin_get(broker, broker.admin_token(aud=["other-kbs", "KBS"]))[0] == 200
    assert admin_get(broker, broker.admin_token(aud=None))[0] == 200  # legacy kbs-client: no aud
    trustee = broker.admin_token(iss="TrusteeInDocker", sub="admin", aud=["KBS"], role="admin")
    assert admin_get(broker, trustee)[0] == 200


def test_token_jti_single_use_and_required(broker: Broker) -> None:
    token = broker.admin_token()
    assert admin_get(broker, token)[0] == 200
    status, body = admin_get(broker, token)
    assert status == 401 and "already used" in body["detail"]
    status, body = admin_get(broker, broker.admin_token(jti=None))
    assert status == 401 and "no jti" in body["detail"] and "require_jti" in body["detail"]
    assert admin_get(broker, broker.admin_token(jti=""))[0] == 401
    # A write refused for its token (replay) changes nothing.
    write = broker.admin_token()
    assert asyncio.run(call(broker, "POST", "/kbs/v0/resource/ops/key/once", write, b"k" * 32))[0] == 200
    status, _ = asyncio.run(call(broker, "POST", "/kbs/v0/resource/ops/key/once", write, b"x" * 32))
    assert status == 401
    keys = admin_get(broker, broker.admin_token())[1]
    assert [len(k["versions"]) for k in keys if k["path"] == "ops/key/once"] == [1]


def test_project_client_tokens_pass_every_rule(broker: Broker, tls: TlsFiles) -> None:
    client = AdminClient(broker.url, broker.state_dir / "admin-key.pem", ca_cert=tls.ca)
    for _ in range(3):  # a fresh jti each time
        assert isinstance(client.list_keys(), list)
    wrong = AdminClient(broker.url, broker.state_dir / "admin-key.pem", ca_cert=tls.ca, audience="elsewhere")
    with pytest.raises(AdminError, match="audience 'elsewhere'"):
        wrong.list_keys()


def test_replay_refused_across_replicas(broker: Broker, tmp: Path, tls: TlsFiles) -> None:
    with run_broker(tmp, tls=tls, state_dir=broker.state_dir, env={"KBS_LOG_LEVEL": "WARNING"}) as other:
        first, second = broker.admin_token(), broker.admin_token()
        assert admin_get(broker, first)[0] == 200
        status, body = admin_get(other, first)
        assert status == 401 and "already used" in body["detail"]
        assert admin_get(other, second)[0] == 200
        assert admin_get(broker, second)[0] == 401


def test_legacy_tokens_when_configured(tmp_path: Path, tls: TlsFiles) -> None:
    """Legacy kbs-client tokens (iat, exp = now + 2 h, no jti, no aud) need both relaxations."""
    extra = "[admin]\nmax_token_lifetime_seconds = 7200\nrequire_jti = false\naudience = \"kbs-lab\"\n"
    with run_broker(tmp_path, extra, tls=tls, env={"KBS_LOG_LEVEL": "WARNING"}) as b:
        legacy = b.admin_token(lifetime=7200, jti=None, aud=None, sub=None)
        assert admin_get(b, legacy)[0] == 200 and admin_get(b, legacy)[0] == 200  # no jti: no replay check
        assert admin_get(b, b.admin_token(lifetime=7201, jti=None, aud=None))[0] == 401
        assert admin_get(b, b.admin_token(aud="KBS"))[0] == 401
        with_jti = b.admin_token(aud="kbs-lab")
        assert admin_get(b, with_jti)[0] == 200 and admin_get(b, with_jti)[0] == 401  # a jti is still single use

