"""ECDSA P-256 verification (native/p256_*.c): the one C entry point for P-256 over evidence.

Signatures are 64 bytes, r || s big-endian (as in TDX quotes and Intel's signed collateral);
keys are 65-byte uncompressed SEC1 points.  Every C call releases the GIL.  The entry point is a
verify-only core; a key that signs again and again (a platform's PCK key, its QE's attestation
key) is worth a P256KeyTable, which P256KeyCache builds on a key's second sighting.  The system
libcrypto's verification stays as `p256_verify_digest_libcrypto`, the reference for tests and
benchmarks.
"""

from __future__ import annotations

import hashlib

from kbs.errors import SignatureInvalid
from kbs.native._ffi import ffi, lib, raise_for
from kbs.native.keycache import KeyTableCache

P256_POINT_SIZE: int = lib.KBS_P256_POINT_SIZE
P256_SCALAR_SIZE: int = lib.KBS_P256_SCALAR_SIZE
P256_SIGNATURE_SIZE = 2 * P256_SCALAR_SIZE
P256_DIGEST_SIZE = 32

# The generic statuses, said for P-256 (the shared table's key messages are P-384's).
_P256_STATUS: dict[int, tuple[str, str]] = {
    lib.KBS_ERR_KEY_LENGTH: ("key", f"public key is not a {P256_POINT_SIZE}-byte uncompressed P-256 point"),
    lib.KBS_ERR_KEY_FORMAT: ("key", "public key is not an uncompressed point (0x04)"),
    lib.KBS_ERR_KEY_NOT_ON_CURVE: ("key", "public key is not a point on P-256"),
    lib.KBS_ERR_SIG_RANGE: ("signature", "signature r or s is zero or not below the P-256 group order"),
    lib.KBS_ERR_SIG_INVALID: ("signature", "signature does not verify with the key"),
}


def _raise_for(status: int) -> None:
    if status == lib.KBS_OK:
        return
    if status in _P256_STATUS:
        check, message = _P256_STATUS[status]
        raise SignatureInvalid(message, check=check)
    raise_for(status)


def _split(signature: bytes) -> tuple[bytes, bytes]:
    if len(signature) != P256_SIGNATURE_SIZE:
        raise SignatureInvalid(f"P-256 signature must be {P256_SIGNATURE_SIZE} bytes r || s, "
                               f"got {len(signature)}", check="signature")
    return bytes(signature[:P256_SCALAR_SIZE]), bytes(signature[P256_SCALAR_SIZE:])


def _check_digest(digest: bytes) -> None:
    if len(digest) != P256_DIGEST_SIZE:
        raise SignatureInvalid(f"P-256 digest must be {P256_DIGEST_SIZE} bytes, got {len(digest)}",
                               check="signature")


def p256_verify_status(public_point: bytes, digest: bytes, signature: bytes) -> int:
    """The raw kbs_status of verifying a 64-byte r || s over a 32-byte digest (0 is KBS_OK)."""
    _check_digest(digest)
    if len(signature) != P256_SIGNATURE_SIZE:
        return int(lib.KBS_ERR_SIG_RANGE)
    r, s = bytes(signature[:P256_SCALAR_SIZE]), bytes(signature[P256_SCALAR_SIZE:])
    return int(lib.kbs_p256_verify_digest(public_point, len(public_point), digest, r, s))


def p256_verify_digest(public_point: bytes, digest: bytes, signature: bytes) -> None:
    """Verify r || s (64 bytes, big-endian) over a 32-byte digest with a 65-byte point, or raise SignatureInvalid."""
    _check_digest(digest)
    r, s = _split(signature)
    _raise_for(lib.kbs_p256_verify_digest(public_point, len(public_point), digest, r, s))


def p256_verify_hash(public_point: bytes, hash_value: bytes, signature: bytes) -> None:
    """Like `p256_verify_digest` for a hash of any length: its leftmost 256 bits are used (FIPS 186-5)."""
    r, s = _split(signature)
    _raise_for(lib.kbs_p256_verify_hash(public_point, len(public_point), hash_value, len(hash_value), r, s))


def p256_verify(public_point: bytes, message: bytes, signature: bytes) -> None:
    """ECDSA P-256 with SHA-256 over `message`: hash, then `p256_verify_digest`."""
    p256_verify_digest(public_point, hashlib.sha256(message).digest(), signature)


def p256_verify_digest_libcrypto(public_point: bytes, digest: bytes, signature: bytes) -> None:
    """`p256_verify_digest` through the system libcrypto by name: the reference for tests and benchmarks."""
    _check_digest(digest)
    r, s = _split(signature)
    _raise_for(lib.kbs_p256_verify_digest_libcrypto(public_point, len(public_point), digest, r, s))


class P256KeyTable:
    """Precomputed multiples of one P-256 public key (16 KB): verifies about three times faster than cold.

    Building it validates the key (raises SignatureInvalid(check="key") as a verification would)
    and costs about two cold verifications.  Immutable once built, so threads may share it.
    """

    __slots__ = ("_table", "public_key")

    def __init__(self, public_key: bytes) -> None:
        self.public_key = bytes(public_key)
        self._table = ffi.new("struct kbs_p256_key_table *")
        _raise_for(lib.kbs_p256_key_precompute(self.public_key, len(self.public_key), self._table))

    def verify_status(self, digest: bytes, signature: bytes) -> int:
        """The raw kbs_status of verifying r || s (64 bytes) over a 32-byte digest (0 is KBS_OK)."""
        _check_digest(digest)
        if len(signature) != P256_SIGNATURE_SIZE:
            return int(lib.KBS_ERR_SIG_RANGE)
        r, s = bytes(signature[:P256_SCALAR_SIZE]), bytes(signature[P256_SCALAR_SIZE:])
        return int(lib.kbs_p256_verify_digest_with_table(self._table, digest, r, s))

    def verify(self, digest: bytes, signature: bytes) -> None:
        """Verify r || s over a 32-byte digest with this key, or raise SignatureInvalid."""
        _split(signature)
        _raise_for(self.verify_status(digest, signature))

    def c_pointer(self) -> object:
        """The cffi pointer to the C table (for kbs_tdx_verify_with_tables)."""
        return self._table


class P256KeyCache(KeyTableCache[P256KeyTable]):
    """A bounded, thread-safe LRU of P256KeyTable, keyed by the point's bytes (KeyTableCache).

    A table is built on the `build_after`-th sighting of a key (default 2), at most `max_tables`
    tables (16 KB each) are kept.  `tdx_verify(..., cache=)` looks tables up without counting and
    counts a key's sighting only once a quote verified with it, so keys out of forged quotes
    neither get tables nor push real ones out.
    """

    def __init__(self, max_tables: int = 256, build_after: int = 2) -> None:
        super().__init__(P256KeyTable, max_tables, build_after)

    def verify_status(self, public_point: bytes, digest: bytes, signature: bytes) -> int:
        """The raw kbs_status of `p256_verify_digest`, with the key's table when it has one."""
        if len(public_point) != P256_POINT_SIZE:
            return int(lib.KBS_ERR_KEY_LENGTH)
        try:
            table = self.table_for(public_point)
        except SignatureInvalid:
            table = None  # the cold path names the key problem
        if table is not None:
            return table.verify_status(digest, signature)
        return p256_verify_status(public_point, digest, signature)

    def verify(self, public_point: bytes, digest: bytes, signature: bytes) -> None:
        """`p256_verify_digest` with the key's table when it has one: returns, or raises SignatureInvalid."""
        _check_digest(digest)
        _split(signature)
        _raise_for(self.verify_status(public_point, digest, signature))
