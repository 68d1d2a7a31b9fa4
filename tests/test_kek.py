"""The key encryption key: sealing, where it is loaded from, and refusals that name the problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kbs.keys.kek import Kek, KekError, create_kek_file, load_kek


def test_seal_binds_context_and_key() -> None:
    kek = Kek(bytes(range(32)))
    sealed = kek.seal(b"secret", "resource:a/b/c")
    assert b"secret" not in sealed and kek.unseal(sealed, "resource:a/b/c") == b"secret"
    assert kek.seal(b"secret", "x") != kek.seal(b"secret", "x")  # fresh nonce each time
    with pytest.raises(KekError, match="does not open"):
        kek.unseal(sealed, "resource:a/b/d")  # moved to another record
    with pytest.raises(KekError, match="does not open"):
        Kek(bytes(32)).unseal(sealed, "resource:a/b/c")
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(KekError, match="altered"):
        kek.unseal(bytes(tampered), "resource:a/b/c")
    with pytest.raises(KekError, match="known format"):
        kek.unseal(b"junk", "x")
    assert "secret" not in repr(kek) and bytes(range(32)).hex() not in repr(kek)


def test_load_from_file_raw_or_hex_and_credential_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(bytes(range(32)))
    hexed = tmp_path / "hex"
    hexed.write_text(bytes(range(32)).hex() + "\n")
    sealed = load_kek(raw, None).seal(b"v", "c")
    assert load_kek(hexed, None).unseal(sealed, "c") == b"v"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "kbs-kek").write_bytes(bytes(32))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(KekError):  # the credential wins over the file, and it is another key
        load_kek(raw, "kbs-kek").unseal(sealed, "c")
    assert load_kek(raw, "other-name").unseal(sealed, "c") == b"v"  # absent credential: the file


def test_bad_keks_refused(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(bytes(16))
    with pytest.raises(KekError, match="must be 32 bytes"):
        load_kek(short, None)
    with pytest.raises(KekError, match="cannot read"):
        load_kek(tmp_path / "missing", None)
    with pytest.raises(KekError, match="no key encryption key configured"):
        load_kek(None, None)


def test_dev_kek_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "kek"
    create_kek_file(path)
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_bytes()) == 32
    with pytest.raises(FileExistsError):
        create_kek_file(path)  # never overwrite a key that sealed data
    assert os.access(path, os.R_OK)
