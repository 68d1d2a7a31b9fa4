"""The EAR token signer: shared key from the store, expiry always checked, foreign or edited tokens refused."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from kbs.keys.kek import Kek
from kbs.server.tokens import ENTRY_COST, TokenInvalid, TokenSigner

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)


def claims(lifetime: int = 60) -> dict[str, object]:
    iat = int(NOW.timestamp())
    return {"iat": iat, "exp": iat + lifetime, "submods": {"cpu0": {"ear.status": "affirming"}}}


def test_replicas_share_one_key_through_the_store() -> None:
    secrets: dict[str, bytes] = {}

    def get_or_create(name: str, value: bytes) -> bytes:
        return secrets.setdefault(name, value)
    kek = Kek(bytes(32))
    one, two = TokenSigner.from_store(get_or_create, kek), TokenSigner.from_store(get_or_create, kek)
    token = one.sign(claims())
    assert two.verify(token, NOW)["submods"] == {"cpu0": {"ear.status": "affirming"}}
    assert one.kid == two.kid


def test_expiry_is_checked_even_for_cached_tokens() -> None:
    signer = TokenSigner(ec.generate_private_key(ec.SECP256R1()))
    token = signer.sign(claims(lifetime=10))
    assert signer.verify(token, NOW)  # cached since signing
    with pytest.raises(TokenInvalid, match="expired"):
        signer.verify(token, NOW + dt.timedelta(seconds=10))
    fresh = TokenSigner(signer._key, cache_bytes=0)  # no cache: the full check must agree
    with pytest.raises(TokenInvalid, match="expired"):
        fresh.verify(token, NOW + dt.timedelta(seconds=11))
    assert fresh.verify(token, NOW)["exp"] == int(NOW.timestamp()) + 10


def test_foreign_and_edited_tokens_refused() -> None:
    mine = TokenSigner(ec.generate_private_key(ec.SECP256R1()))
    other = TokenSigner(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(TokenInvalid):
        mine.verify(other.sign(claims()), NOW)
    token = mine.sign(claims())
    header, payload, sig = token.split(".")
    with pytest.raises(TokenInvalid):
        mine.verify(f"{header}.{payload}x.{sig}", NOW)
    with pytest.raises(TokenInvalid):
        mine.verify(f"{header}.{payload}.{sig[:-4]}AAAA", NOW)
    with pytest.raises(TokenInvalid, match="must be P-256"):
        TokenSigner(ec.generate_private_key(ec.SECP384R1()))


def test_verified_token_cache_is_bounded_by_bytes() -> None:
    """The cache remembers that a signature verified (a fixed cost per token), never the claims: large
    tokens (big init-data claims) cost no more, and what it returns is decoded from the token itself."""
    budget = 100 * ENTRY_COST
    signer = TokenSigner(ec.generate_private_key(ec.SECP256R1()), cache_bytes=budget)
    tokens = [signer.sign({**claims(), "pad": "x" * 20_000, "n": i, "big": 1 << 70}) for i in range(200)]
    assert signer.cache_bytes == budget  # the newest 100 are kept
    uncached = TokenSigner(signer._key, cache_bytes=0)
    for token in tokens[:5] + tokens[-5:]:  # evicted ones verify through the full path, cached ones decode
        assert signer.verify(token, NOW) == uncached.verify(token, NOW)
    assert signer.verify(tokens[-1], NOW)["big"] == 1 << 70  # beyond orjson's 64 bits
    assert signer.cache_bytes <= budget
