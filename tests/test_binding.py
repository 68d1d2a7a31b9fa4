"""Binding of nonce, TEE key and init-data, checked against the generated KBS 0.4.0 worked example."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
import rfc8785

from kbs.errors import EvidenceError, MalformedEvidence
from kbs.evidence.binding import (
    check_init_data,
    check_report_data,
    device_runtime_digest,
    parse_init_data,
    primary_runtime_digest,
)
from kbs.evidence.sample import verify_sample
from tests.conftest import vectors_dir


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    path = vectors_dir() / "trustee" / "generated" / "rcar-v0.4-worked-example.json"
    if not path.exists():
        pytest.skip(f"worked example not found at {path}")
    return dict(json.loads(path.read_text()))


def test_primary_digest_without_devices(example: dict[str, Any]) -> None:
    case = example["case_no_devices"]
    body = {"additional-evidence": "", "nonce": example["nonce"], "tee-pubkey": example["tee_pubkey_jwk"]}
    assert rfc8785.dumps(body).decode() == case["primary_runtime_data_canonical"]
    digest = primary_runtime_digest(example["nonce"], example["tee_pubkey_jwk"], "")
    assert digest.hex() == case["primary_runtime_data_sha384_hex"]
    check_report_data(bytes.fromhex(case["report_data_64_hex_for_snp_tdx"]), digest)
    evidence = case["attestation_message"]["tee-evidence"]["primary_evidence"]
    assert verify_sample(evidence, digest)["svn"] == "1"


def test_digests_with_a_device(example: dict[str, Any]) -> None:
    case = example["case_with_sampledevice"]
    message = case["attestation_message"]
    additional = message["tee-evidence"]["additional_evidence"]
    assert device_runtime_digest(example["nonce"], example["tee_pubkey_jwk"]).hex() \
        == case["device_runtime_data_sha384_hex"]
    assert primary_runtime_digest(example["nonce"], example["tee_pubkey_jwk"], additional).hex() \
        == case["primary_runtime_data_sha384_hex"]


def test_report_data_must_be_exact() -> None:
    digest = hashlib.sha384(b"x").digest()
    check_report_data(digest + bytes(16), digest)
    for bad in (digest + b"\x01" + bytes(15), bytes(64), digest[:47] + b"\x00" + bytes(16)):
        with pytest.raises(EvidenceError, match="does not bind") as info:
            check_report_data(bad, digest)
        assert info.value.check == "binding.report_data"
    with pytest.raises(EvidenceError):
        verify_sample({"svn": "1", "report_data": base64.b64encode(bytes(48)).decode()}, digest)


def test_init_data_from_the_trustee_sample() -> None:
    path = vectors_dir() / "trustee" / "initdata" / "init-data-with-policy.toml"
    if not path.exists():
        pytest.skip(f"init-data sample not found at {path}")
    body = path.read_text()
    init = parse_init_data({"format": "toml", "body": body})
    assert init is not None and init.algorithm == "sha256"
    assert init.digest == hashlib.sha256(body.encode()).digest() and "policy.rego" in init.claims
    check_init_data(init.digest, init, "HOST_DATA")  # 32 bytes exactly
    with pytest.raises(EvidenceError, match="HOST_DATA does not match"):
        check_init_data(bytes(32), init, "HOST_DATA")
    mrconfigid = init.digest + bytes(16)
    check_init_data(mrconfigid, init, "MRCONFIGID")  # 48 bytes: padded


def test_init_data_sha384_truncated_into_host_data() -> None:
    body = "version = '0.1.0'\nalgorithm = 'sha384'\n[data]\n"
    init = parse_init_data({"format": "toml", "body": body})
    assert init is not None
    check_init_data(hashlib.sha384(body.encode()).digest()[:32], init, "HOST_DATA")


@pytest.mark.parametrize("init_data", [
    {"format": "json", "body": "{}"}, {"format": "toml"}, "x",
    {"format": "toml", "body": "algorithm = 'md5'"}, {"format": "toml", "body": "not = toml = ["},
])
def test_bad_init_data_refused(init_data: Any) -> None:
    with pytest.raises(MalformedEvidence):
        parse_init_data(init_data)
    assert parse_init_data(None) is None
