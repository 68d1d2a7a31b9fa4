"""A CoCo guest's SNP attestation message decoded in one C pass: the SNP verifier's message decoder.

The Python path (orjson, `jsondoc.check_shape`, `coco.report_from_coco`) costs ~200-250 us a message,
nearly all of it turning ~6,000 small JSON integers into bytes.  `native.snp_coco_decode` validates
the whole body and re-encodes the report in one scan; it accepts only what the Python path accepts,
with the same result, and leaves everything else (and so every error message) to that path.
"""

from __future__ import annotations

from typing import Any

import orjson

from kbs import native
from kbs.errors import MalformedEvidence
from kbs.evidence.snp.coco import CocoSnpEvidence
from kbs.evidence.snp.report import parse_report


def decode_message(raw: bytes) -> dict[str, Any] | None:
    """The message body as `jsondoc.loads` returns it, but for `tee-evidence.primary_evidence`, already a
    CocoSnpEvidence (report format-checked, `parsed` set); None when the message is not on the fast path."""
    split = native.snp_coco_decode(raw)
    if split is None:
        return None
    try:
        report = parse_report(split.report)
    except MalformedEvidence:
        return None  # a format rule broken: report_from_coco says which, in its words
    tee_evidence: dict[str, Any] = {"primary_evidence": CocoSnpEvidence(
        report=report.data, certificates=split.certificates, parsed=report)}
    try:
        body: dict[str, Any] = {"runtime-data": orjson.loads(split.runtime_data), "tee-evidence": tee_evidence}
        if split.additional_evidence is not None:
            tee_evidence["additional_evidence"] = orjson.loads(split.additional_evidence)
        if split.init_data is not None:
            body["init-data"] = orjson.loads(split.init_data)
    except orjson.JSONDecodeError:
        return None  # the scanner validated these spans; should orjson ever differ, its path decides
    return body
