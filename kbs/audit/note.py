"""C2SP signed notes (Ed25519) and tlog-checkpoint bodies: the log's signed tree heads.

A signed note is UTF-8 text ending in a newline, a blank line, then one line per signature:

    — <key name> <base64(key id (4 bytes) || Ed25519 signature over the text)>

where the key id is the first four bytes of SHA-256(name || "\\n" || 0x01 || public key) and a
verifier key is written `<name>+<key id hex>+<base64(0x01 || public key)>`.  A checkpoint is a note
whose text is `<origin>\\n<tree size>\\n<base64 root hash>\\n` plus optional extension lines, signed
here by a key named as the origin.  Verifiers ignore signatures by keys they do not know, so
witnesses can add theirs.  These are the formats golang.org/x/mod/sumdb/note and the tlog tools read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space
MAX_NOTE_BYTES = 1 << 20
_NAME = re.compile(r"[^\s+]{1,256}")  # no whitespace, no '+'


class NoteError(ValueError):
    """A note, key or checkpoint that is malformed or does not verify; the message says which."""


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public).digest()[:4]


@dataclass(frozen=True)
class NoteVerifier:
    name: str
    key: Ed25519PublicKey

    @property
    def id(self) -> bytes:
        return key_id(self.name, _public_raw(self.key))

    def vkey(self) -> str:
        """The verifier key in signed-note form, as `kbs log key` prints it."""
        encoded = base64.b64encode(bytes([ED25519]) + _public_raw(self.key)).decode()
        return f"{self.name}+{self.id.hex()}+{encoded}"

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        name, key_hash, encoded = _split_key(vkey.strip(), 3, "verifier key")
        raw = _b64(encoded, "verifier key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("verifier key: not an Ed25519 key (type 0x01, 32 bytes)")
        if key_id(name, raw[1:]).hex() != key_hash:
            raise NoteError(f"verifier key: key id {key_hash} does not match the key and name {name!r}")
        return cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))


@dataclass(frozen=True)
class NoteSigner:
    name: str
    key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise NoteError(f"key name {self.name!r}: 1 to 256 characters, no spaces and no '+'")

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.key.public_key())

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """`PRIVATE+KEY+<name>+<key id>+<base64(0x01 || seed)>` (the Go note package's signer key)."""
        if not skey.startswith("PRIVATE+KEY+"):
            raise NoteError("signer key: must start with PRIVATE+KEY+")
        name, key_hash, encoded = _split_key(skey.removeprefix("PRIVATE+KEY+"), 3, "signer key")
        raw = _b64(encoded, "signer key")
        if len(raw) != 33 or raw[0] != ED25519:
            raise NoteError("signer key: not an Ed25519 seed (type 0x01, 32 bytes)")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier.id.hex() != key_hash:
            raise NoteError("signer key: key id does not match the key")
        return signer

    def sign(self, text: str) -> str:
        """The note: the text, a blank line and this key's signature line."""
        check_text(text)
        signature = self.key.sign(text.encode())
        blob = base64.b64encode(self.verifier.id + signature).decode()
        return f"{text}\n{SIGNATURE_PREFIX}{self.name} {blob}\n"


def _split_key(value: str, parts: int, what: str) -> tuple[str, str, str]:
    fields = value.split("+", parts - 1)  # the base64 may hold '+'
    if len(fields) != parts or not _NAME.fullmatch(fields[0]) or not re.fullmatch(r"[0-9a-f]{8}", fields[1]):
        raise NoteError(f"{what}: expected <name>+<8 hex digits>+<base64>")
    return fields[0], fields[1], fields[2]


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"{what}: not base64") from exc


def check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text or text.startswith("\n"):
        raise NoteError("note text must end with a newline and have no blank line")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("note text must not hold control characters")


def open_note(message: str, verifiers: Iterable[NoteVerifier]) -> tuple[str, list[str]]:
    """(text, names of the known keys whose signatures verified).  At least one must; a signature that
    claims a known key (name and key id) and does not verify fails the whole note."""
    if len(message.encode()) > MAX_NOTE_BYTES:
        raise NoteError("note is too large")
    split = message.rfind("\n\n")
    if split < 0 or not message.endswith("\n"):
        raise NoteError("not a signed note: no blank line before the signatures, or no final newline")
    text, block = message[:split + 1], message[split + 2:]
    check_text(text)
    known = {(v.name, v.id): v for v in verifiers}
    verified = []
    for line in block.splitlines():
        if not line.startswith(SIGNATURE_PREFIX) or " " not in line[len(SIGNATURE_PREFIX):]:
            raise NoteError(f"malformed signature line {line[:80]!r}")
        name, encoded = line[len(SIGNATURE_PREFIX):].rsplit(" ", 1)
        raw = _b64(encoded, "signature")
        if len(raw) < 5:
            raise NoteError("signature too short")
        verifier = known.get((name, raw[:4]))
        if verifier is None:
            continue  # another party's (a witness's cosignature): not ours to judge
        try:
            verifier.key.verify(raw[4:], text.encode())
        except InvalidSignature:
            raise NoteError(f"signature by {name} does not verify") from None
        verified.append(name)
    if not verified:
        raise NoteError("no signature by a known key (" + ", ".join(sorted({n for n, _ in known})) + ")")
    return text, verified


# -- checkpoints -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or not lines[0]:
            raise NoteError("a checkpoint is origin, size and root hash, one per line")
        origin, size_text, root_text, *extensions = lines[:-1]
        if not re.fullmatch(r"0|[1-9][0-9]{0,19}", size_text):
            raise NoteError(f"checkpoint size {size_text[:30]!r} is not a decimal number")
        root = _b64(root_text, "checkpoint root")
        if len(root) != 32:
            raise NoteError("checkpoint root hash is not 32 bytes")
        return cls(origin, int(size_text), root, tuple(extensions))


def open_checkpoint(message: str, verifier: NoteVerifier, others: Sequence[NoteVerifier] = ()) -> Checkpoint:
    """A checkpoint signed by the log's key, whose origin must be that key's name."""
    text, names = open_note(message, [verifier, *others])
    if verifier.name not in names:
        raise NoteError(f"the checkpoint is not signed by the log's key {verifier.name}")
    checkpoint = Checkpoint.parse(text)
    if checkpoint.origin != verifier.name:
        raise NoteError(f"checkpoint origin {checkpoint.origin!r} is not the log's {verifier.name!r}")
    return checkpoint
