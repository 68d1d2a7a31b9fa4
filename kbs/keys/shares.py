"""Contributed keys: the broker's share key, and the value released from the owners' shares.

Each owner of a contributed key encrypts a random share (32 to 64 bytes) to the broker's share key, a P-256
key made once and kept in the store sealed under the KEK like the token signing key, as a JWE
(ECDH-ES+A256KW, A256GCM: kbs.keys.jwe, the format the broker wraps keys to TEEs in).  So neither the
operator, the transport, nor another owner sees a share.  The broker releases

    HKDF-SHA256(ikm = for each owner in the key's owner order: uint16 length (big-endian) || share,
                salt = 32 zero bytes, info = "kbs contributed key v1:" || key path, length = 32)

and only to a TEE that the key's policy and every owner's own policy admit; no party holds it.  The
length prefixes make the input unambiguous (shares of other lengths cannot be reshuffled into the same
bytes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kbs.errors import KbsError
from kbs.keys import jwe
from kbs.keys.kek import Kek

SECRET_NAME = "owner-share-key"
MIN_SHARE, MAX_SHARE = 32, 64
VALUE_BYTES = 32
INFO_PREFIX = b"kbs contributed key v1:"
SALT = bytes(32)


class ShareInvalid(KbsError):
    """A share that does not open with the broker's share key, or is not 32 to 64 bytes."""

    check = "share.invalid"


class ShareKey:
    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    @classmethod
    def from_store(cls, get_or_create: Callable[[str, bytes], bytes], kek: Kek) -> ShareKey:
        """The shared key (created by the first worker or replica to need it)."""
        fresh = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        der = kek.unseal(get_or_create(SECRET_NAME, kek.seal(fresh, SECRET_NAME)), SECRET_NAME)
        key = serialization.load_der_private_key(der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ShareInvalid("the stored share key is not an EC key")
        return cls(key)

    def public_jwk(self) -> dict[str, str]:
        """What owners encrypt their shares to (GET /kbs/v0/owners/share-key)."""
        return jwe.public_jwk(self._key)

    def open(self, sealed: Mapping[str, Any]) -> bytes:
        try:
            share = jwe.decrypt(sealed, self._key)
        except KbsError as exc:
            raise ShareInvalid(f"the share does not open with this broker's share key: {exc}") from exc
        check_share(share)
        return share

    def open_value(self, sealed: Mapping[str, Any], limit: int) -> bytes:
        """A deposited value (issue 15, item 4): any 1..`limit` bytes, encrypted to the share key like a share."""
        try:
            value = jwe.decrypt(sealed, self._key)
        except KbsError as exc:
            raise ShareInvalid(f"the value does not open with this broker's share key: {exc}") from exc
        if not 0 < len(value) <= limit:
            raise ShareInvalid(f"a deposited value is 1 to {limit} bytes, not {len(value)}")
        return value


def check_share(share: bytes) -> None:
    if not MIN_SHARE <= len(share) <= MAX_SHARE:
        raise ShareInvalid(f"a share is {MIN_SHARE} to {MAX_SHARE} bytes, not {len(share)}")


def seal_share(share: bytes, share_jwk: Mapping[str, Any]) -> dict[str, str]:
    """An owner's side: the share encrypted to the broker's share key."""
    check_share(share)
    return jwe.encrypt(share, share_jwk)


def derive(shares: Sequence[bytes], path: str) -> bytes:
    """The released value, from every owner's share in the key's owner order (module docstring)."""
    if not shares:
        raise ShareInvalid("a contributed key needs every owner's share")
    ikm = b""
    for share in shares:
        check_share(share)
        ikm += len(share).to_bytes(2, "big") + share
    return HKDF(algorithm=hashes.SHA256(), length=VALUE_BYTES, salt=SALT,
                info=INFO_PREFIX + path.encode()).derive(ikm)


def contribution_statement(path: str, sealed_share: Mapping[str, Any], policy: str | None) -> bytes:
    """What an owner signs to contribute: the key, its sealed share and its own policy (bytes it can check
    offline).  The share itself is never signed in clear."""
    share_digest = hashlib.sha256(jwe_bytes(sealed_share)).hexdigest()
    policy_digest = hashlib.sha256((policy or "").encode()).hexdigest()
    return f"kbs-contribution:{path}:{share_digest}:{policy_digest}".encode()


def jwe_bytes(sealed: Mapping[str, Any]) -> bytes:
    """A JWE's members in a fixed order, as signed and hashed."""
    return "|".join(f"{k}={sealed.get(k, '')}" for k in sorted(sealed)).encode()
