"""`kbs verify nvgpu`: real reports from the vectors and a synthetic fleet, with the exit contract of
`kbs verify snp` (0 and claims, 1 and the failed check, 2 for usage errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbs.cli import main
from tests.conftest import vectors_dir
from tests.gpu_synth import SyntheticFleet
from tests.test_nvgpu_verifier import NOW, NVTRUST_NONCE, NVTRUST_RIMS

GPU = vectors_dir() / "gpu"
REPORT = GPU / "nvtrust/hopperAttestationReport.txt"
CHAIN = GPU / "nvtrust/hopperCertChain.txt"
needs_vectors = pytest.mark.skipif(not REPORT.is_file(), reason="no GPU vectors")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@needs_vectors
def test_the_nvtrust_report_with_its_rims(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for name in NVTRUST_RIMS:
        (tmp_path / name).write_bytes((GPU / "go-nvattest-tools/rim" / name).read_bytes())
    base = ["verify", "nvgpu", str(REPORT), "--certs", str(CHAIN), "--no-ocsp", "--at", "2025-08-21T12:00:00Z"]
    code, out, err = run(capsys, *base, "--rim-dir", str(tmp_path), "--nonce", NVTRUST_NONCE.hex())
    claims = json.loads(out)
    assert code == 0 and claims["measres"] == "success" and "measres success" in err
    assert claims["x-nvidia-gpu-attestation-report-cert-chain"]["x-nvidia-cert-ocsp-status"] == "not checked"
    # Without --rim-dir: no golden comparison, and never "success".
    code, out, _ = run(capsys, *base)
    assert code == 0 and json.loads(out)["measres"] == "not_checked" and "measurements" in json.loads(out)
    # Another nonce: refused, naming both.
    code, out, err = run(capsys, *base, "--nonce", "00" * 32, "--json")
    assert code == 1 and "nvgpu.nonce" in err and json.loads(out)["error"]["check"] == "nvgpu.nonce"
    # OCSP required from an empty store: refused.
    code, _, err = run(capsys, *base[:-3], "--at", "2025-08-21T12:00:00Z", "--ocsp-dir", str(tmp_path))
    assert code == 1 and "nvgpu.ocsp" in err


@needs_vectors
def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "verify", "nvgpu", str(REPORT))
    assert code == 2 and "--certs" in err
    code, _, err = run(capsys, "verify", "nvgpu", str(REPORT), "--certs", str(CHAIN), "--nonce", "abcd")
    assert code == 2 and "32 bytes" in err
    code, _, err = run(capsys, "verify", "nvgpu", str(tmp_path / "missing.txt"), "--certs", str(CHAIN))
    assert code == 2 and "cannot read report" in err


def test_a_json_list_verifies_all_gpus_as_one(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fleet = SyntheticFleet(NOW)
    gpus = [fleet.gpu(), fleet.gpu()]
    nonce = bytes(range(32))
    device_root, rim_root = fleet.write_roots(tmp_path)
    fleet.write_rims(tmp_path / "rims", gpus)
    fleet.write_ocsp(tmp_path / "ocsp", gpus)
    (tmp_path / "evidence.json").write_text(json.dumps(fleet.evidence(nonce, gpus)))
    base = ["verify", "nvgpu", str(tmp_path / "evidence.json"), "--trust-root", str(device_root), "--rim-root",
            str(rim_root), "--rim-dir", str(tmp_path / "rims"), "--ocsp-dir", str(tmp_path / "ocsp"),
            "--at", NOW.isoformat(), "--nonce", nonce.hex()]
    code, out, err = run(capsys, *base)
    result = json.loads(out)
    assert code == 0 and [g["uuid"] for g in result["gpus"]] == [g.uuid for g in gpus], err
    assert {g["x-nvidia-gpu-attestation-report-cert-chain"]["x-nvidia-cert-ocsp-status"] for g in result["gpus"]} \
        == {"good"}
    # One GPU whose driver RIM is in no store sinks the whole list.
    other = fleet.gpu(driver="560.35.03")
    (tmp_path / "evidence.json").write_text(json.dumps(fleet.evidence(nonce, [gpus[0], other])))
    fleet.write_ocsp(tmp_path / "ocsp", [other])
    code, _, err = run(capsys, *base)
    assert code == 1 and "nvgpu.rim.missing" in err and "GPU 1" in err and "560.35.03" in err
