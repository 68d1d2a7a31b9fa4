"""The collateral cache an air-gapped site can carry (`kbs collateral list|add|fetch|export|import|prune`).

It is the fetcher's disk cache (`kbs.trust.cachedir`), so the daemon (`cache_dir` of the SNP
verifier, formerly `[kds] cache_dir`) and `kbs verify --offline --cache-dir` read what these verbs
put there.  Nothing enters it unchecked: every artefact belongs to a registered `ArtefactKind`,
whose `check` verifies it against the pinned roots (or configured trust roots) and confirms it is
stored under the key its client will look it up by.  A batch (the files of one `add`, the items of
one archive) is admitted whole or not at all.

The export archive is a tar file (gzip-compressed when its name ends in .gz or .tgz)::

    kbs-collateral/manifest.json
    kbs-collateral/<service>/<stem>           one file per artefact, exactly as cached

    manifest.json: {"format": "kbs-collateral-archive", "version": 1, "created_at": "...",
                    "items": [{"file": "<service>/<stem>", "service", "kind", "method", "path",
                               "request_sha256", "source", "headers", "sha256", "size",
                               "valid_until", "added_at"}, ...]}

An item is the cache's metadata document (`cachedir`) plus its file name.  `import` reads the
whole archive into memory under size bounds (no extraction to disk), refuses it if any member is
not named by the manifest, if any file's SHA-256 or size differs from its item, or if any item
fails its kind's check, and only then writes anything.  Items that expired (a CRL past its
nextUpdate) are skipped, not refused.

Artefact kinds are an `ArtefactKind` of their vendor module, listed in `known_kinds`: AMD's
(`amd.collateral`), Intel's (`intel.cache_kinds`), NVIDIA's RIMs (`nvidia.rim_kinds`) and OCSP responses
(`nvidia.ocsp_kinds`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from kbs.errors import CollateralUnavailable, KbsError, MalformedEvidence, UsageError
from kbs.files import write_atomic
from kbs.trust.cachedir import CacheDir, CacheKey, DamagedEntry, Entry, Problem, iso
from kbs.trust.fetch import ValidUntil
from kbs.trust.x509 import Certificate

ARCHIVE_FORMAT = "kbs-collateral-archive"
ARCHIVE_VERSION = 1
ARCHIVE_DIR = "kbs-collateral"
MANIFEST = f"{ARCHIVE_DIR}/manifest.json"
MAX_MANIFEST = 16 << 20
MAX_ITEMS = 20_000
MAX_ARCHIVE_BYTES = 1 << 30


def default_cache_dir() -> Path:
    """The cache `kbs verify` and `kbs collateral` use without --cache-dir: $XDG_CACHE_HOME/kbs/kds."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kbs" / "kds"


class CollateralRefused(KbsError):
    """A batch of collateral was refused: nothing of it entered the cache."""

    check = "collateral.refused"


@dataclass(frozen=True)
class CheckContext:
    """What a kind's check may rely on."""

    at: datetime  # certificates must be valid at this time
    now: datetime  # expiring artefacts must be current now
    trust_roots: Sequence[Certificate] | None  # replace the vendors' pinned roots (labs, tests)
    certificates: Sequence[Certificate]  # untrusted certificates to build chains from: the batch and the cache


@dataclass(frozen=True)
class ArtefactKind:
    """One kind of artefact the cache may hold."""

    name: str  # "amd.vcek": recorded in the cache's metadata and the archive's manifest
    service: str  # the fetcher service whose cache subdirectory holds it ("kds")
    description: str  # for people: "AMD VCEK certificate"
    # Raises KbsError unless the entry is authentic (to the pinned or configured roots) and stored
    # under the key its client looks it up by.
    check: Callable[[Entry, CheckContext], None]
    valid_until: ValidUntil | None = None  # read from the artefact; None: never expires
    # Certificates the artefact offers to chain building (an issuer chain); must not raise.
    certificates: Callable[[Entry], Sequence[Certificate]] = field(default=lambda entry: ())


def known_kinds() -> dict[str, ArtefactKind]:
    """Every artefact kind the cache can check, from each vendor's module."""
    from kbs.trust.amd.collateral import AMD_KINDS  # vendor modules build on this one
    from kbs.trust.intel.cache_kinds import INTEL_KINDS
    from kbs.trust.nvidia.ocsp_kinds import NVIDIA_OCSP_KINDS
    from kbs.trust.nvidia.rim_kinds import NVIDIA_RIM_KINDS

    return {kind.name: kind for kind in (*AMD_KINDS, *INTEL_KINDS, *NVIDIA_RIM_KINDS, *NVIDIA_OCSP_KINDS)}


@dataclass(frozen=True)
class Admitted:
    """What one admitted batch did."""

    written: tuple[Entry, ...]
    kept: tuple[Entry, ...]  # a newer copy of the same key was already cached
    skipped: tuple[tuple[Entry, str], ...]  # expired, with why


@dataclass(frozen=True)
class Pruned:
    removed: tuple[Entry, ...]
    problems: tuple[Problem, ...]


class CollateralCache:
    """A collateral cache directory and the kinds it admits."""

    def __init__(self, root: Path, kinds: dict[str, ArtefactKind] | None = None) -> None:
        self.root = root
        self.kinds = known_kinds() if kinds is None else kinds
        self.dir = CacheDir(root)

    # -- reading --------------------------------------------------------------------------

    def scan(self) -> tuple[list[Entry], list[Problem]]:
        entries: list[Entry] = []
        problems: list[Problem] = []
        for item in self.dir.scan():
            if isinstance(item, Entry):
                entries.append(item)
            else:
                problems.append(item)
        return entries, problems

    def certificates(self, entries: Iterable[Entry] | None = None) -> list[Certificate]:
        """Certificates the cached artefacts (or `entries`) offer to chain building."""
        out: list[Certificate] = []
        for entry in self.scan()[0] if entries is None else entries:
            kind = self.kinds.get(entry.kind)
            if kind is not None:
                out += kind.certificates(entry)
        return out

    def lookup(self, entry: Entry) -> Entry | None:
        """The cached entry under `entry`'s key, if sound."""
        return self.current(entry.service, entry.key, None)

    def current(self, service: str, key: CacheKey, now: datetime | None) -> Entry | None:
        """The sound entry under `key`, if any (and, given `now`, not expired then)."""
        try:
            entry = self.dir.read(service, key)
        except (DamagedEntry, OSError):
            return None
        if entry is not None and now is not None and entry.expired(now):
            return None
        return entry

    # -- admitting ------------------------------------------------------------------------

    def check(self, batch: Sequence[Entry], *, at: datetime, now: datetime,
              trust_roots: Sequence[Certificate] | None) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """Every entry checked by its kind, with valid-until read from the artefact: (current entries,
        expired ones with why).  CollateralRefused naming every failure if any entry fails."""
        pool = [*self.certificates(batch), *self.certificates(), *(trust_roots or ())]
        context = CheckContext(at=at, now=now, trust_roots=trust_roots, certificates=pool)
        current: list[Entry] = []
        expired: list[tuple[Entry, str]] = []
        failures: list[str] = []
        seen: dict[tuple[str, str], str] = {}
        for entry in batch:
            name = f"{entry.kind} {entry.key}"
            kind = self.kinds.get(entry.kind)
            try:
                if kind is None:
                    raise CollateralUnavailable(f"unknown artefact kind {entry.kind!r} (known: "
                                                f"{', '.join(sorted(self.kinds))})", check="collateral.kind")
                if entry.service != kind.service:
                    raise MalformedEvidence(f"kind {kind.name} belongs to service {kind.service!r}, not "
                                            f"{entry.service!r}", check="collateral.service")
                previous = seen.setdefault((entry.service, entry.key.stem), entry.sha256)
                if previous != entry.sha256:
                    raise MalformedEvidence("two different artefacts for the same key", check="collateral.duplicate")
                kind.check(entry, context)
                until = None
                if kind.valid_until is not None:
                    until = kind.valid_until(entry.body, entry.headers)
                    if until is None:
                        expired.append((entry, "it carries no usable expiry date"))
                        continue
                entry = replace(entry, valid_until=until)
            except (KbsError, ValueError) as exc:
                label = exc.check if isinstance(exc, KbsError) else "collateral.invalid"
                failures.append(f"{name}: {label}: {exc}")
                continue
            if entry.expired(now):
                assert entry.valid_until is not None
                expired.append((entry, f"it expired at {iso(entry.valid_until)}"))
            else:
                current.append(entry)
        if failures:
            raise CollateralRefused(f"{len(failures)} of {len(batch)} item(s) failed their checks, so none was "
                                    "cached: " + "; ".join(failures))
        return current, expired

    def admit(self, batch: Sequence[Entry], *, at: datetime, now: datetime,
              trust_roots: Sequence[Certificate] | None) -> Admitted:
        """Check the whole batch, then write it: all of it, or (CollateralRefused) none of it."""
        current, expired = self.check(batch, at=at, now=now, trust_roots=trust_roots)
        written: list[Entry] = []
        kept: list[Entry] = []
        for entry in current:
            cached = self.lookup(entry)
            if cached is not None and cached.valid_until is not None and entry.valid_until is not None \
                    and cached.valid_until > entry.valid_until:
                kept.append(cached)
                continue
            try:
                self.dir.write(entry)
            except OSError as exc:
                raise UsageError(f"cannot write into the cache {self.root}: {exc}", check="collateral.write") from exc
            written.append(entry)
        return Admitted(tuple(written), tuple(kept), tuple(expired))

    # -- pruning --------------------------------------------------------------------------

    def prune(self, now: datetime) -> Pruned:
        """Remove expired entries and broken files of the service directories."""
        entries, problems = self.scan()
        removed = [e for e in entries if e.expired(now)]
        for entry in removed:
            self.dir.remove(entry.service, entry.key)
        for problem in problems:
            if problem.removable:
                with contextlib.suppress(FileNotFoundError):
                    problem.path.unlink()
        return Pruned(tuple(removed), tuple(problems))

    # -- export and import ----------------------------------------------------------------

    def export(self, out: Path, now: datetime, *, include_expired: bool = False) -> list[Entry]:
        """Write every sound (and, unless asked, current) entry into one archive at `out`."""
        entries = [e for e in self.scan()[0] if include_expired or not e.expired(now)]
        items = []
        for entry in entries:
            item = entry.meta()
            del item["format"]
            item["file"] = f"{entry.service}/{entry.key.stem}"
            items.append(item)
        manifest = {"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION, "created_at": iso(now), "items": items}
        compress = out.name.endswith((".gz", ".tgz"))

        def write(f: BinaryIO) -> None:
            with tarfile.open(fileobj=f, mode="w:gz" if compress else "w") as tar:
                _add_member(tar, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n", now)
                for entry, item in zip(entries, items, strict=True):
                    _add_member(tar, f"{ARCHIVE_DIR}/{item['file']}", entry.body, now)
        write_atomic(out, write)
        return entries

    def import_archive(self, archive: Path, *, at: datetime, now: datetime,
                       trust_roots: Sequence[Certificate] | None) -> Admitted:
        """Admit every item of an archive, or (CollateralRefused) none."""
        return self.admit(read_archive(archive, now), at=at, now=now, trust_roots=trust_roots)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, now: datetime) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    info.mtime = int(now.timestamp())
    tar.addfile(info, io.BytesIO(data))


def read_archive(path: Path, now: datetime | None = None) -> list[Entry]:
    """The entries of an export archive, each file matching its manifest item (SHA-256 and size).

    CollateralRefused for anything else: not a tar file, a member that is not a regular file or is
    not named by the manifest, a file missing, altered or listed twice.  Bounded: at most
    MAX_ITEMS items of at most 1 MiB each, MAX_ARCHIVE_BYTES in all."""
    members = _read_members(path)
    raw = members.pop(MANIFEST, None)
    if raw is None:
        raise CollateralRefused(f"{path} has no {MANIFEST}: not a kbs collateral archive")
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise CollateralRefused(f"{path}: {MANIFEST} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT \
            or manifest.get("version") != ARCHIVE_VERSION or not isinstance(manifest.get("items"), list):
        raise CollateralRefused(f"{path}: {MANIFEST} is not a {ARCHIVE_FORMAT} version {ARCHIVE_VERSION} manifest")
    items: list[Any] = manifest["items"]
    entries: list[Entry] = []
    problems: list[str] = []
    named: set[str] = set()
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            problems.append(f"item {number} is not an object with a file name")
            continue
        member = f"{ARCHIVE_DIR}/{item['file']}"
        if member in named:
            problems.append(f"item {number} names {item['file']} again")
            continue
        named.add(member)
        body = members.get(member)
        if body is None:
            problems.append(f"item {number}: {item['file']} is missing from the archive")
            continue
        try:
            entry = Entry.from_meta({**item, "format": 1}, body)
        except ValueError as exc:
            problems.append(f"item {number} ({item['file']}): {exc}")
            continue
        if f"{entry.service}/{entry.key.stem}" != item["file"]:
            problems.append(f"item {number}: {item['file']} is not where its key belongs")
            continue
        entries.append(replace(entry, added_at=now or datetime.now(UTC)))
    unnamed = sorted(set(members) - named)
    if unnamed:
        problems.append(f"member(s) not in the manifest: {', '.join(unnamed[:5])}")
    if problems:
        raise CollateralRefused(f"archive {path} is refused as a whole, nothing was imported: " + "; ".join(problems))
    return entries


def _read_members(path: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for info in tar:
                if len(members) > MAX_ITEMS:
                    raise CollateralRefused(f"archive {path} holds more than {MAX_ITEMS} members")
                if not info.isfile():
                    raise CollateralRefused(f"archive {path}: member {info.name!r} is not a regular file")
                if info.name in members:
                    raise CollateralRefused(f"archive {path}: member {info.name!r} appears twice")
                limit = MAX_MANIFEST if info.name == MANIFEST else 1 << 20
                if info.size > limit:
                    raise CollateralRefused(f"archive {path}: member {info.name!r} is {info.size} bytes, "
                                            f"more than the {limit} allowed")
                total += info.size
                if total > MAX_ARCHIVE_BYTES:
                    raise CollateralRefused(f"archive {path} holds more than {MAX_ARCHIVE_BYTES} bytes")
                handle = tar.extractfile(info)
                assert handle is not None
                data = handle.read(info.size + 1)
                if len(data) != info.size:
                    raise CollateralRefused(f"archive {path}: member {info.name!r} is truncated")
                members[info.name] = data
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        reason = " ".join(str(exc).split())
        raise CollateralRefused(f"archive {path} cannot be read as a tar file ({reason}); nothing was imported") \
            from exc
    return members

