"""Fuzz the nvgpu verifier's evidence path (decoding, parse, nonce, chain, architecture, signature, FWID,
duplicates) with mutated real evidence and arbitrary JSON: only refusals labelled `nvgpu.*` come out, and
a GPU is accepted only as it was sent by the hardware (edits confined to zero padding after the signature)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fuzz.mutations import mutated
from kbs.errors import KbsError
from kbs.evidence.nvgpu.verifier import prepare_all
from tests.conftest import vectors_dir
from tests.gpu_reports import real_reports

AT = dt.datetime(2025, 8, 21, 12, tzinfo=dt.UTC)
REPORTS = [r for r in real_reports(vectors_dir()) if r.genuine and not r.is_switch and "[" not in r.name]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                  max_size=4), max_leaves=12)


def _entry(report: bytes, chain: bytes, arch: str = "HOPPER") -> dict[str, str]:
    return {"arch": arch, "evidence": base64.b64encode(report).decode(),
            "certificate": base64.b64encode(chain).decode()}


def _check(evidence: Any, nonce: bytes) -> list[Any] | None:
    try:
        return prepare_all(evidence, nonce, AT, None, None)
    except KbsError as exc:
        assert exc.check.startswith("nvgpu."), (exc.check, str(exc))
        return None


@given(st.integers(0, max(len(REPORTS) - 1, 0)), st.data())
def test_mutated_reports_are_refused_or_genuine(which: int, data: st.DataObject) -> None:
    if not REPORTS:
        return
    r = REPORTS[which]
    report = data.draw(mutated([r.data], max_edits=4))
    arch = "BLACKWELL" if "blackwell" in r.name.lower() else "HOPPER"
    accepted = _check([_entry(report, r.chain_pem, arch)], r.nonce)
    if accepted is not None:
        common = min(len(report), len(r.data))
        assert report[:common] == r.data[:common] and not any(report[common:]) and not any(r.data[common:])


@given(JSON)
def test_arbitrary_json_is_refused_cleanly(evidence: Any) -> None:
    assert _check(evidence, bytes(32)) is None


@given(st.dictionaries(st.sampled_from(["arch", "uuid", "evidence", "certificate", "nonce", "x"]),
                       st.text(max_size=64) | st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
                       max_size=6))
def test_arbitrary_entries_are_refused_cleanly(entry: dict[str, str]) -> None:
    assert _check({"device_evidence_list": [entry]}, bytes(32)) is None
    assert _check(json.loads(json.dumps([entry, entry])), bytes(32)) is None
