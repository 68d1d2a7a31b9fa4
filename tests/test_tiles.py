"""C2SP tlog-tiles names and bundles, checked against the spec's own examples."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kbs.audit.tiles import (
    TILE_WIDTH,
    Tile,
    TileError,
    bundle,
    check_within,
    encode_index,
    parse_tile_path,
    tiles_for,
    unbundle,
)


def test_the_specs_examples() -> None:
    assert encode_index(1234067) == "x001/x234/067" and encode_index(0) == "000" and encode_index(1000) == "x001/000"
    assert Tile(0, 1234067, 256).path == "tile/0/x001/x234/067"
    assert Tile(None, 5, 17).path == "tile/entries/005.p/17"
    # "a tree of size 70,000 will be represented by 273 full level 0 tiles, one partial level 0 tile of width
    # 112, one full level 1 tile, one partial level 1 tile of width 17, and one partial level 2 tile of width 1"
    tiles = tiles_for(70000)
    assert [t for t in tiles if t.width < TILE_WIDTH] == [Tile(0, 273, 112), Tile(1, 1, 17), Tile(2, 0, 1)]
    assert sum(1 for t in tiles if t.level == 0 and t.width == TILE_WIDTH) == 273
    assert [t for t in tiles if t.level == 1 and t.width == TILE_WIDTH] == [Tile(1, 0, 256)]
    # "a tree of size 256 will be represented by a full level 0 tile and a partial level 1 tile of width 1"
    assert tiles_for(256) == [Tile(0, 0, 256), Tile(1, 0, 1)]
    assert tiles_for(0) == []


@given(st.integers(0, 10**12), st.one_of(st.none(), st.integers(0, 63)), st.integers(1, 256))
def test_paths_round_trip(index: int, level: int | None, width: int) -> None:
    tile = Tile(level, index, width)
    assert parse_tile_path(tile.path) == tile


@pytest.mark.parametrize("path", ["tile/0/1", "tile/0/x000/001", "tile/00/001", "tile/0/001.p/0", "tile/0/001.p/256",
                                  "tile/0/001.p/010", "tile/64/000", "tile/0/x001", "tile/0/001/", "tile/0/x1/001",
                                  "tile/entries/001.p", "../tile/0/000", "tile/-1/000", "tile/0/0001"])
def test_non_canonical_paths_are_refused(path: str) -> None:
    with pytest.raises(TileError):
        parse_tile_path(path)


def test_only_tiles_the_tree_has() -> None:
    check_within(Tile(0, 0, 256), 256)
    check_within(Tile(0, 1, 3), 259)
    check_within(Tile(None, 1, 3), 259)
    check_within(Tile(1, 0, 1), 259)
    for tile, size in [(Tile(0, 1, 3), 258), (Tile(0, 1, 256), 259), (Tile(0, 0, 3), 259), (Tile(0, 2, 1), 259),
                       (Tile(1, 0, 2), 259), (Tile(2, 0, 1), 259)]:
        with pytest.raises(TileError):
            check_within(tile, size)


def test_bundles() -> None:
    entries = [b"", b"a", bytes(300), b"\xff" * 65535]
    data = bundle(entries)
    assert data[:2] == b"\x00\x00" and data[2:5] == b"\x00\x01a" and unbundle(data) == entries
    with pytest.raises(TileError):
        bundle([bytes(65536)])
    for bad in (data[:-1], b"\x00", b"\x00\x05abc"):
        with pytest.raises(TileError):
            unbundle(bad)
