"""The resource-response JWE (kbs.keys.jwe): the deterministic vector byte for byte, the extra-alg
vectors, round trips checked by an independent JOSE library (joserfc), header bytes and refusals."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from hypothesis import given, settings
from hypothesis import strategies as st

from kbs.errors import UsageError
from kbs.keys import jwe
from kbs.keys.jwe import JweInvalid, JweKeyInvalid, TeeKey

REPO = Path(__file__).resolve().parent.parent
MARKER = b"PLAINTEXT-MARKER-q7Zx"
SECRET = MARKER + b" released key material \x00\xff"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
MEMBERS = ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
EXTRA_VECTORS = ["jwe_rsa_oaep_256", "jwe_rsa1_5", "jwe_ecdh_es_a256kw_p521"]


def generated_dir() -> Path:
    root = Path(os.environ.get("KBS_VECTORS", REPO.parent / "shared" / "vectors")).resolve()
    return root / "trustee" / "generated"


def load_generated(name: str) -> dict[str, Any]:
    path = generated_dir() / name
    if not path.is_file():
        pytest.skip(f"trustee generated vector {name} not found under KBS_VECTORS ({path})")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def b64u_json(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")


def load_key(pem: str) -> jwe.TeePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key


def vector_ephemeral_key() -> ec.EllipticCurvePrivateKey:
    # SOURCES.md: scalar = SHA-256("kbs-vector/ephemeral") mod (n-1) + 1
    digest = int.from_bytes(hashlib.sha256(b"kbs-vector/ephemeral").digest(), "big")
    return ec.derive_private_key(digest % (P256_ORDER - 1) + 1, ec.SECP256R1())


@pytest.fixture(scope="module")
def tee_keys() -> dict[str, TeeKey]:
    # RSA keygen is the slow part: one key pair per kind for the whole module.
    return {kind: jwe.generate_tee_key(kind) for kind in jwe.TEE_KEY_KINDS}


@pytest.fixture(scope="module")
def p256_vector() -> dict[str, Any]:
    vector: dict[str, Any] = load_generated("rcar-v0.4-worked-example.json")["jwe_ecdh_es_a256kw_p256"]
    return vector


# --- the deterministic P-256 vector -------------------------------------------------------------------


def test_vector_reproduced_byte_for_byte(p256_vector: dict[str, Any]) -> None:
    out = jwe.encrypt(
        p256_vector["plaintext_utf8"].encode(),
        p256_vector["tee_pubkey_jwk"],
        cek=bytes.fromhex(p256_vector["cek_hex"]),
        iv=bytes.fromhex(p256_vector["iv_hex"]),
        ephemeral_key=vector_ephemeral_key(),
    )
    assert list(out) == MEMBERS
    for member in MEMBERS:
        assert out[member] == p256_vector["response"][member], member
    assert b64u_json(out["protected"]) == p256_vector["protected_header_json"]
    assert out["protected"] == p256_vector["aad_ascii"]


def test_vector_intermediates(p256_vector: dict[str, Any]) -> None:
    tee = load_key(p256_vector["tee_private_key_pkcs8_pem"])
    assert isinstance(tee, ec.EllipticCurvePrivateKey)
    eph = vector_ephemeral_key()
    z = eph.exchange(ec.ECDH(), tee.public_key())
    assert z == tee.exchange(ec.ECDH(), eph.public_key())
    assert z.hex() == p256_vector["ecdh_shared_secret_Z_hex"]
    kek = jwe.concat_kdf(z)
    assert kek.hex() == p256_vector["concat_kdf_kek_hex"]
    wrapped = aes_key_wrap(kek, bytes.fromhex(p256_vector["cek_hex"]))
    assert jwe.b64u(wrapped) == p256_vector["response"]["encrypted_key"]
    assert jwe.public_jwk(tee) == p256_vector["tee_pubkey_jwk"]


def test_vector_decrypts(p256_vector: dict[str, Any]) -> None:
    tee = load_key(p256_vector["tee_private_key_pkcs8_pem"])
    assert jwe.decrypt(p256_vector["response"], tee) == p256_vector["plaintext_utf8"].encode()


@pytest.mark.parametrize("name", EXTRA_VECTORS)
def test_extra_alg_vectors_decrypt(name: str) -> None:
    vector = load_generated("jwe-extra-algs.json")[name]
    pem = vector.get("tee_private_key_pkcs1_pem") or vector["tee_private_key_pkcs8_pem"]
    key = load_key(pem)
    assert jwe.decrypt(vector["response"], key) == vector["plaintext_utf8"].encode()
    assert b64u_json(vector["response"]["protected"]) == vector["protected_header_json"]
    jwk = vector["tee_pubkey_jwk"]
    assert jwe.public_jwk(key, jwk["alg"]) == jwk
    assert jwe.parse_tee_jwk(jwk).alg == jwk["alg"]


# --- round trips and the independent check ---------------------------------------------------------------


@pytest.mark.parametrize("kind", jwe.TEE_KEY_KINDS)
def test_round_trip(kind: str, tee_keys: dict[str, TeeKey]) -> None:
    tee = tee_keys[kind]
    out = jwe.encrypt(SECRET, tee.jwk)
    assert list(out) == MEMBERS
    assert jwe.decrypt(out, tee.private_key) == SECRET
    assert jwe.decrypt(jwe.encrypt(b"", tee.jwk), tee.private_key) == b""
    again = jwe.encrypt(SECRET, tee.jwk)  # fresh CEK, IV (and ephemeral key) every time
    assert again["iv"] != out["iv"] and again["encrypted_key"] != out["encrypted_key"]


@pytest.mark.filterwarnings('ignore:JWE algorithm "RSA1_5" is deprecated')
@pytest.mark.parametrize("kind", jwe.TEE_KEY_KINDS)
def test_joserfc_decrypts_our_output(kind: str, tee_keys: dict[str, TeeKey]) -> None:
    joserfc_jwe = pytest.importorskip("joserfc.jwe", reason="joserfc (independent JOSE check) not installed")
    joserfc_jwk = pytest.importorskip("joserfc.jwk")
    tee = tee_keys[kind]
    pem = tee.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_class = joserfc_jwk.ECKey if tee.jwk["kty"] == "EC" else joserfc_jwk.RSAKey
    out = jwe.encrypt(SECRET, tee.jwk)
    # RSA1_5 is outside joserfc's default (recommended-only) registry: allow it explicitly.
    result = joserfc_jwe.decrypt_json(out, key_class.import_key(pem), algorithms=[tee.jwk["alg"], "A256GCM"])
    assert result.plaintext == SECRET


# --- protected header bytes ------------------------------------------------------------------------


def _ordered(text: str) -> Any:
    return json.loads(text, object_pairs_hook=lambda pairs: pairs)


@pytest.mark.parametrize("kind", jwe.TEE_KEY_KINDS)
def test_protected_header_shape(kind: str, tee_keys: dict[str, TeeKey]) -> None:
    tee = tee_keys[kind]
    text = b64u_json(jwe.encrypt(SECRET, tee.jwk)["protected"])
    alg = tee.jwk["alg"]
    assert text.startswith(json.dumps({"alg": alg, "enc": "A256GCM"}, separators=(",", ":"))[:-1])
    assert " " not in text and "\n" not in text
    pairs = _ordered(text)
    if tee.jwk["kty"] == "EC":
        assert [name for name, _ in pairs] == ["alg", "enc", "epk"]
        epk = pairs[2][1]
        assert [name for name, _ in epk] == ["crv", "kty", "x", "y"]
        assert dict(epk)["crv"] == tee.jwk["crv"]
        assert f'"epk":{{"crv":"{tee.jwk["crv"]}","kty":"EC","x":"' in text
    else:
        assert text == f'{{"alg":"{alg}","enc":"A256GCM"}}'


@pytest.mark.parametrize("kind", jwe.TEE_KEY_KINDS)
@pytest.mark.parametrize("sorted_rest", [False, True], ids=["preserve_order", "btreemap"])
def test_guest_reserialized_aad_matches(kind: str, sorted_rest: bool, tee_keys: dict[str, TeeKey]) -> None:
    # kbs-types decodes {alg, enc, ...rest} and re-serializes it compactly for the AAD; with or
    # without serde_json's preserve_order the result must equal what we sent.
    protected = jwe.encrypt(SECRET, tee_keys[kind].jwk)["protected"]
    header = json.loads(b64u_json(protected))
    rest = {k: v for k, v in header.items() if k not in ("alg", "enc")}
    if sorted_rest:
        rest = json.loads(json.dumps(rest, sort_keys=True))
    rebuilt = {"alg": header["alg"], "enc": header["enc"], **rest}
    assert jwe.b64u(json.dumps(rebuilt, separators=(",", ":")).encode()) == protected


# --- TEE JWK refusals ------------------------------------------------------------------------------


def _ec_jwk(curve: ec.EllipticCurve, crv: str, size: int) -> dict[str, str]:
    numbers = ec.generate_private_key(curve).public_key().public_numbers()
    return {"kty": "EC", "crv": crv, "alg": "ECDH-ES+A256KW",
            "x": jwe.b64u(numbers.x.to_bytes(size, "big")), "y": jwe.b64u(numbers.y.to_bytes(size, "big"))}


def _rsa_jwk(bits: int, e: int = 65537) -> dict[str, str]:
    if bits == 2048:  # fake but well-formed: validation fails on e before any RSA arithmetic
        n = (1 << 2047) | 1
    else:
        n = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key().public_numbers().n
    return {"kty": "RSA", "alg": "RSA-OAEP-256", "n": jwe.b64u(n.to_bytes((n.bit_length() + 7) // 8, "big")),
            "e": jwe.b64u(e.to_bytes(max(1, (e.bit_length() + 7) // 8), "big"))}


def _without(jwk: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in jwk.items() if k != name}


def _bad_jwks(tee_keys: dict[str, TeeKey]) -> list[tuple[str, Any, list[str]]]:
    ec256 = tee_keys["EC-P256"].jwk
    ec521 = tee_keys["EC-P521"].jwk
    rsa_jwk = tee_keys["RSA-OAEP-256"].jwk
    y256 = int.from_bytes(jwe.b64u_decode(ec256["y"]), "big")
    off_curve = {**ec256, "y": jwe.b64u(((y256 + 1) % 2**256).to_bytes(32, "big"))}
    p521 = 2**521 - 1
    x521 = int.from_bytes(jwe.b64u_decode(ec521["x"]), "big")
    return [
        ("p384", _ec_jwk(ec.SECP384R1(), "P-384", 48), ["'P-384'", "P-256", "P-521"]),
        ("rsa_oaep_sha1", {**rsa_jwk, "alg": "RSA-OAEP"}, ["'RSA-OAEP'", "RSA-OAEP-256", "RSA1_5"]),
        ("ecdh_a128kw", {**ec256, "alg": "ECDH-ES+A128KW"}, ["'ECDH-ES+A128KW'", "ECDH-ES+A256KW"]),
        ("a128kw", {**ec256, "alg": "A128KW"}, ["'A128KW'", "ECDH-ES+A256KW"]),
        ("ecdh_direct", {**ec256, "alg": "ECDH-ES"}, ["'ECDH-ES'"]),
        ("rsa_with_ecdh_alg", {**rsa_jwk, "alg": "ECDH-ES+A256KW"}, ["kty RSA", "RSA-OAEP-256"]),
        ("kty_oct", {"kty": "oct", "alg": "A256KW"}, ["'oct'", "supported: kty EC"]),
        ("kty_okp", {"kty": "OKP", "crv": "X25519", "x": ec256["x"]}, ["'OKP'"]),
        ("missing_kty", _without(ec256, "kty"), ["'kty'"]),
        ("missing_crv", _without(ec256, "crv"), ["'crv'"]),
        ("missing_alg_ec", _without(ec256, "alg"), ["'alg'"]),
        ("missing_alg_rsa", _without(rsa_jwk, "alg"), ["'alg'"]),
        ("missing_x", _without(ec256, "x"), ["'x'"]),
        ("missing_y", _without(ec256, "y"), ["'y'"]),
        ("missing_n", _without(rsa_jwk, "n"), ["'n'"]),
        ("missing_e", _without(rsa_jwk, "e"), ["'e'"]),
        ("short_x", {**ec256, "x": jwe.b64u(jwe.b64u_decode(ec256["x"])[1:])}, ["'x'", "32 bytes", "got 31"]),
        ("long_y_p521", {**ec521, "y": jwe.b64u(b"\x00" + jwe.b64u_decode(ec521["y"]))}, ["'y'", "66 bytes"]),
        ("off_curve", off_curve, ["not on the curve P-256"]),
        ("x_above_prime", {**ec521, "x": jwe.b64u((x521 + p521).to_bytes(66, "big"))}, ["'x'", "field prime"]),
        ("rsa_1024", _rsa_jwk(1024), ["1024 bits", "2048"]),
        ("rsa_even_e", _rsa_jwk(2048, e=65536), ["exponent e", "odd"]),
        ("rsa_e_1", _rsa_jwk(2048, e=1), ["exponent e", "greater than 1"]),
        ("x_padded", {**ec256, "x": ec256["x"] + "="}, ["'x'", "base64url"]),
        ("x_not_string", {**ec256, "x": 5}, ["'x'", "string"]),
        ("private_d", {**ec256, "d": ec256["x"]}, ["['d']", "only the public key"]),
        ("not_object", ["EC"], ["JSON object"]),
    ]


def test_bad_jwks_refused(tee_keys: dict[str, TeeKey]) -> None:
    for label, bad, needles in _bad_jwks(tee_keys):
        with pytest.raises(JweKeyInvalid) as info:
            jwe.encrypt(SECRET, bad)
        message = str(info.value)
        assert info.value.check == "jwe.key", label
        for needle in needles:
            assert needle in message, (label, message)
        assert MARKER.decode() not in message, label
        if isinstance(bad, dict):  # coordinates and moduli are never echoed
            for member in ("x", "y", "n"):
                value = bad.get(member)
                if isinstance(value, str) and len(value) > 8:
                    assert value not in message, (label, member)


def test_public_jwk_and_generate_refusals() -> None:
    with pytest.raises(JweKeyInvalid, match="secp384r1.*supported: P-256, P-521"):
        jwe.public_jwk(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(JweKeyInvalid, match="'A128KW'"):
        jwe.public_jwk(ec.generate_private_key(ec.SECP256R1()), "A128KW")
    with pytest.raises(UsageError, match="EC-P256"):
        jwe.generate_tee_key("EC-P384")


def test_public_jwk_shapes(tee_keys: dict[str, TeeKey]) -> None:
    assert list(tee_keys["EC-P256"].jwk) == ["kty", "crv", "alg", "x", "y"]
    assert tee_keys["EC-P521"].jwk["crv"] == "P-521"
    assert len(jwe.b64u_decode(tee_keys["EC-P521"].jwk["x"])) == 66
    assert list(tee_keys["RSA1_5"].jwk) == ["kty", "alg", "n", "e"]
    assert tee_keys["RSA1_5"].jwk["alg"] == "RSA1_5"
    assert tee_keys["RSA-OAEP-256"].jwk["e"] == "AQAB"
    public = tee_keys["EC-P256"].private_key.public_key()
    assert jwe.public_jwk(public) == tee_keys["EC-P256"].jwk


# --- decryption refusals ---------------------------------------------------------------------------


def _flip(text: str) -> str:
    raw = bytearray(jwe.b64u_decode(text))
    raw[len(raw) // 2] ^= 0x01
    return jwe.b64u(bytes(raw))


def _reheader(protected: str, change: dict[str, Any]) -> str:
    header = json.loads(b64u_json(protected))
    header.update(change)
    return jwe.b64u(json.dumps(header, separators=(",", ":")).encode())


def _expect_invalid(token: Any, key: jwe.TeePrivateKey, *needles: str) -> None:
    with pytest.raises(JweInvalid) as info:
        jwe.decrypt(token, key)
    message = str(info.value)
    assert info.value.check == "jwe.decrypt"
    assert MARKER.decode() not in message and MARKER.hex() not in message
    # no chained cryptography exception (and its details) travels with the error
    assert info.value.__cause__ is None and (info.value.__suppress_context__ or info.value.__context__ is None)
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("kind", jwe.TEE_KEY_KINDS)
@pytest.mark.parametrize("member", MEMBERS)
def test_tampered_member_refused(kind: str, member: str, tee_keys: dict[str, TeeKey]) -> None:
    tee = tee_keys[kind]
    good = jwe.encrypt(SECRET, tee.jwk)
    _expect_invalid({**good, member: _flip(good[member])}, tee.private_key)


@pytest.mark.parametrize("kind", jwe.TEE_KEY_KINDS)
def test_semantically_equal_header_is_still_tampering(kind: str, tee_keys: dict[str, TeeKey]) -> None:
    # Same header members, other bytes (spaces): the AAD is the string as received, so GCM fails.
    tee = tee_keys[kind]
    good = jwe.encrypt(SECRET, tee.jwk)
    spaced = jwe.b64u(json.dumps(json.loads(b64u_json(good["protected"]))).encode())
    _expect_invalid({**good, "protected": spaced}, tee.private_key, "decryption failed")


@pytest.mark.parametrize("kind", jwe.TEE_KEY_KINDS)
def test_wrong_private_key_refused(kind: str, tee_keys: dict[str, TeeKey]) -> None:
    tee = tee_keys[kind]
    good = jwe.encrypt(SECRET, tee.jwk)
    # RSA kinds have distinct key pairs in the fixture: the other one is a wrong key of the right type.
    if kind.startswith("EC"):
        wrong = jwe.generate_tee_key(kind).private_key
    else:
        wrong = tee_keys["RSA1_5" if kind == "RSA-OAEP-256" else "RSA-OAEP-256"].private_key
    _expect_invalid(good, wrong, "decryption failed")
    cross = tee_keys["RSA-OAEP-256" if kind.startswith("EC") else "EC-P256"]
    _expect_invalid(good, cross.private_key, "does not fit")


def test_ec_curve_mismatch_refused(tee_keys: dict[str, TeeKey]) -> None:
    good = jwe.encrypt(SECRET, tee_keys["EC-P256"].jwk)
    _expect_invalid(good, tee_keys["EC-P521"].private_key, "P-521")


def test_header_and_structure_refusals(tee_keys: dict[str, TeeKey]) -> None:
    tee = tee_keys["EC-P256"]
    good = jwe.encrypt(SECRET, tee.jwk)
    protected = good["protected"]
    epk = json.loads(b64u_json(protected))["epk"]
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({**good, "protected": _reheader(protected, {"enc": "A128GCM"})}, ["'A128GCM'", "A256GCM"]),
        ({**good, "protected": _reheader(protected, {"alg": "ECDH-ES"})}, ["'ECDH-ES'"]),
        ({**good, "protected": _reheader(protected, {"zip": "DEF"})}, ["zip"]),
        ({**good, "protected": _reheader(protected, {"crit": ["exp"]})}, ["crit"]),
        ({**good, "protected": _reheader(protected, {"epk": {**epk, "crv": "P-384"}})}, ["epk"]),
        ({**good, "protected": _reheader(protected, {"epk": {**epk, "y": epk["x"]}})}, ["not on the curve"]),
        ({**good, "protected": jwe.b64u(b'{"alg":"ECDH-ES+A256KW","alg":"x","enc":"A256GCM"}')}, ["duplicate"]),
        ({**good, "protected": jwe.b64u(b"[1]")}, ["JSON object"]),
        ({**good, "aad": "eA"}, ["'aad'"]),
        ({**good, "header": {}}, ["'header'"]),
        ({k: v for k, v in good.items() if k != "tag"}, ["'tag'"]),
        ({**good, "iv": good["iv"] + "AA"}, ["iv must be 12 bytes"]),
        ({**good, "tag": jwe.b64u(jwe.b64u_decode(good["tag"])[:12])}, ["tag 16 bytes"]),
        ({**good, "ciphertext": good["ciphertext"] + "="}, ["'ciphertext'", "base64url"]),
    ]
    for token, needles in cases:
        _expect_invalid(token, tee.private_key, *needles)
    _expect_invalid("not a mapping", tee.private_key, "JSON object")


def test_rsa1_5_bad_padding_is_indistinguishable(tee_keys: dict[str, TeeKey]) -> None:
    tee = tee_keys["RSA1_5"]
    good = jwe.encrypt(SECRET, tee.jwk)
    garbage = jwe.b64u(os.urandom(256))
    with pytest.raises(JweInvalid) as padding_error:
        jwe.decrypt({**good, "encrypted_key": garbage}, tee.private_key)
    with pytest.raises(JweInvalid) as tag_error:
        jwe.decrypt({**good, "tag": _flip(good["tag"])}, tee.private_key)
    assert str(padding_error.value) == str(tag_error.value)


def test_encrypt_usage_errors(tee_keys: dict[str, TeeKey]) -> None:
    with pytest.raises(UsageError):
        jwe.encrypt(SECRET, tee_keys["EC-P256"].jwk, cek=b"\x00" * 16)
    with pytest.raises(UsageError):
        jwe.encrypt(SECRET, tee_keys["EC-P256"].jwk, iv=b"\x00" * 16)
    with pytest.raises(UsageError):
        jwe.encrypt(SECRET, tee_keys["EC-P256"].jwk, ephemeral_key=ec.generate_private_key(ec.SECP521R1()))
    with pytest.raises(UsageError):
        jwe.encrypt(SECRET, tee_keys["RSA-OAEP-256"].jwk, ephemeral_key=ec.generate_private_key(ec.SECP256R1()))


def test_thumbprint_is_rfc7638s_example() -> None:
    # RFC 7638 §3.1: the RSA key of RFC 7517 Appendix A.1 and its thumbprint.
    n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
         "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6"
         "qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8aw"
         "apJzKnqDKgw")
    assert jwe.jwk_thumbprint({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}) == \
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@settings(max_examples=500, deadline=None)
@given(st.text(), st.text(), st.text(alphabet=st.characters(exclude_categories=())))
def test_thumbprint_hashes_what_json_dumps_writes(crv: str, x: str, y: str) -> None:
    jwk = {"kty": "EC", "crv": crv, "x": x, "y": y}
    expected = json.dumps({m: jwk[m] for m in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    assert jwe.jwk_thumbprint(jwk) == jwe.b64u(hashlib.sha256(expected.encode()).digest())


def test_parsed_points_are_remembered_within_a_byte_budget() -> None:
    jwk = jwe.generate_tee_key("EC-P256").jwk
    assert jwe.parse_tee_jwk(jwk).key is jwe.parse_tee_jwk(dict(jwk)).key  # the second parse: no new key object
    off_curve = dict(jwk, y=jwe.b64u((int.from_bytes(jwe.b64u_decode(jwk["y"]), "big") ^ 1).to_bytes(32, "big")))
    for _ in range(2):  # a refused point is never remembered
        with pytest.raises(JweKeyInvalid, match="not on the curve"):
            jwe.parse_tee_jwk(off_curve)
    for _ in range(3000):
        jwe.parse_tee_jwk(jwe.generate_tee_key("EC-P256").jwk)
    assert 0 < jwe._points.bytes_used <= jwe.POINT_CACHE_BYTES


def test_an_ephemeral_key_is_not_remembered() -> None:
    """A JWE's `epk` is used once: decrypting does not put it among the remembered TEE points."""
    key = jwe.generate_tee_key("EC-P256")
    sealed = [jwe.encrypt(b"secret", key.jwk) for _ in range(3)]
    jwe._points.clear()
    assert [jwe.decrypt(s, key.private_key) for s in sealed] == [b"secret"] * 3
    assert len(jwe._points) == 0
