"""C2SP tlog-tiles: the names and contents of the log's static resources under /kbs/v0/log/.

    checkpoint                          the signed tree head (kbs.audit.note)
    tile/<L>/<N>[.p/<W>]                hashes of tree level 8L, indexes 256N .. 256N+W-1 (W = 256 if full)
    tile/entries/<N>[.p/<W>]            entries 256N .. 256N+W-1, each a big-endian uint16 length + bytes

<N> is written in zero-padded 3-digit path elements, all but the last prefixed with `x`
(1234067 -> x001/x234/067).  A tile for a tree of size s exists only as far as s reaches: full tiles,
and at most one partial tile per level, of width floor(s / 256**L) mod 256.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_LEVEL = 63
MAX_ENTRY_BYTES = 0xFFFF  # an entry bundle's uint16 length prefix

_INDEX = r"(?:x\d{3}/)*\d{3}"
_TILE = re.compile(rf"tile/(?P<level>0|[1-9]\d?|entries)/(?P<index>{_INDEX})(?:\.p/(?P<width>[1-9]\d{{0,2}}))?")


class TileError(ValueError):
    """A tile path that is malformed, or names a tile the tree does not have (yet)."""


@dataclass(frozen=True)
class Tile:
    level: int | None  # None: an entry bundle
    index: int
    width: int  # 1..256; 256 is a full tile

    @property
    def path(self) -> str:
        level = "entries" if self.level is None else str(self.level)
        partial = f".p/{self.width}" if self.width < TILE_WIDTH else ""
        return f"tile/{level}/{encode_index(self.index)}{partial}"

    @property
    def hash_level(self) -> int:
        """The tree level whose hashes the tile holds (0 for entry bundles: their leaves)."""
        return TILE_HEIGHT * (self.level or 0)

    @property
    def first(self) -> int:
        """The index, at `hash_level`, of the tile's first hash (or entry)."""
        return self.index * TILE_WIDTH


def encode_index(n: int) -> str:
    if n < 0:
        raise TileError("a tile index is not negative")
    groups = []
    while True:
        groups.append(f"{n % 1000:03d}")
        n //= 1000
        if n == 0:
            break
    groups.reverse()
    return "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])


def parse_tile_path(path: str) -> Tile:
    match = _TILE.fullmatch(path)
    if match is None:
        raise TileError(f"not a tile path: {path[:80]!r}")
    parts = match["index"].split("/")
    if any(part.startswith("x") for part in parts[-1:]) or (len(parts) > 1 and parts[0] == "x000"):
        raise TileError(f"not a canonical tile index: {match['index']!r}")
    index = int("".join(part.lstrip("x") for part in parts))
    level = None if match["level"] == "entries" else int(match["level"])
    if level is not None and level > MAX_LEVEL:
        raise TileError(f"tile level {level} is above {MAX_LEVEL}")
    width = int(match["width"]) if match["width"] else TILE_WIDTH
    if width > TILE_WIDTH - 1 and match["width"]:
        raise TileError("a partial tile is 1 to 255 wide")
    tile = Tile(level, index, width)
    if tile.path != path:  # one name per tile: no alternative spellings to cache apart
        raise TileError(f"not a canonical tile path: {path[:80]!r}")
    return tile


def check_within(tile: Tile, size: int) -> None:
    """Refuse a tile the tree of `size` does not have: past its end, or a partial tile of another width."""
    scale = TILE_WIDTH ** ((tile.level or 0) + 1)
    full_tiles = size // scale
    if tile.index < full_tiles:
        if tile.width != TILE_WIDTH:
            raise TileError(f"{tile.path}: this tile is full; fetch it without .p")
        return
    partial = (size // (scale // TILE_WIDTH)) % TILE_WIDTH
    if tile.index == full_tiles and partial and tile.width == partial:
        return
    raise TileError(f"{tile.path}: not in the tree of size {size}")


def bundle(entries: Iterable[bytes]) -> bytes:
    out = bytearray()
    for entry in entries:
        if len(entry) > MAX_ENTRY_BYTES:
            raise TileError(f"an entry of {len(entry)} bytes does not fit an entry bundle")
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def unbundle(data: bytes) -> list[bytes]:
    entries, at = [], 0
    while at < len(data):
        if at + 2 > len(data):
            raise TileError("entry bundle ends inside a length")
        length = int.from_bytes(data[at:at + 2], "big")
        if at + 2 + length > len(data):
            raise TileError("entry bundle ends inside an entry")
        entries.append(data[at + 2:at + 2 + length])
        at += 2 + length
    return entries


def tiles_for(size: int) -> Sequence[Tile]:
    """Every hash tile a tree of `size` has (full and partial), lowest level first: what a mirror fetches."""
    out = []
    level = 0
    while size >= TILE_WIDTH ** level and level <= MAX_LEVEL:
        scale = TILE_WIDTH ** (level + 1)
        out += [Tile(level, n, TILE_WIDTH) for n in range(size // scale)]
        partial = (size // TILE_WIDTH ** level) % TILE_WIDTH
        if partial:
            out.append(Tile(level, size // scale, partial))
        level += 1
    return out
