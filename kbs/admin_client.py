"""A client of the broker's admin API: one method per endpoint.

Every request carries a fresh, short-lived EdDSA JWT signed with the operator's Ed25519 key, with a
random `jti` (the broker accepts each token once) and `aud` (default "KBS", Trustee's).  https://
URLs are verified against the system's trust store or `ca_cert`; `client_cert`/`client_key` answer
a broker whose admin API needs mutual TLS.  There is no way to skip verification.  The broker does
every check; this module only shapes requests.  Key material is sent, never logged.
The `kbs` verbs that use it are in `kbs.admin_cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import secrets
import ssl
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import quote, urlsplit

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kbs.errors import KbsError
from kbs.resource_uri import ResourceNameError, split_resource

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_ADMIN_KEY = ".kbs-state/admin-key.pem"
TOKEN_LIFETIME = 120
DEFAULT_AUDIENCE = "KBS"
# The broker checks iat with no leeway: backdate it so a client clock slightly ahead is not refused.
CLOCK_SKEW = 30

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class AdminError(KbsError):
    """The broker answered non-2xx (check admin.<status>), or could not be reached (admin.unreachable)."""

    def __init__(self, detail: str, *, status: int | None = None, variant: str = "") -> None:
        super().__init__(detail, check=f"admin.{status}" if status is not None else "admin.unreachable")
        self.status = status
        self.variant = variant  # Trustee error variant, e.g. ParsePolicyError

    @property
    def detail(self) -> str:
        return str(self)


class UsageProblem(Exception):
    """Bad arguments or an unreadable local file (admin key, key material, policy): exit 2."""


def _load_key(path: Path) -> Ed25519PrivateKey:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read admin key {path}: {exc.strerror} (use --admin-key or KBS_ADMIN_KEY)") from exc
    return ed25519_private_key(pem, f"admin key {path}")


def ed25519_private_key(pem: bytes, what: str) -> Ed25519PrivateKey:
    """An unencrypted PEM Ed25519 private key (an admin's or an owner's); UsageProblem naming `what` otherwise."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageProblem(f"{what} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageProblem(f"{what} is not an Ed25519 private key")
    return key


def _seg(text: str) -> str:
    return quote(text, safe="")


def resource_path(text: str) -> str:
    """'repo/type/tag' or 'kbs:///repo/type/tag' (as kbs-guest takes it) -> URL path part."""
    try:
        parts = split_resource(text)
    except ResourceNameError as exc:
        raise UsageProblem(str(exc)) from None
    return "/".join(_seg(p) for p in parts)


def _loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(url: str, ca_cert: str | Path | None = None, client_cert: str | Path | None = None,
                client_key: str | Path | None = None) -> ssl.SSLContext | None:
    """The verifying client context for an https:// URL (system trust, or `ca_cert` only); None for http://."""
    if not url.startswith("https://"):
        if ca_cert or client_cert or client_key:
            raise UsageProblem(f"--ca-cert, --client-cert and --client-key need an https:// broker URL, not {url!r}")
        return None
    if client_key and not client_cert:
        raise UsageProblem("--client-key goes with --client-cert")
    try:
        context = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
    except (OSError, ssl.SSLError) as exc:
        raise UsageProblem(f"cannot load CA certificates from {ca_cert} (--ca-cert or KBS_CA_CERT): "
                           f"{getattr(exc, 'strerror', None) or exc}") from exc
    if client_cert:
        try:
            context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        except (OSError, ssl.SSLError) as exc:
            raise UsageProblem(f"cannot load the client certificate {client_cert} with key "
                               f"{client_key or client_cert} (--client-cert, --client-key): "
                               f"{getattr(exc, 'strerror', None) or exc}") from exc
    return context


class AdminClient:
    """Synchronous calls to the admin API; one aiohttp session per call (a CLI makes one or two)."""

    def __init__(self, url: str, key_path: str | Path, timeout: float = 30, *, ca_cert: str | Path | None = None,
                 client_cert: str | Path | None = None, client_key: str | Path | None = None,
                 audience: str = DEFAULT_AUDIENCE) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageProblem(f"{url!r} is not a broker URL (want http(s)://HOST:PORT)")
        self.url = url.rstrip("/")
        self._ssl = tls_context(self.url, ca_cert, client_cert, client_key)
        self._key = _load_key(Path(key_path))
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.audience = audience
        if self._ssl is None and not _loopback(self.url):
            print(f"kbs: warning: {self.url} is plain HTTP: the admin token and any key or policy sent travel "
                  "unencrypted and the broker is not authenticated; use https://", file=sys.stderr)

    def token(self) -> str:
        """A fresh token per request: the broker refuses a second use of the same `jti`."""
        now = int(time.time())
        return jwt.encode({"sub": "kbs-cli", "aud": self.audience, "jti": secrets.token_urlsafe(18),
                           "iat": now - CLOCK_SKEW, "exp": now + TOKEN_LIFETIME}, self._key, algorithm="EdDSA")

    def request(self, method: str, path: str, *, body: Any = None, data: bytes | None = None,
                params: Mapping[str, str] | None = None, content_type: str = "application/octet-stream") -> Any:
        """The decoded JSON answer (None when empty); AdminError on any non-2xx answer or transport failure."""
        return asyncio.run(self._request(method, path, body, data, params, content_type))

    async def _request(self, method: str, path: str, body: Any, data: bytes | None,
                       params: Mapping[str, str] | None, content_type: str) -> Any:
        headers = {"Authorization": f"Bearer {self.token()}"}
        if data is not None:
            headers["Content-Type"] = content_type
        try:
            connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
            async with aiohttp.ClientSession(timeout=self._timeout, connector=connector) as http, \
                    http.request(method, self.url + path, json=body, data=data, params=params,
                                 headers=headers) as r:
                text = await r.text(errors="replace")
                status = r.status
        except aiohttp.InvalidURL as exc:
            raise UsageProblem(f"{self.url!r} is not a broker URL (want http(s)://HOST:PORT)") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise AdminError(f"the broker at {self.url} is not who it claims to be: its TLS certificate does not "
                             f"verify ({exc.certificate_error}); give its CA with --ca-cert or KBS_CA_CERT") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AdminError(f"cannot reach the broker at {self.url}: {str(exc) or type(exc).__name__}") from exc
        if not 200 <= status < 300:
            raise _refusal(status, text)
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError as exc:
            raise AdminError(f"the broker at {self.url} answered {status} with non-JSON", status=status) from exc

    # -- keys ------------------------------------------------------------------------------

    def list_keys(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/kbs/v0/admin/keys"))

    def put_key(self, resource: str, value: bytes, policy_id: str | None = None) -> dict[str, Any]:
        params = {"policy": policy_id} if policy_id else None
        return dict(self.request("POST", f"/kbs/v0/resource/{resource_path(resource)}", data=value, params=params))

    def generate_key(self, resource: str, size: int | None = None, policy_id: str | None = None) -> dict[str, Any]:
        params = {k: str(v) for k, v in (("size", size), ("policy", policy_id)) if v is not None}
        return dict(self.request("POST", f"/kbs/v0/admin/keys/{resource_path(resource)}/generate", params=params))

    def rotate_key(self, resource: str, size: int | None = None) -> dict[str, Any]:
        """A new random version of an existing key; AdminError (404) when there is no such key."""
        params = {"size": str(size)} if size is not None else None
        return dict(self.request("POST", f"/kbs/v0/admin/keys/{resource_path(resource)}/rotate", params=params))

    def set_key_state(self, resource: str, enabled: bool, version: int | None = None) -> dict[str, Any]:
        verb = "enable" if enabled else "disable"
        params = {"version": str(version)} if version is not None else None
        return dict(self.request("POST", f"/kbs/v0/admin/keys/{resource_path(resource)}/{verb}", params=params))

    def delete_key(self, resource: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/kbs/v0/resource/{resource_path(resource)}"))

    def bind_key(self, resource: str, policy_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/kbs/v0/admin/keys/{resource_path(resource)}/policy",
                                 body={"policy_id": policy_id}))

    # -- policies --------------------------------------------------------------------------

    def list_policies(self) -> list[str]:
        return list(self.request("GET", "/kbs/v0/resource-policy"))

    def put_policy(self, policy_id: str, text: str, immutable: bool = False, strict: bool = False) -> dict[str, Any]:
        params = {name: "true" for name, on in (("immutable", immutable), ("strict", strict)) if on} or None
        return dict(self.request("PUT", f"/kbs/v0/admin/policies/{_seg(policy_id)}", data=text.encode(),
                                 params=params, content_type="text/plain; charset=utf-8"))

    def policy_history(self, policy_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/kbs/v0/admin/policies/{_seg(policy_id)}"))

    def delete_policy(self, policy_id: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/kbs/v0/admin/policies/{_seg(policy_id)}"))

    def make_immutable(self, policy_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/kbs/v0/admin/policies/{_seg(policy_id)}/immutable"))

    def dry_run(self, policy_id: str, attestation_id: str, resource: str | None = None) -> dict[str, Any]:
        body = {"attestation_id": attestation_id, **({"resource": resource} if resource else {})}
        return dict(self.request("POST", f"/kbs/v0/admin/policies/{_seg(policy_id)}/dry-run", body=body))

    def set_resource_policy(self, text: str, strict: bool = False) -> dict[str, Any]:
        encoded = base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
        return dict(self.request("POST", "/kbs/v0/resource-policy", body={"policy": encoded},
                                 params={"strict": "true"} if strict else None))

    # -- reference values, audit -----------------------------------------------------------

    def list_refs(self) -> dict[str, Any]:
        return dict(self.request("GET", "/kbs/v0/admin/refs"))

    def put_refs(self, name: str, body: Any) -> dict[str, Any]:
        return dict(self.request("PUT", f"/kbs/v0/admin/refs/{_seg(name)}", body=body))

    def edit_refs(self, name: str, verb: str, values: list[Any]) -> dict[str, Any]:
        """`verb` "add" or "remove" `values` in one step on the broker (no lost update between admins)."""
        return dict(self.request("POST", f"/kbs/v0/admin/refs/{_seg(name)}/{verb}", body={"values": values}))

    def delete_refs(self, name: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/kbs/v0/admin/refs/{_seg(name)}"))

    def release_log(self, after: int = 0, limit: int = 100, chain: str = "release",
                    filters: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """`filters`: resource, decision, reason, tee (exact), since, until (RFC 3339, inclusive)."""
        params = {"after": str(after), "limit": str(limit), "chain": chain, **(filters or {})}
        return list(self.request("GET", "/kbs/v0/admin/release-log", params=params))

    def status(self) -> dict[str, Any]:
        return dict(self.request("GET", "/kbs/v0/admin/status"))

    def verify_log(self) -> dict[str, Any]:
        return dict(self.request("GET", "/kbs/v0/admin/release-log/verify"))

    def attestation(self, attestation_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/kbs/v0/admin/attestations/{_seg(attestation_id)}"))


def _refusal(status: int, text: str) -> AdminError:
    """Trustee's error body {"type": ".../errors/<Variant>", "detail": ...}, or whatever text came back."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("detail"), str):
        return AdminError(doc["detail"], status=status, variant=str(doc.get("type", "")).rsplit("/", 1)[-1])
    return AdminError(f"HTTP {status}: {text.strip()[:200] or 'no detail'}", status=status)
