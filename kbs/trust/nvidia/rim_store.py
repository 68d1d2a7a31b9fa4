"""Where RIMs come from: a local directory and/or NVIDIA's RIM service (reference/gpu.md §3.2).

- **Directory**: ``<dir>/<rim id>.xml``, else ``<dir>/<rim id>.swidtag`` (nvat's filesystem store layout),
  read with a bound on the size.
- **Service**: ``GET https://rim.attestation.nvidia.com/v1/rim/<rim id>`` answering JSON
  ``{"id", "rim": base64(XML), "sha256": hex, …}``, through the shared fetcher (`kbs.trust.fetch`: memory
  and disk cache, single flight, request limit and 429 window, negative cache, offline mode).  An answer
  is checked before it is cached: a JSON object for the id asked for, the ``sha256`` field equal to the
  SHA-256 of the decoded XML, and the XML an authentic RIM (signature and chain to the pinned CoRIM root at
  a time its chain was valid: `rim.verify_rim_authentic`), so a forgery never enters the cache.  RIMs are
  immutable and cached forever; the disk cache is the directory `kbs collateral` fills (`nvidia-rim/`).

`RimStore.get(rim_id, at)` looks in the directory first, then the service, and verifies the RIM at `at`.
A RIM found nowhere is `nvgpu.rim.missing`, naming the id and every place looked in; a RIM that was found
but is bad keeps the label of what is wrong with it (`nvgpu.rim.parse`, `.signature`, `.chain`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Unpack

from kbs.errors import ChainInvalid, CollateralUnavailable, MalformedEvidence, SignatureInvalid
from kbs.trust.fetch import FetchKnobs, Request, ServiceClient
from kbs.trust.nvidia.rim import VerifiedRim, cached_rim, verify_rim, verify_rim_authentic
from kbs.trust.nvidia.rim_ids import check_rim_id
from kbs.trust.nvidia.rim_xml import MAX_RIM_BYTES, PARSE
from kbs.trust.x509 import Certificate

SERVICE = "nvidia-rim"  # the fetcher's service name: cache subdirectory, check labels, logger kbs.nvidia-rim
KIND_RIM = "nvidia.rim"  # the artefact kind in the collateral cache
DEFAULT_BASE_URL = "https://rim.attestation.nvidia.com"
MISSING = "nvgpu.rim.missing"
SUFFIXES = (".xml", ".swidtag")
MAX_ANSWER = 1 << 20  # base64 of a RIM of at most MAX_RIM_BYTES, plus a few fields
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")


def rim_path(rim_id: str) -> str:
    """The service path (and cache key) of a RIM."""
    return f"/v1/rim/{check_rim_id(rim_id)}"


def _bad(where: str, message: str) -> MalformedEvidence:
    return MalformedEvidence(f"{where}: {message}", check=PARSE)


def rim_from_answer(body: bytes, rim_id: str, where: str) -> bytes:
    """The RIM XML of a RIM service answer for `rim_id`, its sha256 field checked."""
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(where, f"the RIM service answer for {rim_id} is not JSON ({exc})") from exc
    if not isinstance(answer, dict):
        raise _bad(where, f"the RIM service answer for {rim_id} is not a JSON object")
    if answer.get("id") != rim_id:
        raise _bad(where, f"the RIM service answered with id {str(answer.get('id'))[:80]!r}, wanted {rim_id!r}")
    encoded, digest = answer.get("rim"), answer.get("sha256")
    if not isinstance(encoded, str) or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise _bad(where, f"the RIM service answer for {rim_id} lacks a base64 'rim' or a hex 'sha256'")
    if len(encoded) > (MAX_RIM_BYTES // 3 + 1) * 4:
        raise _bad(where, f"the RIM {rim_id} in the answer is larger than the {MAX_RIM_BYTES} bytes allowed")
    try:
        xml = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise _bad(where, f"the 'rim' of the answer for {rim_id} is not base64") from exc
    seen = hashlib.sha256(xml).hexdigest()
    if seen != digest.lower():
        raise _bad(where, f"the RIM {rim_id} in the answer has SHA-256 {seen}, but its sha256 field says {digest}")
    return xml


def answer_for(rim_id: str, xml: bytes) -> bytes:
    """A RIM service answer carrying `xml` (what `kbs collateral add` stores for a RIM file)."""
    return json.dumps({"id": check_rim_id(rim_id), "rim": base64.b64encode(xml).decode("ascii"),
                       "sha256": hashlib.sha256(xml).hexdigest()}, sort_keys=True).encode()


def check_answer(body: bytes, rim_id: str, where: str, trust_roots: Sequence[Certificate] | None) -> bytes:
    """A RIM service answer that may be cached: its XML, authentic (raises MalformedEvidence otherwise,
    with the label of what is wrong, so the fetcher remembers the failure and caches nothing)."""
    xml = rim_from_answer(body, rim_id, where)
    try:
        verify_rim_authentic(xml, trust_roots=trust_roots, rim_id=rim_id)
    except (SignatureInvalid, ChainInvalid) as exc:
        raise MalformedEvidence(f"{where}: {exc}", check=exc.check) from exc
    return xml


class RimServiceClient(ServiceClient):
    """NVIDIA's RIM service on the shared fetcher."""

    service: ClassVar[str] = SERVICE
    label: ClassVar[str] = "NVIDIA RIM service"
    default_base_url: ClassVar[str] = DEFAULT_BASE_URL
    default_rate_per_second: ClassVar[float] = 2.0
    default_burst: ClassVar[int] = 10
    max_body: ClassVar[int] = MAX_ANSWER
    rate_limit_hint: ClassVar[str] = "fill the cache ahead with kbs collateral add, or give a RIM directory"

    def __init__(self, base_url: str | None = None, cache_dir: Path | None = None, offline: bool = False, *,
                 trust_roots: Sequence[Certificate] | None = None, service_key: str | None = None,
                 **knobs: Unpack[FetchKnobs]) -> None:
        super().__init__(base_url, cache_dir, offline, **knobs)
        self.trust_roots = trust_roots
        self._headers: tuple[tuple[str, str], ...] = (("Accept", "application/json"),)
        if service_key:  # optional; the service needs none
            self._headers += (("Authorization", f"Bearer {service_key}"),)

    def rim_request(self, rim_id: str) -> Request:
        roots = self.trust_roots

        def validate(body: bytes, headers: Mapping[str, str], where: str) -> None:
            check_answer(body, rim_id, where, roots)

        return Request(rim_path(rim_id), f"RIM {rim_id}", KIND_RIM, validate, headers=self._headers)

    async def fetch_rim(self, rim_id: str) -> tuple[bytes, str]:
        """(RIM XML, where it came from); CollateralUnavailable or MalformedEvidence as the fetcher raises."""
        fetched = await self.fetcher.fetch(self.rim_request(rim_id))
        return rim_from_answer(fetched.body, rim_id, fetched.source), f"{fetched.source} ({fetched.origin})"


def read_bounded(path: Path) -> bytes | None:
    """A RIM file's bytes (None if there is none); MalformedEvidence if it is larger than a RIM may be."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RIM_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_RIM_BYTES:
        raise MalformedEvidence(f"{path} is larger than the {MAX_RIM_BYTES} bytes a RIM may have", check=PARSE)
    return data


@dataclass(frozen=True)
class FoundRim:
    xml: bytes
    source: str  # "file:<path>" or the service URL


class RimStore:
    """RIMs by id from a directory and/or the RIM service, verified at the time asked for."""

    def __init__(self, *, directory: Path | None = None, service: RimServiceClient | None = None,
                 trust_roots: Sequence[Certificate] | None = None) -> None:
        self.directory = directory
        self.service = service
        self.trust_roots = trust_roots

    async def find(self, rim_id: str) -> FoundRim:
        """The RIM's bytes from the first place that has it; `nvgpu.rim.missing` naming every place looked."""
        check_rim_id(rim_id)
        looked: list[str] = []
        if self.directory is not None:
            for suffix in SUFFIXES:
                path = self.directory / f"{rim_id}{suffix}"
                data = await asyncio.to_thread(read_bounded, path)
                if data is not None:
                    return FoundRim(data, f"file:{path}")
            looked.append(f"no {rim_id}{' or '.join(SUFFIXES)} in {self.directory}")
        if self.service is not None:
            try:
                xml, source = await self.service.fetch_rim(rim_id)
                return FoundRim(xml, source)
            except CollateralUnavailable as exc:
                looked.append(f"{exc} [{exc.check}]")
        if not looked:
            looked.append("no RIM directory and no RIM service is configured")
        raise CollateralUnavailable(f"RIM {rim_id} is not available: {'; '.join(looked)}", check=MISSING)

    async def get(self, rim_id: str, at: datetime) -> VerifiedRim:
        """The RIM `rim_id`, verified at `at` (`rim.verify_rim`; a cold verification runs in a thread, so the
        event loop is not held for the milliseconds signxml takes)."""
        found = await self.find(rim_id)
        warm = cached_rim(found.xml, at, trust_roots=self.trust_roots)
        if warm is not None:
            return warm
        return await asyncio.to_thread(verify_rim, found.xml, at, trust_roots=self.trust_roots, rim_id=rim_id)

    async def close(self) -> None:
        if self.service is not None:
            await self.service.close()

