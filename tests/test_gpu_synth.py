"""tests/gpu_synth.py is right: its evidence, RIMs, OCSP responses and roots verify with the library's own
GPU pieces (SPDM parse and signature, device chain and FWID, RIM ids, RIM signature, golden matching, OCSP
from a directory), and each piece it breaks on purpose is refused by them."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kbs.errors import ChainInvalid, SignatureInvalid
from kbs.native import spdm_parse, spdm_verify
from kbs.trust.nvidia.certs import DeviceChain, check_fwid, verify_device_chain
from kbs.trust.nvidia.golden import GoldenResult, compare
from kbs.trust.nvidia.ocsp import OcspChecker, OcspRefused, OcspStatus
from kbs.trust.nvidia.rim import VerifiedRim, verify_rim
from kbs.trust.nvidia.rim_ids import driver_rim_id, vbios_rim_id
from kbs.trust.x509 import Certificate, parse_certificate
from tests.gpu_synth import FleetGpu, SyntheticFleet, vbios_bytes
from tests.nvidia_rim_synth import DRIVER_INDICES, VBIOS_INDICES

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
NONCE = hashlib.sha256(b"the broker's device nonce").digest()
NVDEC_INDEX = 35


@pytest.fixture(scope="module")
def fleet() -> SyntheticFleet:
    return SyntheticFleet(NOW)


@pytest.fixture(scope="module")
def gpus(fleet: SyntheticFleet) -> list[FleetGpu]:
    return [fleet.gpu("HOPPER", driver="550.90.07", vbios="96.00.9f.00.01"),
            fleet.gpu("HOPPER", driver="550.90.07", vbios="96.00.9f.00.01")]


def ocsp(chain: Sequence[Certificate], directory: Path, indices: Sequence[int]) -> tuple[OcspStatus, ...]:
    return asyncio.run(OcspChecker(directory=directory).check(chain, NOW, indices=indices, stance="cached"))


def appraise(fleet: SyntheticFleet, entry: dict[str, str], rim_dir: Path) -> tuple[DeviceChain, GoldenResult,
                                                                                 VerifiedRim, VerifiedRim]:
    """What an offline verifier does with one device_evidence_list entry, with the library's pieces."""
    report = base64.b64decode(entry["evidence"], validate=True)
    pem_chain = base64.b64decode(entry["certificate"], validate=True)
    chain = verify_device_chain(pem_chain, NOW, trust_roots=fleet.device_roots)
    parsed = spdm_verify(report, chain.public_point)
    assert parsed.request_nonce == NONCE
    assert check_fwid(chain, parsed.fwid) is True
    assert parsed.driver_version is not None and parsed.vbios_version is not None
    assert parsed.project is not None and parsed.project_sku is not None and parsed.chip_sku is not None
    driver_id = driver_rim_id(parsed.driver_version, entry["arch"], parsed.chip_info)
    vbios_id = vbios_rim_id(parsed.project, parsed.project_sku, parsed.chip_sku, parsed.vbios_version)
    driver = verify_rim((rim_dir / f"{driver_id}.xml").read_bytes(), NOW, trust_roots=fleet.rim_roots,
                        rim_id=driver_id)
    vbios = verify_rim((rim_dir / f"{vbios_id}.xml").read_bytes(), NOW, trust_roots=fleet.rim_roots, rim_id=vbios_id)
    nvdec = parsed.opaque_value(11)
    result = compare(parsed.measurements, driver, vbios, nvdec0_status=nvdec, driver_version=parsed.driver_version,
                     vbios_version=parsed.vbios_version)
    return chain, result, driver, vbios


def test_two_gpus_verify_offline(fleet: SyntheticFleet, gpus: list[FleetGpu], tmp_path: Path) -> None:
    rim_dir, ocsp_dir = tmp_path / "rims", tmp_path / "ocsp"
    written = fleet.write_rims(rim_dir, gpus)
    fleet.write_ocsp(ocsp_dir, gpus)
    evidence = fleet.evidence(NONCE, gpus)
    assert list(evidence) == ["device_evidence_list"]
    entries = evidence["device_evidence_list"]
    assert [e["uuid"] for e in entries] == [g.uuid for g in gpus] and len({g.uuid for g in gpus}) == 2
    # Both GPUs run the same driver and VBIOS: one RIM pair serves both.
    assert sorted(written) == sorted({gpus[0].driver_rim_id, gpus[0].vbios_rim_id})
    assert sorted(p.name for p in rim_dir.iterdir()) == sorted(f"{i}.xml" for i in written)
    for gpu, entry in zip(gpus, entries, strict=True):
        assert set(entry) == {"arch", "uuid", "evidence", "certificate"} and entry["arch"] == "HOPPER"
        chain, result, driver, vbios = appraise(fleet, entry, rim_dir)
        assert chain.leaf.der == gpu.certificates[0].der and chain.fwid == gpu.fwid
        assert result.measres == "success", result.explain()
        assert result.index_no_conflict and not result.mismatches
        assert sorted(result.matched + result.skipped) == sorted((*DRIVER_INDICES, *VBIOS_INDICES))
        assert result.skipped == (NVDEC_INDEX,)  # NVDEC0_STATUS 0x55 by default, like the real H100s
        assert result.driver_version_match is True and result.vbios_version_match is True
        assert driver.id and vbios.colloquial_version.casefold() == "96.00.9f.00.01"
        device = ocsp(chain.certificates, ocsp_dir, (1, 2, 3))
        assert [(s.index, s.status) for s in device] == [(1, "good"), (2, "good"), (3, "good")]
        for rim in (driver, vbios):
            statuses = ocsp(rim.chain, ocsp_dir, (0, 1, 2))
            assert [(s.index, s.status) for s in statuses] == [(0, "good"), (1, "good"), (2, "good")]


def test_rim_covered_blocks_follow_the_versions(fleet: SyntheticFleet, gpus: list[FleetGpu]) -> None:
    first, second = gpus
    covered = {i + 1 for i in (*DRIVER_INDICES, *VBIOS_INDICES)}
    assert sorted(first.blocks) == list(range(1, 65)) and all(len(v) == 48 for v in first.blocks.values())
    assert all(first.blocks[i] == second.blocks[i] for i in covered)
    assert all(first.blocks[i] != second.blocks[i] for i in set(range(1, 65)) - covered)
    other = fleet.gpu("HOPPER", driver="570.124.03", vbios="96.00.9f.00.01")
    assert other.vbios_rim_id == first.vbios_rim_id and other.driver_rim_id != first.driver_rim_id
    assert all(other.blocks[i + 1] == first.blocks[i + 1] for i in VBIOS_INDICES)
    assert all(other.blocks[i + 1] != first.blocks[i + 1] for i in DRIVER_INDICES)
    assert set(fleet.rim_documents([first, other])) == {first.driver_rim_id, other.driver_rim_id, first.vbios_rim_id}


def test_other_versions_verify(fleet: SyntheticFleet, tmp_path: Path) -> None:
    gpu = fleet.gpu("HOPPER", driver="570.124.03", vbios="96.00.af.00.02", project="G520", project_sku="0205",
                    chip_sku="886")
    blackwell = fleet.gpu("BLACKWELL", driver="575.51.03", vbios="97.00.a1.00.05", project="G525",
                          project_sku="0220", chip_sku="895")
    assert gpu.vbios_rim_id == "NV_GPU_VBIOS_G520_0205_886_9600AF0002"
    assert blackwell.driver_rim_id == "NV_GPU_CC_DRIVER_GB100_575.51.03"
    fleet.write_rims(tmp_path, [gpu, blackwell])
    for device in (gpu, blackwell):
        chain, result, _, _ = appraise(fleet, device.evidence_entry(NONCE), tmp_path)
        assert result.measres == "success", result.explain()
        assert chain.hwmodel.startswith("GB100" if device is blackwell else "GH100")


@pytest.mark.parametrize("rim_index", [25, 3, 7, 12])
def test_mismatch_fails_naming_the_index(fleet: SyntheticFleet, gpus: list[FleetGpu], tmp_path: Path,
                                         rim_index: int) -> None:
    fleet.write_rims(tmp_path, gpus, mismatch=(gpus[1], rim_index))
    for gpu in gpus:  # the RIM is shared: both GPUs fail at that index
        _, result, _, _ = appraise(fleet, gpu.evidence_entry(NONCE), tmp_path)
        assert result.measres == "fail"
        assert [m.index for m in result.mismatches] == [rim_index]
        assert result.mismatches[0].source == ("driver" if rim_index in DRIVER_INDICES else "vbios")
        assert result.mismatches[0].seen == gpu.blocks[rim_index + 1]
        assert f"RIM index {rim_index} " in result.explain()


def test_mismatch_at_nvdec_index_needs_nvdec_enabled(fleet: SyntheticFleet, tmp_path: Path) -> None:
    disabled = fleet.gpu(driver="560.35.03")
    enabled = fleet.gpu(driver="565.57.01", nvdec_enabled=True)
    fleet.write_rims(tmp_path / "a", [disabled], mismatch=(disabled, NVDEC_INDEX))
    fleet.write_rims(tmp_path / "b", [enabled], mismatch=(enabled, NVDEC_INDEX))
    assert appraise(fleet, disabled.evidence_entry(NONCE), tmp_path / "a")[1].measres == "success"
    failed = appraise(fleet, enabled.evidence_entry(NONCE), tmp_path / "b")[1]
    assert failed.measres == "fail" and [m.index for m in failed.mismatches] == [NVDEC_INDEX]
    with pytest.raises(ValueError, match="neither RIM"):
        fleet.write_rims(tmp_path / "c", [enabled], mismatch=(enabled, 13))


def test_hex_entry_and_report(gpus: list[FleetGpu]) -> None:
    gpu = gpus[0]
    entry = gpu.evidence_entry(NONCE, encoding="hex")
    report = bytes.fromhex(entry["evidence"])
    parsed = spdm_verify(report, gpu.point)
    assert parsed.request_nonce == NONCE and parsed.number_of_blocks == 64
    assert parsed.measurements == dict(gpu.blocks) and parsed.fwid == gpu.fwid
    assert parsed.vbios_version == "96.00.9f.00.01" and parsed.driver_version == "550.90.07"
    assert (parsed.project, parsed.project_sku, parsed.chip_sku) == ("1010", "0200", "882")
    assert parsed.signed_size + 96 == len(report) and parsed.trailing_zero_bytes == 0
    assert base64.b64decode(entry["certificate"]) == gpu.pem_chain
    with pytest.raises(ValueError, match="base64 or hex"):
        gpu.evidence_entry(NONCE, encoding="der")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        gpu.report(NONCE[:16])
    assert vbios_bytes("96.00.9f.00.01") == bytes.fromhex("009f009601000000")


def test_broken_pieces_are_refused(fleet: SyntheticFleet, gpus: list[FleetGpu], tmp_path: Path) -> None:
    first, second = gpus
    # Another GPU's key does not verify this GPU's report; another nonce is another request nonce.
    with pytest.raises(SignatureInvalid):
        spdm_verify(first.report(NONCE), second.point)
    assert spdm_parse(first.report(bytes(32))).request_nonce == bytes(32)
    # A report whose FWID is not the leaf's.
    chain = verify_device_chain(first.pem_chain, NOW, trust_roots=fleet.device_roots)
    opaque = [(t, bytes(48) if t == 20 else v) for t, v in first.opaque()]
    with pytest.raises(ChainInvalid):
        check_fwid(chain, spdm_verify(first.report(NONCE, opaque=opaque), first.point).fwid)
    # Another fleet's roots (another slot: other CA keys) verify neither the chain nor the RIMs.
    stranger = SyntheticFleet(NOW, slot=1)
    with pytest.raises(ChainInvalid):
        verify_device_chain(first.pem_chain, NOW, trust_roots=stranger.device_roots)
    xml = fleet.rim_documents([first])[first.driver_rim_id]
    with pytest.raises(ChainInvalid):
        verify_rim(xml, NOW, trust_roots=stranger.rim_roots)
    # As documented: a fleet of the same slot has the same RIM CA keys and names, so its root is accepted.
    assert verify_rim(xml, NOW, trust_roots=SyntheticFleet(NOW).rim_roots).id
    # OCSP: only the GPUs written have responses; and none holds a day later.
    other = fleet.gpu()
    fleet.write_ocsp(tmp_path, [first])
    assert ocsp(chain.certificates, tmp_path, (1, 2, 3))[0].status == "good"
    other_chain = verify_device_chain(other.pem_chain, NOW, trust_roots=fleet.device_roots)
    with pytest.raises(OcspRefused) as refused:
        ocsp(other_chain.certificates, tmp_path, (1, 2, 3))
    assert refused.value.index == 1 and refused.value.detail == "ocsp.missing"  # the ICA and CA are shared
    with pytest.raises(OcspRefused):
        asyncio.run(OcspChecker(directory=tmp_path).check(chain.certificates, NOW + dt.timedelta(days=1),
                                                          stance="cached"))


def test_roots(fleet: SyntheticFleet, tmp_path: Path) -> None:
    device_path, rim_path = fleet.write_roots(tmp_path)
    for path, roots in ((device_path, fleet.device_roots), (rim_path, fleet.rim_roots)):
        loaded = x509.load_pem_x509_certificates(path.read_bytes())
        assert [parse_certificate(c.public_bytes(Encoding.DER)).der for c in loaded] == \
            [r.der for r in roots]
    assert fleet.device_roots[0].der != fleet.rim_roots[0].der
