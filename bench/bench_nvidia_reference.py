"""GPU attestation, full verification, one core: NVIDIA's Python verifier (nv-local-gpu-verifier 2.7.3).

The reference side of "GPU reports/s with warm caches, one core, against NVIDIA's verifier": scenario #1
of gpu/SOURCES.md (real H100 report + chain, the driver and VBIOS RIMs, the seven real OCSP responses)
verified by NVIDIA's `attest` offline, RIMs and OCSP answered by a loopback server with the vectors'
files, the clock pinned per artefact (see bench/nvidia_reference.py).  NVIDIA's verifier has no caches:
each verification fetches both RIMs and makes 9 OCSP requests.  It runs in a worker in its own venv
(its pins conflict with ours); this process and the worker are pinned to the same CPU, and this process
waits while the worker verifies, so the rates are one core's.

Ours (`kbs.evidence.nvgpu`) verifies the same evidence in this process on the same core, in interleaved
rounds, with warm caches (device chain, both RIMs, OCSP statuses, the GPU's key table): parse, nonce,
chain validity, FWID, the P-384 signature, OCSP of 3 + 3 + 3 certificates and the golden comparison, from
a RIM directory and an OCSP directory holding the vectors' files.  Its clock is pinned as NVIDIA's is: the
device chain at PINS["gpu"], each RIM (validity and its chain's OCSP) at its own pin, through a subclass
that passes the RIM pin where the verifier asks for a RIM (bench only: the broker has one clock).

Run: `make bench`, or `.venv/bin/python bench/bench_nvidia_reference.py [--seconds 5] [--rounds 3]`
(the first run creates build/nvidia-venv with pip).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from nvidia_reference import (
    CHAIN,
    DEFAULT_VECTORS,
    NONCE,
    OCSP_DIR,
    PINS,
    REPORT,
    RIMS,
    VERSION,
    NvidiaReferenceUnavailable,
    NvidiaReferenceVerifier,
    ensure_venv,
)
from timing import interleaved, print_rates

OURS = "kbs nvgpu verifier, warm caches"


def our_path(vectors: Path, work: Path) -> Callable[[], object]:
    """A callable verifying scenario #1 fully with our verifier (module docstring); checks it once."""
    import asyncio
    import base64
    import shutil
    from typing import Any

    from kbs.evidence.base import Binding, VerifierContext
    from kbs.evidence.nvgpu.verifier import NvgpuVerifier
    from kbs.trust.nvidia.rim_store import RimStore

    class PinnedRimClock(NvgpuVerifier):
        async def _rim(self, rims: RimStore, rim_id: str, at: Any, kind: str) -> Any:
            return await super()._rim(rims, rim_id, PINS["driver_rim" if "DRIVER" in rim_id else "vbios_rim"], kind)

    for name, folder in (("rims", None), ("ocsp", vectors / OCSP_DIR)):
        (work / name).mkdir(parents=True, exist_ok=True)
        if folder is not None:
            for f in folder.glob("*.dat"):
                shutil.copy(f, work / name)
    for rim_id, path in RIMS.items():
        shutil.copy(vectors / path, work / "rims" / f"{rim_id}.xml")
    verifier = PinnedRimClock.from_config(
        {"rim_dir": str(work / "rims"), "rim_url": "", "ocsp": "cached", "ocsp_dir": str(work / "ocsp"),
         "offline": True, "cache_dir": str(work / "cache")}, VerifierContext(state_dir=work))
    report = bytes.fromhex((vectors / REPORT).read_text().strip())
    evidence = {"device_evidence_list": [{"arch": "HOPPER", "evidence": base64.b64encode(report).decode(),
                                          "certificate": base64.b64encode((vectors / CHAIN).read_bytes()).decode()}]}
    binding = Binding("n", {}, report_data=bytes.fromhex(NONCE))
    loop = asyncio.new_event_loop()

    async def inline(fn: Callable[..., Any], /, *args: Any, inline: bool = False) -> Any:
        return fn(*args)

    def once() -> object:
        [gpu] = loop.run_until_complete(verifier.verify(evidence, binding, PINS["gpu"], inline))
        if gpu.claims["measres"] != "success" or set(gpu.vector.values()) - {0, 2}:
            raise RuntimeError(f"our verifier did not affirm scenario #1: {gpu.claims['measres']}, {gpu.vector}")
        return gpu

    once()
    return once

NVIDIA = f"NVIDIA nv-local-gpu-verifier {VERSION}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one trial")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)), help="the one CPU to run on")
    parser.add_argument("--no-setup", action="store_true", help="don't create the NVIDIA venv if it is missing")
    parser.add_argument("--nvidia-logs-off", action="store_true",
                        help="silence NVIDIA's loggers (its best case; by default it logs as shipped, to /dev/null)")
    args = parser.parse_args()
    if not (DEFAULT_VECTORS / REPORT).is_file():
        sys.exit(f"no GPU vectors under {DEFAULT_VECTORS} (set KBS_VECTORS)")
    if not args.no_setup:
        ensure_venv()
    os.sched_setaffinity(0, {args.cpu})  # ours, when added, runs here; the worker is pinned to the same CPU

    try:
        nvidia = NvidiaReferenceVerifier(DEFAULT_VECTORS, cpu=args.cpu, logs=not args.nvidia_logs_off)
    except NvidiaReferenceUnavailable as e:
        sys.exit(str(e))
    with nvidia:
        # Is it really verifying?  Scenario #1 must pass, and fail with one golden value changed in the served RIM.
        if not nvidia.verify_once():
            sys.exit(f"NVIDIA's verifier rejected scenario #1: {nvidia.last_claims()}")
        with NvidiaReferenceVerifier(DEFAULT_VECTORS, tamper="driver-golden", cpu=args.cpu) as tampered:
            if tampered.verify_once():
                sys.exit("NVIDIA's verifier accepted a driver RIM with a changed golden value")
        before = nvidia.stats()

        def nvidia_path() -> None:
            if not nvidia.verify_once():
                raise RuntimeError("NVIDIA's verifier failed scenario #1 during the run")

        name = NVIDIA + (", logs off" if args.nvidia_logs_off else "")
        with tempfile.TemporaryDirectory() as work:
            ours = our_path(DEFAULT_VECTORS, Path(work))
            paths: dict[str, Callable[[], object]] = {name: nvidia_path, OURS: ours}
            print(f"GPU attestation reports fully verified per second, one core (CPU {args.cpu}); scenario #1 "
                  f"(H100, driver 550.90.07), pins {', '.join(f'{k} {v:%Y-%m-%dT%H:%MZ}' for k, v in PINS.items())}; "
                  f"{args.rounds} rounds x {args.seconds:.1f}s, interleaved")
            results = interleaved(paths, args.rounds, args.seconds)
            after = nvidia.stats()
            print_rates(results, name, "GPUs/s", decimals=1)

            verifications = (after["requests"]["rim"] - before["requests"]["rim"]) / 2  # two RIMs per verification
            if verifications:
                per = {k: (after["requests"][k] - before["requests"][k]) / verifications for k in ("rim", "ocsp")}
                server_ms = (after["server_cpu_seconds"] - before["server_cpu_seconds"]) / verifications * 1e3
                print(f"  NVIDIA per verification: {per['rim']:.0f} RIM GETs + {per['ocsp']:.0f} OCSP POSTs to the "
                      f"loopback server, whose thread used {server_ms:.2f} ms CPU (same core: counted in "
                      "NVIDIA's rate)")


if __name__ == "__main__":
    main()
