"""The attestation token: an EAR JWT signed ES256 with the broker's P-256 key.

The key lives in the shared store, sealed under the KEK, so every replica signs and verifies
with the same key and a token from one replica is accepted by another (the Bearer path).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

import jwt
import orjson
import pybase64
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from kbs import jsondoc
from kbs.cache import ByteBoundedCache
from kbs.errors import KbsError
from kbs.keys.jwe import jwk_thumbprint, public_jwk
from kbs.keys.kek import Kek

SECRET_NAME = "token-signing-key"
LEEWAY_SECONDS = 0  # the token's lifetime is configured; no grace on top of it
# The cache remembers which tokens' signatures were checked (a 32-byte digest each), not their claims:
# a decoded EAR is ~15 KB of Python objects, a storm holds thousands of tokens in flight, and the claims
# decode again from the token's own bytes in ~15 us with orjson.
ENTRY_COST = 128  # the digest, the LRU's node and dict slot
DEFAULT_CACHE_BYTES = 2 * 1024 * 1024  # ~16,000 tokens


class TokenInvalid(KbsError):
    check = "token"


def _b64url(data: bytes) -> bytes:
    return pybase64.urlsafe_b64encode(data).rstrip(b"=")


def _claims_of(token: str) -> dict[str, Any]:
    """The payload of a token whose signature was checked before (the same bytes: the cache key)."""
    payload = token.split(".", 2)[1]
    raw = pybase64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    try:
        claims: dict[str, Any] = orjson.loads(raw)
    except orjson.JSONDecodeError:  # integers beyond 64 bits
        claims = json.loads(raw)
    return claims


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenSigner:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise TokenInvalid("the token signing key must be P-256 (ES256)")
        self._key = key
        self._public = key.public_key()
        jwk = public_jwk(self._public)
        self.jwk = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y")}
        self.kid = jwk_thumbprint(self.jwk)
        header = {"alg": "ES256", "jwk": {**self.jwk, "alg": "ES256"}, "kid": self.kid, "typ": "JWT"}
        self._header = _b64url(json.dumps(header, separators=(",", ":")).encode())
        # Tokens whose signature this process already checked (or made): a guest presents the
        # same token on every resource request, and PyJWT's parse costs ~0.5 ms for an EAR.
        # Only that the signature verified is cached (keyed by the token's SHA-256, a fixed cost
        # each, so large tokens cannot fill memory); the claims are decoded from the token's own
        # signed bytes and `exp` is checked on every use.
        self._verified: ByteBoundedCache[bytes, bool] = ByteBoundedCache(cache_bytes, lambda _: ENTRY_COST)

    @classmethod
    def from_store(cls, get_or_create: Any, kek: Kek, cache_bytes: int = DEFAULT_CACHE_BYTES) -> TokenSigner:
        """Load the shared key, creating it if no replica has yet (the store keeps the first one)."""
        fresh = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        sealed = get_or_create(SECRET_NAME, kek.seal(fresh, SECRET_NAME))
        key = serialization.load_der_private_key(kek.unseal(sealed, SECRET_NAME), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TokenInvalid("stored token signing key is not an EC key")
        return cls(key, cache_bytes)

    def sign(self, claims: dict[str, Any], payload: bytes | None = None) -> str:
        """An ES256 compact JWS (RFC 7515) of the claims.  Made here with `cryptography` (the JWS compact form
        is two base64url parts and a signature): PyJWT's encode costs ~100 us per EAR on the hot path, the
        ECDSA itself ~20 us.  Verification stays with PyJWT, and tests decode these tokens with it."""
        if payload is None:  # the caller may have encoded the claims already (to bound their size)
            payload = jsondoc.dumps(claims)
        signing_input = self._header + b"." + _b64url(payload)
        r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        token = (signing_input + b"." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))).decode()
        self._verified.put(_key(token), True)
        return token

    def probe(self) -> None:
        """Sign and verify a throwaway token without caching it (readiness check)."""
        token = jwt.encode({"iat": 0, "exp": 1}, self._key, algorithm="ES256", headers={"kid": self.kid})
        jwt.decode(token, self._public, algorithms=["ES256"], options={"verify_exp": False})

    @property
    def cache_bytes(self) -> int:
        return self._verified.bytes_used

    def verify(self, token: str, now: datetime) -> dict[str, Any]:
        """The claims of a token this broker issued and that has not expired at `now`."""
        if self._verified.get(_key(token)):
            known = _claims_of(token)
            self._check_exp(known, now)
            return known
        try:
            # One parse (PyJWT checks the base64 alphabet character by character, so avoid two).
            decoded = jwt.decode_complete(
                token, self._public, algorithms=["ES256"], leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat"], "verify_exp": False, "verify_iat": False})
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"token does not verify: {exc}") from exc
        if decoded["header"].get("kid") != self.kid:
            raise TokenInvalid("token was not issued by this broker's current key (unknown key id)")
        claims: dict[str, Any] = decoded["payload"]
        self._check_exp(claims, now)
        self._verified.put(_key(token), True)
        return claims

    @staticmethod
    def _check_exp(claims: dict[str, Any], now: datetime) -> None:
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or now.timestamp() >= exp:
            raise TokenInvalid("token has expired; attest again")
