"""The fast P-384 core: every P-384 Wycheproof and CAVP vector, edge cases, differential tests.

Each verdict is checked on every path (cold key, cached table, batch) and against libcrypto
through the extension, OpenSSL through pyca/cryptography, and the Python reference in
tests/p384_ref.py.  No timing assertions here: speed lives in bench/bench_p384.py.
"""

from __future__ import annotations

import hashlib
import secrets

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kbs import native
from kbs.errors import SignatureInvalid
from tests import p384_ref as ref
from tests.threads import on_threads

lib = native.lib
OK = lib.KBS_OK
vectors = pytest.mark.skipif(ref.vectors_dir() is None,
                             reason="test vectors not found: set KBS_VECTORS (default ../shared/vectors)")

# file -> number of tests (shared/vectors/wycheproof/SOURCES.md)
WYCHEPROOF = {
    "ecdsa_secp384r1_sha384_test.json": 504, "ecdsa_secp384r1_sha384_p1363_test.json": 280,
    "ecdsa_secp384r1_sha512_test.json": 542, "ecdsa_secp384r1_sha512_p1363_test.json": 318,
    "ecdsa_secp384r1_sha256_test.json": 472,
}


def statuses(key: bytes, hash_value: bytes, r: int, s: int) -> dict[str, int]:
    """The status of every implementation and path for one (key, hash, r, s)."""
    rb, sb = ref.scalar_bytes(r), ref.scalar_bytes(s)
    if rb is None or sb is None:
        return {"range": lib.KBS_ERR_SIG_RANGE}
    digest = hash_value[:48].rjust(48, b"\0")
    out = {
        "hash": lib.kbs_p384_verify_hash(key, len(key), hash_value, len(hash_value), rb, sb),
        "digest": lib.kbs_p384_verify_digest(key, len(key), digest, rb, sb),
        "libcrypto": lib.kbs_p384_verify_digest_libcrypto(key, len(key), digest, rb, sb),
        "batch": native.p384_verify_batch([(key, hash_value, rb, sb)])[0],
    }
    try:
        table = native.P384KeyTable(key)
    except SignatureInvalid:
        pass
    else:
        out["table"] = table.verify_status(digest, rb, sb)
        out["batch-table"] = native.p384_verify_batch([(table, hash_value, rb, sb)])[0]
    return out


def assert_verdict(case: str, key: bytes, hash_value: bytes, rs: tuple[int, int] | None,
                   valid: bool) -> None:
    if rs is None:  # the encoding itself is bad: nothing to verify
        assert not valid, f"{case}: valid case failed to decode"
        return
    got = statuses(key, hash_value, *rs)
    if valid:
        assert set(got.values()) == {OK}, f"{case}: {got}"
    else:
        assert OK not in got.values(), f"{case}: {got}"
    # The fast core must give the libcrypto version's exact status, not just the verdict.
    assert got.get("digest", got.get("range")) == got.get("libcrypto", got.get("range")), case


@vectors
@pytest.mark.parametrize("name", WYCHEPROOF)
def test_wycheproof(name: str) -> None:
    count = 0
    for case, key, hash_value, rs, result in ref.wycheproof_cases(name):
        assert result in ("valid", "invalid"), case
        assert_verdict(case, key, hash_value, rs, result == "valid")
        count += 1
    assert count == WYCHEPROOF[name]


@vectors
def test_wycheproof_public_keys() -> None:
    """Off-curve and malformed points from the ECDH point-validation file are rejected."""
    import json

    root = ref.vectors_dir()
    assert root is not None
    data = json.loads((root / "wycheproof" / "ecdh_secp384r1_ecpoint_test.json").read_text())
    checked = 0
    for group in data["testGroups"]:
        for test in group["tests"]:
            point = bytes.fromhex(test["public"])
            table = native.ffi.new("struct kbs_p384_key_table *")
            status = lib.kbs_p384_key_precompute(point, len(point), table)
            expect_ok = test["result"] == "valid" and len(point) == 97 and point[:1] == b"\x04"
            assert (status == OK) == expect_ok, (test["tcId"], native.status_name(status))
            checked += 1
    assert checked > 700


@vectors
def test_cavp_sigver_and_siggen() -> None:
    seen = {"P": 0, "F": 0}
    for name in ("SigVer.rsp", "SigGen.rsp"):
        for rec in ref.cavp_records(name):
            algo = ref.HASHES[rec["section"].split(",")[1]]
            hash_value = hashlib.new(algo, bytes.fromhex(rec["Msg"])).digest()
            key = b"\x04" + int(rec["Qx"], 16).to_bytes(48, "big") + int(rec["Qy"], 16).to_bytes(48, "big")
            passed = rec.get("Result", "P").startswith("P")
            seen["P" if passed else "F"] += 1
            assert_verdict(f"{name} {rec['section']} R={rec['R'][:12]}", key, hash_value,
                           (int(rec["R"], 16), int(rec["S"], 16)), passed)
    assert seen == {"P": 15 + 75, "F": 60}


@vectors
def test_cavp_pkv() -> None:
    count = 0
    for rec in ref.cavp_records("PKV.rsp"):
        count += 1
        x, y = int(rec["Qx"], 16), int(rec["Qy"], 16)
        if max(x, y) >= 2**384:
            assert rec["Result"].startswith("F")
            continue
        key = b"\x04" + x.to_bytes(48, "big") + y.to_bytes(48, "big")
        table = native.ffi.new("struct kbs_p384_key_table *")
        status = lib.kbs_p384_key_precompute(key, len(key), table)
        assert (status == OK) == rec["Result"].startswith("P"), rec
        if status != OK:  # same key verdict as libcrypto
            assert status == lib.kbs_p384_verify_digest_libcrypto(key, 97, bytes(48), b"\1" * 48, b"\1" * 48)
    assert count == 12


# --- differential tests against OpenSSL (pyca/cryptography) and the Python reference ---

def pyca_verdict(key: bytes, digest: bytes, r: int, s: int) -> bool:
    digest = digest[:48].rjust(48, b"\0")  # what Prehashed(SHA384) needs, same leftmost bits
    try:
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), key)
        pub.verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA384())))
    except (InvalidSignature, ValueError):
        return False
    return True


def keypair() -> tuple[int, bytes]:
    priv = ec.generate_private_key(ec.SECP384R1())
    d = priv.private_numbers().private_value
    point = ref.encode_point((priv.public_key().public_numbers().x, priv.public_key().public_numbers().y))
    return d, point


def sign(d: int, e: int, k: int | None = None) -> tuple[int, int]:
    """ECDSA with a chosen nonce, so tests can steer r."""
    while True:
        nonce = k if k is not None else secrets.randbelow(ref.N - 1) + 1
        pt = ref.mul(nonce, ref.G)
        assert pt is not None
        r = pt[0] % ref.N
        s = pow(nonce, -1, ref.N) * (e + r * d) % ref.N
        if r and s:
            return r, s
        assert k is None


def check_against_oracles(key: bytes, digest: bytes, r: int, s: int) -> bool:
    got = statuses(key, digest, r, s)
    ours = set(got.values()) == {OK}
    assert len({v == OK for v in got.values()}) == 1, got
    if 0 <= r < 2**384 and 0 <= s < 2**384:
        assert ours == ref.ref_verify(key, digest, r, s), got
        if r > 0 and s > 0:
            assert ours == pyca_verdict(key, digest, r, s), got
    return ours


def test_random_keys_and_messages() -> None:
    for _ in range(12):
        d, key = keypair()
        digest = hashlib.sha384(secrets.token_bytes(32)).digest()
        r, s = sign(d, int.from_bytes(digest, "big"))
        assert check_against_oracles(key, digest, r, s)
        assert not check_against_oracles(key, digest, r, (s + 1) % ref.N or 1)
        assert not check_against_oracles(key, bytes([digest[0] ^ 1]) + digest[1:], r, s)


def test_signature_range_edges() -> None:
    d, key = keypair()
    digest = hashlib.sha384(b"edges").digest()
    r, s = sign(d, int.from_bytes(digest, "big"))
    for bad in (0, ref.N, ref.N + 1, ref.P, 2**384 - 1):
        for rr, ss in ((bad, s), (r, bad)):
            got = statuses(key, digest, rr, ss)
            assert set(got.values()) == {lib.KBS_ERR_SIG_RANGE}, (hex(bad), got)


def test_r_plus_n_case() -> None:
    """x(R) in [n, p): valid only through the (r + n) * Z^2 == X comparison."""
    x = ref.N + 2
    while (y := ref.sqrt_mod_p((x**3 - 3 * x + ref.B) % ref.P)) is None:
        x += 1
    big_r = (x, y)
    u1, u2 = secrets.randbelow(ref.N - 1) + 1, secrets.randbelow(ref.N - 1) + 1
    # choose Q so that u1*G + u2*Q = R, then s and e that give exactly these u1, u2
    q = ref.mul(pow(u2, -1, ref.N), ref.add(big_r, ref.neg(ref.mul(u1, ref.G))))
    assert q is not None
    key = ref.encode_point(q)
    r = x % ref.N
    s = r * pow(u2, -1, ref.N) % ref.N
    digest = (u1 * s % ref.N).to_bytes(48, "big")
    assert r < ref.P - ref.N
    assert check_against_oracles(key, digest, r, s)
    assert not check_against_oracles(key, digest, x, s)  # r = x itself is >= n: out of range
    assert not check_against_oracles(key, digest, r + 1, s)


def test_u1g_equals_plus_minus_u2q() -> None:
    """e = +-r*d makes u1*G = +-u2*Q: the ladder meets doubling and infinity."""
    d, key = keypair()
    r, s = 12345, 67890
    for e in (r * d % ref.N, -r * d % ref.N):
        digest = e.to_bytes(48, "big")
        check_against_oracles(key, digest, r, s)
    # the -case sums to infinity: must be rejected, never read as x = 0
    digest = (-r * d % ref.N).to_bytes(48, "big")
    assert not check_against_oracles(key, digest, r, s)


def test_public_key_edges() -> None:
    digest = hashlib.sha384(b"k").digest()
    d, key = keypair()
    r, s = sign(d, int.from_bytes(digest, "big"))
    rb, sb = r.to_bytes(48, "big"), s.to_bytes(48, "big")
    off_curve = key[:-1] + bytes([key[-1] ^ 1])
    x_too_big = b"\x04" + ref.P.to_bytes(48, "big") + key[49:]
    cases = {
        b"\x00": lib.KBS_ERR_KEY_LENGTH,  # the point at infinity
        key[:96]: lib.KBS_ERR_KEY_LENGTH,
        key + b"\x00": lib.KBS_ERR_KEY_LENGTH,
        b"\x02" + key[1:49]: lib.KBS_ERR_KEY_LENGTH,  # compressed: not accepted
        b"\x05" + key[1:]: lib.KBS_ERR_KEY_FORMAT,
        off_curve: lib.KBS_ERR_KEY_NOT_ON_CURVE,
        x_too_big: lib.KBS_ERR_KEY_NOT_ON_CURVE,
        bytes(97): lib.KBS_ERR_KEY_FORMAT,
    }
    for bad_key, status in cases.items():
        assert lib.kbs_p384_verify_digest(bad_key, len(bad_key), digest, rb, sb) == status
        assert lib.kbs_p384_verify_digest_libcrypto(bad_key, len(bad_key), digest, rb, sb) == status
        table = native.ffi.new("struct kbs_p384_key_table *")
        assert lib.kbs_p384_key_precompute(bad_key, len(bad_key), table) == status
        assert native.p384_verify_batch([(bad_key, digest, rb, sb)]) == [status]
    # Q = G and Q = -G are fine keys
    for q in (ref.G, ref.neg(ref.G)):
        assert q is not None
        check_against_oracles(ref.encode_point(q), digest, *sign(1 if q == ref.G else ref.N - 1,
                                                                  int.from_bytes(digest, "big")))
    # a table that was never filled is a caller bug, not a verdict
    empty = native.ffi.new("struct kbs_p384_key_table *")
    assert lib.kbs_p384_verify_digest_with_table(empty, digest, rb, sb) == lib.KBS_ERR_INTERNAL


def test_hash_lengths() -> None:
    d, key = keypair()
    for algo in ("sha1", "sha256", "sha384", "sha512"):
        h = hashlib.new(algo, b"msg").digest()
        r, s = sign(d, ref.hash_scalar(h) % ref.N)
        native.p384_verify_hash(key, h, r.to_bytes(48, "big"), s.to_bytes(48, "big"))
        check_against_oracles(key, h, r, s)
    for h in (b"", b"\xff" * 48, b"\xff" * 64, ref.N.to_bytes(48, "big")):  # e = 0, e >= n
        r, s = sign(d, ref.hash_scalar(h) % ref.N)
        assert check_against_oracles(key, h, r, s)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(1, ref.N - 1), msg=st.binary(max_size=64),
       mutation=st.sampled_from(["none", "r+1", "s-1", "swap", "digest", "key", "small"]))
@example(seed=ref.N - 1, msg=b"", mutation="key")  # once found by hypothesis: d + 1 = n is infinity
def test_hypothesis_differential(seed: int, msg: bytes, mutation: str) -> None:
    d = seed
    q = ref.mul(d, ref.G)
    assert q is not None
    key = ref.encode_point(q)
    digest = hashlib.sha384(msg).digest()
    r, s = sign(d, int.from_bytes(digest, "big") % ref.N, k=(seed * 7919) % ref.N or 1)
    if mutation == "r+1":
        r = (r + 1) % ref.N
    elif mutation == "s-1":
        s = (s - 1) % ref.N
    elif mutation == "swap":
        r, s = s, r
    elif mutation == "digest":
        digest = hashlib.sha384(msg + b"!").digest()
    elif mutation == "key":
        other = ref.mul(d % (ref.N - 1) + 1, ref.G)  # another valid key, also when d = n - 1
        assert other is not None
        key = ref.encode_point(other)
    elif mutation == "small":
        r, s = 1 + seed % 3, 1 + seed % 5
    assert check_against_oracles(key, digest, r, s) == (mutation == "none")


# --- the Python API: wrappers, the key cache, batches ---

def test_wrappers_raise() -> None:
    d, key = keypair()
    digest = hashlib.sha384(b"w").digest()
    r, s = (v.to_bytes(48, "big") for v in sign(d, int.from_bytes(digest, "big")))
    native.p384_verify_digest(key, digest, r, s)
    native.p384_verify_digest_libcrypto(key, digest, r, s)
    native.P384KeyTable(key).verify(digest, r, s)
    with pytest.raises(SignatureInvalid) as err:
        native.p384_verify_hash(key, digest[::-1], r, s)
    assert err.value.check == "report.signature"
    with pytest.raises(SignatureInvalid):
        native.P384KeyTable(key[:-1] + bytes([key[-1] ^ 1]))  # y changed: off the curve (zeroing it failed 1 in 256)
    assert native.p384_implementation()


def test_key_cache_lru_and_threads() -> None:
    cache = native.P384KeyCache(max_tables=2, build_after=2)
    keys = [keypair() for _ in range(3)]
    digest = hashlib.sha384(b"c").digest()
    sigs = [tuple(v.to_bytes(48, "big") for v in sign(d, int.from_bytes(digest, "big"))) for d, _ in keys]
    k0 = keys[0][1]
    assert cache.table_for(k0) is None  # first sighting: no table yet
    assert len(cache) == 0
    cache.verify(k0, digest, *sigs[0])  # second sighting builds it
    assert len(cache) == 1 and cache.table_for(k0) is not None
    for (_, k), sig in zip(keys, sigs, strict=True):
        for _ in range(2):
            cache.verify(k, digest, *sig)
    assert len(cache) == 2  # bounded: the least recently used table went
    with pytest.raises(SignatureInvalid):
        cache.verify(keys[1][1], digest, *sigs[2])
    assert cache.verify_status(b"\x04" * 5, digest, *sigs[0]) == lib.KBS_ERR_KEY_LENGTH

    def check() -> None:
        for i in range(20):
            (_, k), sig = keys[i % 3], sigs[i % 3]
            assert cache.verify_status(k, digest, *sig) == OK

    on_threads(check)
    assert len(cache) <= 2


def test_batch_matches_single_calls() -> None:
    keys = [keypair() for _ in range(3)]
    cache = native.P384KeyCache(max_tables=4, build_after=1)
    items: list[native.P384BatchItem] = []
    expected = []
    for i in range(24):
        d, key = keys[i % 3]
        h = hashlib.sha384(bytes([i])).digest()
        r, s = sign(d, int.from_bytes(h, "big"))
        if i % 4 == 1:
            s = (s + 1) % ref.N
        if i % 6 == 5:
            r = 0
        rb, sb = r.to_bytes(48, "big"), s.to_bytes(48, "big")
        items.append((native.P384KeyTable(key) if i % 5 == 0 else key, h, rb, sb))
        expected.append(lib.kbs_p384_verify_digest(key, 97, h, rb, sb))
    items.append((b"\x04", b"", b"\1" * 48, b"\1" * 48))
    expected.append(lib.KBS_ERR_KEY_LENGTH)
    items.append((keys[0][1], b"", b"\1" * 47, b"\1" * 48))
    expected.append(lib.KBS_ERR_SIG_RANGE)
    assert native.p384_verify_batch(items) == expected
    assert native.p384_verify_batch(items, cache=cache) == expected
    assert native.p384_verify_batch([]) == []
