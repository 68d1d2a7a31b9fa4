"""Test helpers for P-384: the plain reference arithmetic and verify (tests.ec_ref) under the names
the P-384 tests use, strict DER, vector loading."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from tests.ec_ref import P384, Point

P, N, B, G = P384.p, P384.n, P384.b, P384.g
on_curve, add, mul, neg = P384.on_curve, P384.add, P384.mul, P384.neg
encode_point, hash_scalar, ref_verify = P384.encode, P384.hash_scalar, P384.verify
__all__ = [
    "HASHES",
    "B",
    "G",
    "N",
    "P",
    "Point",
    "add",
    "cavp_records",
    "der_decode",
    "encode_point",
    "hash_scalar",
    "mul",
    "neg",
    "on_curve",
    "p1363_decode",
    "ref_verify",
    "scalar_bytes",
    "sqrt_mod_p",
    "vectors_dir",
    "wycheproof_cases",
]

HASHES = {"SHA-1": "sha1", "SHA-224": "sha224", "SHA-256": "sha256", "SHA-384": "sha384",
          "SHA-512": "sha512"}


def vectors_dir() -> Path | None:
    """$KBS_VECTORS, else ../shared/vectors beside the repository; None when absent."""
    env = os.environ.get("KBS_VECTORS")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "vectors"
    return path if path.is_dir() else None


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
