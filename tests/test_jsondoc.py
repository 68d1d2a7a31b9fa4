"""Bounded JSON: depth and value counts against a plain recursive model, deep input refused without a crash."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbs import jsondoc
from kbs.errors import MalformedEvidence

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                                      max_size=4),
                           max_leaves=60)


def model(value: Any, depth: int = 1) -> tuple[int, int]:
    """(deepest container level, values) the simple recursive way."""
    if isinstance(value, dict | list):
        children = list(value.values()) if isinstance(value, dict) else value
        inner = [model(c, depth + 1) for c in children]
        return max([depth, *(d for d, _ in inner)]), 1 + sum(n for _, n in inner)
    return 0, 1


@settings(max_examples=300)
@given(json_values, st.integers(1, 6), st.integers(1, 80))
def test_check_shape_agrees_with_the_model(value: Any, max_depth: int, max_nodes: int) -> None:
    depth, nodes = model(value)
    try:
        jsondoc.check_shape(value, what="doc", check="c", max_depth=max_depth, max_nodes=max_nodes)
        accepted = True
    except MalformedEvidence:
        accepted = False
    assert accepted == (depth <= max_depth and nodes <= max_nodes)


@pytest.mark.parametrize("depth", [33, 900, 2000, 100_000])
def test_deep_documents_are_refused_not_crashed(depth: int) -> None:
    with pytest.raises(MalformedEvidence, match="nested too deeply") as info:
        jsondoc.loads("[" * depth + "]" * depth, what="the message", check="format")
    assert info.value.check == "format"


def test_not_json_and_wide_documents() -> None:
    with pytest.raises(MalformedEvidence, match="the message is not JSON"):
        jsondoc.loads(b"{nope", what="the message", check="format")
    with pytest.raises(MalformedEvidence, match="more than 100000 values"):
        jsondoc.loads(json.dumps([0] * 100_001), what="the message", check="format")
    assert jsondoc.loads(json.dumps({"a": [0] * 1000}), what="m", check="c") == {"a": [0] * 1000}


def test_toml_dates_become_rfc3339_strings() -> None:
    import tomllib

    doc = tomllib.loads("a = 2026-11-29T10:00:00Z\nb = 2026-11-29\nc = 10:00:00\n[t]\nd = [1979-05-27]\n")
    assert jsondoc.to_json_types(doc) == {"a": "2026-11-29T10:00:00+00:00", "b": "2026-11-29", "c": "10:00:00",
                                          "t": {"d": ["1979-05-27"]}}
