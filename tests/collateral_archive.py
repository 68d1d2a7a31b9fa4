"""Tampering with a `kbs collateral export` archive, for the tests of `import`."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

MANIFEST = "kbs-collateral/manifest.json"


def edit_member(archive: Path, out: Path, needle: bytes, edit: Callable[[bytes], bytes], *,
                fix_manifest: bool = True) -> None:
    """A copy of `archive` with `edit` applied to the one member holding `needle`; with `fix_manifest` the
    manifest's SHA-256 is made to match (so only the artefact's own check is left to catch it)."""
    members: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        for info in tar:
            handle = tar.extractfile(info)
            assert handle is not None
            members[info.name] = handle.read()
    [name] = [n for n, data in members.items() if needle in data and n != MANIFEST]
    members[name] = data = edit(members[name])
    if fix_manifest:
        manifest = json.loads(members[MANIFEST])
        for item in manifest["items"]:
            if f"kbs-collateral/{item['file']}" == name:
                item["sha256"] = hashlib.sha256(data).hexdigest()
        members[MANIFEST] = json.dumps(manifest).encode()
    with tarfile.open(out, "w") as tar:
        for member, content in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def flip_middle_bit(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0x01
    return bytes(changed)
