"""ECDSA P-384 verification (native/p384_*.c): one cold key, a cached key table, or a batch.

The C core is stateless; the only state is here: P384KeyCache, a bounded LRU of per-key
tables guarded by a lock (kbs.native.keycache).  Every C call below releases the GIL.  The system
libcrypto's verification (native/ecdsa_libcrypto.c) stays as the reference for tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

from kbs.errors import SignatureInvalid
from kbs.native._ffi import ffi, lib, raise_for
from kbs.native.keycache import KeyTableCache

P384_POINT_SIZE: int = lib.KBS_P384_POINT_SIZE
P384_SCALAR_SIZE = 48


def p384_verify_digest(public_key: bytes, digest: bytes, r: bytes, s: bytes) -> None:
    """Verify an ECDSA P-384 signature (48-byte big-endian r, s) over a 48-byte digest, or raise."""
    if len(digest) != 48 or len(r) != 48 or len(s) != 48:
        raise SignatureInvalid("digest, r and s must be 48 bytes each", check="signature")
    raise_for(lib.kbs_p384_verify_digest(public_key, len(public_key), digest, r, s))


def p384_implementation() -> str:
    """The field multiply this CPU runs: "mulx/adcx/adox asm" or the portable C fallback."""
    return str(ffi.string(lib.kbs_p384_implementation()).decode())


def _check_sig_lengths(r: bytes, s: bytes) -> None:
    if len(r) != P384_SCALAR_SIZE or len(s) != P384_SCALAR_SIZE:
        raise SignatureInvalid("r and s must be 48 bytes each", check="signature")


def p384_verify_hash(public_key: bytes, hash_value: bytes, r: bytes, s: bytes) -> None:
    """Verify r, s (48-byte big-endian) over a hash of any length, or raise.

    The scalar is the hash's leftmost 384 bits (SHA-512 is truncated, SHA-256 used whole),
    as FIPS 186-5 says; `public_key` is an uncompressed SEC1 point (97 bytes).
    """
    _check_sig_lengths(r, s)
    raise_for(lib.kbs_p384_verify_hash(public_key, len(public_key), hash_value, len(hash_value), r, s))


def p384_verify_digest_libcrypto(public_key: bytes, digest: bytes, r: bytes, s: bytes) -> None:
    """`p384_verify_digest` through the system libcrypto: the reference for tests and benchmarks."""
    if len(digest) != 48:
        raise SignatureInvalid("digest must be 48 bytes", check="signature")
    _check_sig_lengths(r, s)
    raise_for(lib.kbs_p384_verify_digest_libcrypto(public_key, len(public_key), digest, r, s))


class P384KeyTable:
    """Precomputed multiples of one P-384 public key (24 KB): verifies ~2.5-3x faster than cold.

    Building it validates the key (raises SignatureInvalid like a verify would) and costs
    about two cold verifications.  Immutable once built, so threads may share it.
    """

    __slots__ = ("_table", "public_key")

    def __init__(self, public_key: bytes) -> None:
        self.public_key = bytes(public_key)
        self._table = ffi.new("struct kbs_p384_key_table *")
        raise_for(lib.kbs_p384_key_precompute(self.public_key, len(self.public_key), self._table))

    def verify_status(self, digest: bytes, r: bytes, s: bytes) -> int:
        """The raw kbs_status of a verification over a 48-byte digest (0 is KBS_OK)."""
        if len(digest) != 48:
            raise SignatureInvalid("digest must be 48 bytes", check="signature")
        if len(r) != P384_SCALAR_SIZE or len(s) != P384_SCALAR_SIZE:
            return int(lib.KBS_ERR_SIG_RANGE)
        return int(lib.kbs_p384_verify_digest_with_table(self._table, digest, r, s))

    def verify(self, digest: bytes, r: bytes, s: bytes) -> None:
        """Verify r, s over a 48-byte digest with this key, or raise SignatureInvalid."""
        _check_sig_lengths(r, s)
        raise_for(self.verify_status(digest, r, s))

    def c_pointer(self) -> object:
        """The cffi pointer to the C table (for kbs_p384_verify_batch)."""
        return self._table


class P384KeyCache(KeyTableCache[P384KeyTable]):
    """A bounded, thread-safe LRU of P384KeyTable, keyed by the public-key bytes (KeyTableCache).

    A table is built on the `build_after`-th sighting of a key (default 2: a key seen once,
    as most certificate keys are, costs nothing extra; a VCEK signing every report of its
    host gets a table on its second report).  At most `max_tables` tables (24 KB each) are
    kept; sightings of keys without a table are remembered for 8 * max_tables keys.
    """

    def __init__(self, max_tables: int = 256, build_after: int = 2) -> None:
        super().__init__(P384KeyTable, max_tables, build_after)

    def verify_status(self, public_key: bytes, digest: bytes, r: bytes, s: bytes) -> int:
        """The raw kbs_status of verifying r, s over a 48-byte digest, using a table when cached."""
        if len(public_key) != P384_POINT_SIZE:
            return int(lib.KBS_ERR_KEY_LENGTH)
        try:
            table = self.table_for(public_key)
        except SignatureInvalid:
            table = None  # let the cold path name the key problem
        if table is not None:
            return table.verify_status(digest, r, s)
        if len(r) != P384_SCALAR_SIZE or len(s) != P384_SCALAR_SIZE:
            return int(lib.KBS_ERR_SIG_RANGE)
        if len(digest) != 48:
            raise SignatureInvalid("digest must be 48 bytes", check="signature")
        return int(lib.kbs_p384_verify_digest(public_key, len(public_key), digest, r, s))

    def verify(self, public_key: bytes, digest: bytes, r: bytes, s: bytes) -> None:
        """Verify r, s (48-byte big-endian) over a 48-byte digest, or raise SignatureInvalid."""
        _check_sig_lengths(r, s)
        raise_for(self.verify_status(public_key, digest, r, s))


P384BatchItem = tuple["bytes | P384KeyTable", bytes, bytes, bytes]


def p384_verify_batch(items: Sequence[P384BatchItem], cache: P384KeyCache | None = None) -> list[int]:
    """Verify many (key, hash, r, s) items in one C call; returns each item's kbs_status (0 = OK).

    `key` is an uncompressed point or a P384KeyTable; with `cache`, point keys go through it.
    The hash may have any length (leftmost 384 bits are used).  Items with a wrong-sized key,
    r or s get KBS_ERR_KEY_LENGTH / KBS_ERR_SIG_RANGE without reaching C.
    """
    results = [0] * len(items)
    todo: list[int] = []
    digests, sigs, points, tables = [], [], [], []
    zero_point = bytes(P384_POINT_SIZE)
    for i, (key, hash_value, r, s) in enumerate(items):
        if len(r) != P384_SCALAR_SIZE or len(s) != P384_SCALAR_SIZE:
            results[i] = int(lib.KBS_ERR_SIG_RANGE)
            continue
        table: P384KeyTable | None = None
        point = zero_point
        if isinstance(key, P384KeyTable):
            table = key
        elif len(key) != P384_POINT_SIZE:
            results[i] = int(lib.KBS_ERR_KEY_LENGTH)
            continue
        else:
            point = bytes(key)
            if cache is not None:
                try:
                    table = cache.table_for(point)
                except SignatureInvalid:
                    table = None  # the cold path in C names the key problem
        todo.append(i)
        digests.append(bytes(hash_value[:48]).rjust(48, b"\0"))
        sigs.append(bytes(r) + bytes(s))
        points.append(point if table is None else zero_point)
        tables.append(ffi.NULL if table is None else table.c_pointer())
    if not todo:
        return results
    out = ffi.new("int[]", len(todo))
    status = lib.kbs_p384_verify_batch(len(todo), b"".join(digests), b"".join(sigs), b"".join(points),
                                       ffi.new("struct kbs_p384_key_table *[]", tables), out)
    raise_for(status)
    for slot, i in enumerate(todo):
        results[i] = int(out[slot])
    return results

