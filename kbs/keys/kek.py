"""The key encryption key: what seals resources and the broker's own keys at rest.

It comes from a file or a systemd credential, never from the database, so a copy of the
database alone reveals nothing.  Sealing is AES-256-GCM with a random 96-bit nonce and the
record's identity as associated data, so a sealed blob cannot be moved to another record.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kbs.errors import KbsError
from kbs.files import write_atomic

FORMAT = b"kbs1"  # prefix of every sealed blob, so the format can change later
KEK_SIZE = 32


class KekError(KbsError):
    check = "kek"


class Kek:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEK_SIZE:
            raise KekError(f"the key encryption key must be {KEK_SIZE} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._key = key

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose (HKDF-SHA256), so the KEK itself is used only for sealing."""
        return HKDF(hashes.SHA256(), 32, salt=None, info=f"kbs/{purpose}/v1".encode()).derive(self._key)

    def __repr__(self) -> str:
        return "Kek(<sealed>)"  # never print key material

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return FORMAT + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def reseal(self, sealed: bytes, context: str, new: Kek) -> bytes:
        """A value sealed under this KEK, sealed under `new` instead (same context); KekError if it does not open."""
        return new.seal(self.unseal(sealed, context), context)

    def unseal(self, sealed: bytes, context: str) -> bytes:
        if not sealed.startswith(FORMAT) or len(sealed) < len(FORMAT) + 12 + 16:
            raise KekError(f"sealed value for {context} is not in a known format")
        nonce = sealed[len(FORMAT):len(FORMAT) + 12]
        try:
            return self._aead.decrypt(nonce, sealed[len(FORMAT) + 12:], context.encode())
        except InvalidTag:
            raise KekError(f"sealed value for {context} does not open with this key encryption key "
                           "(wrong KEK, or the value was altered)") from None


def load_kek(path: Path | None, credential: str | None) -> Kek:
    """From a systemd credential ($CREDENTIALS_DIRECTORY/<name>) if given and present, else a file.

    The file holds 32 raw bytes or 64 hex characters.
    """
    source: Path | None = None
    if credential and os.environ.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(os.environ["CREDENTIALS_DIRECTORY"]) / credential
        source = candidate if candidate.exists() else None
    source = source or path
    if source is None:
        where = (f"the systemd credential {credential!r} is not in $CREDENTIALS_DIRECTORY "
                 f"({os.environ['CREDENTIALS_DIRECTORY']})" if credential and os.environ.get("CREDENTIALS_DIRECTORY")
                 else "no systemd credential ($CREDENTIALS_DIRECTORY is not set)")
        raise KekError(f"no key encryption key: {where} and kek_file is not set")
    try:
        mode = source.stat().st_mode
        raw = source.read_bytes()
    except OSError as exc:
        raise KekError(f"cannot read the key encryption key {source}: {exc.strerror}") from exc
    if mode & 0o077:
        raise KekError(f"the key encryption key {source} is readable or writable by others (mode "
                       f"{mode & 0o777:04o}); chmod 600 it, or pass it as a systemd credential")
    text = raw.strip()
    if len(text) == 2 * KEK_SIZE:
        try:
            return Kek(bytes.fromhex(text.decode()))
        except (ValueError, UnicodeDecodeError):
            pass
    return Kek(raw)


def create_kek_file(path: Path) -> None:
    """Dev mode: a fresh random KEK, readable by the owner only.  Replicas starting together agree
    on one: whoever links first wins, the others keep the winner's file."""
    create_exclusive(path, secrets.token_bytes(KEK_SIZE))


def create_exclusive(path: Path, content: bytes) -> bool:
    """Write `content` to `path` (0600) atomically unless `path` exists; True if this call created it.

    Written to a temporary file first and hard-linked into place, so a concurrent reader never
    sees a partial file and a concurrent writer never overwrites it.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return write_atomic(path, content, exclusive=True)
