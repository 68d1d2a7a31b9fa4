"""Structure-aware mutations of real inputs, as hypothesis strategies."""

from __future__ import annotations

from hypothesis import strategies as st


def mutated(seeds: list[bytes], max_edits: int = 8) -> st.SearchStrategy[bytes]:
    """A seed with a few edits: bit flips, byte sets, interesting values, truncation, extension."""
    return _mutated(tuple(seeds), max_edits)


class _Seeds(tuple):  # type: ignore[type-arg]
    """Seeds with a short repr, so failure reports stay readable."""

    def __repr__(self) -> str:
        return f"<{len(self)} seeds>"


def _mutated(seeds: tuple[bytes, ...], max_edits: int) -> st.SearchStrategy[bytes]:
    return _edit(_Seeds(seeds), max_edits)


@st.composite
def _edit(draw: st.DrawFn, seeds: _Seeds, max_edits: int) -> bytes:
    data = bytearray(seeds[draw(st.integers(0, len(seeds) - 1))])
    for _ in range(draw(st.integers(0, max_edits))):
        op = draw(st.sampled_from(["flip", "set", "word", "truncate", "extend", "copy"]))
        if not data and op != "extend":
            continue
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif op == "word":
            width = draw(st.sampled_from([4, 8]))
            value = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 0xFF, 2**31, 2**32 - 1, 2**63]))
            word = (value & ((1 << 8 * width) - 1)).to_bytes(width, "little")
            data[pos:pos + width] = word[:max(0, len(data) - pos)]
        elif op == "truncate":
            del data[pos:]
        elif op == "extend":
            data += draw(st.binary(max_size=64))
        else:
            src = draw(st.integers(0, max(0, len(data) - 1)))
            size = draw(st.integers(1, 64))
            chunk = data[src:src + size]
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)
