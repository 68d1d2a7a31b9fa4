"""RFC 8785 (JCS) canonical JSON, fast for what the broker hashes and MACs on its hot path.

Every log entry and row MAC is over RFC 8785 bytes; the `rfc8785` package (pure Python, general) costs
~35 us per log entry, four times per release-log append.  This encoder writes the same bytes for the
values the broker canonicalises (objects with string keys, arrays, strings, booleans, null, integers of
at most 2^53, and floats in the plain-decimal range) and hands anything else to `rfc8785` itself, so
its output is RFC 8785 by construction or by delegation (tests/test_canonical.py holds it to the
package on generated values):

- strings: JSON.stringify's escaping, which Python's json module writes with ensure_ascii=False
  (\\" \\\\ \\b \\f \\n \\r \\t, other controls as lower-case \\u00xx, everything else as UTF-8);
- object members sorted by their keys' UTF-16 code units;
- numbers: ECMAScript's Number::toString, which for an integral value below 2^53 is its decimal
  digits and for 1e-6 <= |x| < 1e16 is Python's shortest round-trip repr (without a ".0").

The common case (what log entries and row MACs are: string keys in ASCII, strings, integers below 2^53,
booleans, null, and floats only as top-level members, such as an entry's time) goes to orjson with sorted
keys, whose bytes are RFC 8785's for those values (its string escaping is JSON.stringify's, ASCII keys sort
the same by UTF-16 code units as by code points), floats written by `_number` as orjson Fragments: ~1 us
instead of ~17 us for a log entry.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import rfc8785

_MAX_SAFE = 2**53
# JSON.stringify's string escaping is the json module's with ensure_ascii=False (module docstring).
_encode_string = json.JSONEncoder(ensure_ascii=False).encode


class _Unusual(Exception):
    """A value this encoder leaves to `rfc8785`."""


def dumps(value: Any) -> bytes:
    """The RFC 8785 bytes of `value`."""
    fast = _fast(value)
    if fast is not None:
        return fast
    try:
        return "".join(_parts(value)).encode("utf-8")
    except (_Unusual, UnicodeEncodeError):
        return rfc8785.dumps(value)


def _fast(value: Any) -> bytes | None:
    """orjson's bytes when they are RFC 8785's (module docstring), else None."""
    if type(value) is dict:
        floats = {}
        for key, member in value.items():
            if type(key) is not str or not key.isascii():
                return None
            if type(member) is float:
                try:
                    floats[key] = orjson.Fragment(_number(member))
                except _Unusual:
                    return None
            elif not _plain(member):
                return None
        if floats:
            value = {**value, **floats}
    elif not _plain(value):
        return None
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # a lone surrogate
        return None


def _plain(value: Any) -> bool:
    """JSON values orjson and RFC 8785 write alike: no floats, integers below 2^53, ASCII keys, exact types."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_MAX_SAFE < value < _MAX_SAFE)
    if kind is dict:
        return all(type(k) is str and k.isascii() and _plain(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_plain(v) for v in value)
    return False


def _parts(value: Any) -> list[str]:
    out: list[str] = []
    _write(value, out)
    return out


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_encode_string(value))
    elif isinstance(value, int):
        if -_MAX_SAFE < value < _MAX_SAFE:
            out.append(str(value))
        else:
            raise _Unusual
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key in sorted(value, key=_utf16):
            if not first:
                out.append(",")
            first = False
            out.append(_encode_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise _Unusual


def _utf16(key: Any) -> bytes:
    if not isinstance(key, str):
        raise _Unusual
    return key.encode("utf-16-be")


def _number(value: float) -> str:
    if not math.isfinite(value):
        raise _Unusual
    if value == 0:
        return "0"
    if value.is_integer():  # ECMAScript writes no fraction; past 2^53 its digits are rfc8785's to get right
        if abs(value) < _MAX_SAFE:
            return str(int(value))
        raise _Unusual
    if 1e-6 <= abs(value) < 1e16:
        text = repr(value)
        if "e" not in text and "E" not in text:
            return text
    raise _Unusual
