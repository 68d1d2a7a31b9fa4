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


def private_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def test_load_from_file_raw_or_hex_and_credential_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = private_file(tmp_path / "raw", bytes(range(32)))
    hexed = private_file(tmp_path / "hex", (bytes(range(32)).hex() + "\n").encode())
    sealed = load_kek(raw, None).seal(b"v", "c")
    assert load_kek(hexed, None).unseal(sealed, "c") == b"v"
    creds = tmp_path / "creds"
    creds.mkdir()
    private_file(creds / "kbs-kek", bytes(32))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(KekError):  # the credential wins over the file, and it is another key
        load_kek(raw, "kbs-kek").unseal(sealed, "c")
    assert load_kek(raw, "other-name").unseal(sealed, "c") == b"v"  # absent credential: the file


def test_bad_keks_refused(tmp_path: Path) -> None:
    short = private_file(tmp_path / "short", bytes(16))
    with pytest.raises(KekError, match="must be 32 bytes"):
        load_kek(short, None)
    with pytest.raises(KekError, match="cannot read"):
        load_kek(tmp_path / "missing", None)
    with pytest.raises(KekError, match=r"no key encryption key: no systemd credential \(\$CREDENTIALS_DIRECTORY "
                                       r"is not set\) and kek_file is not set"):
        load_kek(None, "kbs-kek")


def test_kek_readable_by_others_refused(tmp_path: Path) -> None:
    """A KEK file others can read is refused, naming the file and the mode."""
    path = private_file(tmp_path / "kek", bytes(32))
    load_kek(path, None)
    for mode in (0o640, 0o604, 0o620):
        path.chmod(mode)
        with pytest.raises(KekError, match=f"readable or writable by others \\(mode {mode:04o}\\)"):
            load_kek(path, None)


def test_dev_kek_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "state" / "kek"
    create_kek_file(path)
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_bytes()) == 32
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    first = path.read_bytes()
    create_kek_file(path)  # a second replica starting at the same time keeps the first key
    assert path.read_bytes() == first and os.access(path, os.R_OK)
    assert sorted(p.name for p in path.parent.iterdir()) == ["kek"]  # no temporary files left


def test_replicas_creating_the_kek_at_once_agree(tmp_path: Path) -> None:
    """Dev-mode replicas racing to create the KEK: no FileExistsError, every one reads the same key."""
    import multiprocessing

    path = tmp_path / "state" / "kek"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(create_kek_file, [path] * 16)
    key = path.read_bytes()
    assert len(key) == 32 and load_kek(path, None).unseal(Kek(key).seal(b"v", "c"), "c") == b"v"
