"""The guest's NVIDIA GPU evidence (`kbs.guest.gpu`, `kbs-guest --gpus`): a fake pynvml (tests/fake_nvml.py)
whose GPUs sign SPDM reports with a synthetic NVIDIA PKI, and a fake KBS that keeps what the guest sent.

What the broker will check is checked here on what was sent: the Trustee `nvidia` shape, each report's
signature against its own chain's leaf, its requester nonce against SHA-384(JCS({nonce, tee-pubkey}))[:32],
and the CPU evidence's report data against the additional_evidence text exactly as sent."""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kbs import native
from kbs.evidence.binding import device_runtime_digest, primary_runtime_digest
from kbs.guest import GuestError, cli
from kbs.guest.client import fetch_resource
from kbs.guest.evidence import SampleEvidence
from kbs.guest.gpu import DEVICE_NONCE_SIZE, MAX_GPUS, NvmlGpus
from kbs.trust.nvidia.certs import check_fwid, verify_device_chain
from tests.fake_http import in_thread
from tests.fake_nvml import (
    NVML_DEVICE_ARCH_AMPERE,
    NVML_DEVICE_ARCH_HOPPER,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_NOT_SUPPORTED,
    FakeGpu,
    FakeNvml,
)
from tests.nvidia_synth import SyntheticNvidia
from tests.pki_synth import NOW
from tests.test_guest import FakeKbs, run_against, serve

ARCHS = ("HOPPER", "BLACKWELL")
SPDM_FWID = 20  # opaque type of the firmware ID (reference/gpu.md §1.4)


@pytest.fixture(scope="module")
def pki() -> SyntheticNvidia:
    return SyntheticNvidia(NOW)


def gpus(pki: SyntheticNvidia, count: int, **kwargs: Any) -> FakeNvml:
    """`count` GPUs, Hopper and Blackwell in turn."""
    return FakeNvml.with_gpus(pki, [ARCHS[i % 2] for i in range(count)], **kwargs)


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Any:
    """install(fake) makes `import pynvml` find `fake`; install(None) makes it fail as without nvidia-ml-py."""
    def put(module: FakeNvml | None) -> None:
        monkeypatch.setitem(sys.modules, "pynvml", module)
    return put


@contextlib.contextmanager
def kbs_in_thread(kbs: FakeKbs) -> Iterator[str]:
    """`kbs` served from a thread of its own, for the CLI (which runs its own event loop)."""
    with in_thread(lambda: serve(kbs)) as url:
        yield url


def run_cli(kbs: FakeKbs, tmp_path: Path, *options: str) -> int:
    with kbs_in_thread(kbs) as url:
        return cli.main(["-v", "get-resource", "kbs:///lab/key/gpu", "--url", url, "--tee", "sample", "--retries",
                         "0", "--output", str(tmp_path / "key"), *options])


def check_attest_body(body: dict[str, Any], pki: SyntheticNvidia, nvml: FakeNvml, count: int) -> list[dict[str, str]]:
    """Everything the broker will check of one /attest body with `count` GPUs; returns the device entries."""
    nonce, jwk = body["runtime-data"]["nonce"], body["runtime-data"]["tee-pubkey"]
    additional = body["tee-evidence"]["additional_evidence"]
    assert isinstance(additional, str)
    # The CPU evidence binds the additional evidence byte for byte: the text as sent, not a re-serialization.
    report_data = base64.b64decode(body["tee-evidence"]["primary_evidence"]["report_data"])
    assert report_data == primary_runtime_digest(nonce, jwk, additional)
    if count == 0:
        assert additional == ""
        return []
    assert report_data != primary_runtime_digest(nonce, jwk, json.dumps(json.loads(additional)))
    document = json.loads(additional)
    assert additional == json.dumps(document, separators=(",", ":"))  # compact, as CoCo's serde_json
    assert list(document) == ["nvidia"] and list(document["nvidia"]) == ["device_evidence_list"]
    entries: list[dict[str, str]] = document["nvidia"]["device_evidence_list"]
    assert len(entries) == count
    device_nonce = device_runtime_digest(nonce, jwk)[:DEVICE_NONCE_SIZE]
    for index, entry in enumerate(entries):
        gpu = nvml.gpus[index]
        assert gpu.device is not None
        assert set(entry) == {"arch", "uuid", "evidence", "certificate"}
        assert entry["arch"] == gpu.device.arch == ARCHS[index % 2] and entry["uuid"] == gpu.uuid
        pem = base64.b64decode(entry["certificate"], validate=True)
        assert pem == gpu.device.pem_chain  # the attestation chain, not NVML's other `certChain`
        chain = verify_device_chain(pem, NOW, trust_roots=pki.trust_roots)
        report = native.spdm_verify(base64.b64decode(entry["evidence"], validate=True), chain.public_point)
        assert report.request_nonce == device_nonce
        assert check_fwid(chain, report.opaque_value(SPDM_FWID)) is True
    assert len({e["evidence"] for e in entries}) == count  # each GPU signed its own report
    return entries


# -- collecting and sending ----------------------------------------------------------------------------

@pytest.mark.parametrize("count", [0, 1, 2, 8])
def test_auto_sends_every_gpu_bound_to_the_cpu_evidence(pki: SyntheticNvidia, install: Any, tmp_path: Path,
                                                        count: int, capsys: pytest.CaptureFixture[str]) -> None:
    nvml = gpus(pki, count)
    install(nvml)
    kbs = FakeKbs()
    assert run_cli(kbs, tmp_path, "--gpus", "auto") == 0, capsys.readouterr().err
    assert (tmp_path / "key").read_bytes() == b"fake-secret"
    [body] = kbs.bodies["attest"]
    check_attest_body(body, pki, nvml, count)
    assert [len(g.nonces) for g in nvml.gpus] == [1] * count
    assert nvml.initialized == 0  # every nvmlInit had its nvmlShutdown
    err = capsys.readouterr().err
    assert ("NVML sees no GPU" in err) == (count == 0)
    assert ("attested as sample + nvidia" in err) == (count > 0)


def test_default_is_auto(pki: SyntheticNvidia, install: Any, tmp_path: Path) -> None:
    nvml = gpus(pki, 1)
    install(nvml)
    kbs = FakeKbs()
    assert run_cli(kbs, tmp_path) == 0
    check_attest_body(kbs.bodies["attest"][0], pki, nvml, 1)


@pytest.mark.parametrize(("option", "present", "sent"), [("2", 2, 2), ("1", 2, 1), ("8", 8, 8)])
def test_gpus_n_sends_the_first_n(pki: SyntheticNvidia, install: Any, tmp_path: Path, option: str, present: int,
                                  sent: int) -> None:
    nvml = gpus(pki, present)
    install(nvml)
    kbs = FakeKbs()
    assert run_cli(kbs, tmp_path, "--gpus", option) == 0
    check_attest_body(kbs.bodies["attest"][0], pki, nvml, sent)
    assert [len(g.nonces) for g in nvml.gpus] == [1] * sent + [0] * (present - sent)


def test_each_attempt_attests_the_gpus_over_its_own_nonce(pki: SyntheticNvidia) -> None:
    nvml = gpus(pki, 2)
    kbs = FakeKbs(resource=[401])  # the first attempt is refused: a fresh handshake, fresh nonce and key
    got = run_against(kbs, lambda url: fetch_resource(url, "r/t/x", SampleEvidence(), retries=1, backoff=0.001,
                                                      devices=[NvmlGpus(nvml=nvml)]))
    assert got == b"fake-secret"
    first, second = kbs.bodies["attest"]
    assert first["runtime-data"]["nonce"] != second["runtime-data"]["nonce"]
    check_attest_body(first, pki, nvml, 2)
    check_attest_body(second, pki, nvml, 2)
    assert [len(g.nonces) for g in nvml.gpus] == [2, 2] and nvml.gpus[0].nonces[0] != nvml.gpus[0].nonces[1]


def test_sixteen_gpus_is_the_limit(pki: SyntheticNvidia) -> None:
    nvml = gpus(pki, MAX_GPUS)
    entries = NvmlGpus(nvml=nvml).evidence(bytes(range(DEVICE_NONCE_SIZE)))["device_evidence_list"]
    assert len(entries) == MAX_GPUS
    assert all(g.nonces == [bytes(range(DEVICE_NONCE_SIZE))] for g in nvml.gpus)


# -- --gpus none, and no NVML ----------------------------------------------------------------------------

def test_gpus_none_sends_empty_and_never_touches_nvml(pki: SyntheticNvidia, install: Any, tmp_path: Path) -> None:
    nvml = gpus(pki, 2)
    install(nvml)
    kbs = FakeKbs()
    assert run_cli(kbs, tmp_path, "--gpus", "none") == 0
    check_attest_body(kbs.bodies["attest"][0], pki, nvml, 0)
    assert nvml.calls == []


def test_auto_without_nvml_bindings_sends_none_and_says_so(install: Any, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    install(None)  # `import pynvml` raises ImportError, as on a guest without nvidia-ml-py
    kbs = FakeKbs()
    assert run_cli(kbs, tmp_path, "--gpus", "auto") == 0
    assert kbs.bodies["attest"][0]["tee-evidence"]["additional_evidence"] == ""
    assert "no GPU evidence: NVML's Python bindings (nvidia-ml-py) are not installed" in capsys.readouterr().err


@pytest.mark.parametrize(("knob", "reason"), [("library", "the NVML library (libnvidia-ml.so.1) is not installed"),
                                              ("driver", "the NVIDIA driver is not loaded")])
def test_auto_without_library_or_driver_sends_none_and_says_so(pki: SyntheticNvidia, install: Any, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str], knob: str,
                                                               reason: str) -> None:
    nvml = gpus(pki, 1, **{knob: False})
    install(nvml)
    kbs = FakeKbs()
    assert run_cli(kbs, tmp_path, "--gpus", "auto") == 0
    assert kbs.bodies["attest"][0]["tee-evidence"]["additional_evidence"] == ""
    assert f"no GPU evidence: {reason}" in capsys.readouterr().err
    assert nvml.calls == ["init"] and nvml.gpus[0].nonces == []


def test_gpus_n_without_nvml_is_an_error(install: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    install(None)
    kbs = FakeKbs()
    assert run_cli(kbs, tmp_path, "--gpus", "1") == 1
    err = capsys.readouterr().err
    assert "guest.gpu:" in err and "pip install nvidia-ml-py (kbs's `gpu` extra)" in err
    assert kbs.calls["attest"] == 0 and not (tmp_path / "key").exists()


# -- errors ---------------------------------------------------------------------------------------------

def test_gpus_n_with_fewer_present_is_a_clear_error(pki: SyntheticNvidia, install: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    nvml = gpus(pki, 1)
    install(nvml)
    kbs = FakeKbs()
    assert run_cli(kbs, tmp_path, "--gpus", "2") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "kbs-guest: guest.gpu: 2 GPUs wanted (--gpus 2) but NVML sees 1"
    assert kbs.calls["attest"] == 0 and nvml.gpus[0].nonces == [] and nvml.initialized == 0


@pytest.mark.parametrize(("call", "what"), [("handle", "handle"), ("architecture", "architecture"), ("uuid", "UUID"),
                                            ("report", "attestation report"), ("certificate", "certificate")])
def test_a_failing_nvml_call_names_the_gpu(pki: SyntheticNvidia, call: str, what: str) -> None:
    nvml = gpus(pki, 3)
    nvml.fail[(1, call)] = NVML_ERROR_GPU_IS_LOST
    with pytest.raises(GuestError) as info:
        NvmlGpus(nvml=nvml).evidence(bytes(DEVICE_NONCE_SIZE))
    assert str(info.value) == f"NVML GPU 1 {what} failed: GPU is lost" and info.value.check == "guest.gpu"
    assert nvml.initialized == 0 and nvml.gpus[2].nonces == []


def test_not_supported_hints_at_cc_mode_and_the_cli_names_the_gpu(pki: SyntheticNvidia, install: Any,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    nvml = gpus(pki, 2)
    nvml.fail[(1, "report")] = NVML_ERROR_NOT_SUPPORTED
    install(nvml)
    kbs = FakeKbs()
    assert run_cli(kbs, tmp_path, "--gpus", "auto") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("kbs-guest: guest.gpu: NVML GPU 1 attestation report failed: Not Supported (is the GPU in "
                          "confidential-computing or protected-PCIe mode?")
    assert kbs.calls["attest"] == 0


def test_a_gpu_without_confidential_computing_is_refused(pki: SyntheticNvidia) -> None:
    nvml = gpus(pki, 1)
    nvml.gpus.append(FakeGpu(None, NVML_DEVICE_ARCH_AMPERE, "GPU-ampere"))
    with pytest.raises(GuestError, match=r"^GPU 1 has NVML architecture 7, not Hopper \(9\) or Blackwell \(10\)"):
        NvmlGpus(nvml=nvml).evidence(bytes(DEVICE_NONCE_SIZE))
    assert nvml.calls.count("report") == 1 and nvml.calls[-2:] == ["architecture", "shutdown"]  # none of GPU 1


def test_more_than_max_gpus_is_refused(pki: SyntheticNvidia, install: Any, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    nvml = FakeNvml([FakeGpu(None, NVML_DEVICE_ARCH_HOPPER, f"GPU-{i}") for i in range(MAX_GPUS + 1)])
    with pytest.raises(GuestError, match=f"^NVML sees {MAX_GPUS + 1} GPUs; at most {MAX_GPUS} are attested"):
        NvmlGpus(nvml=nvml).evidence(bytes(DEVICE_NONCE_SIZE))
    assert "report" not in nvml.calls and nvml.initialized == 0
    with pytest.raises(GuestError) as info:
        NvmlGpus(MAX_GPUS + 1, nvml=nvml)
    assert info.value.check == "guest.usage"
    install(nvml)
    for option in (str(MAX_GPUS + 1), "0", "-1", "two", ""):
        assert run_cli(FakeKbs(), tmp_path, "--gpus", option) == 2, option
    assert "a number of GPUs must be 1..16, got 17" in capsys.readouterr().err


@pytest.mark.parametrize(("field", "size", "message"), [
    ("report_size", 0x2001, "NVML returned a GPU 0 report of 8193 bytes in a 8192-byte buffer"),
    ("report_size", 0, "NVML returned a GPU 0 report of 0 bytes in a 8192-byte buffer"),
    ("chain_size", 0x1401, "NVML returned a GPU 0 certificate chain of 5121 bytes in a 5120-byte buffer")])
def test_sizes_nvml_states_must_fit_its_arrays(pki: SyntheticNvidia, field: str, size: int, message: str) -> None:
    nvml = gpus(pki, 1)
    setattr(nvml.gpus[0], field, size)
    with pytest.raises(GuestError) as info:
        NvmlGpus(nvml=nvml).evidence(bytes(DEVICE_NONCE_SIZE))
    assert str(info.value) == message


def test_the_device_nonce_is_32_bytes(pki: SyntheticNvidia) -> None:
    nvml = gpus(pki, 1)
    for size in (31, 33, 48):
        with pytest.raises(GuestError, match=f"a GPU nonce is 32 bytes, got {size}"):
            NvmlGpus(nvml=nvml).evidence(bytes(size))
    assert nvml.calls == []


def test_two_device_sources_of_one_tee_are_refused(pki: SyntheticNvidia) -> None:
    nvml = gpus(pki, 1)
    kbs = FakeKbs()
    with pytest.raises(GuestError, match="two device sources share a TEE name: nvidia, nvidia") as info:
        run_against(kbs, lambda url: fetch_resource(url, "r/t/x", SampleEvidence(), retries=0,
                                                    devices=[NvmlGpus(nvml=nvml), NvmlGpus(nvml=nvml)]))
    assert info.value.check == "guest.usage" and kbs.calls["attest"] == 0
