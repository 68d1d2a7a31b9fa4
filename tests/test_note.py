"""Signed notes and checkpoints against the formats' own published examples (golang.org/x/mod/sumdb/note,
C2SP signed-note): a note we sign must be byte for byte the one other implementations produce and accept."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kbs.audit.note import Checkpoint, NoteError, NoteSigner, NoteVerifier, open_checkpoint, open_note

GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdng"
           "otpRZb6KE6RyyBwJnAM=\n")
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"  # C2SP signed-note's example


def test_the_go_reference_note_is_reproduced_and_opens() -> None:
    signer = NoteSigner.from_skey(GO_SKEY)
    assert signer.verifier.vkey() == GO_VKEY
    assert signer.sign(GO_TEXT) == GO_NOTE  # Ed25519 is deterministic: byte for byte
    verifier = NoteVerifier.from_vkey(GO_VKEY)
    assert open_note(GO_NOTE, [verifier]) == (GO_TEXT, ["PeterNeumann"])
    assert NoteVerifier.from_vkey(SPEC_VKEY).vkey() == SPEC_VKEY


def test_altered_notes_and_keys_are_refused() -> None:
    verifier = NoteVerifier.from_vkey(GO_VKEY)
    for bad in (GO_NOTE.replace("cryptography", "cryptographY"), GO_NOTE.replace("x08go", "x08gp"),
                GO_NOTE.replace("\n\n", "\n"), GO_NOTE[:-1], GO_NOTE.replace("\u2014", "-")):
        with pytest.raises(NoteError):
            open_note(bad, [verifier])
    other = NoteSigner("PeterNeumann", Ed25519PrivateKey.generate())  # same name, another key: another id
    with pytest.raises(NoteError, match="no signature by a known key"):
        open_note(GO_NOTE, [other.verifier])
    for vkey in (GO_VKEY.replace("c74f20a3", "c74f20a4"), GO_VKEY + "AA", "PeterNeumann+c74f20a3",
                 GO_VKEY.replace("ARpc", "AhpC"), GO_VKEY.replace("PeterNeumann", "Peter Neumann")):
        with pytest.raises(NoteError):
            NoteVerifier.from_vkey(vkey)
    for text in ("no newline", "a\n\nb\n", "\n", "tab\tok?\n"):
        with pytest.raises(NoteError):
            other.sign(text)


def test_witness_signatures_are_ignored_and_checkpoints_bind_origin() -> None:
    log = NoteSigner("kbs.example/log", Ed25519PrivateKey.generate())
    witness = NoteSigner("witness.example", Ed25519PrivateKey.generate())
    root = hashlib.sha256(b"").digest()
    text = Checkpoint("kbs.example/log", 0, root).text()
    assert text == f"kbs.example/log\n0\n{base64.b64encode(root).decode()}\n"
    note = log.sign(text)
    cosigned = note + witness.sign(text).split("\n\n", 1)[1]
    assert open_checkpoint(cosigned, log.verifier) == Checkpoint("kbs.example/log", 0, root)
    assert open_note(cosigned, [log.verifier, witness.verifier])[1] == ["kbs.example/log", "witness.example"]
    impostor = NoteSigner("kbs.example/log", Ed25519PrivateKey.generate())
    with pytest.raises(NoteError):
        open_checkpoint(impostor.sign(text), log.verifier)
    elsewhere = NoteSigner("kbs.example/log", log.key).sign(Checkpoint("other/log", 5, root).text())
    with pytest.raises(NoteError, match="origin 'other/log' is not the log's"):
        open_checkpoint(elsewhere, log.verifier)
    for body in ("o\n01\n" + base64.b64encode(root).decode() + "\n", "o\n1\nAAAA\n", "o\n1\n", "\n1\nx\n"):
        with pytest.raises(NoteError):
            Checkpoint.parse(body)
    with_ext = Checkpoint("o", 3, root, ("ext one",))
    assert Checkpoint.parse(with_ext.text()) == with_ext
