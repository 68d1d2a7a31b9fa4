"""Plain short-Weierstrass arithmetic (a = -3) for the NIST curves the C core verifies on: slow,
written from SEC 1, obviously right.  Tests craft edge cases with it, and its `verify` is the
tie-breaker when the C core and OpenSSL disagree."""

from __future__ import annotations

from dataclasses import dataclass

Point = tuple[int, int] | None  # None is the point at infinity


@dataclass(frozen=True)
class Curve:
    p: int
    n: int
    b: int
    g: tuple[int, int]
    size: int  # bytes of a coordinate or scalar

    def on_curve(self, pt: Point) -> bool:
        if pt is None:
            return False
        x, y = pt
        return 0 <= x < self.p and 0 <= y < self.p and (y * y - x * x * x + 3 * x - self.b) % self.p == 0

    def add(self, p1: Point, p2: Point) -> Point:
        if p1 is None:
            return p2
        if p2 is None:
            return p1
        (x1, y1), (x2, y2), p = p1, p2, self.p
        if x1 == x2:
            if (y1 + y2) % p == 0:
                return None
            lam = (3 * x1 * x1 - 3) * pow(2 * y1, -1, p) % p
        else:
            lam = (y2 - y1) * pow(x2 - x1, -1, p) % p
        x3 = (lam * lam - x1 - x2) % p
        return x3, (lam * (x1 - x3) - y1) % p

    def mul(self, k: int, pt: Point) -> Point:
        acc: Point = None
        for bit in bin(k % self.n)[2:]:
            acc = self.add(acc, acc)
            if bit == "1":
                acc = self.add(acc, pt)
        return acc

    def neg(self, pt: Point) -> Point:
        return None if pt is None else (pt[0], (-pt[1]) % self.p)

    def encode(self, pt: tuple[int, int]) -> bytes:
        """Uncompressed SEC 1: 0x04 || x || y."""
        return b"\x04" + pt[0].to_bytes(self.size, "big") + pt[1].to_bytes(self.size, "big")

    def hash_scalar(self, hash_value: bytes) -> int:
        """The hash's leftmost bits, as many as the order has (not yet reduced mod n)."""
        return int.from_bytes(hash_value[:self.size], "big")

    def verify(self, key: bytes, hash_value: bytes, r: int, s: int) -> bool:
        """ECDSA verification (SEC 1 §4.1.4) of r, s over a hash with an uncompressed point."""
        if len(key) != 1 + 2 * self.size or key[0] != 4:
            return False
        q = (int.from_bytes(key[1:1 + self.size], "big"), int.from_bytes(key[1 + self.size:], "big"))
        if not self.on_curve(q) or not (0 < r < self.n and 0 < s < self.n):
            return False
        w = pow(s, -1, self.n)
        pt = self.add(self.mul(self.hash_scalar(hash_value) * w % self.n, self.g), self.mul(r * w % self.n, q))
        return pt is not None and pt[0] % self.n == r


P256 = Curve(
    p=2**256 - 2**224 + 2**192 + 2**96 - 1,
    n=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    b=0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
    g=(0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
       0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5),
    size=32)

P384 = Curve(
    p=2**384 - 2**128 - 2**96 + 2**32 - 1,
    n=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    b=0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF,
    g=(0xAA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7,
       0x3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F),
    size=48)
