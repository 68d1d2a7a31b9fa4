"""Binding of the nonce, the TEE's key and init-data to the evidence (KBS protocol 0.4.0).

    primary  = SHA-384(JCS({"additional-evidence": <string>, "nonce": N, "tee-pubkey": JWK}))
    device   = SHA-384(JCS({"nonce": N, "tee-pubkey": JWK}))

JCS is RFC 8785 canonical JSON.  The server rebuilds these from its own session nonce, so a
replayed or foreign nonce can never match.  Init-data (TOML) is hashed with the algorithm it
names and must equal SNP HOST_DATA (first 32 bytes) or TDX MRCONFIGID.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kbs import canonical, jsondoc
from kbs.errors import EvidenceError, MalformedEvidence

MAX_INIT_DATA_BYTES = 128 * 1024  # Trustee's sample with a policy (aa.toml, cdh.toml, policy.rego) is 62 KB
INIT_DATA_ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


def primary_runtime_digest(nonce: str, tee_pubkey: Mapping[str, Any], additional_evidence: str) -> bytes:
    body: dict[str, Any] = {"additional-evidence": additional_evidence, "nonce": nonce,
                            "tee-pubkey": dict(tee_pubkey)}
    return hashlib.sha384(canonical.dumps(body)).digest()


def device_runtime_digest(nonce: str, tee_pubkey: Mapping[str, Any]) -> bytes:
    body: dict[str, Any] = {"nonce": nonce, "tee-pubkey": dict(tee_pubkey)}
    return hashlib.sha384(canonical.dumps(body)).digest()


def check_report_data(report_data: bytes, digest: bytes, size: int = 64) -> None:
    """report_data must be the digest zero-padded to `size` bytes, exactly."""
    expected = (digest + bytes(size))[:size]
    if report_data != expected:
        raise EvidenceError("report_data does not bind this session's nonce and the TEE key "
                            f"(saw {report_data[:8].hex()}…, wanted {expected[:8].hex()}…)",
                            check="binding.report_data")


@dataclass(frozen=True)
class InitData:
    digest: bytes
    algorithm: str
    claims: dict[str, Any]  # the TOML `data` table


def parse_init_data(init_data: Any) -> InitData | None:
    """`null` or {"format": "toml", "body": "<TOML text>"}."""
    if init_data is None:
        return None
    if not isinstance(init_data, Mapping) or init_data.get("format") != "toml" or \
            not isinstance(init_data.get("body"), str):
        raise MalformedEvidence('init-data must be null or {"format": "toml", "body": "<TOML>"}',
                                check="init_data.format")
    body: str = init_data["body"]
    if len(body) > MAX_INIT_DATA_BYTES:
        raise MalformedEvidence(f"init-data is {len(body)} characters; at most {MAX_INIT_DATA_BYTES}",
                                check="init_data.size")
    try:
        document = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:
        raise MalformedEvidence(f"init-data is not valid TOML: {exc}", check="init_data.format") from exc
    except RecursionError:
        raise MalformedEvidence("init-data TOML is nested too deeply", check="init_data.format") from None
    jsondoc.check_shape(document, what="init-data", check="init_data.format")
    algorithm = document.get("algorithm")
    if algorithm not in INIT_DATA_ALGORITHMS:
        raise MalformedEvidence(f"init-data algorithm {algorithm!r} is not one of "
                                f"{', '.join(INIT_DATA_ALGORITHMS)}", check="init_data.algorithm")
    data = document.get("data", {})
    # TOML dates and times become RFC 3339 strings: the claims are JSON (token, policies, database).
    claims = jsondoc.to_json_types(data) if isinstance(data, Mapping) else {}
    return InitData(digest=INIT_DATA_ALGORITHMS[algorithm](body.encode()).digest(), algorithm=algorithm,
                    claims=claims)


def check_init_data(field_value: bytes, init: InitData, field_name: str) -> None:
    """The launch-time field (HOST_DATA: 32 B, MRCONFIGID: 48 B) must hold the digest, padded or truncated."""
    expected = (init.digest + bytes(len(field_value)))[:len(field_value)]
    if field_value != expected:
        raise EvidenceError(f"{field_name} does not match the init-data digest ({init.algorithm})",
                            check="binding.init_data")
