"""The nvgpu verifier: real GPU evidence from the vectors (gpu/SOURCES.md scenarios), and a synthetic
NVIDIA-shaped fleet (device PKI, signed reports, RIM PKI with signed RIMs, OCSP responses) with each
check broken alone and refused under its own label."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from kbs.errors import KbsError
from kbs.evidence.base import AFFIRMING, WARNING, Appraisal, Binding, VerifierContext
from kbs.evidence.nvgpu.evidence import MAX_GPUS, decode_evidence
from kbs.evidence.nvgpu.verifier import NvgpuVerifier, judge_golden, prepare_all, prepare_gpu
from kbs.evidence.registry import VerifierRegistry
from kbs.trust.nvidia.ocsp import OcspChecker
from kbs.trust.nvidia.rim import verify_rim
from tests.conftest import vectors_dir
from tests.gpu_reports import real_reports
from tests.gpu_synth import FleetGpu, SyntheticFleet

GPU = vectors_dir() / "gpu"
NVTRUST_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
GPU_OCSP_DAY = dt.datetime(2025, 8, 21, 12, tzinfo=dt.UTC)  # the device chain's OCSP responses
RIM_OCSP_DAY = dt.datetime(2025, 10, 24, 12, tzinfo=dt.UTC)  # the RIM chains' OCSP responses
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
NONCE = bytes(range(7, 39))
needs_vectors = pytest.mark.skipif(not (GPU / "SOURCES.md").is_file(), reason="no GPU vectors")


async def _inline(fn: Callable[..., Any], *args: Any, inline: bool = False) -> Any:
    return fn(*args)


def _binding(nonce: bytes) -> Binding:
    return Binding("n", {}, report_data=nonce + bytes(16))  # hD is 48 bytes; the GPU nonce is its first 32


def _verify(verifier: NvgpuVerifier, evidence: Any, nonce: bytes = NONCE, at: dt.datetime = NOW) -> list[Appraisal]:
    return asyncio.run(verifier.verify(evidence, _binding(nonce), at, _inline))


def _refused(call: Callable[..., object]) -> KbsError:
    with pytest.raises(KbsError) as info:
        call()
    return info.value


def _arch(chain_pem: bytes) -> str:
    from kbs.trust.x509 import load_certificates
    return "BLACKWELL" if load_certificates(chain_pem)[1].subject_cn.startswith("GB") else "HOPPER"


def _entry(report: bytes, chain: bytes, arch: str = "HOPPER") -> dict[str, str]:
    return {"arch": arch, "evidence": base64.b64encode(report).decode(),
            "certificate": base64.b64encode(chain).decode()}


# -- real evidence ---------------------------------------------------------------------------------------

@needs_vectors
def test_every_genuine_gpu_report_passes_parse_signature_and_chain() -> None:
    reports = [r for r in real_reports(vectors_dir()) if not r.is_switch]
    assert len(reports) >= 20
    for r in reports:
        evidence = {"device_evidence_list": [_entry(r.data, r.chain_pem, _arch(r.chain_pem))]}
        if r.genuine:
            [p] = prepare_all(evidence, r.nonce, GPU_OCSP_DAY, None, None)
            assert p.report.request_nonce == r.nonce, r.name
        else:
            error = _refused(lambda e=evidence, n=r.nonce: prepare_all(e, n, GPU_OCSP_DAY, None, None))
            assert error.check == "nvgpu.signature", r.name


@needs_vectors
def test_deliberate_negatives_fail_with_the_expected_check() -> None:
    report = bytes.fromhex((GPU / "nvtrust/hopperAttestationReport.txt").read_text().strip())
    for case in (2, 3, 4):  # only the root; an intermediate removed; the leaf removed
        chain = (GPU / f"trustee/hopper_cert_chain_case{case}.txt").read_bytes()
        error = _refused(lambda c=chain: prepare_all([_entry(report, c)], NVTRUST_NONCE, GPU_OCSP_DAY, None, None))
        assert error.check == "nvgpu.chain", (case, str(error))
        assert str(error).startswith("GPU 0: ")
    # Scenario 2: a nonce other than the report's.
    chain = (GPU / "nvtrust/hopperCertChain.txt").read_bytes()
    error = _refused(lambda: prepare_all([_entry(report, chain)], bytes(32), GPU_OCSP_DAY, None, None))
    assert error.check == "nvgpu.nonce" and NVTRUST_NONCE.hex() in str(error) and "0" * 64 in str(error)


@needs_vectors
def test_the_coco_report_with_a_trailing_byte_verifies() -> None:
    report = bytes.fromhex((GPU / "trustee/hopper_coco_report1.txt").read_text().strip())
    chain = (GPU / "trustee/hopper_coco_certs1.txt").read_bytes()
    report_data = bytes.fromhex("87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec"
                                "e279b616efefc2aae21da80cf5581250")
    verifier = NvgpuVerifier(rims=None, ocsp=OcspChecker(), ocsp_stance="off")
    [appraisal] = asyncio.run(verifier.verify([_entry(report, chain)], Binding("n", {}, report_data=report_data),
                                              GPU_OCSP_DAY, _inline))
    assert appraisal.claims["x-nvidia-gpu-attestation-report-signature-verified"] is True
    assert appraisal.claims["x-nvidia-gpu-driver-version"] == "580.95.05"
    assert appraisal.claims["measres"] == "not_checked" and len(appraisal.claims["measurements"]) == 64
    assert appraisal.vector["hardware"] == WARNING and appraisal.annotation == "nvidia"


def _bundles() -> dict[str, list[Any]]:
    """The vectors' multi-GPU bundles: source file -> its GPU reports (switches left out)."""
    bundles: dict[str, list[Any]] = {}
    for r in real_reports(vectors_dir()):
        if "[" in r.name and not r.is_switch:
            bundles.setdefault(r.name.split("[")[0], []).append(r)
    return {name: reports for name, reports in bundles.items() if len(reports) == 8}


@needs_vectors
def test_the_vectors_have_the_eight_gpu_bundles() -> None:
    names = sorted(_bundles())
    assert any("mpt" in n for n in names) and any("ppcie" in n for n in names), names


@needs_vectors
@pytest.mark.parametrize("bundle", sorted(_bundles()) if (GPU / "SOURCES.md").is_file() else [])
def test_eight_gpu_bundles_verify_as_one_attestation(bundle: str) -> None:
    reports = _bundles()[bundle]
    evidence = {"device_evidence_list": [_entry(r.data, r.chain_pem, _arch(r.chain_pem)) for r in reports]}
    verifier = NvgpuVerifier(rims=None, ocsp=OcspChecker(), ocsp_stance="off")
    appraisals = _verify(verifier, evidence, reports[0].nonce, GPU_OCSP_DAY)
    assert len(appraisals) == 8 and len({a.claims["ueid"] for a in appraisals}) == 8
    # One GPU of the eight with another nonce sinks the whole attestation, naming it.
    other = reports[3].data[:4] + bytes(32) + reports[3].data[36:]
    evidence["device_evidence_list"][3]["evidence"] = base64.b64encode(other).decode()
    error = _refused(lambda: _verify(verifier, evidence, reports[0].nonce, GPU_OCSP_DAY))
    assert error.check == "nvgpu.nonce" and str(error).startswith("GPU 3")


def _nvtrust_verifier(tmp: Path, *, ocsp: str, rim_ocsp: str, rims: list[str]) -> NvgpuVerifier:
    (tmp / "rims").mkdir(parents=True)
    (tmp / "ocsp").mkdir()
    for name in rims:
        shutil.copy(GPU / "go-nvattest-tools/rim" / name, tmp / "rims")
    for source in (GPU / "go-nvattest-tools/ocsp").glob("*.dat"):
        shutil.copy(source, tmp / "ocsp")
    table = {"rim_dir": str(tmp / "rims"), "rim_url": "", "ocsp": ocsp, "rim_ocsp": rim_ocsp,
             "ocsp_dir": str(tmp / "ocsp"), "offline": True, "cache_dir": str(tmp / "cache")}
    return NvgpuVerifier.from_config(table, VerifierContext(state_dir=tmp))


NVTRUST_RIMS = ["NV_GPU_DRIVER_GH100_550.90.07.xml", "NV_GPU_VBIOS_1010_0200_882_96009F0001.xml"]


@needs_vectors
def test_nvtrust_h100_matches_its_rims_with_ocsp_from_the_store(tmp_path: Path) -> None:
    """Scenario 1, time pinned per artefact: the device chain's OCSP on its day, the RIM chains' on theirs."""
    report = bytes.fromhex((GPU / "nvtrust/hopperAttestationReport.txt").read_text().strip())
    evidence = [_entry(report, (GPU / "nvtrust/hopperCertChain.txt").read_bytes())]
    device = _nvtrust_verifier(tmp_path / "a", ocsp="cached", rim_ocsp="off", rims=NVTRUST_RIMS)
    [gpu] = _verify(device, evidence, NVTRUST_NONCE, GPU_OCSP_DAY)
    claims = gpu.claims
    assert claims["measres"] == "success" and claims["secboot"] is True and claims["dbgstat"] == "disabled"
    assert claims["x-nvidia-gpu-attestation-report-cert-chain"]["x-nvidia-cert-ocsp-status"] == "good"
    assert [s["status"] for s in claims["ocsp"]] == ["good"] * 3
    assert claims["x-nvidia-gpu-driver-rim-cert-chain"]["x-nvidia-cert-ocsp-status"] == "not checked"
    assert claims["ueid"] == "478176379286082186618948445787393647364802107249"  # NRAS's, same GPU
    assert "measurements" not in claims
    assert gpu.vector["hardware"] == AFFIRMING and gpu.vector["executables"] == WARNING  # RIM OCSP not checked
    rims = _nvtrust_verifier(tmp_path / "b", ocsp="off", rim_ocsp="cached", rims=NVTRUST_RIMS)
    [gpu] = _verify(rims, evidence, NVTRUST_NONCE, RIM_OCSP_DAY)
    for kind in ("driver", "vbios"):
        assert gpu.claims[f"x-nvidia-gpu-{kind}-rim-cert-chain"]["x-nvidia-cert-ocsp-status"] == "good"
    assert gpu.vector["executables"] == AFFIRMING and gpu.vector["hardware"] == WARNING
    # Outside the RIM chain's OCSP window, `cached` has nothing current: refused.
    assert _refused(lambda: _verify(rims, evidence, NVTRUST_NONCE, GPU_OCSP_DAY)).check == "nvgpu.ocsp"
    # Without the VBIOS RIM: missing, naming the id.
    missing = _nvtrust_verifier(tmp_path / "c", ocsp="off", rim_ocsp="off", rims=NVTRUST_RIMS[:1])
    error = _refused(lambda: _verify(missing, evidence, NVTRUST_NONCE, GPU_OCSP_DAY))
    assert error.check == "nvgpu.rim.missing" and "NV_GPU_VBIOS_1010_0200_882_96009F0001" in str(error)


@needs_vectors
def test_a_changed_golden_value_is_a_mismatch_naming_the_index() -> None:
    report = bytes.fromhex((GPU / "nvtrust/hopperAttestationReport.txt").read_text().strip())
    [p] = prepare_all([_entry(report, (GPU / "nvtrust/hopperCertChain.txt").read_bytes())], NVTRUST_NONCE,
                      GPU_OCSP_DAY, None, None)
    driver, vbios = (verify_rim((GPU / "go-nvattest-tools/rim" / n).read_bytes(), GPU_OCSP_DAY) for n in NVTRUST_RIMS)
    assert judge_golden(p, driver, vbios).measres == "success"
    entries = list(vbios.entries)
    nine = next(i for i, e in enumerate(entries) if e.index == 9 and e.active)
    entries[nine] = dataclasses.replace(entries[nine], alternatives=(bytes(48),))
    error = _refused(lambda: judge_golden(p, driver, dataclasses.replace(vbios, entries=tuple(entries))))
    assert error.check == "nvgpu.measurement" and "vbios RIM index 9 (SPDM block 10)" in str(error)
    assert ("0" * 96) in str(error) and cast(bytes, p.report.measurement(10)).hex() in str(error)  # wanted and seen


@needs_vectors
def test_the_sdk_measurement_mismatch_rim_fails_at_index_9() -> None:
    """Scenario 5: the 535.86.09 report against NVIDIA's genuine measurement-mismatch VBIOS RIM."""
    samples = GPU / "attestation-sdk/unit-tests/sample_attestation_data/gpu"
    report = bytes.fromhex((samples / "hopperAttestationReport.txt").read_text().strip())
    nonce = bytes.fromhex("27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66")
    [p] = prepare_all([_entry(report, (samples / "hopperCertChain.txt").read_bytes())], nonce, GPU_OCSP_DAY,
                      None, None)
    rim = GPU / "attestation-sdk/unit-tests/sample_rims/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml"
    vbios = verify_rim(rim.read_bytes(), dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    error = _refused(lambda: judge_golden(p, None, vbios))
    assert error.check == "nvgpu.measurement" and "RIM index 9" in str(error) and "index 10" not in str(error)


# -- synthetic fleet: each check broken alone ----------------------------------------------------------

@pytest.fixture(scope="module")
def fleet() -> SyntheticFleet:
    return SyntheticFleet(NOW)


@pytest.fixture(scope="module")
def gpus(fleet: SyntheticFleet) -> list[FleetGpu]:
    return [fleet.gpu("HOPPER"), fleet.gpu("HOPPER")]


def _synthetic_verifier(fleet: SyntheticFleet, tmp: Path, gpus: list[FleetGpu], *, ocsp: str = "cached",
                        mismatch: tuple[FleetGpu, int] | None = None, rim_roots: bool = True,
                        ocsp_gpus: list[FleetGpu] | None = None) -> NvgpuVerifier:
    tmp.mkdir(parents=True, exist_ok=True)
    device_root, rim_root = fleet.write_roots(tmp)
    fleet.write_rims(tmp / "rims", gpus, mismatch=mismatch)
    fleet.write_ocsp(tmp / "ocsp", gpus if ocsp_gpus is None else ocsp_gpus)
    table = {"trust_roots": [str(device_root)], "rim_dir": str(tmp / "rims"), "rim_url": "", "ocsp": ocsp,
             "ocsp_dir": str(tmp / "ocsp"), "offline": True, "cache_dir": str(tmp / "cache")}
    if rim_roots:
        table["rim_roots"] = [str(rim_root)]
    return NvgpuVerifier.from_config(table, VerifierContext(state_dir=tmp))


def test_two_synthetic_gpus_are_affirming(fleet: SyntheticFleet, gpus: list[FleetGpu], tmp_path: Path) -> None:
    verifier = _synthetic_verifier(fleet, tmp_path, gpus)
    appraisals = _verify(verifier, fleet.evidence(NONCE, gpus))
    assert [a.claims["uuid"] for a in appraisals] == [g.uuid for g in gpus]
    for a in appraisals:
        assert a.claims["measres"] == "success" and a.device_class == "gpu" and a.tee == "nvgpu"
        assert a.vector["instance-identity"] == a.vector["hardware"] == a.vector["executables"] == AFFIRMING
    # Warm: the same answer again (memoised RIMs and OCSP), and hex evidence as older guests send it.
    hex_evidence = {"device_evidence_list": [g.evidence_entry(NONCE, "hex") for g in gpus]}
    assert [a.claims for a in _verify(verifier, hex_evidence)] == [a.claims for a in appraisals]


def test_ocsp_off_never_says_good(fleet: SyntheticFleet, gpus: list[FleetGpu], tmp_path: Path) -> None:
    [a] = _verify(_synthetic_verifier(fleet, tmp_path, gpus[:1], ocsp="off"), fleet.evidence(NONCE, gpus[:1]))
    chain = a.claims["x-nvidia-gpu-attestation-report-cert-chain"]
    assert chain["x-nvidia-cert-ocsp-status"] == "not checked"
    assert {s["status"] for s in a.claims["ocsp"]} == {"not checked"}
    assert a.vector["hardware"] == WARNING and a.vector["executables"] == WARNING


def _with(entry_of: Callable[[FleetGpu], dict[str, Any]], gpus: list[FleetGpu]) -> dict[str, Any]:
    return {"device_evidence_list": [entry_of(gpus[0]), gpus[1].evidence_entry(NONCE)]}


def test_each_check_broken_alone(fleet: SyntheticFleet, gpus: list[FleetGpu], tmp_path: Path) -> None:
    verifier = _synthetic_verifier(fleet, tmp_path, gpus)
    other_fleet = SyntheticFleet(NOW, slot=1)
    stranger = other_fleet.gpu("HOPPER")
    fwid_tlvs = [(k, bytes(48) if k == 20 else v) for k, v in gpus[0].opaque()]
    good = gpus[0].evidence_entry(NONCE)
    cases: dict[str, tuple[Any, str]] = {
        "not base64": (_with(lambda g: {**good, "evidence": "!!"}, gpus), "nvgpu.evidence"),
        "a switch": (_with(lambda g: {**good, "arch": "LS10"}, gpus), "nvgpu.evidence"),
        "unknown field": (_with(lambda g: {**good, "extra": 1}, gpus), "nvgpu.evidence"),
        "too many GPUs": ({"device_evidence_list": [good] * (MAX_GPUS + 1)}, "nvgpu.evidence"),
        "no GPU": ({"device_evidence_list": []}, "nvgpu.evidence"),
        "truncated": (_with(lambda g: {**good, "evidence": base64.b64encode(g.report(NONCE)[:-7]).decode()}, gpus),
                      "nvgpu.parse"),
        "another session's nonce": (_with(lambda g: g.evidence_entry(bytes(32)), gpus), "nvgpu.nonce"),
        "wrong architecture": (_with(lambda g: {**good, "arch": "BLACKWELL"}, gpus), "nvgpu.arch"),
        "the same GPU twice": ({"device_evidence_list": [good, good]}, "nvgpu.duplicate"),
        "another PKI's GPU": (_with(lambda g: stranger.evidence_entry(NONCE), gpus), "nvgpu.chain"),
        "bad signature": (_with(lambda g: g.evidence_entry(NONCE, signature=bytes(96)), gpus), "nvgpu.signature"),
        "signed by another GPU": (_with(lambda g: {**good, "certificate": gpus[1].evidence_entry(NONCE)["certificate"]},
                                        gpus), "nvgpu.signature"),
        "FWID not the leaf's": (_with(lambda g: g.evidence_entry(NONCE, opaque=fwid_tlvs), gpus), "nvgpu.fwid"),
    }
    for name, (evidence, check) in cases.items():
        error = _refused(lambda evidence=evidence: _verify(verifier, evidence))
        assert error.check == check, (name, error.check, str(error))
        if check not in ("nvgpu.evidence", "nvgpu.duplicate"):
            assert str(error).startswith(f"GPU 0 ({gpus[0].uuid}): "), (name, str(error))


def test_collateral_problems_are_refused(fleet: SyntheticFleet, gpus: list[FleetGpu], tmp_path: Path) -> None:
    evidence = fleet.evidence(NONCE, gpus)
    # A GPU whose chain has no stored OCSP response.
    no_ocsp = _synthetic_verifier(fleet, tmp_path / "o", gpus, ocsp_gpus=gpus[:1])
    assert _refused(lambda: _verify(no_ocsp, evidence)).check == "nvgpu.ocsp"
    # A golden value changed in the RIM.
    mismatch = _synthetic_verifier(fleet, tmp_path / "m", gpus, mismatch=(gpus[1], 25))
    error = _refused(lambda: _verify(mismatch, evidence))
    assert error.check == "nvgpu.measurement" and "RIM index 25 (SPDM block 26)" in str(error)
    # RIMs under a root the verifier does not trust (the pinned NVIDIA root).
    foreign = _synthetic_verifier(fleet, tmp_path / "r", gpus, rim_roots=False)
    assert _refused(lambda: _verify(foreign, evidence)).check == "nvgpu.rim.chain"
    # A RIM whose signed content was altered.
    tampered = _synthetic_verifier(fleet, tmp_path / "t", gpus)
    rim = tmp_path / "t" / "rims" / f"{gpus[0].driver_rim_id}.xml"
    rim.write_bytes(rim.read_bytes().replace(b'colloquialVersion="', b'colloquialVersion="9'))
    assert _refused(lambda: _verify(tampered, evidence)).check in ("nvgpu.rim.signature",)
    # No RIMs at all.
    empty = _synthetic_verifier(fleet, tmp_path / "e", gpus)
    for path in (tmp_path / "e" / "rims").iterdir():
        path.unlink()
    assert _refused(lambda: _verify(empty, evidence)).check == "nvgpu.rim.missing"


def test_config_is_checked(tmp_path: Path) -> None:
    context = VerifierContext(state_dir=tmp_path)
    for table, words in (({"ocsp": "maybe"}, "ocsp must be one of"), ({"rim_ocsp": "on"}, "rim_ocsp"),
                         ({"rim_dir": str(tmp_path / "none")}, "rim_dir"), ({"key_tables": 0}, "key_tables"),
                         ({"ocsp_url": 1}, "ocsp_url"), ({"rims": ""}, "unknown configuration key")):
        error = _refused(lambda table=table: NvgpuVerifier.from_config(table, context))
        assert error.check == "config" and words in str(error), (table, str(error))


def test_the_registry_serves_nvidia_evidence_to_nvgpu(tmp_path: Path) -> None:
    registry = VerifierRegistry.from_config(["snp", "nvgpu"], {"nvgpu": {"ocsp": "off", "rim_url": ""}},
                                            VerifierContext(state_dir=tmp_path))
    assert registry.get("nvidia", "gpu") is registry.get("nvgpu", "gpu")
    assert _refused(lambda: registry.get("nvidia", "cpu")).check == "attestation.tee"
    asyncio.run(registry.close())


def test_decode_accepts_trustee_and_bare_lists(fleet: SyntheticFleet, gpus: list[FleetGpu]) -> None:
    listed = [g.evidence_entry(NONCE) for g in gpus]
    assert [g.uuid for g in decode_evidence(listed)] == [g.uuid for g in gpus]
    assert json.dumps(fleet.evidence(NONCE, gpus)).startswith('{"device_evidence_list"')
    assert _refused(lambda: decode_evidence({"device_evidence_list": listed, "x": 1})).check == "nvgpu.evidence"
    single = prepare_gpu(decode_evidence(listed)[0], None, NOW, fleet.device_roots, None)
    assert single.report.request_nonce == NONCE and single.fwid_match is True
