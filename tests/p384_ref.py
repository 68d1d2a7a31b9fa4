"""Test helpers for P-384: a pure-Python reference verify, strict DER, vector loading.

The reference is plain integer arithmetic written from SEC 1 §4.1.4, slow but obviously
right; it is the tie-breaker when the C core and OpenSSL disagree.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

P = 2**384 - 2**128 - 2**96 + 2**32 - 1
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
B = 0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF
G = (
    0xAA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7,
    0x3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F,
)

Point = tuple[int, int] | None  # None is the point at infinity

HASHES = {"SHA-1": "sha1", "SHA-224": "sha224", "SHA-256": "sha256", "SHA-384": "sha384",
          "SHA-512": "sha512"}


def vectors_dir() -> Path | None:
    """$KBS_VECTORS, else ../shared/vectors beside the repository; None when absent."""
    env = os.environ.get("KBS_VECTORS")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "vectors"
    return path if path.is_dir() else None


def on_curve(pt: Point) -> bool:
    if pt is None:
        return False
    x, y = pt
    return 0 <= x < P and 0 <= y < P and (y * y - x * x * x + 3 * x - B) % P == 0


def add(p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % P == 0:
            return None
        lam = (3 * x1 * x1 - 3) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def mul(k: int, pt: Point) -> Point:
    acc: Point = None
    for bit in bin(k % N)[2:]:
        acc = add(acc, acc)
        if bit == "1":
            acc = add(acc, pt)
    return acc


def neg(pt: Point) -> Point:
    return None if pt is None else (pt[0], (-pt[1]) % P)


def hash_scalar(hash_value: bytes) -> int:
    """The leftmost 384 bits of the hash as an integer (not yet reduced mod n)."""
    return int.from_bytes(hash_value[:48], "big")


def ref_verify(key: bytes, hash_value: bytes, r: int, s: int) -> bool:
    if len(key) != 97 or key[0] != 4:
        return False
    q = (int.from_bytes(key[1:49], "big"), int.from_bytes(key[49:], "big"))
    if not on_curve(q) or not (0 < r < N and 0 < s < N):
        return False
    w = pow(s, -1, N)
    e = hash_scalar(hash_value)
    pt = add(mul(e * w % N, G), mul(r * w % N, q))
    return pt is not None and pt[0] % N == r


def encode_point(pt: tuple[int, int]) -> bytes:
    return b"\x04" + pt[0].to_bytes(48, "big") + pt[1].to_bytes(48, "big")


def sqrt_mod_p(v: int) -> int | None:
    root = pow(v, (P + 1) // 4, P)  # p = 3 mod 4
    return root if root * root % P == v % P else None


def der_decode(sig: bytes) -> tuple[int, int] | None:
    """SEQUENCE { INTEGER r, INTEGER s } in strict DER (minimal, non-negative), else None."""
    def length(pos: int) -> tuple[int, int] | None:
        if pos >= len(sig):
            return None
        first = sig[pos]
        if first < 0x80:
            return first, pos + 1
        if first != 0x81 or pos + 1 >= len(sig) or sig[pos + 1] < 0x80:
            return None  # long form only where needed; P-384 signatures never need 2 bytes
        return sig[pos + 1], pos + 2

    def integer(pos: int) -> tuple[int, int] | None:
        if pos >= len(sig) or sig[pos] != 0x02:
            return None
        got = length(pos + 1)
        if got is None:
            return None
        size, start = got
        body = sig[start:start + size]
        if size == 0 or len(body) != size or body[0] & 0x80:
            return None
        if size > 1 and body[0] == 0 and not body[1] & 0x80:
            return None  # non-minimal leading zero
        return int.from_bytes(body, "big"), start + size

    if not sig or sig[0] != 0x30:
        return None
    got = length(1)
    if got is None or got[1] + got[0] != len(sig):
        return None
    r_part = integer(got[1])
    if r_part is None:
        return None
    s_part = integer(r_part[1])
    if s_part is None or s_part[1] != len(sig):
        return None
    return r_part[0], s_part[0]


def p1363_decode(sig: bytes) -> tuple[int, int] | None:
    if len(sig) != 96:
        return None
    return int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big")


def scalar_bytes(v: int) -> bytes | None:
    """48-byte big-endian, or None if it does not fit (such a value is >= n anyway)."""
    return v.to_bytes(48, "big") if 0 <= v < 2**384 else None


def wycheproof_cases(name: str) -> Iterator[tuple[str, bytes, bytes, tuple[int, int] | None, str]]:
    """(id, key, hash, (r, s) or None if the encoding is bad, result) for one ECDSA file."""
    root = vectors_dir()
    assert root is not None
    data = json.loads((root / "wycheproof" / name).read_text())
    decode = p1363_decode if "p1363" in name else der_decode
    for group in data["testGroups"]:
        key = bytes.fromhex(group["publicKey"]["uncompressed"])
        algo = HASHES[group["sha"]]
        for test in group["tests"]:
            hash_value = hashlib.new(algo, bytes.fromhex(test["msg"])).digest()
            rs = decode(bytes.fromhex(test["sig"]))
            yield f"{name}#{test['tcId']}", key, hash_value, rs, test["result"]


def cavp_records(name: str, curve: str = "P-384") -> Iterator[dict[str, str]]:
    """Records of one NIST .rsp file in `[curve,...]` or `[curve]` sections, with 'section' added."""
    root = vectors_dir()
    assert root is not None
    section = ""
    record: dict[str, str] = {}
    for raw in [*(root / "nist_cavp" / name).read_text().splitlines(), ""]:
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if not line or line.startswith("#"):
            if record and section.split(",")[0] == curve:
                yield {**record, "section": section}
            record = {}
            continue
        if "=" in line:
            k, v = (part.strip() for part in line.split("=", 1))
            record[k] = v
