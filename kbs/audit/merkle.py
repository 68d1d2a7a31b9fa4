"""RFC 9162 §2.1 Merkle tree hashing, proofs and their verification, over stored subtree hashes.

    leaf hash  = SHA-256(0x00 || entry)        interior node = SHA-256(0x01 || left || right)
    MTH({})    = SHA-256()                     MTH(D[n]) splits at k, the largest power of two < n

The log stores, for each complete aligned subtree, its hash: level 0 holds the leaf hashes, level L
index i the hash of leaves [i*2^L, (i+1)*2^L).  Appending a leaf stores its hash and the hash of every
subtree it completes (`hashes_to_store`), so any tree head or proof reads O(log n) stored hashes
(`HashReader`), and the stored levels are exactly the hashes C2SP tlog-tiles serves.

Verification (`verify_inclusion`, `verify_consistency`) is the RFC's §2.1.3.2 and §2.1.4.2 algorithms;
they need nothing but the proof, so `kbs log verify` and key owners run them offline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

# (level, index) -> the stored hash of that complete subtree.  Raises KeyError if absent.
HashReader = Callable[[Sequence[tuple[int, int]]], Sequence[bytes]]


class ProofError(ValueError):
    """A proof that does not verify, or a request for one that cannot exist (index past the size...)."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def hashes_to_store(index: int, leaf: bytes, reader: HashReader) -> list[tuple[int, int, bytes]]:
    """What appending leaf number `index` (0-based; leaves 0..index-1 stored) adds: (level, index, hash)
    for the leaf and for each subtree it completes, lowest first."""
    out = [(0, index, leaf)]
    level, position, current = 0, index, leaf
    while position & 1:  # a right child: its left sibling is stored, and together they complete a subtree
        [left] = reader([(level, position - 1)])
        current = node_hash(left, current)
        level, position = level + 1, position >> 1
        out.append((level, position, current))
    return out


def _subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) as the complete aligned subtrees (level, index) it splits into, left to right: the
    largest power of two that fits and keeps alignment first (RFC 9162's split, applied repeatedly)."""
    out = []
    while start < end:
        level = (end - start).bit_length() - 1
        while start % (1 << level):
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def range_hash(start: int, end: int, reader: HashReader) -> bytes:
    """MTH(D[start:end]) for a range the RFC's recursion produces (start a multiple of a power of two
    at least as large as the range's largest subtree); the whole tree is range_hash(0, size)."""
    if start == end:
        return EMPTY_ROOT
    hashes = list(reader(_subtrees(start, end)))
    current = hashes.pop()
    while hashes:  # combine right to left: the tree leans left (RFC 9162's split)
        current = node_hash(hashes.pop(), current)
    return current


def tree_hash(size: int, reader: HashReader) -> bytes:
    return range_hash(0, size, reader)


def _split(n: int) -> int:
    """k, the largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(index: int, size: int, reader: HashReader) -> list[bytes]:
    """PATH(index, D[size]) (RFC 9162 §2.1.3.1), the sibling hashes from the leaf up."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    return [range_hash(a, b, reader) for a, b in reversed(ranges)]


def consistency_proof(old: int, new: int, reader: HashReader) -> list[bytes]:
    """PROOF(old, D[new]) (RFC 9162 §2.1.4.1): shows the tree of size `old` is a prefix of size `new`."""
    if not 0 < old <= new:
        raise ProofError(f"no consistency proof from size {old} to size {new}")
    ranges: list[tuple[int, int]] = []
    start, end, complete = 0, new, True  # SUBPROOF(m, D[start:end], b)
    m = old
    while True:
        if m == end - start:
            if not complete:
                ranges.append((start, end))
            break
        k = _split(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, complete = start + k, m - k, False
    return [range_hash(a, b, reader) for a, b in reversed(ranges)]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2; raises ProofError naming what failed."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below the tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError(f"inclusion proof of leaf {index} does not lead to the root of size {size}")


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2; raises ProofError naming what failed."""
    if not 0 < old <= new:
        raise ProofError(f"no consistency between sizes {old} and {new}")
    if old == new:
        if proof:
            raise ProofError("a consistency proof between equal sizes is empty")
        if old_root != new_root:
            raise ProofError(f"two different roots for the same size {old}")
        return
    if not proof:
        raise ProofError(f"empty consistency proof between different sizes {old} and {new}")
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the proof's implicit first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the trees are deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the trees are deep")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old root of size {old}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new root of size {new}")


def right_edge(size: int) -> list[tuple[int, int]]:
    """(level, index) of the complete subtrees a tree of `size` leaves splits into, left to right: its right
    edge, what its root and its next append need."""
    return _subtrees(0, size)


class RootBuilder:
    """A tree's root from its leaf hashes in order, holding only the right edge (O(log n) hashes): for
    checking a whole log without keeping it, and for appending to a stored one after reading its edge."""

    def __init__(self) -> None:
        self._edge: list[tuple[int, bytes]] = []  # (level, hash) of complete subtrees, left to right
        self.size = 0

    @classmethod
    def from_edge(cls, size: int, hashes: Sequence[bytes]) -> RootBuilder:
        """The builder of a tree of `size` leaves, given the hashes of its right edge (`right_edge(size)`)."""
        builder = cls()
        builder._edge = [(level, h) for (level, _), h in zip(right_edge(size), hashes, strict=True)]
        builder.size = size
        return builder

    def copy(self) -> RootBuilder:
        twin = RootBuilder()
        twin._edge = list(self._edge)
        twin.size = self.size
        return twin

    def push(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append a leaf; returns what a store keeps of it: (level, index, hash) of the leaf and of every
        subtree it completes, lowest first (as `hashes_to_store`)."""
        level, current, position = 0, leaf, self.size
        stored = [(0, position, leaf)]
        while self._edge and self._edge[-1][0] == level:
            _, left = self._edge.pop()
            current, level, position = node_hash(left, current), level + 1, position >> 1
            stored.append((level, position, current))
        self._edge.append((level, current))
        self.size += 1
        return stored

    def root(self) -> bytes:
        if not self._edge:
            return EMPTY_ROOT
        current = self._edge[-1][1]
        for _, left in reversed(self._edge[:-1]):
            current = node_hash(left, current)
        return current
