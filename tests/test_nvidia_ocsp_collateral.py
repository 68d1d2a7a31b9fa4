"""NVIDIA OCSP responses in the collateral cache (kbs.trust.nvidia.ocsp_kinds, `kbs collateral ...`): checked
before they enter, listed, exported and imported, pruned, fetched for a device chain, and read back by the
checker from the cache directory."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from kbs.cli import main
from kbs.errors import CollateralUnavailable, MalformedEvidence
from kbs.trust.cachedir import Entry
from kbs.trust.collateral_cache import CollateralCache, CollateralRefused
from kbs.trust.nvidia.ocsp import OcspChecker, OcspRefused
from kbs.trust.nvidia.ocsp_kinds import OcspInputs, entries_from_inputs, ocsp_response_in, split_ocsp_files
from kbs.trust.nvidia.ocsp_service import CHAIN_HEADER, KIND_OCSP, SERVICE, OcspClient, cache_key, encode_chain
from kbs.trust.x509 import Certificate
from tests.conftest import vector_file
from tests.nvidia_synth import FakeOcspResponder, SyntheticGpu, SyntheticNvidia, pem, responder_in_thread

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)  # the CLI checks against the wall clock
HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def nvidia() -> SyntheticNvidia:
    return SyntheticNvidia(NOW, slot=5)


@pytest.fixture(scope="module")
def device(nvidia: SyntheticNvidia) -> SyntheticGpu:
    return nvidia.issue_gpu()


def entries(nvidia: SyntheticNvidia, device: SyntheticGpu, responses: Sequence[bytes] | None = None,
            certificates: Sequence[Certificate] | None = None) -> list[Entry]:
    given = OcspInputs([(f"file:/r{i}", der) for i, der in enumerate(responses or nvidia.good_responses(device))],
                       list(device.certificates if certificates is None else certificates))
    return entries_from_inputs(given, [], NOW)


def admit(cache: CollateralCache, batch: Sequence[Entry], roots: Sequence[Certificate] | None) -> Any:
    return cache.admit(batch, at=NOW, now=NOW, trust_roots=roots)


def refusal(cache: CollateralCache, batch: Sequence[Entry], roots: Sequence[Certificate] | None, *parts: str) -> None:
    with pytest.raises(CollateralRefused) as info:
        admit(cache, batch, roots)
    for part in parts:
        assert part in str(info.value), str(info.value)
    assert cache.scan() == ([], [])  # nothing of a refused batch was written


def test_responses_enter_checked_and_the_checker_reads_them(tmp_path: Path, nvidia: SyntheticNvidia,
                                                           device: SyntheticGpu) -> None:
    cache = CollateralCache(tmp_path)
    batch = entries(nvidia, device)
    assert [e.key for e in batch] == [cache_key(device.certificates[i], device.certificates[i + 1]) for i in (1, 2, 3)]
    admitted = admit(cache, batch, nvidia.trust_roots)
    assert len(admitted.written) == 3
    assert {e.kind for e in cache.scan()[0]} == {KIND_OCSP}
    assert all(e.valid_until == NOW + 23 * HOUR for e in admitted.written)

    async def read_back() -> None:
        async with OcspClient("http://127.0.0.1:9", tmp_path, offline=True, now=lambda: NOW) as client:
            results = await OcspChecker(client).check(device.certificates, NOW, stance="cached")
            assert [r.status for r in results] == ["good"] * 3
            assert all(r.source == "cache: file:/r" + str(i) for i, r in enumerate(results))

    asyncio.run(read_back())


def test_what_is_refused_before_it_enters(tmp_path: Path, nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    cache = CollateralCache(tmp_path)
    brom = device.certificates[1]
    forged = entries(nvidia, device, [nvidia.ocsp_response(brom, signer="forged")])
    refusal(cache, forged, nvidia.trust_roots, "ocsp.signature")
    foreign = entries(nvidia, device, [nvidia.ocsp_response(brom, signer="foreign")])
    refusal(cache, foreign, nvidia.trust_roots, "ocsp.responder")
    refusal(cache, entries(nvidia, device), None, "chain.root", "is not a pinned NVIDIA root")  # a lab root
    early = entries(nvidia, device, [nvidia.ocsp_response(brom, this_update=NOW + HOUR)])
    refusal(cache, early, nvidia.trust_roots, "collateral.validity", "not in force before")
    good = entries(nvidia, device)[0]
    ica_key = cache_key(device.certificates[2], device.certificates[3])
    refusal(cache, [replace(good, key=ica_key)], nvidia.trust_roots, "collateral.key")
    refusal(cache, [replace(good, headers={})], nvidia.trust_roots, "collateral.form", CHAIN_HEADER)
    other = nvidia.issue_gpu().certificates  # the chain of another GPU recorded with this GPU's response
    refusal(cache, [replace(good, headers={CHAIN_HEADER: encode_chain(other[1:])})], nvidia.trust_roots,
            "collateral.key")
    refusal(cache, [good, replace(good, body=nvidia.ocsp_response(brom, "revoked"))], nvidia.trust_roots,
            "collateral.duplicate")


def test_revoked_answers_are_cached_and_refused_by_the_checker(tmp_path: Path, nvidia: SyntheticNvidia,
                                                              device: SyntheticGpu) -> None:
    cache = CollateralCache(tmp_path)
    admit(cache, entries(nvidia, device, [nvidia.ocsp_response(device.certificates[1], "hold")]), nvidia.trust_roots)

    async def read_back() -> None:
        async with OcspClient("http://127.0.0.1:9", tmp_path, offline=True, now=lambda: NOW) as client:
            with pytest.raises(OcspRefused) as info:
                await OcspChecker(client).check(device.certificates, NOW, indices=[1], stance="cached")
            assert info.value.check == "nvgpu.ocsp" and info.value.detail == "ocsp.hold"

    asyncio.run(read_back())


def test_naming_needs_the_chain(nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    with pytest.raises(CollateralUnavailable) as info:
        entries(nvidia, device, certificates=[])
    assert info.value.check == "collateral.issuer_chain" and "give the certificate chain" in str(info.value)
    with pytest.raises(CollateralUnavailable) as only_issuer:  # the issuer is named, the BROM is not given
        entries(nvidia, device, [nvidia.ocsp_response(device.certificates[1])], certificates=device.certificates[2:])
    assert "issued by 'NVIDIA GH100 Provisioner ICA 1'" in str(only_issuer.value)


def test_only_successful_responses_are_taken(device: SyntheticGpu) -> None:
    unsuccessful = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
    given = OcspInputs([("file:/try-later", unsuccessful.public_bytes(Encoding.DER))], list(device.certificates))
    with pytest.raises(MalformedEvidence) as info:
        entries_from_inputs(given, [], NOW)
    assert info.value.check == "collateral.file" and "TRY_LATER" in str(info.value)


def test_expired_responses_are_skipped_and_pruned(tmp_path: Path, nvidia: SyntheticNvidia,
                                                  device: SyntheticGpu) -> None:
    cache = CollateralCache(tmp_path)
    old = nvidia.ocsp_response(device.certificates[1], this_update=NOW - 30 * HOUR)
    admitted = admit(cache, entries(nvidia, device, [old]), nvidia.trust_roots)
    assert admitted.written == () and "expired" in admitted.skipped[0][1]
    admit(cache, entries(nvidia, device), nvidia.trust_roots)
    assert cache.prune(NOW).removed == ()
    assert len(cache.prune(NOW + 24 * HOUR).removed) == 3


def test_export_and_import(tmp_path: Path, nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    connected = CollateralCache(tmp_path / "connected")
    admit(connected, entries(nvidia, device), nvidia.trust_roots)
    archive = tmp_path / "carry.tar.gz"
    assert len(connected.export(archive, NOW)) == 3
    air_gapped = CollateralCache(tmp_path / "air-gapped")
    imported = air_gapped.import_archive(archive, at=NOW, now=NOW, trust_roots=nvidia.trust_roots)
    assert len(imported.written) == 3
    with pytest.raises(CollateralRefused, match="chain.root"):  # checked on import too: NVIDIA's pins
        CollateralCache(tmp_path / "pinned").import_archive(archive, at=NOW, now=NOW, trust_roots=None)


def test_input_files_are_sorted(tmp_path: Path, nvidia: SyntheticNvidia, device: SyntheticGpu) -> None:
    der = nvidia.ocsp_response(device.certificates[1])
    (tmp_path / "r.der").write_bytes(der)
    (tmp_path / "r.b64").write_bytes(base64.b64encode(der))
    (tmp_path / "chain.pem").write_bytes(device.pem_chain)
    (tmp_path / "other.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
    given, others = split_ocsp_files([str(tmp_path / n) for n in ("r.der", "r.b64", "chain.pem", "other.pem")]
                                     + [str(tmp_path)])
    assert [d for _, d in given.responses] == [der, der] and len(given.certificates) == 5
    assert others == [str(tmp_path / "other.pem"), str(tmp_path)]
    assert ocsp_response_in(device.pem_chain) is None and ocsp_response_in(b"\x30\x03\x02\x01\x00") is None


# -- the command line -----------------------------------------------------------------------------------

def kbs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_add_list_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str], nvidia: SyntheticNvidia,
                                  device: SyntheticGpu) -> None:
    cache, root = tmp_path / "cache", tmp_path / "root.pem"
    root.write_bytes(pem(nvidia.trust_roots))
    (tmp_path / "chain.pem").write_bytes(device.pem_chain)
    for i in (1, 2, 3):
        (tmp_path / f"l{i}.der").write_bytes(nvidia.ocsp_response(device.certificates[i]))
    files = [str(tmp_path / n) for n in ("l1.der", "l2.der", "l3.der", "chain.pem")]
    code, out, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), "--trust-root", str(root), *files)
    assert code == 0, err
    assert out.count(f"added {KIND_OCSP} POST /certid/sha384/") == 3
    code, out, _ = kbs(capsys, "collateral", "list", "--cache-dir", str(cache), "--json")
    listed = json.loads(out)["entries"]
    assert code == 0 and {e["kind"] for e in listed} == {KIND_OCSP} and {e["service"] for e in listed} == {SERVICE}
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(tmp_path / "other"), *files)
    assert code == 1 and "chain.root" in err  # NVIDIA's pins do not trust the lab root
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(tmp_path / "empty"), "--trust-root", str(root),
                       str(tmp_path / "l1.der"))
    assert code == 1 and "collateral.issuer_chain" in err
    code, out, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), "--trust-root", str(root),
                         str(tmp_path / "l1.der"))  # named from the chains recorded in the cache
    assert code == 0 and f"added {KIND_OCSP}" in out, err


def test_cli_add_of_nvidias_real_responses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain = vector_file("gpu", "nvtrust", "hopperCertChain.txt")
    responses = [vector_file("gpu", "go-nvattest-tools", "ocsp", f"test_gpu_certificate_{level}_base64encoded_ocsp_"
                             "response.dat") for level in ("l2", "l3", "l4")]
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(tmp_path), *map(str, responses), str(chain))
    assert code == 0, err
    assert err.count("skipped nvidia.ocsp") == 3 and "expired at 2025-08-22" in err  # authentic, but 24 hours long


def test_cli_fetch_for_a_device_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str], nvidia: SyntheticNvidia,
                                      device: SyntheticGpu) -> None:
    cache, root, chain = tmp_path / "cache", tmp_path / "root.pem", tmp_path / "chain.pem"
    root.write_bytes(pem(nvidia.trust_roots))
    chain.write_bytes(device.pem_chain)
    other = tmp_path / "other.pem"
    other.write_bytes(nvidia.issue_gpu().pem_chain)  # a second GPU of the model: its CAs' answers are shared
    fake = FakeOcspResponder(nvidia)
    with responder_in_thread(fake):
        argv = ("collateral", "fetch", "--cache-dir", str(cache), "--trust-root", str(root), "--nvidia-chain",
                str(chain), "--nvidia-chain", str(other), "--nvidia-ocsp-url", fake.base)
        code, out, err = kbs(capsys, *argv)
        assert code == 0, err
        assert out.count("fetched nvidia.ocsp") == 4 and fake.total == 4
        code, out, err = kbs(capsys, *argv)
        assert code == 0 and out.count("already cached") == 4 and fake.total == 4
