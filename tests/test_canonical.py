"""kbs.canonical writes exactly what the rfc8785 package writes (RFC 8785), faster, on every kind of value."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from kbs import canonical
from kbs.store.base import ReleaseRecord

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**60), 2**60),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                    st.sampled_from([1764449123.123456, 1764449123.0, -0.0, 1e-7, 1e-6, 1e16, 1e21, 2**53 - 1.0,
                                     "\x00\x1f\x7f\u2028\ud7ff\ue000\U0001f600\"\\/", "\b\f\n\r\t"]))
values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=5)), max_leaves=30)


def reference(value: Any) -> bytes | type[Exception]:
    try:
        return rfc8785.dumps(value)
    except Exception as exc:  # what the package refuses, ours must refuse too
        return type(exc)


@settings(max_examples=1500, deadline=None)
@given(values)
def test_the_same_bytes_as_rfc8785(value: Any) -> None:
    expected = reference(value)
    if isinstance(expected, bytes):
        assert canonical.dumps(value) == expected
    else:
        try:
            canonical.dumps(value)
        except Exception as exc:
            assert isinstance(exc, expected)
        else:
            raise AssertionError(f"rfc8785 refuses {value!r} and kbs.canonical does not")


def test_keys_sort_by_utf16_code_units_and_log_entries_match() -> None:
    value = {"\U0001f600": 1, "\ue000": 2, "a": 3, "B": 4}  # astral vs BMP: UTF-16 puts the surrogate first
    assert canonical.dumps(value) == rfc8785.dumps(value)
    record = ReleaseRecord(dt.datetime.now(dt.UTC), "release", "policy", "r/t/é", 3, "s", "snp", "p", "h", "a",
                           detail="line 1\nsaw \"x\"\t\x01", evidence=json.dumps([{"m": "ab", "n": 1}]))
    assert canonical.dumps(record.body()) == rfc8785.dumps(record.body())


@settings(max_examples=1500, deadline=None)
@given(st.one_of(values, st.dictionaries(st.text(max_size=8), values, max_size=8)))
def test_the_orjson_path_writes_rfc8785_or_steps_aside(value: Any) -> None:
    fast = canonical._fast(value)
    if fast is not None:
        assert fast == rfc8785.dumps(value)


def test_log_entries_and_row_macs_take_the_orjson_path() -> None:
    record = ReleaseRecord(dt.datetime.now(dt.UTC), "release", "policy", "r/t/é", 3, "s", "snp", "p", "h", "a",
                           evidence=json.dumps({"cpu0": {"verifier": "snp", "tcb": 7}}))
    assert canonical._fast(record.body()) == rfc8785.dumps(record.body())
    assert canonical._fast(("log_heads", "releases", 1, "ab" * 32, None)) is not None
    assert canonical._fast({"t": 1.0, "u": [0.5]}) is None  # a nested float: the general encoder
