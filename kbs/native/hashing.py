"""Hashing in the C core (native/hash.c): SHA-384 and SHA-256."""

from __future__ import annotations

from kbs.native._ffi import ffi, lib, raise_for


def sha384(data: bytes) -> bytes:
    digest = ffi.new("uint8_t[48]")
    raise_for(lib.kbs_sha384(data, len(data), digest))
    return bytes(digest)


def sha256(data: bytes) -> bytes:
    digest = ffi.new("uint8_t[32]")
    raise_for(lib.kbs_sha256(data, len(data), digest))
    return bytes(digest)
