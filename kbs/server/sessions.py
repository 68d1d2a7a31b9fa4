"""Sessions between /auth and /attest live in their cookie, signed by the broker: /auth writes nothing.

A guest's session is its id, TEE, nonce and lifetime.  /auth puts them in the `kbs-session-id` cookie
with an HMAC-SHA256 under a key derived from the KEK (so every worker and replica opens every other's
cookies, and nobody without the KEK can make one); /attest checks the MAC and the expiry, verifies the
evidence against the cookie's nonce, and then stores the session as attested: that insert is what makes
the nonce single-use (exactly one insert of a session id wins, across workers and replicas).  The
resource step finds the attested session by its id.

Nothing secret is in the cookie (the guest was told the nonce); what the MAC protects is that the broker
chose the nonce and the expiry.  A stateless /auth also means a flood of /auth requests costs no writes.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256

from kbs.cache import ByteBoundedCache
from kbs.keys.kek import Kek
from kbs.server.ids import time_ordered_id
from kbs.store.base import Session

COOKIE_KEY_PURPOSE = "session-cookie"
_VERSION = "v1"
# v1.<session id>.<tee>.<created>.<expires>.<nonce, hex>.<mac>: every part from a closed alphabet without
# the characters cookies treat specially, so a cookie that does not match is never decoded or looked up.
_TEE = r"[a-z][a-z0-9_-]{0,31}"  # verifier names (kbs.evidence.registry)
_FORM = re.compile(rf"v1\.([0-9a-f]{{32}})\.({_TEE})\.([0-9]{{1,12}})\.([0-9]{{1,12}})\."
                   r"([0-9a-f]{64})\.([A-Za-z0-9_-]{43})")
_TEE_NAME = re.compile(_TEE)
MAX_COOKIE_CHARS = 256
ISSUED_CACHE_BYTES = 1 << 17  # cookies sealed by this worker, remembered until their /attest (~150)
ISSUED_ENTRY_COST = 896  # the cookie string, the Session with its strings and datetimes, the cache's entry
USED_CACHE_BYTES = 1 << 16  # sessions whose nonce this worker found used by another (~400)
USED_ENTRY_COST = 160  # a session id string and the cache's entry
SESSION_OVERHEAD = 1024  # a stored Session's object, its other strings and the cache's entry, beyond its token,
# the cookie (charged at its longest) and the identity


class SessionCookies:
    def __init__(self, key: bytes, lifetime: timedelta, issued_bytes: int = ISSUED_CACHE_BYTES) -> None:
        self._key = key
        self.lifetime = lifetime
        # Cookies this object sealed, with their session: the guest's /attest comes on the connection of its
        # /auth, so to this worker, and opening the very string sealed here needs no second MAC (the MAC is a
        # function of the string).  Bounded by bytes; a miss opens the cookie as any other.
        self._issued: ByteBoundedCache[str, Session] = ByteBoundedCache(issued_bytes, lambda _: ISSUED_ENTRY_COST)

    @classmethod
    def from_kek(cls, kek: Kek, lifetime_seconds: int) -> SessionCookies:
        return cls(kek.derive(COOKIE_KEY_PURPOSE), timedelta(seconds=lifetime_seconds))

    def new_session(self, tee: str, now: datetime) -> Session:
        """A fresh session: a time-ordered id (kbs.server.ids) and a random 32-byte nonce, valid for at least the
        lifetime from `now`.

        The cookie carries whole seconds: the creation is rounded down and the expiry up, so a short lifetime
        is never cut to a fraction of itself by where in its second the guest happened to call /auth."""
        if not _TEE_NAME.fullmatch(tee):  # a cookie that could never open again
            raise ValueError(f"TEE name {tee!r} cannot be carried in a session cookie")
        created = now.replace(microsecond=0)
        expires = created + self.lifetime + (timedelta(seconds=1) if now.microsecond else timedelta())
        return Session(session_id=time_ordered_id(), tee=tee,
                       nonce=base64.b64encode(secrets.token_bytes(32)).decode(), created_at=created,
                       expires_at=expires, state="authed")

    def seal(self, session: Session) -> str:
        """The cookie value carrying `session` (made by `new_session`)."""
        body = (f"{_VERSION}.{session.session_id}.{session.tee}.{int(session.created_at.timestamp())}."
                f"{int(session.expires_at.timestamp())}.{base64.b64decode(session.nonce).hex()}")
        value = f"{body}.{self._mac(body)}"
        self._issued.put(value, session)
        return value

    def open(self, value: str) -> Session | None:
        """The session in a cookie this broker made, else None (any other string, a wrong MAC).  Expiry is
        the caller's to check: an expired session has its own message."""
        if len(value) > MAX_COOKIE_CHARS:
            return None
        issued = self._issued.get(value)
        if issued is not None:
            return issued
        match = _FORM.fullmatch(value)
        if match is None:
            return None
        body, mac = value.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        session_id, tee, created, expires, nonce = match.group(1, 2, 3, 4, 5)
        return Session(session_id=session_id, tee=tee, nonce=base64.b64encode(bytes.fromhex(nonce)).decode(),
                       created_at=datetime.fromtimestamp(int(created), UTC),
                       expires_at=datetime.fromtimestamp(int(expires), UTC), state="authed")

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Attested:
    """A session this worker stored as attested, with what its resource requests would otherwise recompute from
    its token's claims: the evidence's identity (JSON text) and the TEE key's RFC 7638 thumbprint."""

    session: Session
    identity: str
    tee_key: str


class AttestedSessions:
    """Sessions this worker stored as attested, by the cookie value that carried them to /attest (whose MAC was
    checked there): the guest's resource request, which comes on the same connection and so to the same worker,
    finds its session without a read, and the same cookie string needs no second MAC check (the MAC is a
    function of the string).  Safe to keep: a stored session never changes (it is only deleted once expired,
    and the session's expiry is checked on every request).  Bounded by bytes (a token is most of an entry); a
    miss opens the cookie and reads the store."""

    def __init__(self, max_bytes: int, used_bytes: int = USED_CACHE_BYTES) -> None:
        self._cache: ByteBoundedCache[str, Attested] = ByteBoundedCache(max_bytes, _attested_cost)
        self._used: ByteBoundedCache[str, bool] = ByteBoundedCache(used_bytes, lambda _: USED_ENTRY_COST)

    def remember(self, cookie: str, attested: Attested) -> None:
        self._cache.put(cookie, attested)

    def get(self, cookie: str) -> Attested | None:
        return self._cache.get(cookie)

    def mark_used(self, session_id: str) -> None:
        """The session's nonce was found used (by another /attest, here or on another worker or replica)."""
        self._used.put(session_id, True)

    def used(self, session_id: str) -> bool:
        return self._used.get(session_id) is not None

    @property
    def bytes_used(self) -> int:
        return self._cache.bytes_used


def _attested_cost(attested: Attested) -> int:
    return len(attested.session.token or "") + len(attested.identity) + MAX_COOKIE_CHARS + SESSION_OVERHEAD


def session_id_of(value: str | None) -> str | None:
    """The session id in a well-formed cookie (MAC unchecked): for log entries of refused requests only."""
    if value is None or len(value) > MAX_COOKIE_CHARS:
        return None
    match = _FORM.fullmatch(value)
    return match.group(1) if match else None
