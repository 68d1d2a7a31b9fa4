"""Fetch one resource from a KBS with protocol 0.4.0, as CoCo's kbs_protocol client does.

    POST /kbs/v0/auth    {"version": "0.4.0", "tee", "extra-params"}  -> nonce, session cookie
    POST /kbs/v0/attest  runtime-data {nonce, tee-pubkey} + evidence    -> token
    GET  /kbs/v0/resource/<repo>/<type>/<tag>  (cookie, or Bearer token) -> JWE, opened here

Every attempt uses a fresh ephemeral TEE key and a fresh nonce; the private key never leaves
this process and neither it, the token nor the plaintext is logged.  Retries (exponential
backoff, full jitter) cover what can heal: connection errors, timeouts, 5xx, 429, and 401 (a
refusal may be an expired session or a policy that is about to change, so the whole handshake
runs again, as CoCo's client does).  404 and other 4xx fail at once with the broker's detail, and
so does an https:// broker whose certificate does not verify (check `guest.tls`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from kbs.errors import KbsError
from kbs.evidence.binding import device_runtime_digest, primary_runtime_digest
from kbs.guest import GuestError
from kbs.guest.evidence import EvidenceSource
from kbs.guest.gpu import DEVICE_NONCE_SIZE, DeviceSource
from kbs.keys import jwe
from kbs.resource_uri import ResourceNameError, split_resource

PROTOCOL_VERSION = "0.4.0"
COOKIE = "kbs-session-id"
USER_AGENT = "kbs-guest/0.1"
# primary_runtime_digest is SHA-384, so that is the only algorithm offered (Trustee's default too).
HASH_ALGORITHMS = ("sha384",)
MAX_BODY_BYTES = 8 * 1024 * 1024  # a token with device evidence can be large; anything bigger is not a KBS
MAX_BACKOFF = 30.0
_RETRY_STATUSES = frozenset({401, 429})

log = logging.getLogger("kbs.guest")


class _Transient(Exception):
    """An attempt failed in a way another attempt may not."""

    def __init__(self, error: GuestError) -> None:
        super().__init__(str(error))
        self.error = error


def parse_resource(resource: str) -> tuple[str, str, str]:
    """`kbs:///repo/type/tag` (CoCo's resource URI) or `repo/type/tag`."""
    try:
        return split_resource(resource)
    except ResourceNameError as exc:
        raise GuestError(str(exc), check="guest.usage") from None


def _broker_detail(status: int, body: bytes) -> tuple[str, str | None]:
    """(variant, detail) from Trustee's error body {"type": ".../errors/<Variant>", "detail"}."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("detail"), str):
        variant = str(doc.get("type", "")).rsplit("/", 1)[-1]
        return variant, doc["detail"]
    text = body[:200].decode("utf-8", "replace").strip()
    return "", text or None


def _status_error(step: str, status: int, body: bytes) -> Exception:
    variant, detail = _broker_detail(status, body)
    label = f"HTTP {status}{' ' + variant if variant else ''}"
    message = f"{step}: {label}: {detail}" if detail else f"{step}: {label}"
    if status == 404:
        return GuestError(message, check="guest.not_found", status=status, detail=detail)
    if variant == "PolicyDeny":  # a decision on this TEE's evidence: another attempt gets the same answer
        return GuestError(message, check="guest.denied", status=status, detail=detail)
    if status == 401:
        return _Transient(GuestError(message, check="guest.refused", status=status, detail=detail))
    if status >= 500 or status in _RETRY_STATUSES:
        return _Transient(GuestError(message, check="guest.unavailable", status=status, detail=detail))
    return GuestError(message, check="guest.http", status=status, detail=detail)


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise GuestError(f"{response.url}: answer larger than {MAX_BODY_BYTES} bytes", check="guest.protocol")
    return bytes(body)


class _Exchange:
    """One attempt's HTTP calls, with the session cookie handled explicitly (not by a cookie jar,
    which would drop cookies from IP-address hosts and keep stale ones)."""

    def __init__(self, http: aiohttp.ClientSession, base: str, timeout: float) -> None:
        self.http = http
        self.base = base.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.session_id: str | None = None

    async def call(self, step: str, method: str, path: str, body: Any = None, *, cookie: bool = True,
                   bearer: str | None = None) -> Any:
        url = f"{self.base}{path}"
        headers = {"User-Agent": USER_AGENT}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        cookies = {COOKIE: self.session_id} if cookie and self.session_id else None
        try:
            async with self.http.request(method, url, json=body, headers=headers, cookies=cookies,
                                         timeout=self.timeout) as response:
                raw = await _read_body(response)
                if COOKIE in response.cookies:
                    self.session_id = response.cookies[COOKIE].value
                status = response.status
        except TimeoutError as exc:
            raise _Transient(GuestError(f"{step}: no answer from {url} within {self.timeout.total} s",
                                        check="guest.unavailable")) from exc
        except aiohttp.ClientConnectorCertificateError as exc:  # not retried: a MITM does not go away
            raise GuestError(f"{step}: refusing {self.base}: its TLS certificate does not verify against the "
                             f"trusted CAs ({exc.certificate_error}); the request was not sent",
                             check="guest.tls") from exc
        except aiohttp.ClientError as exc:
            raise _Transient(GuestError(f"{step}: cannot reach {url}: {exc}", check="guest.unavailable")) from exc
        if status >= 400:
            raise _status_error(step, status, raw)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise GuestError(f"{step}: the answer from {url} (HTTP {status}) is not JSON",
                             check="guest.protocol") from exc


def _member(doc: Any, name: str, step: str) -> str:
    value = doc.get(name) if isinstance(doc, Mapping) else None
    if not isinstance(value, str) or not value:
        raise GuestError(f"{step}: the broker's answer has no {name!r} string", check="guest.protocol")
    return value


def _check_hash_algorithm(challenge: Mapping[str, Any]) -> None:
    extra = challenge.get("extra-params")
    selected = extra.get("selected-hash-algorithm") if isinstance(extra, Mapping) else None
    if selected is not None and str(selected).lower() not in HASH_ALGORITHMS:
        raise GuestError(f"auth: the broker selected hash algorithm {selected!r}; this client binds with "
                         f"{', '.join(HASH_ALGORITHMS)} only", check="guest.protocol")


async def _evidence(source: EvidenceSource | DeviceSource, binding: bytes) -> Any:
    """Evidence from a CPU source (over its report data) or a device source (over its device nonce)."""
    try:
        return await asyncio.to_thread(source.evidence, binding)
    except GuestError:
        raise
    except KbsError as exc:
        raise GuestError(f"evidence ({source.tee}): {exc}", check="guest.evidence") from exc


async def _additional_evidence(devices: Sequence[DeviceSource], nonce: str, jwk: Mapping[str, Any]) -> str:
    """The devices' evidence as the JSON text the CPU evidence will bind ("" without devices)."""
    if not devices:
        return ""
    names = [device.tee for device in devices]
    if len(set(names)) != len(names):
        raise GuestError(f"two device sources share a TEE name: {', '.join(names)}", check="guest.usage")
    device_nonce = device_runtime_digest(nonce, jwk)[:DEVICE_NONCE_SIZE]
    return json.dumps({device.tee: await _evidence(device, device_nonce) for device in devices},
                      separators=(",", ":"))


async def _attempt(http: aiohttp.ClientSession, url: str, parts: tuple[str, str, str], source: EvidenceSource,
                   devices: Sequence[DeviceSource], key_kind: str, init_data: str | None, use_bearer: bool,
                   timeout: float) -> bytes:
    exchange = _Exchange(http, url, timeout)
    key = await asyncio.to_thread(jwe.generate_tee_key, key_kind)  # RSA generation takes a while
    challenge = await exchange.call("auth", "POST", "/kbs/v0/auth", {
        "version": PROTOCOL_VERSION, "tee": source.tee,
        "extra-params": {"supported-hash-algorithms": list(HASH_ALGORITHMS)}})
    nonce = _member(challenge, "nonce", "auth")
    _check_hash_algorithm(challenge)
    if exchange.session_id is None:  # /attest needs it even when the resource is fetched with Bearer
        raise GuestError(f"auth: the broker set no {COOKIE} cookie", check="guest.protocol")
    additional = await _additional_evidence(devices, nonce, key.jwk)
    evidence = await _evidence(source, primary_runtime_digest(nonce, key.jwk, additional))
    attested = await exchange.call("attest", "POST", "/kbs/v0/attest", {
        "init-data": None if init_data is None else {"format": "toml", "body": init_data},
        "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": additional}})
    token = _member(attested, "token", "attest")
    log.info("attested as %s%s", source.tee, "".join(f" + {d.tee}" for d in devices))
    path = "/kbs/v0/resource/" + "/".join(parts)
    if use_bearer:
        sealed = await exchange.call("resource", "GET", path, cookie=False, bearer=token)
    else:
        sealed = await exchange.call("resource", "GET", path)
    try:
        return jwe.decrypt(sealed, key.private_key)
    except KbsError as exc:
        raise GuestError(f"resource: the broker's JWE cannot be opened: {exc}", check="guest.decrypt") from exc


def backoff_delay(attempt: int, backoff: float, cap: float = MAX_BACKOFF) -> float:
    """Full jitter: uniform in [0, min(cap, backoff * 2**attempt)] (attempt counts from 0)."""
    return random.uniform(0.0, min(cap, backoff * 2.0 ** min(attempt, 32)))


async def fetch_resource(url: str, resource_path: str, source: EvidenceSource, *, key_kind: str = "EC-P256",
                         init_data: str | None = None, retries: int = 5, backoff: float = 1.0,
                         session: aiohttp.ClientSession | None = None, timeout: float = 60,
                         use_bearer: bool = False, devices: Sequence[DeviceSource] = ()) -> bytes:
    """Attest with `source` to the KBS at `url` and return the plaintext of `resource_path`.

    `resource_path` is `kbs:///repo/type/tag` or `repo/type/tag`.  A failed attempt is retried up
    to `retries` times (so at most retries + 1 attempts); `timeout` bounds each HTTP request.
    `use_bearer` sends the attestation token as `Authorization: Bearer` instead of the cookie.
    `devices` (GPUs) add their evidence as additional evidence, bound into the CPU evidence.
    With `session`, its connector (TLS settings) is used; pass one with a DummyCookieJar so that
    no cookie rides along on the Bearer path.  Raises GuestError.
    """
    parts = parse_resource(resource_path)
    if key_kind not in jwe.TEE_KEY_KINDS:
        raise GuestError(f"key kind must be one of {', '.join(jwe.TEE_KEY_KINDS)}, got {key_kind!r}",
                         check="guest.usage")
    if retries < 0 or backoff < 0 or timeout <= 0:
        raise GuestError("retries and backoff must be >= 0 and timeout > 0", check="guest.usage")
    http = session or aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    try:
        for attempt in range(retries + 1):
            try:
                plaintext = await _attempt(http, url, parts, source, devices, key_kind, init_data, use_bearer,
                                           timeout)
            except _Transient as transient:
                error = transient.error
                if attempt == retries:
                    raise GuestError(f"gave up after {attempt + 1} attempt{'s' if attempt else ''}: {error}",
                                     check=error.check, status=error.status, detail=error.detail) from None
                delay = backoff_delay(attempt, backoff)
                log.warning("attempt %d of %d failed (%s); retrying in %.1f s", attempt + 1, retries + 1, error,
                            delay)
                await asyncio.sleep(delay)
                continue
            log.info("fetched %s (%d bytes)", "/".join(parts), len(plaintext))
            return plaintext
    finally:
        if session is None:
            await http.close()
    raise AssertionError("unreachable")  # the loop returns or raises
