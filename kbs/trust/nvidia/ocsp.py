"""OCSP for NVIDIA chains: is each checked certificate good at the verification time?

NVIDIA's verifier asks about a device chain's certificates 1..3 (BROM, provisioner ICA, identity CA;
not the leaf, not the root) and about a RIM signing chain's 0..2 (L4 signer, L3, CA), one request
each (reference/gpu.md §2.1, §3.1).  `OcspChecker.check` does the same for a *verified* chain
(`chain[i + 1]` issued `chain[i]`) at the given indices, through the shared checks
(`kbs.trust.revocation.verify_ocsp_response`): the response matched to the certificate by CertID
(SHA-384 as NVIDIA asks; SHA-1, SHA-256 and SHA-512 CertIDs are accepted too), signed with
ECDSA-SHA384 by the issuer or by a responder certificate the issuer issued for OCSP signing, and
current at the verification time (thisUpdate <= at < nextUpdate; NVIDIA's responses hold for 24 h).

Where responses come from, in order: the OCSP directory (`ocsp_store.OcspDirectory`), the client's
caches (memory by CertID, then the collateral cache directory), and, for the `require` stance only,
NVIDIA's responder (`ocsp_service.OcspClient`, with a nonce).  Among the stored responses that verify
at the time, the newest (by thisUpdate) decides; a stored response that does not verify is passed over.

Stances:

- ``require``: every checked certificate must be good, from a stored response or one fetched now;
- ``cached``: the same, but never fetched: a stored response current at the time is enough, and none
  is a refusal (an air-gapped broker fed by `kbs collateral add` or the OCSP directory);
- ``off``: nothing is checked, and each result says "not checked", never "good".

A refusal is `OcspRefused` (a `ChainInvalid`) with check ``nvgpu.ocsp``, naming the certificate's index,
CN, serial and status; its `detail` is the failed check's own label (``ocsp.cert_id``, ``ocsp.signature``,
``ocsp.responder``, ``ocsp.stale``, ``ocsp.not_yet_valid``, ``ocsp.revoked``, ``ocsp.hold``,
``ocsp.unknown``, ``ocsp.missing``, ``ocsp.directory``, or the fetcher's ``nvidia-ocsp.*``) and its
`results` the per-certificate statuses.  A certificate revoked with reason certificateHold is refused
(``ocsp.hold``): a hold means NVIDIA does not vouch for it now, and NVIDIA's verifier accepts one only
with its --allow_hold_cert switch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from kbs.errors import ChainInvalid, CollateralUnavailable, KbsError, MalformedEvidence
from kbs.trust import revocation
from kbs.trust.nvidia.certs import NVIDIA_SIGNATURE_ALGORITHMS
from kbs.trust.nvidia.ocsp_service import OcspClient
from kbs.trust.nvidia.ocsp_store import OcspDirectory
from kbs.trust.revocation import OcspResult
from kbs.trust.x509 import Certificate

Stance = Literal["require", "cached", "off"]
STANCES: tuple[Stance, ...] = ("require", "cached", "off")
DEVICE_OCSP_INDICES = (1, 2, 3)  # BROM, provisioner ICA, identity CA of a device chain
RIM_OCSP_INDICES = (0, 1, 2)  # L4 signer, L3, CA of a RIM signing chain
HOLD = "certificateHold"

OcspState = Literal["good", "revoked", "unknown", "unavailable", "not checked"]


@dataclass(frozen=True)
class OcspStatus:
    """What OCSP said about one certificate of a chain (for claims), or that it was not checked."""

    index: int
    subject: str  # CN
    serial: int
    status: OcspState  # "unavailable": no usable response; "not checked": the stance is off
    this_update: datetime | None = None
    next_update: datetime | None = None
    revocation_time: datetime | None = None
    revocation_reason: str | None = None  # RFC 5280 reason name, e.g. "keyCompromise", "certificateHold"
    responder: str | None = None  # CN of the certificate that signed the response
    source: str | None = None  # where the response came from: "file:…", "cache: <url>", or the responder's URL


class OcspRefused(ChainInvalid):
    """A checked certificate is not good (or its status could not be shown) at the verification time."""

    check = "nvgpu.ocsp"

    def __init__(self, message: str, *, detail: str, index: int, results: tuple[OcspStatus, ...]) -> None:
        super().__init__(message)
        self.detail = detail  # the failed check's own label
        self.index = index
        self.results = results


@dataclass(frozen=True)
class _Problem:
    detail: str
    message: str


@dataclass(frozen=True)
class _Outcome:
    status: OcspStatus
    problem: _Problem | None = None


@dataclass
class _Tried:
    """Responses tried for one certificate: the ones that verified at the time, and why the others did not."""

    verified: list[tuple[OcspResult, str]] = field(default_factory=list)
    failures: list[tuple[str, KbsError]] = field(default_factory=list)

    def newest(self) -> tuple[OcspResult, str] | None:
        return max(self.verified, key=lambda item: item[0].this_update, default=None)

    def why_not(self) -> str:
        return "; ".join(f"{source}: {exc} [{exc.check}]" for source, exc in self.failures[:3])


def _status(index: int, cert: Certificate, result: OcspResult, source: str) -> OcspStatus:
    return OcspStatus(index=index, subject=cert.subject_cn, serial=cert.serial, status=result.status,
                      this_update=result.this_update, next_update=result.next_update,
                      revocation_time=result.revocation_time, revocation_reason=result.revocation_reason,
                      responder=result.responder, source=source)


def _verdict(status: OcspStatus) -> _Problem | None:
    """None for good; the refusal of anything else."""
    said = f"says OCSP responder {status.responder!r} ({status.source})"
    when = status.revocation_time.isoformat() if status.revocation_time else "an unknown time"
    if status.status == "good":
        return None
    if status.status == "revoked" and status.revocation_reason == HOLD:
        return _Problem("ocsp.hold", f"is on hold ({HOLD}) since {when}, {said}; a certificate on hold is refused "
                                     "(NVIDIA's verifier accepts one only with --allow_hold_cert)")
    if status.status == "revoked":
        reason = f" ({status.revocation_reason})" if status.revocation_reason else ""
        return _Problem("ocsp.revoked", f"is revoked since {when}{reason}, {said}")
    return _Problem("ocsp.unknown", f"is unknown to OCSP responder {status.responder!r} ({status.source})")


class OcspChecker:
    """Check certificates of verified NVIDIA chains by OCSP (module docstring).

    `client` asks NVIDIA's responder and caches its answers (None: only the directory is read, and
    `require` refuses what it lacks); `directory` is an OCSP directory (a path or an `OcspDirectory`)."""

    def __init__(self, client: OcspClient | None = None, directory: OcspDirectory | Path | None = None) -> None:
        self.client = client
        self.directory = OcspDirectory(directory) if isinstance(directory, Path) else directory

    async def check(self, chain: Sequence[Certificate], at: datetime, *,
                    indices: Sequence[int] = DEVICE_OCSP_INDICES, stance: Stance = "require",
                    what: str = "device chain") -> tuple[OcspStatus, ...]:
        """The status of `chain[i]` for each of `indices`, in that order; OcspRefused unless every one is good
        (stances `require` and `cached`).  `what` names the chain in messages ("driver RIM chain")."""
        if stance not in STANCES:
            raise ValueError(f"OCSP stance {stance!r} is not one of {', '.join(STANCES)}")
        for index in indices:
            if not 0 <= index < len(chain) - 1:
                raise ValueError(f"OCSP index {index} is outside a chain of {len(chain)} certificates")
        if stance == "off":
            return tuple(OcspStatus(i, chain[i].subject_cn, chain[i].serial, "not checked") for i in indices)
        outcomes = await asyncio.gather(*(self._one(chain, i, at, stance) for i in indices))
        results = tuple(outcome.status for outcome in outcomes)
        problems = [(outcome.status, outcome.problem) for outcome in outcomes if outcome.problem is not None]
        if problems:
            status, problem = problems[0]
            also = "".join(f"; also certificate {s.index} {s.subject!r}: {p.detail}" for s, p in problems[1:])
            label = "" if problem.message.endswith(f"[{problem.detail}]") else f" [{problem.detail}]"
            raise OcspRefused(f"certificate {status.index} {status.subject!r} (serial {status.serial:#x}) of the "
                              f"{what} {problem.message}{label}{also}", detail=problem.detail,
                              index=status.index, results=results)
        return results

    async def _one(self, chain: Sequence[Certificate], index: int, at: datetime, stance: Stance) -> _Outcome:
        cert = chain[index]
        unavailable = OcspStatus(index, cert.subject_cn, cert.serial, "unavailable")
        tried = _Tried()
        try:
            await self._stored(chain, index, at, tried)
        except CollateralUnavailable as exc:  # the directory cannot be read: say so rather than fetch around it
            return _Outcome(unavailable, _Problem(exc.check, str(exc)))
        best = tried.newest()
        if best is None and stance == "require" and self.client is not None:
            fetched = await self._fetch(chain, index, at, tried)
            if isinstance(fetched, _Problem):
                return _Outcome(unavailable, fetched)
            best = fetched
        if best is None:
            return _Outcome(unavailable, self._missing(tried, stance, at))
        status = _status(index, cert, *best)
        return _Outcome(status, _verdict(status))

    async def _stored(self, chain: Sequence[Certificate], index: int, at: datetime, tried: _Tried) -> None:
        cert, issuer = chain[index], chain[index + 1]
        candidates: list[tuple[str, bytes]] = []
        if self.directory is not None:  # a changed directory is read again: off the event loop
            stored = await asyncio.to_thread(self.directory.responses, cert, issuer)
            candidates += [(r.source, r.der) for r in stored]
        if self.client is not None:
            cached = await self.client.stored(chain, index)
            if cached is not None:
                candidates.append((f"cache: {cached.source}", cached.body))
        for source, der in candidates:
            _try(der, source, cert, issuer, at, tried)

    async def _fetch(self, chain: Sequence[Certificate], index: int, at: datetime,
                     tried: _Tried) -> tuple[OcspResult, str] | _Problem:
        assert self.client is not None
        stored = f" (stored: {tried.why_not()})" if tried.failures else ""
        try:
            fetched = await self.client.fetch(chain, index)
        except (CollateralUnavailable, MalformedEvidence) as exc:
            return _Problem(exc.check, f"has no usable OCSP response{stored}: {exc}")
        source = fetched.source if fetched.origin == "network" else f"cache: {fetched.source}"
        before = len(tried.failures)
        _try(fetched.body, source, chain[index], chain[index + 1], at, tried)
        if len(tried.failures) > before:
            _, refused = tried.failures[-1]
            return _Problem(refused.check, f"has no usable OCSP response: the one from {source} is refused: {refused}")
        return tried.verified[-1]

    def _missing(self, tried: _Tried, stance: Stance, at: datetime) -> _Problem:
        if tried.failures:
            _, first = tried.failures[0]
            return _Problem(first.check, f"has no OCSP response that holds at {at.isoformat()}: {tried.why_not()}")
        if stance == "cached":
            where = f"the OCSP directory {self.directory.path}" if self.directory is not None else "no OCSP directory"
            return _Problem("ocsp.missing", f"has no stored OCSP response (stance 'cached' never asks NVIDIA; looked "
                                            f"in {where} and the collateral cache: add one with kbs collateral add)")
        return _Problem("ocsp.missing", "has no stored OCSP response and no OCSP client is configured to ask NVIDIA")


def _try(der: bytes, source: str, cert: Certificate, issuer: Certificate, at: datetime, tried: _Tried) -> None:
    try:
        result = revocation.verify_ocsp_response(der, cert, issuer, at, algorithms=NVIDIA_SIGNATURE_ALGORITHMS)
    except (ChainInvalid, MalformedEvidence) as exc:
        tried.failures.append((source, exc))
        return
    tried.verified.append((result, source))
