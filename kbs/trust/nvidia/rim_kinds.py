"""NVIDIA RIMs in the collateral cache (`kbs collateral`): stored as the RIM service answers them (JSON with
the base64 XML and its SHA-256) under the key `rim_store.RimServiceClient` looks them up by,
``GET /v1/rim/<rim id>`` in ``nvidia-rim/``, so the daemon and `kbs verify --offline` read what
`kbs collateral add` put there.

A RIM file given to `add` is named ``<rim id>.xml`` (or ``.swidtag``), as NVIDIA's service and nvat's
filesystem store name them.  Its check is the client's own check of an answer (the id, the SHA-256), plus
the RIM verified at the `--at` time against the pinned CoRIM root (or `--trust-root`), plus: the version the
id names must be the RIM's colloquialVersion, so a misnamed file is refused rather than cached under an id
whose reports it can never match.  RIMs never expire in the cache (their chains do, which `verify_rim`
checks at each use).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from kbs.errors import KbsError, MalformedEvidence, UsageError
from kbs.trust.cachedir import CacheKey, Entry
from kbs.trust.collateral_cache import ArtefactKind, CheckContext
from kbs.trust.nvidia.rim import VerifiedRim, verify_rim
from kbs.trust.nvidia.rim_ids import check_rim_id
from kbs.trust.nvidia.rim_signature import embedded_certificates, signature_element
from kbs.trust.nvidia.rim_store import KIND_RIM, SERVICE, SUFFIXES, answer_for, read_bounded, rim_from_answer, rim_path
from kbs.trust.nvidia.rim_xml import parse_xml
from kbs.trust.x509 import Certificate, parse_certificate

# The version part of the ids NVIDIA names RIMs by (reference/gpu.md §3.2).
_DRIVER_ID = re.compile(r"NV_GPU_(?:CC_)?DRIVER_[A-Za-z0-9]+_(?P<version>[A-Za-z0-9._-]+)")
_VBIOS_ID = re.compile(r"NV_GPU_VBIOS_[A-Za-z0-9]+_[A-Za-z0-9]+_[A-Za-z0-9]+_(?P<version>[A-Za-z0-9]+)")


def check_names_version(rim_id: str, rim: VerifiedRim) -> None:
    """The version in a driver or VBIOS RIM id is the RIM's colloquialVersion (VBIOS: without dots)."""
    driver, vbios = _DRIVER_ID.fullmatch(rim_id), _VBIOS_ID.fullmatch(rim_id)
    if vbios is not None:
        named, have = vbios.group("version").upper(), rim.colloquial_version.replace(".", "").upper()
    elif driver is not None:
        named, have = driver.group("version").casefold(), rim.colloquial_version.casefold()
    else:
        return  # other RIMs (NVSwitch BIOS, ...): no version rule known
    if named != have:
        raise MalformedEvidence(f"RIM {rim_id} names version {named}, but the RIM's colloquialVersion is "
                                f"{rim.colloquial_version!r}: the file is misnamed", check="collateral.key")


def answer_id(entry: Entry) -> str:
    """The RIM id a cached RIM service answer says it carries."""
    try:
        answer = json.loads(entry.body)
    except ValueError as exc:
        raise MalformedEvidence(f"the cache entry {entry.key} is not a RIM service answer: {exc}",
                                check="nvgpu.rim.parse") from exc
    rim_id = answer.get("id") if isinstance(answer, dict) else None
    return check_rim_id(rim_id if isinstance(rim_id, str) else "")


def check_rim_entry(entry: Entry, context: CheckContext) -> None:
    """A RIM service answer, authentic at `context.at`, stored under its id's path, named by its version."""
    rim_id = answer_id(entry)
    wanted = CacheKey("GET", rim_path(rim_id))
    if entry.key != wanted:
        raise MalformedEvidence(f"stored under {entry.key}, but RIM {rim_id} belongs under {wanted}",
                                check="collateral.key")
    xml = rim_from_answer(entry.body, rim_id, f"the cache entry {entry.key}")
    check_names_version(rim_id, verify_rim(xml, context.at, trust_roots=context.trust_roots, rim_id=rim_id))


def rim_entry_certificates(entry: Entry) -> Sequence[Certificate]:
    """The signing chain a cached RIM carries (for building the chains of OCSP answers about it); never raises."""
    try:
        rim_id = answer_id(entry)
        xml = rim_from_answer(entry.body, rim_id, str(entry.key))
        signature = signature_element(parse_xml(xml, rim_id), rim_id)
        return [parse_certificate(der) for der in embedded_certificates(signature, rim_id)]
    except (KbsError, ValueError):
        return ()


NVIDIA_RIM_KINDS = (ArtefactKind(KIND_RIM, SERVICE, "NVIDIA RIM (reference integrity manifest)", check_rim_entry,
                                 certificates=rim_entry_certificates),)


def rim_file_entry(path: Path, data: bytes, source: str, added_at: datetime) -> Entry:
    """The cache entry for a RIM file named ``<rim id>.xml`` (checked later, with the whole batch)."""
    try:
        rim_id = check_rim_id(path.stem)
    except MalformedEvidence as exc:
        raise UsageError(f"{path}: a RIM file must be named <RIM id>{' or <RIM id>'.join(SUFFIXES)}, as NVIDIA names "
                         f"RIMs (e.g. NV_GPU_DRIVER_GH100_550.90.07.xml); {exc}") from exc
    return Entry(SERVICE, KIND_RIM, CacheKey("GET", rim_path(rim_id)), answer_for(rim_id, data), source, added_at)


def split_rim_files(names: list[str], added_at: datetime) -> tuple[list[Entry], list[str]]:
    """(cache entries for the RIM files among `names`, the other names): what `kbs collateral add` does
    with XML files named ``*.xml`` or ``*.swidtag``.  Reads are bounded; nothing is checked yet."""
    entries: list[Entry] = []
    others: list[str] = []
    for name in names:
        path = Path(name)
        if path.suffix not in SUFFIXES or not path.is_file():
            others.append(name)
            continue
        try:
            data = read_bounded(path)
        except OSError as exc:
            raise UsageError(f"cannot read RIM {path}: {exc.strerror}") from exc
        if data is None or data.lstrip()[:1] != b"<":
            others.append(name)
            continue
        entries.append(rim_file_entry(path, data, f"file:{path.resolve()}", added_at))
    return entries, others
