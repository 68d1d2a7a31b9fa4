"""ReleaseRecord.updated is dataclasses.replace without __init__: the same record, the original untouched."""

from __future__ import annotations

import datetime as dt
from dataclasses import fields, replace
from typing import Any

import pytest

from kbs.store.base import ReleaseRecord

RECORD = ReleaseRecord(dt.datetime(2026, 11, 30, tzinfo=dt.UTC), "deny", "", "r/t/k", None, "s", "snp", None, None,
                       "a", ref="ref")


def test_updated_is_replace() -> None:
    for f in fields(ReleaseRecord):
        change: dict[str, Any] = {f.name: 7 if f.name in ("version", "seq") else f"new-{f.name}"}
        changed, expected = RECORD.updated(**change), replace(RECORD, **change)
        assert changed == expected and hash(changed) == hash(expected)
        assert getattr(changed, f.name) == change[f.name]
    assert RECORD.policy_id is None and RECORD.updated() == RECORD
    with pytest.raises(TypeError, match="no field"):
        RECORD.updated(polcy_id="typo")
    with pytest.raises(AttributeError):  # still frozen
        RECORD.updated(policy_id="p").policy_id = "q"  # type: ignore[misc]
