"""ECDSA P-256 through the C core's one entry point: every Wycheproof P-256/SHA-256 case, the NIST CAVP
P-256 SigVer, SigGen and PKV records, and differential tests against OpenSSL (pyca/cryptography) and the
system libcrypto's verification (the reference kept beside the fast core).  Every verdict is also taken
through a key table (P256KeyTable) and must be the cold one; P256KeyCache's bounds, LRU order and
threads; TDX quotes verified through key tables (`cache=`) against the cold path, and a key table of
another key refused.

The interface takes r || s (64 bytes), as TDX quotes and Intel's collateral carry signatures.  The
P1363 file is that format; DER cases are converted when they decode as strict DER into integers that
fit 32 bytes, and skipped with their reason when they are about the encoding alone (which an r || s
interface cannot get wrong).  Every verdict is checked on each path (digest, any-length hash,
libcrypto by name, the Python wrappers).  No timing here: speed lives in bench/bench_p256.py.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from kbs import native
from kbs.errors import KbsError, SignatureInvalid
from kbs.native._ffi import raise_for
from tests import p384_ref
from tests.ec_ref import P256
from tests.tdx_quotes import QuoteKeys, build_quote, real_quotes

lib = native.lib
OK: int = lib.KBS_OK
KEY_ERRORS = {lib.KBS_ERR_KEY_LENGTH, lib.KBS_ERR_KEY_FORMAT, lib.KBS_ERR_KEY_NOT_ON_CURVE}

# P-256 in plain integer arithmetic (tests.ec_ref), for crafting edge cases.
P, N, B, G = P256.p, P256.n, P256.b, P256.g
add, mul, neg, encode = P256.add, P256.mul, P256.neg, P256.encode

ROOT = p384_ref.vectors_dir()
vectors = pytest.mark.skipif(ROOT is None, reason="test vectors not found: set KBS_VECTORS (default ../shared/vectors)")
WYCHEPROOF = {"ecdsa_secp256r1_sha256_p1363_test.json": 262, "ecdsa_secp256r1_sha256_test.json": 484}


def rs_bytes(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# --- every path's status for one case ---

def statuses(key: bytes, hash_value: bytes, sig: bytes) -> dict[str, int]:
    """The status of every path for one (key, hash of any length, r || s)."""
    digest = hash_value[:32].rjust(32, b"\0")
    r, s = sig[:32], sig[32:]
    out = {
        "digest": lib.kbs_p256_verify_digest(key, len(key), digest, r, s),
        "hash": lib.kbs_p256_verify_hash(key, len(key), hash_value, len(hash_value), r, s),
        "libcrypto": lib.kbs_p256_verify_digest_libcrypto(key, len(key), digest, r, s),
        "status": native.p256_verify_status(key, digest, sig),
    }
    fn: Callable[[], object]
    for name, fn in (("wrap-digest", lambda: native.p256_verify_digest(key, digest, sig)),
                     ("wrap-hash", lambda: native.p256_verify_hash(key, hash_value, sig))):
        try:
            fn()
            out[name] = OK
        except SignatureInvalid:
            out[name] = -1
    out["table"] = table_status(key, digest, sig)
    return out


def table_status(key: bytes, digest: bytes, sig: bytes) -> int:
    """The verdict through a key table; a key the table builder refuses gives the status it raised for."""
    status = lib.kbs_p256_key_precompute(key, len(key), native.ffi.new("struct kbs_p256_key_table *"))
    if status != OK:
        with pytest.raises(SignatureInvalid) as err:
            native.P256KeyTable(key)
        assert err.value.check == "key"
        return int(status)
    return native.P256KeyTable(key).verify_status(digest, sig)


def verdict(key: bytes, hash_value: bytes, sig: bytes) -> bool:
    got = statuses(key, hash_value, sig)
    assert len({v == OK for v in got.values()}) == 1, got
    assert got["digest"] == got["hash"] == got["libcrypto"] == got["status"] == got["table"], got
    return got["digest"] == OK


def pyca_verdict(key: bytes, hash_value: bytes, r: int, s: int, algo: hashes.HashAlgorithm | None = None) -> bool:
    try:
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
        if algo is None:
            algo, hash_value = hashes.SHA256(), hash_value[:32].rjust(32, b"\0")
        pub.verify(utils.encode_dss_signature(r, s), hash_value, ec.ECDSA(utils.Prehashed(algo)))
    except (InvalidSignature, ValueError):
        return False
    return True


# --- Wycheproof ---

def der_integers(sig: bytes) -> tuple[int, int] | None:
    """SEQUENCE { INTEGER, INTEGER } in strict DER (short or minimal long lengths, minimal integers), as
    signed integers; None for any encoding fault.  p384_ref.der_decode also refuses negative values,
    which are well encoded but not expressible as r || s: the two are skipped for different reasons."""
    def length(pos: int) -> tuple[int, int] | None:
        if pos >= len(sig):
            return None
        if sig[pos] < 0x80:
            return sig[pos], pos + 1
        if sig[pos] != 0x81 or pos + 1 >= len(sig) or sig[pos + 1] < 0x80:
            return None
        return sig[pos + 1], pos + 2

    def integer(pos: int) -> tuple[int, int] | None:
        got = length(pos + 1) if pos < len(sig) and sig[pos] == 0x02 else None
        if got is None:
            return None
        size, start = got
        body = sig[start:start + size]
        if size == 0 or len(body) != size:
            return None
        if size > 1 and ((body[0] == 0 and not body[1] & 0x80) or (body[0] == 0xFF and body[1] & 0x80)):
            return None  # not minimal
        return int.from_bytes(body, "big", signed=True), start + size

    got = length(1) if sig[:1] == b"\x30" else None
    if got is None or got[1] + got[0] != len(sig):
        return None
    r = integer(got[1])
    s = integer(r[1]) if r else None
    if r is None or s is None or s[1] != len(sig):
        return None
    return r[0], s[0]


def wycheproof_cases() -> list[Any]:
    if ROOT is None:
        return [pytest.param(None, id="no-vectors")]
    cases = []
    for name in WYCHEPROOF:
        data = json.loads((ROOT / "wycheproof" / name).read_text())
        kind = "p1363" if "p1363" in name else "der"
        for group in data["testGroups"]:
            assert group["sha"] == "SHA-256"
            key = bytes.fromhex(group["publicKey"]["uncompressed"])
            for t in group["tests"]:
                case = (kind, key, bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"]), t["result"], t["flags"])
                cases.append(pytest.param(case, id=f"{kind}-{t['tcId']}"))
    return cases


@vectors
def test_wycheproof_counts() -> None:
    counts = {"p1363": 0, "der": 0}
    for param in wycheproof_cases():
        counts[param.values[0][0]] += 1
    assert counts == {"p1363": 262, "der": 484}


@pytest.mark.parametrize("case", wycheproof_cases())
def test_wycheproof(case: tuple[str, bytes, bytes, bytes, str, list[str]] | None) -> None:
    if case is None:
        pytest.skip("test vectors not found: set KBS_VECTORS (default ../shared/vectors)")
    kind, key, msg, sig, result, flags = case
    assert result in ("valid", "invalid")  # the P-256 files have no "acceptable" case
    valid = result == "valid"
    if kind == "der":
        rs = der_integers(sig)
        if rs is None:
            assert not valid  # a DER encoding case: an r || s interface has no encoding to reject
            return
        if min(rs) < 0 or max(rs) >= 2**256:
            assert not valid  # negative or wider than 32 bytes: no unsigned 32-byte r || s says it
            return
        sig = rs_bytes(*rs)
    elif len(sig) != 64:  # SignatureSize: the wrapper refuses any length but 64
        assert not valid
        with pytest.raises(SignatureInvalid):
            native.p256_verify(key, msg, sig)
        return
    digest = hashlib.sha256(msg).digest()
    assert verdict(key, digest, sig) == valid, (flags, statuses(key, digest, sig))
    if valid:
        native.p256_verify(key, msg, sig)
    else:
        with pytest.raises(SignatureInvalid):
            native.p256_verify(key, msg, sig)
    assert pyca_verdict(key, digest, int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")) == valid


@vectors
def test_wycheproof_public_keys() -> None:
    """Off-curve, malformed and compressed points from the ECDH point-validation file are key errors."""
    assert ROOT is not None
    data = json.loads((ROOT / "wycheproof" / "ecdh_secp256r1_ecpoint_test.json").read_text())
    checked = 0
    for group in data["testGroups"]:
        for t in group["tests"]:
            point = bytes.fromhex(t["public"])
            status = native.p256_verify_status(point, bytes(32), b"\1" * 64)
            good = t["result"] == "valid" and len(point) == 65 and point[:1] == b"\x04"
            assert (status not in KEY_ERRORS) == good, (t["tcId"], native.status_name(status))
            checked += 1
    assert checked == 355


# --- NIST CAVP ---

CAVP_HASHES = {"SHA-1": hashes.SHA1(), "SHA-224": hashes.SHA224(), "SHA-256": hashes.SHA256(),
               "SHA-384": hashes.SHA384(), "SHA-512": hashes.SHA512()}


@vectors
def test_cavp_sigver_and_siggen() -> None:
    seen = {"P": 0, "F": 0}
    for name in ("SigVer.rsp", "SigGen.rsp"):
        for rec in p384_ref.cavp_records(name, curve="P-256"):
            hash_name = rec["section"].split(",")[1]
            hash_value = hashlib.new(p384_ref.HASHES[hash_name], bytes.fromhex(rec["Msg"])).digest()
            key = b"\x04" + int(rec["Qx"], 16).to_bytes(32, "big") + int(rec["Qy"], 16).to_bytes(32, "big")
            r, s = int(rec["R"], 16), int(rec["S"], 16)
            passed = rec.get("Result", "P").startswith("P")
            seen["P" if passed else "F"] += 1
            case = f"{name} {rec['section']} R={rec['R'][:12]}"
            assert verdict(key, hash_value, rs_bytes(r, s)) == passed, case
            assert pyca_verdict(key, hash_value, r, s, CAVP_HASHES[hash_name]) == passed, case
            if passed:
                native.p256_verify_hash(key, hash_value, rs_bytes(r, s))
    assert seen == {"P": 15 + 75, "F": 60}


@vectors
def test_cavp_pkv() -> None:
    count = 0
    for rec in p384_ref.cavp_records("PKV.rsp", curve="P-256"):
        count += 1
        x, y = int(rec["Qx"], 16), int(rec["Qy"], 16)
        if max(x, y) >= 2**256:
            assert rec["Result"].startswith("F")
            continue
        status = native.p256_verify_status(b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big"), bytes(32),
                                           b"\1" * 64)
        assert (status not in KEY_ERRORS) == rec["Result"].startswith("P"), rec
    assert count == 12


# --- differential tests against OpenSSL (pyca) and the plain arithmetic above ---

def keypair(d: int | None = None) -> tuple[int, bytes]:
    priv = ec.derive_private_key(d, ec.SECP256R1()) if d else ec.generate_private_key(ec.SECP256R1())
    point = priv.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return priv.private_numbers().private_value, point


def sign(d: int, e: int, k: int | None = None) -> tuple[int, int]:
    """ECDSA with a chosen nonce, so tests can steer r."""
    while True:
        nonce = k if k is not None else secrets.randbelow(N - 1) + 1
        pt = mul(nonce, G)
        assert pt is not None
        r = pt[0] % N
        s = pow(nonce, -1, N) * (e + r * d) % N
        if r and s:
            return r, s
        assert k is None


def agree(key: bytes, digest: bytes, r: int, s: int) -> bool:
    """Our verdict, checked against pyca's for every r, s that fit 32 bytes."""
    ours = verdict(key, digest, rs_bytes(r, s))
    assert ours == pyca_verdict(key, digest, r, s), (key.hex(), digest.hex(), hex(r), hex(s))
    return ours


def test_random_keys_and_messages() -> None:
    for _ in range(16):
        d, key = keypair()
        digest = hashlib.sha256(secrets.token_bytes(32)).digest()
        r, s = sign(d, int.from_bytes(digest, "big"))
        assert agree(key, digest, r, s)
        assert agree(key, digest, r, N - s)  # high s is valid: no low-s rule
        assert not agree(key, digest, r, (s + 1) % N or 1)
        assert not agree(key, bytes([digest[0] ^ 1]) + digest[1:], r, s)


def test_signature_range_edges() -> None:
    d, key = keypair()
    digest = hashlib.sha256(b"edges").digest()
    r, s = sign(d, int.from_bytes(digest, "big"))
    for bad in (0, N, N + 1, P, 2**256 - 1):
        for rr, ss in ((bad, s), (r, bad)):
            got = statuses(key, digest, rs_bytes(rr, ss))
            assert {got[k] for k in ("digest", "hash", "libcrypto", "status", "table")} == {lib.KBS_ERR_SIG_RANGE}, \
                hex(bad)
            assert not pyca_verdict(key, digest, rr, ss)


def test_r_plus_n_case() -> None:
    """x(R) in [n, p): valid only when r = x(R) - n is compared, not x(R) itself."""
    x = N + 1
    while True:
        rhs = (x**3 - 3 * x + B) % P
        y = pow(rhs, (P + 1) // 4, P)
        if y * y % P == rhs:
            break
        x += 1
    u1, u2 = secrets.randbelow(N - 1) + 1, secrets.randbelow(N - 1) + 1
    q = mul(pow(u2, -1, N), add((x, y), neg(mul(u1, G))))  # u1*G + u2*Q = R
    assert q is not None
    key, r = encode(q), x % N
    s = r * pow(u2, -1, N) % N
    digest = (u1 * s % N).to_bytes(32, "big")
    assert agree(key, digest, r, s)
    assert not agree(key, digest, r + 1, s)
    assert verdict(key, digest, rs_bytes(x, s)) is False  # r = x(R) >= n is out of range


def test_u1g_equals_plus_minus_u2q() -> None:
    """e = +-r*d makes u1*G = +-u2*Q: doubling, and a sum at infinity that must never read as x = 0."""
    d, key = keypair()
    r, s = 12345, 67890
    agree(key, (r * d % N).to_bytes(32, "big"), r, s)
    assert not agree(key, (-r * d % N).to_bytes(32, "big"), r, s)


def test_public_key_edges() -> None:
    d, key = keypair()
    digest = hashlib.sha256(b"k").digest()
    sig = rs_bytes(*sign(d, int.from_bytes(digest, "big")))
    cases = {
        b"\x00": lib.KBS_ERR_KEY_LENGTH,  # the point at infinity
        key[:64]: lib.KBS_ERR_KEY_LENGTH,
        key + b"\x00": lib.KBS_ERR_KEY_LENGTH,
        b"\x02" + key[1:33]: lib.KBS_ERR_KEY_LENGTH,  # compressed: not accepted
        b"\x05" + key[1:]: lib.KBS_ERR_KEY_FORMAT,
        bytes(65): lib.KBS_ERR_KEY_FORMAT,
        key[:-1] + bytes([key[-1] ^ 1]): lib.KBS_ERR_KEY_NOT_ON_CURVE,
        b"\x04" + P.to_bytes(32, "big") + key[33:]: lib.KBS_ERR_KEY_NOT_ON_CURVE,
        b"\x04" + bytes(64): lib.KBS_ERR_KEY_NOT_ON_CURVE,
    }
    for bad, status in cases.items():
        got = statuses(bad, digest, sig)
        assert {got[k] for k in ("digest", "hash", "libcrypto", "status", "table")} == {status}, bad.hex()
        with pytest.raises(SignatureInvalid) as err:
            native.p256_verify_digest(bad, digest, sig)
        assert err.value.check == "key", str(err.value)
    for d_edge in (1, N - 1):  # Q = G and Q = -G are fine keys
        _, edge_key = keypair(d_edge)
        assert agree(edge_key, digest, *sign(d_edge, int.from_bytes(digest, "big")))


def test_hash_lengths() -> None:
    d, key = keypair()
    for algo in ("sha1", "sha224", "sha256", "sha384", "sha512"):
        h = hashlib.new(algo, b"msg").digest()
        sig = rs_bytes(*sign(d, int.from_bytes(h[:32], "big") % N))
        native.p256_verify_hash(key, h, sig)
        assert verdict(key, h, sig)
    for h in (b"", b"\xff" * 32, b"\xff" * 64, N.to_bytes(32, "big")):  # e = 0, e >= n
        sig = rs_bytes(*sign(d, int.from_bytes(h[:32], "big") % N))
        assert verdict(key, h, sig)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(1, N - 1), msg=st.binary(max_size=64),
       mutation=st.sampled_from(["none", "neg-s", "r+1", "s-1", "swap", "digest", "key", "small", "bit"]),
       bit=st.integers(0, 511))
def test_hypothesis_differential(seed: int, msg: bytes, mutation: str, bit: int) -> None:
    d, key = keypair(seed)
    digest = hashlib.sha256(msg).digest()
    r, s = sign(d, int.from_bytes(digest, "big") % N, k=(seed * 7919) % N or 1)
    sig = rs_bytes(r, s)
    if mutation == "neg-s":
        sig = rs_bytes(r, N - s)
    elif mutation == "r+1":
        sig = rs_bytes((r + 1) % N, s)
    elif mutation == "s-1":
        sig = rs_bytes(r, (s - 1) % N)
    elif mutation == "swap":
        sig = rs_bytes(s, r)
    elif mutation == "digest":
        digest = hashlib.sha256(msg + b"!").digest()
    elif mutation == "key":
        key = keypair(seed % (N - 1) + 1 if seed % (N - 1) + 1 != seed else 2)[1]
    elif mutation == "small":
        sig = rs_bytes(1 + seed % 3, 1 + seed % 5)
    elif mutation == "bit":
        flipped = bytearray(sig)
        flipped[bit // 8] ^= 1 << (bit % 8)
        sig = bytes(flipped)
    ours = agree(key, digest, int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    if mutation in ("none", "neg-s"):
        assert ours
    elif mutation not in ("small", "swap"):
        assert not ours


# --- the Python API ---

def test_wrappers() -> None:
    priv = ec.generate_private_key(ec.SECP256R1())
    key = priv.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    r, s = utils.decode_dss_signature(priv.sign(b"message", ec.ECDSA(hashes.SHA256())))
    sig = rs_bytes(r, s)
    digest = hashlib.sha256(b"message").digest()
    native.p256_verify(key, b"message", sig)
    native.p256_verify_digest(key, digest, sig)
    native.p256_verify_digest_libcrypto(key, digest, sig)
    native.p256_verify_hash(key, digest + b"ignored: past the leftmost 256 bits", sig)
    assert native.p256_verify_status(key, digest, sig) == OK
    assert native.p256_verify_status(key, digest, sig[:63]) == lib.KBS_ERR_SIG_RANGE
    assert native.sha256(b"message") == digest
    call: Callable[[], object]
    for call, check in ((lambda: native.p256_verify(key, b"other", sig), "signature"),
                        (lambda: native.p256_verify(key, b"message", sig[:63]), "signature"),
                        (lambda: native.p256_verify_digest(key, digest[:31], sig), "signature"),
                        (lambda: native.p256_verify(key, b"message", rs_bytes(0, s)), "signature"),
                        (lambda: native.p256_verify(key[:64], b"message", sig), "key")):
        with pytest.raises(SignatureInvalid) as err:
            call()
        assert err.value.check == check, str(err.value)


# --- key tables and the key cache ---

TABLE_KEYS = [keypair(d) for d in (1, 2, N - 1, 0xC0FFEE)]  # G, 2G, -G and an ordinary key
TABLES = [native.P256KeyTable(key) for _, key in TABLE_KEYS]


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, len(TABLE_KEYS) - 1), digest=st.binary(min_size=32, max_size=32),
       r=st.integers(0, 2**256 - 1) | st.sampled_from([0, 1, N - 1, N, N + 1, P, 2**256 - 1]),
       s=st.integers(0, 2**256 - 1) | st.sampled_from([0, 1, N - 1, N, N + 1, P, 2**256 - 1]),
       signed=st.booleans())
def test_hypothesis_table_agrees_with_cold(which: int, digest: bytes, r: int, s: int, signed: bool) -> None:
    """Any r, s (signed ones too): the table, the cold core and libcrypto give one status."""
    d, key = TABLE_KEYS[which]
    if signed:
        r, s = sign(d, int.from_bytes(digest, "big") % N)
    sig = rs_bytes(r, s)
    cold = native.p256_verify_status(key, digest, sig)
    assert TABLES[which].verify_status(digest, sig) == cold
    assert lib.kbs_p256_verify_digest_libcrypto(key, 65, digest, sig[:32], sig[32:]) == cold
    assert (cold == OK) == pyca_verdict(key, digest, r, s)
    if signed:
        assert cold == OK


def test_key_table_api() -> None:
    d, key = keypair()
    digest = hashlib.sha256(b"t").digest()
    sig = rs_bytes(*sign(d, int.from_bytes(digest, "big")))
    table = native.P256KeyTable(key)
    table.verify(digest, sig)
    assert table.public_key == key and table.verify_status(digest, sig[:63]) == lib.KBS_ERR_SIG_RANGE
    out = native.ffi.new("uint8_t[65]")
    assert lib.kbs_p256_key_table_point(table.c_pointer(), out) == OK and bytes(out) == key
    with pytest.raises(SignatureInvalid) as err:
        table.verify(digest[::-1], sig)
    assert err.value.check == "signature"
    with pytest.raises(SignatureInvalid) as err:
        table.verify(digest, sig[:63])
    assert err.value.check == "signature"
    for bad in (key[:64], b"\x02" + key[1:], key[:-1] + bytes([key[-1] ^ 1])):
        with pytest.raises(SignatureInvalid) as err:
            native.P256KeyTable(bad)
        assert err.value.check == "key"
    blank = native.ffi.new("struct kbs_p256_key_table *")
    assert lib.kbs_p256_verify_digest_with_table(blank, digest, sig[:32], sig[32:]) == lib.KBS_ERR_INTERNAL


def test_key_cache_counts_builds_and_evicts() -> None:
    cache = native.P256KeyCache(max_tables=2, build_after=2)
    keys = [keypair() for _ in range(3)]
    digest = hashlib.sha256(b"c").digest()
    sigs = [rs_bytes(*sign(d, int.from_bytes(digest, "big"))) for d, _ in keys]
    k0, k1, k2 = (k for _, k in keys)
    assert cache.get(k0) is None and cache.table_for(k0) is None and len(cache) == 0  # get counts nothing
    cache.verify(k0, digest, sigs[0])  # the second sighting builds the table
    assert len(cache) == 1 and cache.get(k0) is not None
    for key, sig in ((k1, sigs[1]), (k1, sigs[1]), (k0, sigs[0]), (k2, sigs[2]), (k2, sigs[2])):
        cache.verify(key, digest, sig)
    assert len(cache) == 2  # bounded: k1, least recently used, went; k0 was used after it
    assert cache.get(k0) is not None and cache.get(k1) is None and cache.get(k2) is not None
    with pytest.raises(SignatureInvalid):
        cache.verify(k0, digest, sigs[2])
    assert cache.verify_status(b"\x04" * 5, digest, sigs[0]) == lib.KBS_ERR_KEY_LENGTH
    off_curve = k1[:-1] + bytes([k1[-1] ^ 1])
    for _ in range(3):  # a table is due but the key is bad: the cold path names the problem
        assert cache.verify_status(off_curve, digest, sigs[1]) == lib.KBS_ERR_KEY_NOT_ON_CURVE
    with pytest.raises(SignatureInvalid):
        cache.table_for(off_curve)
    with pytest.raises(ValueError):
        native.P256KeyCache(max_tables=0)
    # sightings of keys without a table are bounded too (8 per table slot)
    for i in range(40):
        cache.table_for(bytes([4, i]) + bytes(63))
    assert len(cache._sightings) <= 16


def test_key_cache_threads() -> None:
    cache = native.P256KeyCache(max_tables=2, build_after=2)
    keys = [keypair() for _ in range(3)]
    digest = hashlib.sha256(b"threads").digest()
    sigs = [rs_bytes(*sign(d, int.from_bytes(digest, "big"))) for d, _ in keys]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(30):
                j = (i + offset) % 3
                assert cache.verify_status(keys[j][1], digest, sigs[j]) == OK
                assert cache.verify_status(keys[j][1], digest, sigs[(j + 1) % 3]) == lib.KBS_ERR_SIG_INVALID
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and 1 <= len(cache) <= 2


def test_generic_key_cache_builds_once_per_due_sighting() -> None:
    built: list[bytes] = []

    def build(key: bytes) -> str:
        built.append(key)
        if key == b"bad":
            raise SignatureInvalid("bad key", check="key")
        return key.decode()

    cache: native.KeyTableCache[str] = native.KeyTableCache(build, max_tables=2, build_after=3)
    assert [cache.table_for(b"a") for _ in range(4)] == [None, None, "a", "a"] and built == [b"a"]
    for _ in range(2):
        assert cache.table_for(b"bad") is None
    with pytest.raises(SignatureInvalid):
        cache.table_for(b"bad")
    assert cache.table_for(b"bad") is None  # counting starts again after a refused build
    assert len(cache) == 1 and cache.get(b"a") == "a"


# --- TDX quotes through key tables ---

REAL_QUOTES = real_quotes(ROOT) if ROOT is not None else []


def allow_trailing(data: bytes) -> bool:
    return native.tdx_parse(data, allow_trailing_bytes=True).extra_bytes != b""


@vectors
@pytest.mark.parametrize("index", range(len(REAL_QUOTES)) or [0])
def test_tdx_with_tables_agrees_on_real_quotes(index: int) -> None:
    real = REAL_QUOTES[index]
    allow = allow_trailing(real.data)
    cold = native.tdx_verify(real.data, real.pck_point, allow_trailing_bytes=allow)
    cache = native.P256KeyCache(max_tables=4, build_after=2)
    for round_ in range(3):  # sightings 1 and 2 run cold; the second builds both tables; the third uses them
        assert native.tdx_verify(real.data, real.pck_point, allow_trailing_bytes=allow, cache=cache) == cold
        assert len(cache) == (0 if round_ == 0 else 2)
    assert cache.get(real.pck_point) is not None and cache.get(cold.attestation_point) is not None
    assert native.tdx_verify_status(real.data, real.pck_point, allow_trailing_bytes=allow, cache=cache) == OK
    assert native.tdx_verify_signatures(  # type: ignore[func-returns-value]
        real.data, real.pck_point, allow_trailing_bytes=allow, cache=cache) is None
    # with tables in C, each check still refuses its own defect
    pck_table, ak_table = (native.P256KeyTable(k) for k in (real.pck_point, cold.attestation_point))
    out = native.ffi.new("struct kbs_tdx_quote *")
    flags = lib.KBS_TDX_ALLOW_TRAILING_BYTES if allow else 0

    def with_tables(data: bytes, pck: Any, ak: Any) -> int:
        return int(lib.kbs_tdx_verify_with_tables(data, len(data), flags, real.pck_point, 65, pck, ak, out))

    data = bytearray(real.data)
    data[cold.signed_size - 1] ^= 1
    qe_sig = real.data.index(cold.qe_report_signature)
    flipped_qe = bytearray(real.data)
    flipped_qe[qe_sig + 63] ^= 1
    for pck, ak in ((pck_table.c_pointer(), ak_table.c_pointer()), (native.ffi.NULL, ak_table.c_pointer()),
                    (pck_table.c_pointer(), native.ffi.NULL)):
        assert with_tables(real.data, pck, ak) == OK
        assert with_tables(bytes(data), pck, ak) == lib.KBS_ERR_TDX_QUOTE_SIG_INVALID
        assert with_tables(bytes(flipped_qe), pck, ak) == lib.KBS_ERR_TDX_QE_REPORT_SIG_INVALID


def test_tdx_table_of_another_key_is_refused() -> None:
    data, keys = build_quote()
    other = QuoteKeys()
    point = keys.pck_point
    q = native.tdx_verify(data, point)
    out = native.ffi.new("struct kbs_tdx_quote *")
    right_pck, right_ak = native.P256KeyTable(point), native.P256KeyTable(q.attestation_point)
    wrong = native.P256KeyTable(other.pck_point)

    def status(pck: native.P256KeyTable | None, ak: native.P256KeyTable | None, pck_point: bytes = point) -> int:
        return int(lib.kbs_tdx_verify_with_tables(data, len(data), 0, pck_point, len(pck_point),
                                                  pck.c_pointer() if pck else native.ffi.NULL,
                                                  ak.c_pointer() if ak else native.ffi.NULL, out))

    assert status(right_pck, right_ak) == OK
    assert status(wrong, right_ak) == lib.KBS_ERR_TDX_PCK_TABLE_MISMATCH
    assert status(right_ak, None) == lib.KBS_ERR_TDX_PCK_TABLE_MISMATCH
    assert status(right_pck, wrong) == lib.KBS_ERR_TDX_ATT_KEY_TABLE_MISMATCH
    assert status(None, right_pck) == lib.KBS_ERR_TDX_ATT_KEY_TABLE_MISMATCH
    assert status(right_pck, right_ak, other.pck_point) == lib.KBS_ERR_TDX_PCK_TABLE_MISMATCH
    assert status(right_pck, right_ak, point[:64]) == lib.KBS_ERR_TDX_PCK_KEY
    for code in (lib.KBS_ERR_TDX_PCK_TABLE_MISMATCH, lib.KBS_ERR_TDX_ATT_KEY_TABLE_MISMATCH):
        with pytest.raises(KbsError) as err:
            raise_for(code)
        assert err.value.check == "internal" and "another key" in str(err.value)


def test_tdx_cache_counts_only_keys_of_quotes_that_verified() -> None:
    cache = native.P256KeyCache(max_tables=8, build_after=2)
    data, keys = build_quote()
    forged = bytearray(data)
    forged[100] ^= 1  # the body: the quote signature fails, the QE report still verifies
    for _ in range(3):
        with pytest.raises(SignatureInvalid) as err:
            native.tdx_verify(bytes(forged), keys.pck_point, cache=cache)
        assert err.value.check == "quote.signature"
        assert native.tdx_verify_status(bytes(forged), keys.pck_point, cache=cache) == \
            lib.KBS_ERR_TDX_QUOTE_SIG_INVALID
        with pytest.raises(SignatureInvalid):
            native.tdx_verify_signatures(bytes(forged), keys.pck_point, cache=cache)
    assert len(cache) == 0 and not cache._sightings  # nothing counted for a refused quote
    cold = native.tdx_verify(data, keys.pck_point)
    for expected_tables in (0, 2, 2):
        assert native.tdx_verify(data, keys.pck_point, cache=cache) == cold
        assert len(cache) == expected_tables
    # a malformed quote goes through the cache without a lookup of its attestation key
    assert native.tdx_verify_status(data[:100], keys.pck_point, cache=cache) == lib.KBS_ERR_TDX_BODY_TRUNCATED
    # each check still refuses its own defect through the tables
    q = native.tdx_parse(data)
    for region, check in ((data.index(q.qe_report_signature) + 40, "quote.qe_report_signature"),
                          (data.index(q.qe_auth_data) + 3, "quote.qe_binding"),
                          (data.index(q.signature) + 50, "quote.signature")):
        bad = bytearray(data)
        bad[region] ^= 1
        with pytest.raises(KbsError) as warm_err:
            native.tdx_verify_signatures(bytes(bad), keys.pck_point, cache=cache)
        assert warm_err.value.check == check
        with pytest.raises(KbsError) as cold_err:
            native.tdx_verify(bytes(bad), keys.pck_point)
        assert cold_err.value.check == check and str(cold_err.value) == str(warm_err.value)

