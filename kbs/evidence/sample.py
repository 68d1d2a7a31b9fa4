"""The `sample` TEE: no hardware, for trying the broker.  Its claims are contraindicated and the
default policy refuses it; a policy must name `local:sample` explicitly to release anything to it."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from kbs.errors import MalformedEvidence
from kbs.evidence.binding import check_report_data


def verify_sample(evidence: Any, digest: bytes) -> dict[str, Any]:
    """{"svn": "1", "report_data": base64(digest)} -> Trustee's sample claims."""
    if not isinstance(evidence, Mapping) or not isinstance(evidence.get("report_data"), str) or \
            len(evidence["report_data"]) > 128 or not isinstance(evidence.get("svn", ""), str) or \
            len(evidence.get("svn", "")) > 64 or set(evidence) - {"svn", "report_data"}:
        raise MalformedEvidence('sample evidence must be {"svn": "<at most 64 characters>", "report_data": '
                                '"<base64>"} and nothing else', check="evidence.sample")
    try:
        report_data = base64.b64decode(evidence["report_data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEvidence("sample report_data is not base64", check="evidence.sample") from exc
    check_report_data(report_data, digest, size=len(digest))
    return {"svn": evidence.get("svn", ""), "report_data": evidence["report_data"],
            "launch_digest": "abcde", "platform_version": {"major": 1, "minor": 4}, "debug": False}
