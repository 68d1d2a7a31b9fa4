"""The on-disk collateral cache: one directory that the fetcher, the daemon, `kbs verify --offline`
and `kbs collateral` all read and write.

Layout::

    <cache dir>/                      0700
      <service>/                      0700, one per remote service ("kds"; later "pcs", "nvidia-rim", "ocsp")
        <stem>                        0600, the artefact exactly as the service sent it (DER, PEM, JSON, ...)
        <stem>.meta.json              0600, what it is and where it belongs (below)

`<stem>` is a readable prefix of the request path plus a hash of the whole cache key, so two
requests never share a file.  The metadata document::

    {"format": 1, "service": "kds", "kind": "amd.vcek",
     "method": "GET", "path": "/vcek/v1/Milan/<hwid>?blSPL=..", "request_sha256": null,
     "source": "https://kdsintf.amd.com/vcek/v1/Milan/...", "headers": {},
     "sha256": "<hex of the body>", "size": 1360,
     "valid_until": null | "2026-12-06T10:00:00Z", "added_at": "2026-11-29T13:55:16Z"}

The cache key is (method, path, SHA-256 of the request body for a POST): the path is relative to
the service's base URL, so a cache filled through one mirror of a service serves another.
Both files are written atomically (temporary file, fsync, rename), the body first; a reader
checks that the metadata names the key it looked for and that the body has the recorded size
and SHA-256, so a torn or damaged entry reads as absent, never as another artefact.  What the
body means (and whether it is still fresh) is re-checked by the caller from the artefact itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kbs.files import write_atomic

FORMAT = 1
META_SUFFIX = ".meta.json"
MAX_META = 64 * 1024
DEFAULT_MAX_BODY = 1 << 20
METHODS = ("GET", "POST")
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_KIND = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def check_service(service: str) -> str:
    if not _SERVICE.match(service):
        raise ValueError(f"service name {service!r} must be 1-32 of a-z, 0-9, '-', '_'")
    return service


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return when.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Where a client looks an artefact up: the request, not the bytes it answers with."""

    method: str
    path: str  # path and query under the service's base URL (or an absolute URL)
    request_sha256: str | None = None  # SHA-256 of a POST's body: part of what was asked

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not self.path or len(self.path) > 2048:
            raise ValueError("a cache key's path must be 1-2048 characters")
        if self.request_sha256 is not None and not _HEX64.match(self.request_sha256):
            raise ValueError("request_sha256 must be 64 lowercase hex digits")

    @classmethod
    def of(cls, method: str, path: str, body: bytes | None = None) -> CacheKey:
        return cls(method, path, None if body is None else hashlib.sha256(body).hexdigest())

    def __str__(self) -> str:
        suffix = f" [request body sha256 {self.request_sha256[:16]}…]" if self.request_sha256 else ""
        return f"{self.method} {self.path}{suffix}"

    @property
    def stem(self) -> str:
        """The entry's file name: a readable prefix of the path plus a hash of the whole key."""
        whole = f"{self.method} {self.path} {self.request_sha256 or ''}"
        digest = hashlib.sha256(whole.encode()).hexdigest()[:32]
        readable = _UNSAFE.sub("_", self.path.split("://", 1)[-1].lstrip("/"))[:80].strip("._") or "root"
        prefix = "" if self.method == "GET" else f"{self.method.lower()}_"
        return f"{prefix}{readable}.{digest}"


@dataclass(frozen=True)
class Entry:
    """One cached artefact with what the cache knows about it."""

    service: str
    kind: str
    key: CacheKey
    body: bytes
    source: str  # where it came from: a URL, or "file:<path>"
    added_at: datetime
    valid_until: datetime | None = None  # None: never expires (an immutable artefact)
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def expired(self, now: datetime) -> bool:
        return self.valid_until is not None and self.valid_until <= now

    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "service": self.service, "kind": self.kind, "method": self.key.method,
                "path": self.key.path, "request_sha256": self.key.request_sha256, "source": self.source,
                "headers": dict(self.headers), "sha256": self.sha256, "size": len(self.body),
                "valid_until": iso(self.valid_until) if self.valid_until else None,
                "added_at": iso(self.added_at)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], body: bytes) -> Entry:
        """The entry `meta` describes, if `body` is the body it describes; ValueError otherwise."""
        try:
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, wanted {FORMAT}")
            service, kind, source = meta["service"], meta["kind"], meta["source"]
            headers, size, digest = meta["headers"], meta["size"], meta["sha256"]
            if not (isinstance(service, str) and isinstance(kind, str) and isinstance(source, str)):
                raise ValueError("service, kind and source must be strings")
            check_service(service)
            if not _KIND.match(kind):
                raise ValueError(f"kind {kind!r} is not a kind name")
            if not isinstance(headers, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
                raise ValueError("headers must map strings to strings")
            key = CacheKey(meta["method"], meta["path"], meta["request_sha256"])
            until = meta["valid_until"]
            valid_until = None if until is None else parse_iso(until)
            added_at = parse_iso(meta["added_at"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"metadata lacks or mistypes {exc}") from exc
        if size != len(body):
            raise ValueError(f"body is {len(body)} bytes, metadata says {size}")
        if digest != hashlib.sha256(body).hexdigest():
            raise ValueError("body SHA-256 differs from the metadata's")
        return cls(service, kind, key, body, source, added_at, valid_until, headers)


class DamagedEntry(Exception):
    """An entry's files exist but do not make a consistent entry (torn write, edited, truncated)."""


@dataclass(frozen=True)
class Problem:
    """A file in the cache directory that is not part of a sound entry."""

    path: Path
    reason: str
    removable: bool  # prune may delete it (it lies in a service directory and is no entry's)


class CacheDir:
    """A collateral cache directory (module docstring)."""

    def __init__(self, root: Path, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.root = root
        self.max_body = max_body

    def paths(self, service: str, key: CacheKey) -> tuple[Path, Path]:
        """(body file, metadata file) of the entry for `key`."""
        folder = self.root / check_service(service)
        stem = key.stem
        return folder / stem, folder / f"{stem}{META_SUFFIX}"

    def read(self, service: str, key: CacheKey) -> Entry | None:
        """The entry for `key`, None if there is none; DamagedEntry if its files disagree."""
        body_path, meta_path = self.paths(service, key)
        try:
            meta_bytes = _read_bounded(meta_path, MAX_META)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise DamagedEntry(str(exc)) from exc
        entry = self._load(meta_path, meta_bytes, body_path)
        if entry.service != service or entry.key != key:
            raise DamagedEntry(f"{meta_path} describes {entry.service} {entry.key}, not {service} {key}")
        return entry

    def _load(self, meta_path: Path, meta_bytes: bytes, body_path: Path) -> Entry:
        try:
            meta = json.loads(meta_bytes)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise DamagedEntry(f"{meta_path} is not a metadata document: {exc}") from exc
        try:
            body = _read_bounded(body_path, self.max_body)
        except FileNotFoundError as exc:
            raise DamagedEntry(f"{body_path} is missing (its metadata {meta_path.name} exists)") from exc
        except ValueError as exc:
            raise DamagedEntry(str(exc)) from exc
        try:
            return Entry.from_meta(meta, body)
        except ValueError as exc:
            raise DamagedEntry(f"{body_path}: {exc}") from exc

    def write(self, entry: Entry) -> Path:
        """Store `entry` (replacing any entry under its key); returns the body's path.  Raises OSError."""
        body_path, meta_path = self.paths(entry.service, entry.key)
        _mkdir_private(self.root)
        _mkdir_private(body_path.parent)
        write_atomic(body_path, entry.body)
        write_atomic(meta_path, json.dumps(entry.meta(), indent=1, sort_keys=True).encode() + b"\n")
        return body_path

    def remove(self, service: str, key: CacheKey) -> None:
        for path in reversed(self.paths(service, key)):  # metadata first: the entry is gone at once
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def scan(self) -> Iterator[Entry | Problem]:
        """Every entry, and every file that is not part of one, in a stable order."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir():
                yield Problem(folder, "not in a service directory (a file of an older cache layout, or a "
                                      "stray file); kbs collateral neither lists nor removes it", False)
                continue
            if not _SERVICE.match(folder.name):
                yield Problem(folder, "not a service directory", False)
                continue
            yield from self._scan_service(folder)

    def _scan_service(self, folder: Path) -> Iterator[Entry | Problem]:
        names = sorted(p.name for p in folder.iterdir())
        bodies = {n for n in names if not n.endswith(META_SUFFIX)}
        for name in names:
            path = folder / name
            if name.startswith("."):
                yield Problem(path, "temporary file of an interrupted write", True)
            elif name.endswith(META_SUFFIX):
                body_path = folder / name.removesuffix(META_SUFFIX)
                bodies.discard(body_path.name)
                try:
                    entry = self._load(path, _read_bounded(path, MAX_META), body_path)
                    if entry.service != folder.name or entry.key.stem != body_path.name:
                        raise DamagedEntry(f"{path} describes {entry.service} {entry.key}, which belongs elsewhere")
                except (DamagedEntry, ValueError, OSError) as exc:
                    yield Problem(path, str(exc), True)
                    continue
                yield entry
        for name in sorted(bodies):
            if not name.startswith("."):
                yield Problem(folder / name, "artefact without its metadata file", True)


def _read_bounded(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def _mkdir_private(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)

