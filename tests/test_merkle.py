"""kbs.audit.merkle against RFC 6962/9162: the Certificate Transparency known answers, and a plain recursive
implementation written from the RFC's definitions (MTH, PATH, PROOF) for every shape up to 70 leaves."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbs.audit.merkle import (
    EMPTY_ROOT,
    HashReader,
    ProofError,
    RootBuilder,
    consistency_proof,
    hashes_to_store,
    inclusion_proof,
    leaf_hash,
    right_edge,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)

# RFC 6962 test vectors as the CT and transparency-dev test suites publish them: leaves, and the root of
# each tree size 1..8; proofs in the tree of all eight.
CT_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                        "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]
CT_INCLUSION = {  # (index, size) -> proof
    (0, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}
CT_CONSISTENCY = {  # (old, new) -> proof
    (2, 8): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
}


# -- the RFC's definitions, recursively, straight from the text -----------------------------------

def ref_mth(d: Sequence[bytes]) -> bytes:
    if not d:
        return hashlib.sha256().digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < len(d):
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


class Stored:
    """A log's stored hashes, filled only through hashes_to_store, as the store does."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.hashes: dict[tuple[int, int], bytes] = {}
        self.reads = 0
        for i, entry in enumerate(entries):
            for level, index, value in hashes_to_store(i, leaf_hash(entry), self.reader):
                assert (level, index) not in self.hashes
                self.hashes[(level, index)] = value

    def reader(self, wanted: Sequence[tuple[int, int]]) -> list[bytes]:
        self.reads += len(wanted)
        return [self.hashes[w] for w in wanted]


ENTRIES = [bytes([i, i * 7 % 256, 0x42]) * (i % 3) for i in range(70)]
STORED = Stored(ENTRIES)
READ: HashReader = STORED.reader


def test_known_answers() -> None:
    stored = Stored(CT_LEAVES)
    assert tree_hash(0, stored.reader) == EMPTY_ROOT == hashlib.sha256().digest()
    assert [tree_hash(n, stored.reader).hex() for n in range(1, 9)] == CT_ROOTS
    for (index, size), proof in CT_INCLUSION.items():
        assert [h.hex() for h in inclusion_proof(index, size, stored.reader)] == proof
        verify_inclusion(leaf_hash(CT_LEAVES[index]), index, size, [bytes.fromhex(h) for h in proof],
                         bytes.fromhex(CT_ROOTS[size - 1]))
    for (old, new), proof in CT_CONSISTENCY.items():
        assert [h.hex() for h in consistency_proof(old, new, stored.reader)] == proof
        verify_consistency(old, new, bytes.fromhex(CT_ROOTS[old - 1]), bytes.fromhex(CT_ROOTS[new - 1]),
                           [bytes.fromhex(h) for h in proof])


def test_every_shape_agrees_with_the_rfcs_recursion() -> None:
    for n in range(1, len(ENTRIES) + 1):
        d = ENTRIES[:n]
        root = tree_hash(n, READ)
        assert root == ref_mth(d), n
        for m in range(n):
            proof = inclusion_proof(m, n, READ)
            assert proof == ref_path(m, d), (m, n)
            verify_inclusion(leaf_hash(d[m]), m, n, proof, root)
        for m in range(1, n + 1):
            proof = consistency_proof(m, n, READ)
            assert proof == ref_subproof(m, d, True), (m, n)
            verify_consistency(m, n, ref_mth(d[:m]), root, proof)


def test_the_right_edge_builder_agrees() -> None:
    builder = RootBuilder()
    assert builder.root() == EMPTY_ROOT
    for n, entry in enumerate(ENTRIES, 1):
        builder.push(leaf_hash(entry))
        assert builder.root() == ref_mth(ENTRIES[:n]) and builder.size == n


def test_appending_from_the_right_edge_stores_what_hashes_to_store_does() -> None:
    for n in range(len(ENTRIES)):
        edge = READ(right_edge(n))
        builder = RootBuilder.from_edge(n, edge)
        assert builder.root() == tree_hash(n, READ)
        stored = builder.push(leaf_hash(ENTRIES[n]))
        assert stored == hashes_to_store(n, leaf_hash(ENTRIES[n]), READ)
        assert builder.root() == tree_hash(n + 1, READ)


def test_reads_are_logarithmic() -> None:
    STORED.reads = 0
    inclusion_proof(37, 70, READ)
    consistency_proof(37, 70, READ)
    tree_hash(70, READ)
    assert STORED.reads <= 3 * 7 * 2  # a handful of subtree hashes per level, not the leaves


def flip(value: bytes) -> bytes:
    return bytes([value[0] ^ 1]) + value[1:]


def test_every_tampering_is_refused() -> None:
    n, m = 53, 21
    root, leaf, proof = tree_hash(n, READ), leaf_hash(ENTRIES[m]), inclusion_proof(m, n, READ)
    bad: list[tuple[bytes, int, int, list[bytes], bytes]] = [
        (flip(leaf), m, n, proof, root), (leaf, m + 1, n, proof, root), (leaf, m - 1, n, proof, root),
        # (A size of the same shape around the leaf gives the same path: the checkpoint binds size and root.)
        (leaf, m, 2 * n, proof, root), (leaf, m, m + 1, proof, root), (leaf, m, n, proof[:-1], root),
        (leaf, m, n, [*proof, root], root), (leaf, m, n, [flip(proof[0]), *proof[1:]], root),
        (leaf, m, n, proof, flip(root)), (leaf, n, n, proof, root)]
    for case in bad:
        with pytest.raises(ProofError):
            verify_inclusion(*case)
    old_root, cproof = tree_hash(m, READ), consistency_proof(m, n, READ)
    for old, new, a, b, p in [(m, n, flip(old_root), root, cproof), (m, n, old_root, flip(root), cproof),
                              (m + 1, n, old_root, root, cproof), (m, 2 * n, old_root, root, cproof),
                              (m, n, old_root, root, cproof[:-1]), (m, n, old_root, root, [*cproof, root]),
                              (m, n, old_root, root, []), (n, m, root, old_root, cproof), (0, n, b"", root, []),
                              (m, m, old_root, flip(old_root), [])]:
        with pytest.raises(ProofError):
            verify_consistency(old, new, a, b, p)
    verify_consistency(m, m, old_root, old_root, [])
    for index, size in [(5, 5), (-1, 5), (0, 0)]:
        with pytest.raises(ProofError):
            inclusion_proof(index, size, READ)
    with pytest.raises(ProofError):
        consistency_proof(0, 5, READ)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_proofs_verify(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, len(ENTRIES)))
    m = data.draw(st.integers(0, n - 1))
    verify_inclusion(leaf_hash(ENTRIES[m]), m, n, inclusion_proof(m, n, READ), tree_hash(n, READ))
    verify_consistency(m + 1, n, tree_hash(m + 1, READ), tree_hash(n, READ), consistency_proof(m + 1, n, READ))
