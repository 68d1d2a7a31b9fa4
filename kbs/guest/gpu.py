"""GPU evidence for the guest: each NVIDIA GPU's SPDM attestation report and certificate chain, read
through NVML (PyPI `nvidia-ml-py`, module `pynvml`; the `gpu` extra), sent as CoCo's
additional evidence

    {"nvidia": {"device_evidence_list": [{"arch": "HOPPER", "uuid": "GPU-…",
                                          "evidence": "<base64 report>", "certificate": "<base64 PEM chain>"}]}}

(reference/trustee-kbs.md §2.4; Trustee reads `arch` as HOPPER or Hopper, and `uuid` is required).

Each GPU signs a report over the 32-byte nonce the broker expects of a device: the first 32 bytes of
SHA-384(JCS({"nonce", "tee-pubkey"})) (reference/trustee-kbs.md §2.1; `kbs.evidence.binding`).  The CPU
evidence then binds the exact text of this JSON, so neither can be swapped without the other.

The NVML calls, as pynvml has them (nvidia-ml-py 12.535 to 13.x):

    nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)  -> c_nvmlConfComputeGpuAttestationReport_t
        the nonce (32 bytes) goes into the struct's `nonce` array; the report (SPDM GET_MEASUREMENTS
        request || MEASUREMENTS response) is attestationReport[:attestationReportSize] (array of 0x2000)
    nvmlDeviceGetConfComputeGpuCertificate(handle)  -> c_nvmlConfComputeGpuCertificate_t
        attestationCertChain[:attestationCertChainSize] (array of 0x1400) is the PEM chain that signs
        reports, leaf first; `certChain` is another chain (the GPU's identity), not sent
    nvmlDeviceGetArchitecture(handle) -> int (9 Hopper, 10 Blackwell);  nvmlDeviceGetUUID(handle) -> str

NVML is imported only when GPUs are asked for: a CPU-only guest needs no NVIDIA package.  The GPUs'
ready state (nvmlSystemSetConfComputeGpusReadyState) is left alone: what may use the GPUs is not this
client's decision.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from kbs.guest import GuestError

log = logging.getLogger("kbs.guest")

DEVICE_NONCE_SIZE = 32  # NVML_CC_GPU_CEC_NONCE_SIZE; the SPDM requester nonce
# NVML's device architectures (nvmlDeviceGetArchitecture) whose GPUs have confidential computing.
ARCHITECTURES = {9: "HOPPER", 10: "BLACKWELL"}
MAX_GPUS = 16  # the broker's limit of device entries (an 8-GPU PPCIe system fits twice over)
# NVMLError.value of the errors that mean "no NVIDIA driver here", not "a GPU is broken".
_NO_DRIVER = {9: "the NVIDIA driver is not loaded", 12: "the NVML library (libnvidia-ml.so.1) is not installed"}
_NOT_SUPPORTED = 3


class DeviceSource(Protocol):
    """Devices that can produce evidence over a device nonce (additional evidence, one TEE name)."""

    @property
    def tee(self) -> str: ...

    def evidence(self, nonce: bytes) -> Any: ...


def _load_nvml() -> Any:
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:
        raise GuestError("GPU evidence needs NVML's Python bindings: pip install nvidia-ml-py (kbs's `gpu` extra)",
                         check="guest.gpu") from exc


def _nvml_call(what: str, call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except Exception as exc:  # pynvml raises NVMLError subclasses, one per return code
        hint = ""
        if getattr(exc, "value", None) == _NOT_SUPPORTED:
            hint = " (is the GPU in confidential-computing or protected-PCIe mode? nvidia-smi conf-compute -f)"
        raise GuestError(f"NVML {what} failed: {exc}{hint}", check="guest.gpu") from exc


class NvmlGpus:
    """The confidential GPUs NVML sees: all of them (at most MAX_GPUS), or the first `count` by NVML
    index (fewer present is an error).

    `nvml` is the pynvml module; tests pass a fake that signs with a synthetic PKI."""

    tee = "nvidia"

    def __init__(self, count: int | None = None, nvml: Any = None) -> None:
        if count is not None and not 1 <= count <= MAX_GPUS:
            raise GuestError(f"the GPU count must be 1..{MAX_GPUS}, got {count}", check="guest.usage")
        self.count = count
        self._nvml = nvml

    @property
    def nvml(self) -> Any:
        if self._nvml is None:
            self._nvml = _load_nvml()
        return self._nvml

    def present(self) -> int:
        """How many GPUs NVML sees, for `--gpus auto`.  0, logged with the reason, when the bindings,
        the library or the driver are missing: a CPU-only guest sends no GPU evidence."""
        try:
            nvml = self.nvml
        except GuestError:
            log.info("no GPU evidence: NVML's Python bindings (nvidia-ml-py) are not installed")
            return 0
        try:
            nvml.nvmlInit()
        except Exception as exc:  # pynvml's NVMLError, or ctypes failing to load the library
            code = getattr(exc, "value", None)
            reason = _NO_DRIVER.get(code, "") if isinstance(code, int) else ""
            if reason:
                log.info("no GPU evidence: %s (NVML: %s)", reason, exc)
            else:  # a driver that is there but does not answer: worth a look, yet `auto` sends none
                log.warning("no GPU evidence: NVML did not start: %s", exc)
            return 0
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            log.warning("no GPU evidence: NVML cannot count the GPUs: %s", exc)
            return 0
        finally:
            _shutdown(nvml)
        if count == 0:
            log.info("no GPU evidence: NVML sees no GPU")
        else:
            log.info("NVML sees %d GPU(s): sending their evidence", count)
        return count

    def evidence(self, nonce: bytes) -> dict[str, Any]:
        if len(nonce) != DEVICE_NONCE_SIZE:
            raise GuestError(f"a GPU nonce is {DEVICE_NONCE_SIZE} bytes, got {len(nonce)}", check="guest.gpu")
        nvml = self.nvml
        _nvml_call("init", nvml.nvmlInit)
        try:
            present = int(_nvml_call("device count", nvml.nvmlDeviceGetCount))
            if self.count is None:
                if present == 0:
                    raise GuestError("NVML sees no GPU", check="guest.gpu")
                if present > MAX_GPUS:
                    raise GuestError(f"NVML sees {present} GPUs; at most {MAX_GPUS} are attested "
                                     f"(--gpus N attests the first N)", check="guest.gpu")
            elif present < self.count:
                raise GuestError(f"{self.count} GPUs wanted (--gpus {self.count}) but NVML sees {present}",
                                 check="guest.gpu")
            wanted = present if self.count is None else self.count
            devices = [self._one(nvml, index, nonce) for index in range(wanted)]
        finally:
            _shutdown(nvml)
        return {"device_evidence_list": devices}

    @staticmethod
    def _one(nvml: Any, index: int, nonce: bytes) -> dict[str, str]:
        handle = _nvml_call(f"GPU {index} handle", nvml.nvmlDeviceGetHandleByIndex, index)
        arch_code = int(_nvml_call(f"GPU {index} architecture", nvml.nvmlDeviceGetArchitecture, handle))
        arch = ARCHITECTURES.get(arch_code)
        if arch is None:
            raise GuestError(f"GPU {index} has NVML architecture {arch_code}, not Hopper (9) or Blackwell (10): "
                             "no confidential-computing attestation (--gpus none sends no GPU evidence)",
                             check="guest.gpu")
        uuid = _nvml_call(f"GPU {index} UUID", nvml.nvmlDeviceGetUUID, handle)
        uuid = uuid.decode("ascii", "replace") if isinstance(uuid, bytes) else str(uuid)  # old pynvml: bytes
        report = _nvml_call(f"GPU {index} attestation report", nvml.nvmlDeviceGetConfComputeGpuAttestationReport,
                            handle, nonce)
        certificate = _nvml_call(f"GPU {index} certificate", nvml.nvmlDeviceGetConfComputeGpuCertificate, handle)
        report_bytes = _prefix(report.attestationReport, report.attestationReportSize, f"GPU {index} report")
        chain = _prefix(certificate.attestationCertChain, certificate.attestationCertChainSize,
                        f"GPU {index} certificate chain")
        return {"arch": arch, "uuid": uuid,
                "evidence": base64.b64encode(report_bytes).decode("ascii"),
                "certificate": base64.b64encode(chain).decode("ascii")}


def _prefix(buffer: Sequence[int], size: int, what: str) -> bytes:
    """The first `size` bytes of an NVML output array (the size NVML wrote must fit the array)."""
    if not 0 < int(size) <= len(buffer):
        raise GuestError(f"NVML returned a {what} of {size} bytes in a {len(buffer)}-byte buffer", check="guest.gpu")
    return bytes(buffer[:int(size)])


def _shutdown(nvml: Any) -> None:
    with contextlib.suppress(Exception):  # nothing to release when init failed
        nvml.nvmlShutdown()
