"""The JWE that carries a released key to the guest (KBS protocol 0.4.0, reference/trustee-kbs.md §3).

Flattened JSON {"protected","encrypted_key","iv","ciphertext","tag"}, enc A256GCM, AAD = ASCII of the
base64url `protected` string, key management chosen from the TEE JWK: ECDH-ES+A256KW on P-256/P-521,
RSA-OAEP-256 or RSA1_5.

Built from `cryptography` primitives rather than a JOSE library on purpose: the guest (kbs-types)
re-serializes the protected header to recompute the AAD, so its bytes must be exactly
{"alg":…,"enc":"A256GCM",…rest sorted} with "epk" members crv,kty,x,y (§0 item 5).  jwcrypto and
joserfc both put "epk" in the unprotected per-recipient header, order members their own way, and
offer no way to supply the CEK, IV or ephemeral key that the deterministic vector needs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple, TypeAlias

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from kbs.cache import ByteBoundedCache
from kbs.errors import KbsError, UsageError

ENC = "A256GCM"
ECDH_ES_A256KW = "ECDH-ES+A256KW"
RSA_OAEP_256 = "RSA-OAEP-256"
RSA1_5 = "RSA1_5"
RSA_ALGS = (RSA_OAEP_256, RSA1_5)
TEE_KEY_KINDS = ("EC-P256", "EC-P521", RSA_OAEP_256, RSA1_5)

CEK_BYTES = 32
IV_BYTES = 12
TAG_BYTES = 16
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 16384  # bounds the cost of an RSA operation on a guest-chosen modulus
GUEST_RSA_BITS = 2048  # what guest-components generates

# JWK crv -> (curve, coordinate bytes, field prime); the prime check does not rely on OpenSSL's.
_CURVES: dict[str, tuple[type[ec.EllipticCurve], int, int]] = {
    "P-256": (ec.SECP256R1, 32, 2**256 - 2**224 + 2**192 + 2**96 - 1),
    "P-521": (ec.SECP521R1, 66, 2**521 - 1),
}
POINT_CACHE_BYTES = 1 << 19  # ~200 points: a guest's key is parsed at /attest and used again moments later
POINT_OVERHEAD = 2560  # a key object (OpenSSL's included: ~2.1 KB measured) and the cache's entry
_CRV_BY_CURVE_NAME = {"secp256r1": "P-256", "secp521r1": "P-521"}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# The members each key type defines (RFC 7517 §4, RFC 7518 §6) that a TEE key may carry; anything
# else is refused, so the JWK (copied into the token and the stored claims) has a bounded size.
_JWK_MEMBERS = {"EC": frozenset({"kty", "crv", "alg", "x", "y", "kid", "use"}),
                "RSA": frozenset({"kty", "alg", "n", "e", "kid", "use"})}
MAX_KID_CHARS = 128
MAX_MEMBER_CHARS = 4096  # base64url of a 16384-bit modulus is 2731
RSA_MAX_EXPONENT_BITS = 64  # OpenSSL refuses larger exponents with moduli over 3072 bits
_JWE_MEMBERS = ("protected", "encrypted_key", "iv", "ciphertext", "tag")
# Header members that are informational only; anything else (crit, zip, apu, apv, …) would change
# how the JWE must be processed, so it is refused rather than ignored.
_HEADER_MEMBERS = frozenset({"alg", "enc", "epk", "kid", "typ", "cty"})
_SUPPORTED = (
    "supported: kty EC with crv P-256 or P-521 and alg ECDH-ES+A256KW, "
    "or kty RSA (at least 2048 bits) with alg RSA-OAEP-256 or RSA1_5"
)
_DECRYPT_FAILED = "JWE decryption failed (wrong private key, or the JWE was altered)"
_B64U = re.compile(r"[A-Za-z0-9_-]*")

TeePrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class JweKeyInvalid(KbsError):
    """The TEE public key (JWK) cannot be used to encrypt a key for the guest."""

    check = "jwe.key"


class JweInvalid(KbsError):
    """A JWE could not be decrypted or does not have the supported format."""

    check = "jwe.decrypt"


class TeePublicKey(NamedTuple):
    alg: str
    key: PublicKey


class TeeKey(NamedTuple):
    private_key: TeePrivateKey
    jwk: dict[str, str]


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Strict base64url without padding; non-canonical encodings are refused too."""
    if not isinstance(text, str) or not _B64U.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url without padding")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64u(raw) != text:
        raise ValueError("non-canonical base64url")
    return raw


# RFC 7638 §3.2: the members a thumbprint covers, by key type.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url): names a TEE key in the log without the key itself."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise JweKeyInvalid(f"no RFC 7638 thumbprint for a JWK of type {_show(jwk.get('kty'))}")
    required = {m: jwk[m] for m in members}
    try:
        canonical: bytes | None = orjson.dumps(required, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # a lone surrogate
        canonical = None
    if canonical is None or not canonical.isascii() or b"\x7f" in canonical:  # where json.dumps escapes, orjson not
        canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
    return b64u(hashlib.sha256(canonical).digest())


def _show(value: object) -> str:
    # Untrusted identifiers (alg, kty, crv) are echoed short and escaped; key material never is.
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _member(obj: Mapping[str, Any], name: str, error: type[KbsError], where: str) -> str:
    if name not in obj:
        raise error(f"{where} has no {name!r} member")
    value = obj[name]
    if not isinstance(value, str):
        raise error(f"{where} member {name!r} must be a string, got {type(value).__name__}")
    return value


def _bytes_member(obj: Mapping[str, Any], name: str, error: type[KbsError], where: str,
                  max_chars: int = MAX_MEMBER_CHARS) -> bytes:
    text = _member(obj, name, error, where)
    if len(text) > max_chars:
        raise error(f"{where} member {name!r} is {len(text)} characters; at most {max_chars}")
    try:
        return b64u_decode(text)
    except ValueError:
        raise error(f"{where} member {name!r} is not base64url without padding") from None


def _point_cost(entry: tuple[int, ec.EllipticCurvePublicKey]) -> int:
    return entry[0] + POINT_OVERHEAD


# Points already validated, by their JWK text: a guest's key is parsed at /attest and again to wrap each
# key it is released (OpenSSL's point construction is most of a parse).  Public keys only; bounded by bytes.
_points: ByteBoundedCache[tuple[str, str, str], tuple[int, ec.EllipticCurvePublicKey]] = ByteBoundedCache(
    POINT_CACHE_BYTES, _point_cost)


def _ec_point(obj: Mapping[str, Any], crv: str, error: type[KbsError], where: str) -> ec.EllipticCurvePublicKey:
    x, y = obj.get("x"), obj.get("y")
    if type(x) is str and type(y) is str:
        known = _points.get((crv, x, y))
        if known is not None:
            return known[1]
    public = _new_ec_point(obj, crv, error, where)
    _points.put((crv, str(x), str(y)), (len(crv) + len(str(x)) + len(str(y)), public))
    return public


def _new_ec_point(obj: Mapping[str, Any], crv: str, error: type[KbsError], where: str) -> ec.EllipticCurvePublicKey:
    curve, size, prime = _CURVES[crv]
    coords = []
    for name in ("x", "y"):
        raw = _bytes_member(obj, name, error, where)
        if len(raw) != size:
            raise error(f"{where} coordinate {name!r} must be {size} bytes for {crv}, got {len(raw)}")
        if int.from_bytes(raw, "big") >= prime:
            raise error(f"{where} coordinate {name!r} is not below the {crv} field prime")
        coords.append(raw)
    try:  # the SEC 1 uncompressed point: OpenSSL checks it is on the curve (cheaper than from numbers)
        return ec.EllipticCurvePublicKey.from_encoded_point(curve(), b"\x04" + coords[0] + coords[1])
    except ValueError:
        raise error(f"{where} point (x, y) is not on the curve {crv}") from None


def parse_tee_jwk(jwk: Mapping[str, Any]) -> TeePublicKey:
    """Validate the TEE's JWK strictly and return its key-management alg and public key."""
    where = "TEE public key JWK"
    if not isinstance(jwk, Mapping):
        raise JweKeyInvalid(f"{where} must be a JSON object, got {type(jwk).__name__}; {_SUPPORTED}")
    private = sorted(str(name) for name in jwk if name in _PRIVATE_MEMBERS)
    if private:
        raise JweKeyInvalid(f"{where} carries private-key members {private}; only the public key may be sent")
    kty = _member(jwk, "kty", JweKeyInvalid, where)
    _check_members(jwk, kty, where)
    if kty == "EC":
        crv = _member(jwk, "crv", JweKeyInvalid, where)
        if crv not in _CURVES:
            raise JweKeyInvalid(f"unsupported EC curve {_show(crv)}; supported: P-256, P-521 with alg ECDH-ES+A256KW")
        alg = _member(jwk, "alg", JweKeyInvalid, where)
        if alg != ECDH_ES_A256KW:
            raise JweKeyInvalid(f"unsupported alg {_show(alg)} for kty EC; supported: ECDH-ES+A256KW")
        return TeePublicKey(alg, _ec_point(jwk, crv, JweKeyInvalid, where))
    if kty == "RSA":
        alg = _member(jwk, "alg", JweKeyInvalid, where)
        if alg not in RSA_ALGS:
            raise JweKeyInvalid(f"unsupported alg {_show(alg)} for kty RSA; supported: RSA-OAEP-256, RSA1_5")
        n = int.from_bytes(_bytes_member(jwk, "n", JweKeyInvalid, where), "big")
        e = int.from_bytes(_bytes_member(jwk, "e", JweKeyInvalid, where), "big")
        if not RSA_MIN_BITS <= n.bit_length() <= RSA_MAX_BITS:
            raise JweKeyInvalid(
                f"RSA modulus is {n.bit_length()} bits; supported: {RSA_MIN_BITS} to {RSA_MAX_BITS} bits"
            )
        if n % 2 == 0:
            raise JweKeyInvalid("RSA modulus n must be odd")
        if e <= 1 or e % 2 == 0 or e >= n:
            raise JweKeyInvalid("RSA public exponent e must be odd, greater than 1 and below n")
        if e.bit_length() > RSA_MAX_EXPONENT_BITS:
            raise JweKeyInvalid(f"RSA public exponent e is {e.bit_length()} bits; at most "
                                f"{RSA_MAX_EXPONENT_BITS} are supported (65537 is usual)")
        try:
            return TeePublicKey(alg, rsa.RSAPublicNumbers(e, n).public_key())
        except ValueError:
            raise JweKeyInvalid("RSA public key (n, e) is not valid") from None
    raise JweKeyInvalid(f"unsupported kty {_show(kty)}; {_SUPPORTED}")


def _check_members(jwk: Mapping[str, Any], kty: str, where: str) -> None:
    """Only the members the key type defines; `kid` short, `use` only "enc"."""
    allowed = _JWK_MEMBERS.get(kty)
    if allowed is None:
        raise JweKeyInvalid(f"unsupported kty {_show(kty)}; {_SUPPORTED}")
    unknown = sorted(str(name) for name in jwk if name not in allowed)
    if unknown:
        raise JweKeyInvalid(f"{where} has {len(unknown)} member(s) not defined for kty {kty}, e.g. "
                            f"{_show(unknown[0])}; allowed: {', '.join(sorted(allowed))}")
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_CHARS):
        raise JweKeyInvalid(f"{where} kid must be a string of at most {MAX_KID_CHARS} characters")
    if jwk.get("use", "enc") != "enc":
        raise JweKeyInvalid(f"{where} use must be \"enc\" when present")


def concat_kdf(z: bytes, alg: str = ECDH_ES_A256KW, key_bits: int = 256) -> bytes:
    """RFC 7518 §4.6.2 key derivation as trustee and guest-components use it: PartyU/PartyV empty."""
    algorithm_id = alg.encode("ascii")
    other_info = struct.pack(">I", len(algorithm_id)) + algorithm_id + struct.pack(">III", 0, 0, key_bits)
    return ConcatKDFHash(hashes.SHA256(), key_bits // 8, other_info).derive(z)


def protected_header(alg: str, extra: Mapping[str, Any]) -> bytes:
    """Compact JSON with alg, enc first and the rest sorted: the bytes the guest re-serializes for its AAD."""
    header: dict[str, Any] = {"alg": alg, "enc": ENC}
    for name in sorted(extra):
        header[name] = extra[name]
    return json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _epk(public: ec.EllipticCurvePublicKey) -> dict[str, str]:
    crv = _CRV_BY_CURVE_NAME[public.curve.name]
    size = _CURVES[crv][1]
    # The SEC 1 uncompressed point is 04 || x || y, each `size` bytes (a fifth of public_numbers()'s cost).
    point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    # Member order crv,kty,x,y is what trustee emits and what a sorting re-serializer produces.
    return {"crv": crv, "kty": "EC", "x": b64u(point[1:1 + size]), "y": b64u(point[1 + size:])}


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def encrypt(
    plaintext: bytes,
    tee_jwk: Mapping[str, Any],
    *,
    cek: bytes | None = None,
    iv: bytes | None = None,
    ephemeral_key: ec.EllipticCurvePrivateKey | None = None,
) -> dict[str, str]:
    """Seal `plaintext` for the TEE key.  `cek`, `iv` and `ephemeral_key` exist only to reproduce test vectors."""
    alg, public_key = parse_tee_jwk(tee_jwk)
    cek = os.urandom(CEK_BYTES) if cek is None else cek
    iv = os.urandom(IV_BYTES) if iv is None else iv
    if len(cek) != CEK_BYTES or len(iv) != IV_BYTES:
        raise UsageError(f"A256GCM needs a {CEK_BYTES}-byte CEK and a {IV_BYTES}-byte IV")
    extra: dict[str, Any] = {}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if ephemeral_key is None:
            ephemeral_key = ec.generate_private_key(public_key.curve)
        elif ephemeral_key.curve.name != public_key.curve.name:
            raise UsageError("the ephemeral key must be on the TEE key's curve")
        kek = concat_kdf(ephemeral_key.exchange(ec.ECDH(), public_key))
        encrypted_key = aes_key_wrap(kek, cek)
        extra["epk"] = _epk(ephemeral_key.public_key())
    else:
        if ephemeral_key is not None:
            raise UsageError("an ephemeral key applies only to ECDH-ES+A256KW")
        encrypted_key = public_key.encrypt(cek, _oaep() if alg == RSA_OAEP_256 else padding.PKCS1v15())
    protected = b64u(protected_header(alg, extra))
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    return {
        "protected": protected,
        "encrypted_key": b64u(encrypted_key),
        "iv": b64u(iv),
        "ciphertext": b64u(sealed[:-TAG_BYTES]),
        "tag": b64u(sealed[-TAG_BYTES:]),
    }


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate member")
    return dict(pairs)


def _load_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except ValueError:  # also UnicodeDecodeError and JSONDecodeError
        raise JweInvalid("JWE protected header is not valid JSON without duplicate members") from None
    if not isinstance(header, dict):
        raise JweInvalid("JWE protected header is not a JSON object")
    unknown = sorted(name for name in header if name not in _HEADER_MEMBERS)
    if unknown:
        raise JweInvalid(f"JWE protected header members {_show(unknown)} are not supported")
    enc = header.get("enc")
    if enc != ENC:
        raise JweInvalid(f"JWE enc {_show(enc)} is not supported; supported: {ENC}")
    return header


def _unwrap_cek(header: Mapping[str, Any], encrypted_key: bytes, private_key: TeePrivateKey) -> bytes:
    alg = header.get("alg")
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if alg != ECDH_ES_A256KW:
            raise JweInvalid(f"JWE alg {_show(alg)} does not fit an EC private key; expected {ECDH_ES_A256KW}")
        crv = _CRV_BY_CURVE_NAME.get(private_key.curve.name)
        if crv is None:
            raise UsageError(f"EC private key on {private_key.curve.name}; supported: P-256, P-521")
        epk = header.get("epk")
        if not isinstance(epk, dict) or epk.get("kty") != "EC" or epk.get("crv") != crv:
            raise JweInvalid(f"JWE epk must be an EC JWK on {crv}, the private key's curve")
        peer = _new_ec_point(epk, crv, JweInvalid, "JWE epk")  # ephemeral: one JWE's, never seen again, not cached
        kek = concat_kdf(private_key.exchange(ec.ECDH(), peer))
        try:
            return aes_key_unwrap(kek, encrypted_key)
        except InvalidUnwrap:
            raise JweInvalid(_DECRYPT_FAILED) from None
    if isinstance(private_key, rsa.RSAPrivateKey):
        if alg not in RSA_ALGS or "epk" in header:
            raise JweInvalid(f"JWE alg {_show(alg)} does not fit an RSA private key; expected RSA-OAEP-256 or RSA1_5")
        if alg == RSA_OAEP_256:
            try:
                return private_key.decrypt(encrypted_key, _oaep())
            except ValueError:
                raise JweInvalid(_DECRYPT_FAILED) from None
        # RSA1_5: on bad padding carry on with a random CEK so the failure shows only as a bad GCM tag,
        # the same as any other (RFC 7516 §11.5, Bleichenbacher).
        try:
            cek = private_key.decrypt(encrypted_key, padding.PKCS1v15())
        except ValueError:
            cek = b""
        return cek if len(cek) == CEK_BYTES else os.urandom(CEK_BYTES)
    raise UsageError(f"private key type {type(private_key).__name__}; supported: EC (P-256, P-521) or RSA")


def decrypt(jwe: Mapping[str, str], private_key: TeePrivateKey) -> bytes:
    """Open a JWE made by `encrypt` (or trustee) with the TEE private key: the guest side."""
    where = "JWE"
    if not isinstance(jwe, Mapping):
        raise JweInvalid(f"JWE must be a JSON object, got {type(jwe).__name__}")
    unknown = sorted(str(name) for name in jwe if name not in _JWE_MEMBERS)
    if unknown:
        raise JweInvalid(f"JWE members {_show(unknown)} are not supported; expected exactly {list(_JWE_MEMBERS)}")
    raw = {name: _bytes_member(jwe, name, JweInvalid, where, max_chars=1 << 24) for name in _JWE_MEMBERS}
    if len(raw["iv"]) != IV_BYTES or len(raw["tag"]) != TAG_BYTES:
        raise JweInvalid(f"JWE iv must be {IV_BYTES} bytes and tag {TAG_BYTES} bytes")
    header = _load_header(raw["protected"])
    cek = _unwrap_cek(header, raw["encrypted_key"], private_key)
    if len(cek) != CEK_BYTES:
        raise JweInvalid(_DECRYPT_FAILED)
    # The AAD is the protected string exactly as received, not a re-serialization of the header.
    aad = jwe["protected"].encode("ascii")
    try:
        return AESGCM(cek).decrypt(raw["iv"], raw["ciphertext"] + raw["tag"], aad)
    except InvalidTag:
        raise JweInvalid(_DECRYPT_FAILED) from None


def public_jwk(key: TeePrivateKey | PublicKey, alg: str | None = None) -> dict[str, str]:
    """The JWK a guest sends as `tee-pubkey`; checked with the same rules the broker applies."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else key
    jwk: dict[str, str]
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in _CRV_BY_CURVE_NAME:
            raise JweKeyInvalid(f"unsupported EC curve {public.curve.name}; supported: P-256, P-521")
        epk = _epk(public)
        jwk = {"kty": "EC", "crv": epk["crv"], "alg": ECDH_ES_A256KW if alg is None else alg,
               "x": epk["x"], "y": epk["y"]}
    elif isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        jwk = {"kty": "RSA", "alg": RSA_OAEP_256 if alg is None else alg,
               "n": b64u(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
               "e": b64u(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"))}
    else:
        raise UsageError(f"key type {type(key).__name__}; supported: EC (P-256, P-521) or RSA")
    parse_tee_jwk(jwk)
    return jwk


def generate_tee_key(kind: str) -> TeeKey:
    """A fresh TEE key pair of `kind` (one of TEE_KEY_KINDS) and its JWK."""
    private_key: TeePrivateKey
    if kind == "EC-P256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "EC-P521":
        private_key = ec.generate_private_key(ec.SECP521R1())
    elif kind in RSA_ALGS:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=GUEST_RSA_BITS)
    else:
        raise UsageError(f"unknown TEE key kind {_show(kind)}; supported: {', '.join(TEE_KEY_KINDS)}")
    return TeeKey(private_key, public_jwk(private_key, kind if kind in RSA_ALGS else None))
