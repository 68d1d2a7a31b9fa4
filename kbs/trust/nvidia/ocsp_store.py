"""A directory of stored OCSP responses, for brokers that must not ask NVIDIA (reference/gpu.md §5).

Layout: any regular file directly in the directory (not in subdirectories; names starting with '.'
are skipped) holding one OCSP response, as DER or as base64 of DER (the form go-nvattest-tools keeps,
``*_base64encoded_ocsp_response.dat``).  File names carry no meaning: each response is indexed by the
CertIDs it answers for (issuer name hash, issuer key hash and serial, under its own hash algorithm), so
a certificate finds every stored response about it, whatever the file is called.  A name such as
``<issuer CN>-<serial hex>.der`` helps people, not the broker.

Nothing here is trusted: a response is verified (issuer or delegated responder, CertID, window) where it
is used.  A file that does not parse as a successful OCSP response is skipped with a warning.  The
directory is read again when it changes (a file added, removed or renamed changes its mtime), and
reading is bounded: at most `MAX_FILES` files of at most `MAX_FILE` bytes each and `MAX_BYTES` in all
(the index holds every response), else the whole directory is refused (`ocsp.directory`), since a
silently partial index would look like a missing response.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.x509 import ocsp

from kbs.errors import CollateralUnavailable, KbsError
from kbs.trust import revocation
from kbs.trust.revocation import CertId, cert_id_of
from kbs.trust.x509 import Certificate

MAX_FILES = 4096
MAX_FILE = 2 * revocation.MAX_OCSP_SIZE  # base64 of the largest response accepted
MAX_BYTES = 16 * 1024 * 1024  # about 12,000 of NVIDIA's 1.3 KB responses
log = logging.getLogger("kbs.nvidia-ocsp")


@dataclass(frozen=True)
class StoredResponse:
    source: str  # "file:<path>"
    der: bytes


def decode_response(data: bytes) -> bytes:
    """The DER of a stored response: DER as it is, or base64 text of it.  ValueError if neither."""
    if data[:1] == b"\x30":
        return data
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("neither DER nor base64 of DER") from exc


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise CollateralUnavailable(f"OCSP directory file {path} is larger than {MAX_FILE} bytes; an OCSP response "
                                    "is about 1.3 KB", check="ocsp.directory")
    return data


class OcspDirectory:
    """The responses stored in `path` (module docstring), indexed by CertID."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: int | None = None
        self._index: dict[CertId, list[StoredResponse]] = {}
        self._hashes: frozenset[str] = frozenset()

    def responses(self, cert: Certificate, issuer: Certificate) -> list[StoredResponse]:
        """Every stored response whose CertID names `cert` issued by `issuer` (unverified)."""
        index, hashes = self._current()
        found: list[StoredResponse] = []
        for name in sorted(hashes):
            found += index.get(cert_id_of(cert, issuer, name), [])
        return found

    def _current(self) -> tuple[dict[CertId, list[StoredResponse]], frozenset[str]]:
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError as exc:
            raise CollateralUnavailable(f"OCSP directory {self.path} cannot be read: {exc.strerror}",
                                        check="ocsp.directory") from exc
        with self._lock:
            if stamp != self._stamp:
                self._index = self._scan()
                self._hashes = frozenset(cert_id.hash for cert_id in self._index)
                self._stamp = stamp
            return self._index, self._hashes

    def _scan(self) -> dict[CertId, list[StoredResponse]]:
        try:
            names = sorted(entry.name for entry in os.scandir(self.path) if entry.is_file() and
                           not entry.name.startswith("."))
        except OSError as exc:
            raise CollateralUnavailable(f"OCSP directory {self.path} cannot be read: {exc.strerror}",
                                        check="ocsp.directory") from exc
        if len(names) > MAX_FILES:
            raise CollateralUnavailable(f"OCSP directory {self.path} holds {len(names)} files, more than the "
                                        f"{MAX_FILES} read", check="ocsp.directory")
        index: dict[CertId, list[StoredResponse]] = {}
        total = 0
        for name in names:
            path = self.path / name
            try:
                data = _read(path)
                total += len(data)
                if total > MAX_BYTES:
                    raise CollateralUnavailable(f"OCSP directory {self.path} holds more than {MAX_BYTES} bytes of "
                                                "files", check="ocsp.directory")
                der = decode_response(data)
                ids = revocation.response_cert_ids(_successful(der))
            except (OSError, ValueError, KbsError) as exc:
                if isinstance(exc, CollateralUnavailable):
                    raise
                log.warning("OCSP directory file %s is skipped: not an OCSP response (%s)", path, exc)
                continue
            for cert_id in ids:
                index.setdefault(cert_id, []).append(StoredResponse(f"file:{path}", der))
        return index


def _successful(der: bytes) -> ocsp.OCSPResponse:
    loaded = revocation.load_ocsp_response(der)
    if loaded.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ValueError(f"the responder answered {loaded.response_status.name}")
    return loaded
