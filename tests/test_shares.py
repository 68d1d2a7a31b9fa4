"""Contributed keys' cryptography: shares sealed to the broker's share key, and the documented derivation."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from kbs.keys import shares
from kbs.keys.kek import Kek
from kbs.keys.shares import ShareInvalid, ShareKey, contribution_statement, derive, seal_share


def rfc5869(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF straight from RFC 5869 §2 with the standard library's HMAC: independent of `cryptography`."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def test_rfc5869_case_1_checks_the_reference() -> None:
    ikm, salt, info = bytes([0x0B] * 22), bytes(range(13)), bytes(range(0xF0, 0xFA))
    assert rfc5869(ikm, salt, info, 42).hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                                                   "34007208d5b887185865")


def test_the_released_value_is_the_documented_derivation() -> None:
    a, b, c = os.urandom(32), os.urandom(48), os.urandom(64)
    ikm = b"".join(len(s).to_bytes(2, "big") + s for s in (a, b, c))
    expected = rfc5869(ikm, bytes(32), b"kbs contributed key v1:pool/key/model", 32)
    assert derive([a, b, c], "pool/key/model") == expected
    assert derive([b, a, c], "pool/key/model") != expected  # the owners' order matters
    assert derive([a, b, c], "pool/key/other") != expected  # bound to the key
    assert derive([a[:16] + b[:16] * 2, a[16:] + b[32:], c], "pool/key/model") != expected  # no reshuffling
    for bad in ([], [bytes(31)], [bytes(65)]):
        with pytest.raises(ShareInvalid):
            derive(bad, "p/k/t")


def test_shares_open_only_with_the_brokers_share_key() -> None:
    stored: dict[str, bytes] = {}
    kek = Kek(os.urandom(32))
    key = ShareKey.from_store(lambda name, value: stored.setdefault(name, value), kek)
    again = ShareKey.from_store(lambda name, value: stored.setdefault(name, value), kek)  # another worker: same key
    assert key.public_jwk() == again.public_jwk() and shares.SECRET_NAME in stored
    share = os.urandom(32)
    sealed = seal_share(share, key.public_jwk())
    assert share.hex() not in str(sealed) and key.open(sealed) == share
    other = ShareKey(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ShareInvalid, match="does not open"):
        other.open(sealed)
    with pytest.raises(ShareInvalid):
        seal_share(bytes(16), key.public_jwk())
    statement = contribution_statement("p/k/t", sealed, None)
    assert statement.startswith(b"kbs-contribution:p/k/t:") and share.hex().encode() not in statement
    assert statement != contribution_statement("p/k/t", sealed, "{}")
