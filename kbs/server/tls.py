"""TLS for `kbs serve`: the server's context from `[tls]`, the rule that plain HTTP stays on
loopback, and the client-certificate check of the admin API.

    [tls]
    certificate = "/etc/kbs/tls/cert.pem"     # PEM: the server certificate, then its intermediates
    private_key = "/etc/kbs/tls/key.pem"      # PEM, unencrypted; or the systemd credential below
    private_key_credential = "kbs-tls-key"    # preferred when $CREDENTIALS_DIRECTORY has it
    client_ca = "/etc/kbs/tls/admin-ca.pem"   # optional: the admin API then needs a client certificate

The server asks every client for a certificate but requires none during the handshake
(CERT_OPTIONAL), so guests connect without one; a client that presents one must present one
that verifies against `client_ca`.  Admin requests are refused unless the connection carried
such a certificate (`require_admin_client_certificate`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kbs.server.config import Config, ConfigError
from kbs.server.errors import ProtocolError

log = logging.getLogger("kbs.server")
# TLS 1.2: forward-secret AEAD suites only (Mozilla's "intermediate"); Python's default also allows CBC.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!aDSS"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) and `localhost`; any other name counts as reachable from outside."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_listen(config: Config) -> None:
    """Plain HTTP only on loopback, unless `insecure_http = true` says the operator means it."""
    host, _ = config.host_port
    if config.tls_certificate is not None or is_loopback(host):
        return
    if not config.insecure_http:
        raise ConfigError(
            f"refusing to serve plain HTTP on {config.listen}: admin tokens, uploaded keys and policies would "
            "travel in clear and guests could not authenticate the broker. Configure [tls] certificate and "
            "private_key, or set insecure_http = true (top level of the --config file) if a proxy in front of "
            "the broker terminates TLS")
    log.warning("insecure_http: serving plain HTTP on a non-loopback address; TLS must be terminated in front",
                extra={"listen": config.listen})


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"[tls] {what} {path}: cannot read it: {exc.strerror or exc}") from exc


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"[tls] {what} {path} is not a PEM certificate file (no BEGIN CERTIFICATE block)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"[tls] {what} {path}: a PEM certificate in it does not parse: {exc}") from exc


def private_key_path(config: Config) -> Path | None:
    """The systemd credential ($CREDENTIALS_DIRECTORY/<private_key_credential>) if present, else `private_key`."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if config.tls_private_key_credential and directory:
        candidate = Path(directory) / config.tls_private_key_credential
        if candidate.exists():
            return candidate
    return config.tls_private_key


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _check_key(key_path: Path, cert_path: Path, leaf: x509.Certificate) -> None:
    data = _read(key_path, "private_key")
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise ConfigError(f"[tls] private_key {key_path} is not a PEM private key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise ConfigError(f"[tls] private_key {key_path} is encrypted; give an unencrypted key and protect it "
                          "with file permissions or a systemd credential (private_key_credential)") from exc
    except ValueError as exc:
        raise ConfigError(f"[tls] private_key {key_path} is not a usable PEM private key: {exc}") from exc
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise ConfigError(f"[tls] private_key {key_path} does not match the certificate {cert_path} "
                          "(the first certificate in the file must be the server's own)")


def server_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The listening socket's TLS context, or None for plain HTTP.  Every failure names the file."""
    cert_path = config.tls_certificate
    if cert_path is None:
        return None
    key_path = private_key_path(config)
    if key_path is None:
        raise ConfigError(f"[tls] certificate {cert_path} is set but no private key: set [tls] private_key, or "
                          f"pass the systemd credential {config.tls_private_key_credential!r}")
    chain = _certificates(cert_path, "certificate")
    _check_key(key_path, cert_path, chain[0])
    if chain[0].not_valid_after_utc < datetime.now(UTC):
        log.warning("the TLS certificate has expired; clients will refuse it",
                    extra={"certificate": str(cert_path), "not_after": chain[0].not_valid_after_utc.isoformat()})
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # server side; sane ciphers and options
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 is negotiated whenever the client has it
    context.set_ciphers(TLS12_CIPHERS)  # TLS 1.3 suites are all AEAD and stay as OpenSSL has them
    try:
        context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[tls] certificate {cert_path} with private_key {key_path}: OpenSSL refuses them: "
                          f"{exc}") from exc
    if config.tls_client_ca is not None:
        _certificates(config.tls_client_ca, "client_ca")
        try:
            context.load_verify_locations(cafile=str(config.tls_client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[tls] client_ca {config.tls_client_ca}: OpenSSL refuses it: {exc}") from exc
        context.verify_mode = ssl.CERT_OPTIONAL  # guests need no certificate; the admin API checks per request
    return context


def client_certificate(request: web.Request) -> dict[str, Any] | None:
    """The peer's certificate as `ssl` decodes it, present only when it verified against `client_ca`."""
    ssl_object = request.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    peer = ssl_object.getpeercert()
    return dict(peer) if peer else None


def client_subject(peer: dict[str, Any]) -> str:
    """`CN=ops,O=Example` from the decoded certificate, for the log."""
    parts = [f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn]
    return ",".join(parts)


def require_admin_client_certificate(config: Config, request: web.Request) -> str | None:
    """With `[tls] client_ca`, the admin API needs a verified client certificate; returns its subject."""
    if config.tls_client_ca is None or config.tls_certificate is None:
        return None
    peer = client_certificate(request)
    if peer is None:
        raise ProtocolError("AdminAuthAccess", "the admin API needs a TLS client certificate issued by this "
                            "broker's client CA ([tls] client_ca); this connection presented none "
                            "(kbs: --client-cert and --client-key)", reason="admin_client_cert")
    return client_subject(peer)
