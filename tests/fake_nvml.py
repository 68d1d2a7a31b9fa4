"""A fake `pynvml` (nvidia-ml-py) for the guest's GPU evidence: N GPUs whose reports are signed with the
synthetic NVIDIA PKI of tests/nvidia_synth.py, over the nonce the caller passes.

    nvml = FakeNvml.with_gpus(SyntheticNvidia(NOW), ["HOPPER", "BLACKWELL"])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)     # what `import pynvml` then finds
    NvmlGpus(nvml=nvml)                                   # or injected

The surface is the part of the real module (nvidia-ml-py 13.615, pynvml.py) the guest uses, with its
types: the ctypes structures c_nvmlConfComputeGpuAttestationReport_t and c_nvmlConfComputeGpuCertificate_t
with the real field names and array sizes, the nonce copied into the structure as the real binding does
(`(c_uint8 * len(nonce))(*nonce)`, so a nonce that is not 32 bytes fails the same way), architectures as
NVML numbers, UUIDs as str, and errors as NVMLError subclasses carrying the NVML return code.  As the real
library, every call but nvmlInit fails with NVMLError_Uninitialized until nvmlInit, and init/shutdown
count.  Failures are injected per GPU and per call (`fail`), or for the library as a whole (`library`,
`driver`).
"""

from __future__ import annotations

import ctypes
import types
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.nvidia_synth import SyntheticGpu, SyntheticNvidia
from tests.spdm_synth import SyntheticSpdm, hopper_opaque

# Return codes and sizes as in pynvml.py.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_DEVICE_ARCH_AMPERE = 7
NVML_DEVICE_ARCH_HOPPER = 9
NVML_DEVICE_ARCH_BLACKWELL = 10
NVML_GPU_CERT_CHAIN_SIZE = 0x1000
NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE = 0x1400
NVML_CC_GPU_CEC_NONCE_SIZE = 0x20
NVML_CC_GPU_ATTESTATION_REPORT_SIZE = 0x2000
NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE = 0x1000
_MESSAGES = {NVML_ERROR_UNINITIALIZED: "Uninitialized", NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
             NVML_ERROR_NOT_SUPPORTED: "Not Supported", NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
             NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found", NVML_ERROR_GPU_IS_LOST: "GPU is lost"}
ARCH_CODES = {"HOPPER": NVML_DEVICE_ARCH_HOPPER, "BLACKWELL": NVML_DEVICE_ARCH_BLACKWELL}


# pynvml's names, so that code written against pynvml reads the same here.
class c_nvmlConfComputeGpuCertificate_t(ctypes.Structure):
    _fields_ = [("certChainSize", ctypes.c_uint),
                ("attestationCertChainSize", ctypes.c_uint),
                ("certChain", ctypes.c_uint8 * NVML_GPU_CERT_CHAIN_SIZE),
                ("attestationCertChain", ctypes.c_uint8 * NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE)]


class c_nvmlConfComputeGpuAttestationReport_t(ctypes.Structure):
    _fields_ = [("isCecAttestationReportPresent", ctypes.c_uint),
                ("attestationReportSize", ctypes.c_uint),
                ("cecAttestationReportSize", ctypes.c_uint),
                ("nonce", ctypes.c_uint8 * NVML_CC_GPU_CEC_NONCE_SIZE),
                ("attestationReport", ctypes.c_uint8 * NVML_CC_GPU_ATTESTATION_REPORT_SIZE),
                ("cecAttestationReport", ctypes.c_uint8 * NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE)]


class NVMLError(Exception):
    """pynvml's base error: `value` is the NVML return code, str() its message."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


class NVMLError_Uninitialized(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_UNINITIALIZED)


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_NOT_SUPPORTED)


class NVMLError_DriverNotLoaded(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_DRIVER_NOT_LOADED)


class NVMLError_LibraryNotFound(NVMLError):
    def __init__(self) -> None:
        super().__init__(NVML_ERROR_LIBRARY_NOT_FOUND)


_BY_CODE: dict[int, Callable[[], NVMLError]] = {NVML_ERROR_UNINITIALIZED: NVMLError_Uninitialized,
                                        NVML_ERROR_NOT_SUPPORTED: NVMLError_NotSupported,
                                        NVML_ERROR_DRIVER_NOT_LOADED: NVMLError_DriverNotLoaded,
                                        NVML_ERROR_LIBRARY_NOT_FOUND: NVMLError_LibraryNotFound}


def nvml_error(code: int) -> NVMLError:
    """The exception pynvml raises for `code` (its subclass when the fake has one)."""
    cls = _BY_CODE.get(code)
    return cls() if cls is not None else NVMLError(code)


@dataclass
class FakeGpu:
    """One GPU: its synthetic device (leaf key and PEM chain), NVML architecture and UUID.  `report_size`
    and `chain_size` override the sizes NVML states (to lie about them)."""

    device: SyntheticGpu | None
    arch_code: int
    uuid: str
    report_size: int | None = None
    chain_size: int | None = None
    nonces: list[bytes] = field(default_factory=list)  # the nonce of each report it signed
    reports: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class _Handle:
    index: int


class FakeNvml(types.ModuleType):
    """The fake module.  `fail` maps (GPU index, call) to an NVML return code, where call is one of
    "handle", "architecture", "uuid", "report", "certificate"; `library` False is no libnvidia-ml.so.1,
    `driver` False a library whose driver is not loaded (both fail nvmlInit, as the real one does)."""

    def __init__(self, gpus: Sequence[FakeGpu] = (), *, library: bool = True, driver: bool = True) -> None:
        super().__init__("pynvml")
        self.gpus = list(gpus)
        self.library = library
        self.driver = driver
        self.fail: dict[tuple[int, str], int] = {}
        self.initialized = 0  # nvmlInit minus nvmlShutdown
        self.calls: list[str] = []
        for name, value in globals().items():  # the constants, structures and error classes pynvml exports
            if name.startswith(("NVML_", "NVMLError", "c_nvml")):
                setattr(self, name, value)

    @classmethod
    def with_gpus(cls, pki: SyntheticNvidia, archs: Sequence[str], **kwargs: Any) -> FakeNvml:
        """GPUs of the given architectures ("HOPPER", "BLACKWELL"), each with a device of `pki`."""
        gpus = []
        for index, arch in enumerate(archs):
            device = pki.issue_gpu(arch)  # type: ignore[arg-type]
            serial = device.leaf.serial & ((1 << 128) - 1)
            gpus.append(FakeGpu(device, ARCH_CODES[arch], f"GPU-{uuid.UUID(int=serial ^ index)}"))
        return cls(gpus, **kwargs)

    # -- pynvml's functions ------------------------------------------------------------------------

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.initialized <= 0:
            raise NVMLError_Uninitialized()

    def _gpu(self, handle: _Handle, call: str) -> FakeGpu:
        self._call(call)
        if not isinstance(handle, _Handle) or not 0 <= handle.index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        code = self.fail.get((handle.index, call))
        if code is not None:
            raise nvml_error(code)
        return self.gpus[handle.index]

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if not self.library:
            raise NVMLError_LibraryNotFound()
        if not self.driver:
            raise NVMLError_DriverNotLoaded()
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._call("shutdown")
        self.initialized -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._call("count")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._call("handle")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        code = self.fail.get((index, "handle"))
        if code is not None:
            raise nvml_error(code)
        return _Handle(index)

    def nvmlDeviceGetArchitecture(self, handle: _Handle) -> int:
        return self._gpu(handle, "architecture").arch_code

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return self._gpu(handle, "uuid").uuid

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: _Handle,
                                                      c_nonce: Any) -> c_nvmlConfComputeGpuAttestationReport_t:
        report_struct = c_nvmlConfComputeGpuAttestationReport_t()
        c_nonce_arr = (ctypes.c_uint8 * len(c_nonce))(*(c_nonce))  # as pynvml.py: a 31-byte nonce fails here
        report_struct.nonce = c_nonce_arr
        gpu = self._gpu(handle, "report")
        if gpu.device is None:
            raise NVMLError_NotSupported()
        nonce = bytes(report_struct.nonce)  # what the driver reads: the structure's array
        report = SyntheticSpdm(gpu.device.key, nonce=nonce, opaque=hopper_opaque(fwid=gpu.device.fwid)).build()
        ctypes.memmove(report_struct.attestationReport, report, len(report))
        report_struct.attestationReportSize = len(report) if gpu.report_size is None else gpu.report_size
        gpu.nonces.append(nonce)
        gpu.reports.append(report)
        return report_struct

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: _Handle) -> c_nvmlConfComputeGpuCertificate_t:
        gpu = self._gpu(handle, "certificate")
        if gpu.device is None:
            raise NVMLError_NotSupported()
        certificate = c_nvmlConfComputeGpuCertificate_t()
        chain = gpu.device.pem_chain
        ctypes.memmove(certificate.attestationCertChain, chain, len(chain))
        certificate.attestationCertChainSize = len(chain) if gpu.chain_size is None else gpu.chain_size
        identity = b"-----BEGIN CERTIFICATE-----\nnot the attestation chain\n-----END CERTIFICATE-----\n"
        ctypes.memmove(certificate.certChain, identity, len(identity))  # the other chain: must not be sent
        certificate.certChainSize = len(identity)
        return certificate
