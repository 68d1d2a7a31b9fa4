"""GPU claims, named as NVIDIA's verifiers name them (claims 3.0, reference/gpu.md §4.2), plus our decoded
fields, and the AR4SI trust vector a verified GPU earns.

NVIDIA's names, one set per GPU (`submods.gpu0` …, under the annotated-evidence key `nvidia`):

    measres                                        "success" | "not_checked" ("fail" is a refusal here)
    x-nvidia-gpu-arch-check                        the chain's model is the architecture the guest named
    x-nvidia-gpu-driver-version, -vbios-version    from the report's opaque data
    x-nvidia-gpu-attestation-report-parsed, -nonce-match, -signature-verified
    x-nvidia-gpu-attestation-report-cert-chain     {x-nvidia-cert-expiration-date, x-nvidia-cert-status,
                                                    x-nvidia-cert-ocsp-status, x-nvidia-cert-revocation-reason}
    x-nvidia-gpu-attestation-report-cert-chain-fwid-match
    x-nvidia-gpu-{driver,vbios}-rim-fetched, -schema-validated, -signature-verified, -measurements-available,
                 -cert-chain {…}, -version-match
    x-nvidia-gpu-vbios-index-no-conflict
    secboot, dbgstat                               only with measres "success", as NVIDIA emits them
    hwmodel, ueid, oemid

OCSP statuses are "good" only when a response said so at the verification time; with the stance `off`
they are "not checked" (never "good"), and the trust vector says so.  Without RIMs (no golden comparison)
the RIM claims are false, `measres` is "not_checked" and the report's measurements are included
(`measurements`, SPDM 1-based index -> hex) for a policy to compare with its own reference values; with
a comparison they are left out (64 SHA-384 values per GPU would only repeat the RIMs).

Ours: `arch`, `uuid`, `nonce` (the request nonce, hex), `fwid`, `opaque_data_version`, `feature_flag`
("SPT", "MPT", "PPCIE"), `chip_info`, `project`, `project_sku`, `chip_sku`, `driver_rim_id`,
`vbios_rim_id`, `ocsp` (per certificate: index, subject, status, thisUpdate, nextUpdate, source) and
`rim_ocsp`.

Trust vector (`nvgpu_trust_vector`), for a GPU whose report, signature and chain verified:

    instance-identity  2   signed by a key the NVIDIA Device Identity CA certifies, nonce bound
    hardware           2   only if the device chain's OCSP statuses are all "good"; else 32 (warning)
    executables        2   only if measres is "success", both RIM versions match the report's and the
                           RIM chains' OCSP statuses are all "good"; else 32 (warning: not approved)

so with `ocsp = "off"` or without RIMs a GPU is never affirming, and the default policy refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kbs.evidence.base import AFFIRMING, WARNING, trust_vector
from kbs.native import SpdmReport
from kbs.native.spdm import FEATURE_FLAGS
from kbs.trust.nvidia.certs import DeviceChain
from kbs.trust.nvidia.golden import NOT_CHECKED, SUCCESS, GoldenResult
from kbs.trust.nvidia.ocsp import OcspStatus
from kbs.trust.nvidia.rim import VerifiedRim

NVIDIA_OEMID = "5703"  # NVIDIA's PCI vendor id in decimal, as NVIDIA's claims carry it
RIM_KINDS = ("driver", "vbios")


@dataclass(frozen=True)
class RimOutcome:
    """A RIM that was found and verified, with its chain's OCSP statuses."""

    rim_id: str
    rim: VerifiedRim
    ocsp: tuple[OcspStatus, ...]


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def ocsp_summary(statuses: Sequence[OcspStatus]) -> str:
    """One status for a chain: "good" only if every checked certificate is good."""
    if statuses and all(s.status == "good" for s in statuses):
        return "good"
    if any(s.status == "not checked" for s in statuses) or not statuses:
        return "not checked"
    return next(s.status for s in statuses if s.status != "good")


def _ocsp_list(statuses: Sequence[OcspStatus]) -> list[dict[str, Any]]:
    return [{"index": s.index, "subject": s.subject, "serial": f"{s.serial:x}", "status": s.status,
             "this_update": _time(s.this_update), "next_update": _time(s.next_update), "source": s.source}
            for s in statuses]


def _cert_chain(not_after: datetime, statuses: Sequence[OcspStatus]) -> dict[str, Any]:
    reasons = [s.revocation_reason for s in statuses if s.revocation_reason]
    return {"x-nvidia-cert-expiration-date": _time(not_after), "x-nvidia-cert-status": "valid",
            "x-nvidia-cert-ocsp-status": ocsp_summary(statuses),
            "x-nvidia-cert-revocation-reason": reasons[0] if reasons else None}


def _rim_claims(kind: str, outcome: RimOutcome | None, version_match: bool | None) -> dict[str, Any]:
    prefix = f"x-nvidia-gpu-{kind}-rim"
    found = outcome is not None
    out: dict[str, Any] = {f"{prefix}-fetched": found, f"{prefix}-schema-validated": found,
                           f"{prefix}-signature-verified": found, f"{prefix}-measurements-available": found,
                           f"{prefix}-version-match": bool(version_match)}
    if outcome is not None:
        out[f"{prefix}-cert-chain"] = _cert_chain(outcome.rim.not_after, outcome.ocsp)
    return out


def gpu_claims(arch: str, uuid: str | None, report: SpdmReport, chain: DeviceChain, *, fwid_match: bool,
               device_ocsp: Sequence[OcspStatus], driver: RimOutcome | None, vbios: RimOutcome | None,
               golden: GoldenResult | None) -> dict[str, Any]:
    """The claims of one GPU that passed every check (module docstring)."""
    measres = golden.measres if golden is not None else NOT_CHECKED
    flag = report.feature_flag
    claims: dict[str, Any] = {
        "measres": measres,
        "x-nvidia-gpu-arch-check": True,
        "x-nvidia-gpu-driver-version": report.driver_version,
        "x-nvidia-gpu-vbios-version": report.vbios_version,
        "x-nvidia-gpu-attestation-report-parsed": True,
        "x-nvidia-gpu-attestation-report-nonce-match": True,
        "x-nvidia-gpu-attestation-report-signature-verified": True,
        "x-nvidia-gpu-attestation-report-cert-chain": _cert_chain(chain.not_after, device_ocsp),
        "x-nvidia-gpu-attestation-report-cert-chain-fwid-match": fwid_match,
        **_rim_claims("driver", driver, golden.driver_version_match if golden else None),
        **_rim_claims("vbios", vbios, golden.vbios_version_match if golden else None),
        "x-nvidia-gpu-vbios-index-no-conflict": golden.index_no_conflict if golden else False,
        "hwmodel": chain.hwmodel,
        "ueid": chain.ueid,
        "oemid": NVIDIA_OEMID,
        "arch": arch,
        "uuid": uuid,
        "nonce": report.request_nonce.hex(),
        "fwid": report.fwid.hex() if report.fwid is not None else None,
        "opaque_data_version": report.opaque_data_version,
        "feature_flag": FEATURE_FLAGS.get(flag, str(flag)) if flag is not None else None,
        "chip_info": report.chip_info,
        "project": report.project,
        "project_sku": report.project_sku,
        "chip_sku": report.chip_sku,
        "driver_rim_id": driver.rim_id if driver else None,
        "vbios_rim_id": vbios.rim_id if vbios else None,
        "ocsp": _ocsp_list(device_ocsp),
        "rim_ocsp": {kind: _ocsp_list(o.ocsp) for kind, o in (("driver", driver), ("vbios", vbios)) if o},
    }
    if measres == SUCCESS:
        claims.update(secboot=True, dbgstat="disabled")
    if golden is None:
        claims["measurements"] = {str(i): value.hex() for i, value in sorted(report.measurements.items())}
    return claims


def nvgpu_trust_vector(claims: Mapping[str, Any]) -> dict[str, int]:
    """What a GPU that passed every check proves (module docstring)."""
    def good(key: str) -> bool:
        chain = claims.get(key)
        return isinstance(chain, Mapping) and chain.get("x-nvidia-cert-ocsp-status") == "good"

    hardware = AFFIRMING if good("x-nvidia-gpu-attestation-report-cert-chain") else WARNING
    executables = AFFIRMING if (
        claims.get("measres") == SUCCESS
        and all(claims.get(f"x-nvidia-gpu-{kind}-rim-version-match") is True for kind in RIM_KINDS)
        and all(good(f"x-nvidia-gpu-{kind}-rim-cert-chain") for kind in RIM_KINDS)) else WARNING
    return trust_vector(instance_identity=AFFIRMING, hardware=hardware, executables=executables)
