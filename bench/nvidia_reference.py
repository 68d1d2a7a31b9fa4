"""NVIDIA's Python GPU verifier (PyPI `nv-local-gpu-verifier` 2.7.3), run offline on real evidence, for benchmarks.

The reference side of the GPU benchmark: one full verification of the scenario-#1 Hopper GPU of
`gpu/SOURCES.md` (nvtrust sample report + chain, go-nvattest-tools driver/VBIOS RIMs, the seven stored
OCSP responses) by NVIDIA's own code, `verifier.cc_admin.attest`, as nv-attestation-sdk calls it.

Why a subprocess: 2.7.3 pins `cryptography==43.0.1`, `signxml==3.2.0` and `PyJWT==2.7.0`, which our
`cryptography>=44`, `signxml>=4.0` and `pyjwt>=2.9` exclude, so it cannot live in `.venv`.  It gets its own
venv (`build/nvidia-venv`, or `$KBS_NVIDIA_VENV`; `ensure_venv()` / `--setup` creates it) and
`NvidiaReferenceVerifier` drives a worker process in it over a pipe (about 0.1 ms per call, against
~100 ms per verification).  The worker inherits the caller's CPU affinity and, by default, pins itself
to one CPU.

What the worker does (`InProcessNvidiaVerifier`, which also works in-process wherever the package imports):
* Evidence: the report bytes and the PEM chain are handed to `attest` through an object with the
  interface of NVIDIA's own `NvmlHandlerTest` (arch 9 = Hopper; driver/VBIOS versions, which NVML would
  report, are read from the report's opaque data once at start).  The chain goes through NVIDIA's
  `GpuCertificateChains(TestHandle(pem))`, which drops the device root and appends the pinned one.
  Evidence objects are rebuilt for every verification (NVIDIA's OCSP step rewrites the chain list).
* `attest()` arguments: `test_no_gpu=False` (the test path reads a fixed nonce and sample RIMs that
  don't match), `driver_rim=vbios_rim=None` (RIMs come from the RIM service; `--driver_rim` is broken
  in 2.7.3), `user_mode=True` (no NVML ready-state calls), `ocsp_nonce_disabled=True` (the stored
  responses carry no nonce), `claims_version="3.0"`, `rim_service_url`/`ocsp_url` = the loopback server.
* Loopback server (one `HTTPServer` thread on 127.0.0.1, ephemeral port): `GET /v1/rim/<id>` answers
  `{id, rim: base64(xml), sha256, last_updated, rim_format: "TCG", request_id}` as NVIDIA's RIM service
  does; `POST /ocsp/` parses the request and answers the stored response with the same CertID
  (SHA-384 name/key hashes + serial), or OCSP "unauthorized".  11 requests per verification: 2 RIMs,
  9 OCSP (3 device chain, 3 per RIM chain).
* Clock: 2.7.3 checks time only through OpenSSL `X509StoreContext` (device chain, OCSP responder
  chains, RIM chains in `CcAdminUtils.verify_certificate_chain`; the RIM signer chain again inside
  signxml's `verify_x509_cert_chain`), always at "now"; it never looks at OCSP thisUpdate/nextUpdate.
  `OpenSSL.crypto.X509StoreContext` is replaced by a subclass that sets the store's verification time
  from the artefact being checked, set by wrappers around `CcAdminUtils.verify_gpu_certificate_chain`
  and `ocsp_certificate_chain_validation` (mode GPU_ATTESTATION) and `RIM.verify` (driver / VBIOS):
  see `PINS`.  Each instant lies inside the windows of that artefact's certificates and stored OCSP
  responses.  A certificate check outside those scopes during a verification is an error.  The
  `datetime.utcnow()` calls left are iat/nbf/exp of NVIDIA's HS256 result tokens, not checks.
* NVML: the one NVML call reachable with `user_mode=True`, `NvmlHandler.is_cc_dev_mode` on the failure
  path, returns False (unshimmed it hangs 30 s in NVIDIA's timeout wrapper, then raises).
* Logging stays as NVIDIA configures it (INFO lines, DEBUG event log file, ~55 kB per verification and
  about a tenth of its time), but goes to /dev/null and a temporary file, cut back past 32 MB (its config
  module deletes and recreates `./verifier.log` at import).  `logs=False` silences both loggers, for
  NVIDIA's best case.
Every patch is undone by `close()`.

Run `python bench/nvidia_reference.py --setup` to create the venv, `--check` for a positive and a
negative (one golden value changed in the served driver RIM) verification.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import contextvars
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any

PACKAGE = "nv-local-gpu-verifier"
VERSION = "2.7.3"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_VECTORS = Path(os.environ.get("KBS_VECTORS", REPO.parent / "shared" / "vectors"))
DEFAULT_VENV = Path(os.environ.get("KBS_NVIDIA_VENV", REPO / "build" / "nvidia-venv"))

# Scenario #1 of gpu/SOURCES.md, relative to the vectors directory.
REPORT = "gpu/nvtrust/hopperAttestationReport.txt"
CHAIN = "gpu/nvtrust/hopperCertChain.txt"
RIMS = {"NV_GPU_DRIVER_GH100_550.90.07": "gpu/go-nvattest-tools/rim/NV_GPU_DRIVER_GH100_550.90.07.xml",
        "NV_GPU_VBIOS_1010_0200_882_96009F0001": "gpu/go-nvattest-tools/rim/NV_GPU_VBIOS_1010_0200_882_96009F0001.xml"}
DRIVER_RIM_ID = "NV_GPU_DRIVER_GH100_550.90.07"
OCSP_DIR = "gpu/go-nvattest-tools/ocsp"
NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"

_UTC = dt.UTC
# The instant each artefact is verified at.  No single instant covers every window (GPU OCSP responses
# 2025-08-21 06:47..2025-08-22 06:47; RIM OCSP responses 2025-10-24 11:32..2025-10-25 11:32; VBIOS RIM
# signer until 2026-02-22; the GPU OCSP responder "L1-A 02" until 2025-09-21), so: device chain and its
# OCSP at the GPU responses' time, each RIM (chain, its OCSP, its XML signature) at the RIM responses'.
PINS: dict[str, dt.datetime] = {
    "gpu": dt.datetime(2025, 8, 21, 12, 0, tzinfo=_UTC),
    "driver_rim": dt.datetime(2025, 10, 24, 12, 0, tzinfo=_UTC),
    "vbios_rim": dt.datetime(2025, 10, 24, 12, 0, tzinfo=_UTC),
}
TAMPERS = ("driver-golden",)
_OCSP_UNAUTHORIZED = bytes.fromhex("30030a0106")
_LOG_LIMIT = 32 << 20


class NvidiaReferenceUnavailable(RuntimeError):
    """NVIDIA's verifier is not installed where the harness looks for it."""


def _setup_hint(venv: Path) -> str:
    return (f"NVIDIA's reference verifier ({PACKAGE}=={VERSION}) is not installed in {venv}: run `make bench` "
            f"(bench/bench_nvidia_reference.py creates it) or `python3 bench/nvidia_reference.py --setup`. "
            f"It needs its own venv: it pins cryptography==43.0.1, signxml==3.2.0 and PyJWT==2.7.0, which "
            f"conflict with ours.")


def venv_python(venv: Path = DEFAULT_VENV) -> Path:
    return venv / "bin" / "python"


def installed_version(venv: Path = DEFAULT_VENV) -> str | None:
    python = venv_python(venv)
    if not python.exists():
        return None
    probe = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({PACKAGE!r}))"],
                           capture_output=True, text=True, check=False)
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_venv(venv: Path = DEFAULT_VENV, quiet: bool = False) -> Path:
    """The venv holding NVIDIA's verifier, created with pip on first use.  Returns its python."""
    if installed_version(venv) != VERSION:
        if not quiet:
            print(f"installing {PACKAGE}=={VERSION} into {venv} (a separate venv: its pins conflict with ours)",
                  file=sys.stderr)
        if not venv_python(venv).exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv_python(venv)), "-m", "pip", "install", "-q", f"{PACKAGE}=={VERSION}"], check=True)
        if installed_version(venv) != VERSION:
            raise NvidiaReferenceUnavailable(_setup_hint(venv))
    return venv_python(venv)


# ---------------------------------------------------------------------------------------------------------
# The loopback RIM service and OCSP responder (run in the process that runs NVIDIA's verifier).


class LoopbackServices:
    """NVIDIA's RIM service and OCSP responder on 127.0.0.1, answering from the vectors' files."""

    def __init__(self, rims: dict[str, bytes], ocsp_responses: list[bytes]) -> None:
        from cryptography.x509 import ocsp  # the process's own cryptography: NVIDIA's 43.0.1 in the worker

        self._ocsp = ocsp
        self.rim_bodies = {rim_id: json.dumps({
            "id": rim_id, "rim": base64.b64encode(xml).decode(), "sha256": hashlib.sha256(xml).hexdigest(),
            "last_updated": "2025-10-24T11:32:21", "rim_format": "TCG", "request_id": "loopback",
        }).encode() for rim_id, xml in rims.items()}
        self.responses: dict[tuple[bytes, bytes, int, str], bytes] = {}
        for der in ocsp_responses:
            resp = ocsp.load_der_ocsp_response(der)
            self.responses[(resp.issuer_name_hash, resp.issuer_key_hash, resp.serial_number,
                            resp.hash_algorithm.name)] = der
        self.counts = {"rim": 0, "ocsp": 0, "ocsp_unmatched": 0, "not_found": 0}
        self.cpu_seconds = 0.0  # CPU time of the server thread so far (accept, parse, answer)
        services = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle(self) -> None:
                super().handle()
                services.cpu_seconds = time.thread_time()

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                body = services.rim_bodies.get(self.path.removeprefix("/v1/rim/")) \
                    if self.path.startswith("/v1/rim/") else None
                if body is None:
                    services.counts["not_found"] += 1
                    self._send(404, b'{"detail": "not found"}', "application/json")
                else:
                    services.counts["rim"] += 1
                    self._send(200, body, "application/json")

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path.rstrip("/") != "/ocsp":
                    services.counts["not_found"] += 1
                    self._send(404, b"", "text/plain")
                else:
                    services.counts["ocsp"] += 1
                    self._send(200, services.answer_ocsp(data), "application/ocsp-response")

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.rim_url = f"{self.base}/v1/rim/"
        self.ocsp_url = f"{self.base}/ocsp/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="nvidia-loopback", daemon=True)
        self._thread.start()

    def answer_ocsp(self, data: bytes) -> bytes:
        try:
            req = self._ocsp.load_der_ocsp_request(data)
            key = (req.issuer_name_hash, req.issuer_key_hash, req.serial_number, req.hash_algorithm.name)
        except ValueError:
            key = None
        der = self.responses.get(key) if key is not None else None
        if der is None:
            self.counts["ocsp_unmatched"] += 1
            return _OCSP_UNAUTHORIZED
        return der

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


# ---------------------------------------------------------------------------------------------------------
# NVIDIA's verifier in this process.


def load_scenario(vectors: Path, tamper: str | None = None) -> tuple[bytes, bytes, dict[str, bytes], list[bytes]]:
    """Report bytes, PEM chain, RIM XML by id, OCSP responses (DER) of scenario #1."""
    if not (vectors / REPORT).is_file():
        raise FileNotFoundError(f"no GPU vectors under {vectors} (set KBS_VECTORS)")
    report = bytes.fromhex((vectors / REPORT).read_text().strip())
    chain = (vectors / CHAIN).read_bytes()
    rims = {rim_id: (vectors / path).read_bytes() for rim_id, path in RIMS.items()}
    ocsp_responses = [base64.b64decode(p.read_bytes()) for p in sorted((vectors / OCSP_DIR).glob("*.dat"))]
    if tamper == "driver-golden":
        rims[DRIVER_RIM_ID] = tamper_first_active_golden(rims[DRIVER_RIM_ID])
    elif tamper is not None:
        raise ValueError(f"unknown tamper {tamper!r}, expected one of {TAMPERS}")
    return report, chain, rims, ocsp_responses


def tamper_first_active_golden(xml: bytes) -> bytes:
    """The RIM with one hex digit changed in Hash0 of its first active measurement."""
    match = re.search(rb'<[^>]*\bactive="True"[^>]*\bHash0="([0-9a-fA-F])', xml)
    if match is None:
        raise ValueError("no active measurement in the RIM")
    at = match.start(1)
    return xml[:at] + (b"1" if xml[at:at + 1] == b"0" else b"0") + xml[at + 1:]


class _Patches:
    """Attribute replacements, undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        had = name in vars(owner) if isinstance(owner, type) else hasattr(owner, name)
        old = vars(owner)[name] if isinstance(owner, type) and had else getattr(owner, name, None)

        def undo() -> None:
            if had:
                setattr(owner, name, old)
            else:
                delattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(undo)

    def call_on_undo(self, fn: Callable[[], None]) -> None:
        self._undo.append(fn)

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


def _restore_stream(handler: logging.StreamHandler[Any], stream: Any) -> Callable[[], None]:
    def restore() -> None:
        handler.setStream(stream)
    return restore


def _restore_level(logger: logging.Logger, level: int) -> Callable[[], None]:
    return lambda: logger.setLevel(level)


class InProcessNvidiaVerifier:
    """NVIDIA's `attest` on scenario #1 in this process (which must have the package importable)."""

    def __init__(self, vectors_dir: Path | str = DEFAULT_VECTORS, tamper: str | None = None,
                 logs: bool = True) -> None:
        report, chain, rims, ocsp_responses = load_scenario(Path(vectors_dir), tamper)
        self._logs = logs
        self._patches = _Patches()
        self._tmp = tempfile.TemporaryDirectory(prefix="nvidia-verifier-")
        self._devnull = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
        self._services: LoopbackServices | None = None
        self._pin: contextvars.ContextVar[dt.datetime | None] = contextvars.ContextVar("nvidia_pin", default=None)
        self._strict = False
        self._violations: list[str] = []
        self._last: Any = None
        try:
            self._import_nvidia()
            self._services = LoopbackServices(rims, ocsp_responses)
            self._apply_patches()
            self._report, self._chain = report, chain
            self._driver_version, self._vbios_version = self._versions_from_report(report)
        except BaseException:
            self.close()
            raise

    # -- setup --

    def _import_nvidia(self) -> None:
        try:
            import importlib.metadata
            version = importlib.metadata.version(PACKAGE)
        except importlib.metadata.PackageNotFoundError as e:
            raise NvidiaReferenceUnavailable(
                f"{PACKAGE} is not importable in {sys.prefix}: use NvidiaReferenceVerifier, which runs this class "
                f"in a worker in {DEFAULT_VENV}. " + _setup_hint(DEFAULT_VENV)) from e
        if version != VERSION:
            raise NvidiaReferenceUnavailable(f"{PACKAGE} {version} found, the harness is written for {VERSION}")
        cwd = os.getcwd()
        if "verifier.config" not in sys.modules:  # it removes and recreates ./verifier.log at import: not here
            import_dir = tempfile.mkdtemp(prefix="nvidia-verifier-import-")
            atexit.register(shutil.rmtree, import_dir, True)
            os.chdir(import_dir)
        try:
            import OpenSSL.crypto  # type: ignore[import-not-found]
            import pynvml  # type: ignore[import-not-found]
            from verifier import cc_admin, config  # type: ignore[import-not-found]
            from verifier.attestation import AttestationReport  # type: ignore[import-not-found]
            from verifier.cc_admin_utils import CcAdminUtils  # type: ignore[import-not-found]
            from verifier.nvml import NvmlHandler  # type: ignore[import-not-found]
            from verifier.nvml.gpu_cert_chains import GpuCertificateChains  # type: ignore[import-not-found]
            from verifier.nvml.test_handle import TestHandle  # type: ignore[import-not-found]
            from verifier.rim import RIM  # type: ignore[import-not-found]
        finally:
            os.chdir(cwd)
        self._crypto, self._pynvml, self._cc_admin, self._config = OpenSSL.crypto, pynvml, cc_admin, config
        self._AttestationReport, self._CcAdminUtils, self._NvmlHandler = AttestationReport, CcAdminUtils, NvmlHandler
        self._GpuCertificateChains, self._TestHandle, self._RIM = GpuCertificateChains, TestHandle, RIM

    def _apply_patches(self) -> None:
        p, config = self._patches, self._config
        base = config.BaseSettings
        modes = base.Certificate_Chain_Verification_Mode
        # Global settings that attest() itself rewrites: put back on close.
        for name in ("allow_hold_cert", "CLAIMS_VERSION", "OCSP_NONCE_DISABLED", "OCSP_URL", "RIM_SERVICE_BASE_URL",
                     "service_key", "CURRENT_OPAQUE_DATA_VERSION", "test_result"):
            p.set(base, name, vars(base).get(name))
        p.call_on_undo(self._reset_state)

        # Logging: as configured by NVIDIA, but to /dev/null and a temporary log file (or off).
        for handler in config.info_log.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                p.call_on_undo(_restore_stream(handler, handler.setStream(self._devnull)))
        self._log_file = os.path.join(self._tmp.name, "verifier.log")
        event_file = open(self._log_file, "a")  # noqa: SIM115 - closed on undo
        p.call_on_undo(event_file.close)
        p.call_on_undo(_restore_stream(config.fhandler, config.fhandler.setStream(event_file)))
        if not self._logs:
            for logger in (config.info_log, config.event_log):
                p.call_on_undo(_restore_level(logger, logger.level))
                logger.setLevel(logging.CRITICAL)

        # The clock: every OpenSSL chain check gets the instant of the artefact being verified.
        pin, violations, harness = self._pin, self._violations, self
        original_ctx = self._crypto.X509StoreContext

        class PinnedX509StoreContext(original_ctx):  # type: ignore[misc, valid-type]
            def __init__(self, store: Any, certificate: Any, chain: Any = None) -> None:
                when = pin.get()
                if when is not None:
                    store.set_time(when)
                elif harness._strict:
                    violations.append("certificate check outside a pinned artefact scope")
                    raise RuntimeError(violations[-1])
                super().__init__(store, certificate, chain)

        p.set(self._crypto, "X509StoreContext", PinnedX509StoreContext)

        utils = self._CcAdminUtils
        gpu_chain = vars(utils)["verify_gpu_certificate_chain"].__func__
        ocsp_chain = vars(utils)["ocsp_certificate_chain_validation"].__func__
        rim_verify = self._RIM.verify

        def pinned_gpu_chain(cert_chain: Any, settings: Any, fwid: Any) -> Any:
            with self._pinned("gpu"):
                return gpu_chain(cert_chain, settings, fwid)

        def pinned_ocsp_chain(cert_chain: Any, settings: Any, mode: Any) -> Any:
            artefact = {modes.GPU_ATTESTATION: "gpu", modes.DRIVER_RIM_CERT: "driver_rim",
                        modes.VBIOS_RIM_CERT: "vbios_rim"}[mode]
            with self._pinned(artefact):
                return ocsp_chain(cert_chain, settings, mode)

        def pinned_rim_verify(rim: Any, version: str, settings: Any) -> Any:
            with self._pinned("driver_rim" if rim.rim_name == "driver" else "vbios_rim"):
                return rim_verify(rim, version, settings)

        p.set(utils, "verify_gpu_certificate_chain", staticmethod(pinned_gpu_chain))
        p.set(utils, "ocsp_certificate_chain_validation", staticmethod(pinned_ocsp_chain))
        p.set(self._RIM, "verify", pinned_rim_verify)

        # NVML: no GPU here.  The only call reachable in user mode (on the failure path).
        p.set(self._NvmlHandler, "is_cc_dev_mode", staticmethod(lambda: False))

    @contextlib.contextmanager
    def _pinned(self, artefact: str) -> Iterator[None]:
        token = self._pin.set(PINS[artefact])
        try:
            yield
        finally:
            self._pin.reset(token)

    def _versions_from_report(self, report: bytes) -> tuple[str, str]:
        """What NVML would report: the versions in the report's opaque data, read with NVIDIA's parser."""
        from verifier.utils import format_vbios_version  # type: ignore[import-not-found]
        settings = self._config.GPU_ARCHITECTURE_MAP[self._pynvml.NVML_DEVICE_ARCH_HOPPER]
        opaque = self._AttestationReport(report, settings).get_response_message().get_opaque_data()
        driver = opaque.get_data("OPAQUE_FIELD_ID_DRIVER_VERSION").decode().rstrip("\0")
        self._reset_state()
        return driver, format_vbios_version(opaque.get_data("OPAQUE_FIELD_ID_VBIOS_VERSION"))

    def _reset_state(self) -> None:
        """What a fresh process would start a verification with (attest keeps results in globals)."""
        settings = self._config.GPU_ARCHITECTURE_MAP[self._pynvml.NVML_DEVICE_ARCH_HOPPER]
        settings.__init__()
        for name in ("hwmodel", "oemid", "ueid", "gpu_driver_attestation_warning_list",
                     "gpu_vbios_attestation_warning_list"):
            getattr(self._cc_admin, name).clear()

    # -- verification --

    def _evidence(self) -> Any:
        chain = self._GpuCertificateChains(self._TestHandle(self._chain)).GpuAttestationCertificateChain
        harness = self

        class Evidence:  # the interface of NVIDIA's NvmlHandler / NvmlHandlerTest that attest() uses
            def get_gpu_architecture(self) -> int:
                return int(harness._pynvml.NVML_DEVICE_ARCH_HOPPER)

            def get_uuid(self) -> str:
                return "GPU-00000000-0000-0000-0000-000000000000"

            def get_driver_version(self) -> str:
                return harness._driver_version

            def get_vbios_version(self) -> str:
                return harness._vbios_version

            def get_attestation_report(self) -> bytes:
                return harness._report

            def get_attestation_cert_chain(self) -> Any:
                return chain

        return Evidence()

    def verify_once(self) -> bool:
        """One full verification by NVIDIA's `attest`; True when it reports success with measres success."""
        assert self._services is not None, "closed"
        self._reset_state()
        if os.path.getsize(self._log_file) > _LOG_LIMIT:
            os.truncate(self._log_file, 0)  # NVIDIA's handler appends; keep the temporary file bounded
        arguments = {"verbose": False, "test_no_gpu": False, "driver_rim": None, "vbios_rim": None,
                     "user_mode": True, "allow_hold_cert": False, "service_key": None, "nonce": NONCE,
                     "rim_root_cert": None, "rim_service_url": self._services.rim_url,
                     "ocsp_url": self._services.ocsp_url, "ocsp_nonce_disabled": True, "claims_version": "3.0"}
        self._violations.clear()
        self._strict = True
        try:
            self._last = self._cc_admin.attest(arguments, NONCE, [self._evidence()])
        finally:
            self._strict = False
        if self._violations:
            raise RuntimeError(f"unpinned certificate check in NVIDIA's verifier: {self._violations[0]}")
        status = self._last[0] if self._last else False
        settings = self._config.GPU_ARCHITECTURE_MAP[self._pynvml.NVML_DEVICE_ARCH_HOPPER]
        return status is True and settings.check_if_measurements_are_matching() == "success"

    def last_claims(self) -> dict[str, Any]:
        """The overall and GPU-0 claims of the last verification (NVIDIA's HS256 tokens, decoded unverified)."""
        import jwt
        if not self._last:
            return {}
        overall = jwt.decode(self._last[1][0][1], options={"verify_signature": False})
        gpus = {k: jwt.decode(v, options={"verify_signature": False}) for k, v in self._last[1][1].items()}
        return {"overall": overall, "gpus": gpus}

    def stats(self) -> dict[str, Any]:
        services = self._services
        return {"requests": dict(services.counts) if services else {},
                "server_cpu_seconds": services.cpu_seconds if services else 0.0,
                "pins": {k: v.isoformat() for k, v in PINS.items()},
                "driver_version": self._driver_version, "vbios_version": self._vbios_version,
                "urls": {"rim": services.rim_url, "ocsp": services.ocsp_url} if services else {}}

    def close(self) -> None:
        self._patches.undo()
        if self._services is not None:
            self._services.close()
            self._services = None
        self._devnull.close()
        self._tmp.cleanup()

    def __enter__(self) -> InProcessNvidiaVerifier:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------
# The same, from our process: a worker in NVIDIA's venv.


class NvidiaReferenceVerifier:
    """NVIDIA's verifier on scenario #1, in a worker process in its own venv.

    `verify_once()` runs one full verification there and returns True on success.  `cpu` pins the worker
    to that CPU (default: the lowest CPU this process may run on; None keeps the inherited affinity).
    `logs=False` silences NVIDIA's loggers (its best case); `tamper` serves a modified RIM (see TAMPERS).
    """

    def __init__(self, vectors_dir: Path | str = DEFAULT_VECTORS, *, venv: Path | str = DEFAULT_VENV,
                 tamper: str | None = None, cpu: int | str | None = "auto", logs: bool = True) -> None:
        python = venv_python(Path(venv))
        if not python.exists():
            raise NvidiaReferenceUnavailable(_setup_hint(Path(venv)))
        if cpu == "auto":
            cpu = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        command = [str(python), "-X", "utf8", str(Path(__file__).resolve()), "--worker",
                   "--vectors", str(Path(vectors_dir).resolve())]
        if tamper:
            command += ["--tamper", tamper]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        if not logs:
            command += ["--no-logs"]
        self.cpu = cpu
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, cwd=tempfile.gettempdir())
        try:
            ready = self._read()
            if not ready.startswith("ready "):
                raise self._failure(f"worker did not start: {ready}")
            self.info: dict[str, Any] = json.loads(ready.removeprefix("ready "))
        except BaseException:
            self.close()
            raise

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        if self._proc is None or self._proc.stdin is None or self._proc.stdout is None:
            raise RuntimeError("NVIDIA reference worker is closed")
        return self._proc.stdin, self._proc.stdout

    def _read(self) -> str:
        line = self._pipes()[1].readline().decode()
        if not line:
            raise self._failure("worker exited")
        return line.rstrip("\n")

    def _failure(self, what: str) -> Exception:
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace").strip()
        tail = "\n".join(err.splitlines()[-20:])
        if "NvidiaReferenceUnavailable" in err:
            return NvidiaReferenceUnavailable(tail)
        return RuntimeError(f"NVIDIA reference worker: {what}" + (f"\n{tail}" if tail else ""))

    def _ask(self, command: str) -> str:
        stdin, _ = self._pipes()
        stdin.write(command.encode() + b"\n")
        stdin.flush()
        answer = self._read()
        if answer.startswith("error "):
            raise RuntimeError(f"NVIDIA reference worker: {answer.removeprefix('error ')}")
        return answer

    def verify_once(self) -> bool:
        """One full verification by NVIDIA's `attest` in the worker: True on success (measres success)."""
        return self._ask("verify") == "1"

    def last_claims(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._ask("claims"))
        return result

    def stats(self) -> dict[str, Any]:
        """Loopback requests served so far, the server thread's CPU time, pins, URLs."""
        result: dict[str, Any] = json.loads(self._ask("stats"))
        return result

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.write(b"quit\n")
                    proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> NvidiaReferenceVerifier:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _worker(vectors: Path, tamper: str | None, cpu: int | None, logs: bool) -> None:
    """The worker's loop: one command per line on stdin, one answer per line on the original stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # anything printed by NVIDIA's code must not reach the protocol stream
    os.close(devnull)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    with InProcessNvidiaVerifier(vectors, tamper, logs) as verifier:
        out.write("ready " + json.dumps({**verifier.stats(), "cpu": cpu, "pid": os.getpid(), "logs": logs,
                                         "python": sys.version.split()[0], "tamper": tamper}) + "\n")
        for line in sys.stdin:
            command = line.strip()
            try:
                if command == "verify":
                    out.write("1\n" if verifier.verify_once() else "0\n")
                elif command == "claims":
                    out.write(json.dumps(verifier.last_claims(), default=str) + "\n")
                elif command == "stats":
                    out.write(json.dumps(verifier.stats()) + "\n")
                elif command == "quit":
                    break
                else:
                    out.write(f"error unknown command {command!r}\n")
            except Exception as e:  # reported to the caller, which raises
                out.write(f"error {type(e).__name__}: {e}\n".replace("\n", " ").rstrip() + "\n")


def _unhappy(claims: dict[str, Any], prefix: str = "") -> list[str]:
    """Claims that say something failed: false, missing (None), or a chain status not valid/good."""
    out = []
    for key, value in claims.items():
        if isinstance(value, dict):
            out += _unhappy(value, f"{prefix}{key}.")
        elif (value is False or (value is None and key != "x-nvidia-cert-revocation-reason")
              or (key == "x-nvidia-cert-status" and value != "valid")
              or (key == "x-nvidia-cert-ocsp-status" and value != "good")):
            out.append(f"{prefix}{key}={value}")
    return out


def _check(vectors: Path, venv: Path) -> int:
    """A positive and a negative run through the worker, with what NVIDIA's verifier said."""
    failures = 0
    for tamper, expected in ((None, True), ("driver-golden", False)):
        with NvidiaReferenceVerifier(vectors, venv=venv, tamper=tamper) as ref:
            result = ref.verify_once()
            claims = ref.last_claims()
            gpu = claims.get("gpus", {}).get("GPU-0", {})
            print(f"{tamper or 'scenario #1 as served':22s} verify_once={result} (expected {expected}); "
                  f"overall={claims.get('overall', {}).get('x-nvidia-overall-att-result')} "
                  f"measres={gpu.get('measres')}; not true/valid/good: {_unhappy(gpu)}; "
                  f"requests={ref.stats()['requests']}")
            failures += result is not expected
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help=f"create the venv with {PACKAGE}=={VERSION}")
    parser.add_argument("--check", action="store_true", help="one positive and one negative verification")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, default=DEFAULT_VECTORS)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--tamper", choices=TAMPERS)
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--no-logs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.vectors, args.tamper, args.cpu, not args.no_logs)
        return
    if args.setup:
        print(ensure_venv(args.venv))
    if args.check:
        sys.exit(1 if _check(args.vectors, args.venv) else 0)
    if not (args.setup or args.check):
        parser.print_help()


if __name__ == "__main__":
    main()
