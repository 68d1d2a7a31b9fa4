"""`kbs verify nvgpu`: GPU reports verified from files, with a RIM directory and stored OCSP responses.

REPORT is a raw report, its hex text (NVIDIA's samples), or a JSON evidence list (Trustee's
{"device_evidence_list": [...]} or the bare list NVIDIA's tools serialise), in which case every GPU in it
verifies as one attestation, all or nothing, and the output is {"gpus": [claims, ...]}.  Without
--rim-dir there is no golden comparison (measres "not_checked"); with it both RIMs must be there.
--ocsp-dir requires every checked certificate to be good by a stored response (matched by CertID);
--no-ocsp checks nothing and says "not checked"; neither asks NVIDIA's responder (--offline: its cache).
Same contract as `kbs verify snp`: exit 0 and the claims as JSON; 1 and one stderr line naming the
check; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

from kbs.errors import UsageError
from kbs.files import read_input
from kbs.timearg import rfc3339
from kbs.trust.collateral_cache import default_cache_dir
from kbs.trust.nvidia import ocsp_service
from kbs.trust.nvidia.rim_store import RimStore
from kbs.trust.x509 import load_certificates

_HEX_TEXT = re.compile(rb"\s*[0-9a-fA-F]+\s*")


def _evidence(report: bytes, certs: bytes | None, arch: str) -> Any:
    """The REPORT argument as evidence the verifier decodes."""
    stripped = report.lstrip()
    if stripped[:1] in (b"{", b"["):
        if certs is not None:
            raise UsageError("--certs goes with a single report; a JSON evidence list carries each GPU's chain")
        try:
            return json.loads(report)
        except ValueError as exc:
            raise UsageError(f"REPORT looks like JSON but does not parse: {exc}") from exc
    if certs is None:
        raise UsageError("a single report needs its device chain: --certs PEM")
    raw = bytes.fromhex(report.decode()) if _HEX_TEXT.fullmatch(report) else report
    return {"device_evidence_list": [{"arch": arch, "evidence": base64.b64encode(raw).decode(),
                                      "certificate": base64.b64encode(certs).decode()}]}


class NvgpuVerifyCommand:
    help = "verify NVIDIA GPU attestation reports (SPDM) with their device chains, RIMs and OCSP"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("report", help="a report (raw or hex text), or a JSON evidence list of GPUs")
        parser.add_argument("--certs", metavar="PEM", help="the device chain of a single report (PEM, leaf first)")
        parser.add_argument("--arch", default="HOPPER", choices=("HOPPER", "BLACKWELL"),
                            help="the architecture of a single report (default HOPPER)")
        parser.add_argument("--nonce", metavar="HEX", help="the 32-byte requester nonce every report must carry")
        parser.add_argument("--rim-dir", type=Path, metavar="DIR",
                            help="RIMs as <rim id>.xml; without it, no golden comparison (measres not_checked)")
        parser.add_argument("--trust-root", action="append", default=[], metavar="PEM",
                            help="trust this root instead of the pinned NVIDIA Device Identity CA (labs, tests)")
        parser.add_argument("--rim-root", action="append", default=[], metavar="PEM",
                            help="trust this root instead of the pinned NVIDIA CoRIM signing root")
        ocsp = parser.add_mutually_exclusive_group()
        ocsp.add_argument("--ocsp-dir", type=Path, metavar="DIR",
                          help="stored OCSP responses (DER or base64); every checked certificate must be good")
        ocsp.add_argument("--no-ocsp", action="store_true", help="do not check OCSP (claims say 'not checked')")
        parser.add_argument("--at", type=rfc3339, metavar="RFC3339", help="verification time (default: now)")
        parser.add_argument("--offline", action="store_true",
                            help="never contact NVIDIA's OCSP responder; use only the cache")
        parser.add_argument("--ocsp-url", default=os.environ.get("KBS_NVIDIA_OCSP_URL",
                                                                 ocsp_service.DEFAULT_BASE_URL),
                            help="NVIDIA's OCSP responder")
        parser.add_argument("--cache-dir", type=Path, default=None,
                            help="collateral cache (default ~/.cache/kbs/kds; see kbs collateral)")

    async def run(self, args: argparse.Namespace) -> dict[str, Any]:
        from kbs.evidence.nvgpu.verifier import NvgpuVerifier, prepare_all  # the verifier imports this module
        from kbs.trust.nvidia.ocsp import OcspChecker, Stance

        report = read_input(args.report, "report")
        certs = read_input(args.certs, "device chain") if args.certs else None
        evidence = _evidence(report, certs, args.arch)
        nonce = None
        if args.nonce is not None:
            try:
                nonce = bytes.fromhex(args.nonce)
            except ValueError as exc:
                raise UsageError("--nonce must be hex") from exc
            if len(nonce) != 32:
                raise UsageError(f"--nonce must be 32 bytes (64 hex digits), got {len(nonce)}")
        roots = [c for path in args.trust_root for c in load_certificates(read_input(path, "trust root"))] or None
        rim_roots = [c for path in args.rim_root for c in load_certificates(read_input(path, "RIM root"))] or None
        at = args.at or dt.datetime.now(dt.UTC)
        if args.rim_dir is not None and not args.rim_dir.is_dir():
            raise UsageError(f"--rim-dir {args.rim_dir} is not a directory")
        if args.ocsp_dir is not None and not args.ocsp_dir.is_dir():
            raise UsageError(f"--ocsp-dir {args.ocsp_dir} is not a directory")
        client = None
        if args.ocsp_dir is None and not args.no_ocsp:
            client = ocsp_service.OcspClient(args.ocsp_url, cache_dir=args.cache_dir or default_cache_dir(),
                                             offline=args.offline)
        stance: Stance = "off" if args.no_ocsp else "cached" if args.ocsp_dir is not None else "require"
        verifier = NvgpuVerifier(
            rims=RimStore(directory=args.rim_dir, trust_roots=rim_roots) if args.rim_dir is not None else None,
            ocsp=OcspChecker(client, args.ocsp_dir), ocsp_stance=stance, trust_roots=roots)
        try:
            prepared = prepare_all(evidence, nonce, at, roots, None)
            gpus = [await verifier.appraise_gpu(p, at) for p in prepared]
        finally:
            await verifier.close()
        return gpus[0] if certs is not None else {"gpus": gpus}  # a single report, or a list

    def summary(self, claims: dict[str, Any]) -> str:
        gpus = claims.get("gpus", [claims])
        first = gpus[0] if gpus else {}
        return (f"{len(gpus)} GPU(s), driver {first.get('x-nvidia-gpu-driver-version')}, VBIOS "
                f"{first.get('x-nvidia-gpu-vbios-version')}, measres "
                f"{'/'.join(sorted({str(g.get('measres')) for g in gpus}))}")
