"""configfs-tsm's kernel side on an ordinary directory: mkdir populates the attributes, every write bumps
`generation`, and reading `outblob` asks the test's TEE for a report carrying `inblob`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ATTRIBUTES = ("inblob", "outblob", "auxblob", "generation", "provider", "privlevel", "privlevel_floor")


class FakeConfigfs:
    """Mixed in before a `kbs.guest.evidence.ConfigfsTsm` subclass; `make_outblob` is the TEE."""

    provider_name = ""
    auxblob = b""

    def __init__(self, *args: Any, provider: str | None = None, races: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if provider is not None:
            self.provider_name = provider
        self.races = races  # reads of outblob that see another writer's write
        self.writes: list[tuple[str, bytes]] = []
        self.outblobs: list[bytes] = []

    def make_outblob(self, inblob: bytes) -> bytes:
        raise NotImplementedError

    def _bump(self, entry: Path) -> None:
        gen = entry / "generation"
        gen.write_text(f"{int(gen.read_text()) + 1}\n")

    def _mkdir(self, entry: Path) -> None:
        entry.mkdir()
        for name in ATTRIBUTES:
            (entry / name).write_bytes(b"")
        (entry / "generation").write_text("0\n")
        (entry / "provider").write_text(self.provider_name + "\n")

    def _write(self, path: Path, data: bytes) -> None:
        super()._write(path, data)  # type: ignore[misc]
        self.writes.append((path.name, data))
        self._bump(path.parent)

    def _read(self, path: Path) -> bytes:
        if path.name == "outblob":
            if self.races:
                self.races -= 1
                self._bump(path.parent)
            outblob = self.make_outblob((path.parent / "inblob").read_bytes())
            self.outblobs.append(outblob)
            return outblob
        if path.name == "auxblob":
            return self.auxblob
        return path.read_bytes()

    def _rmdir(self, entry: Path) -> None:
        for child in entry.iterdir():  # configfs drops attributes with the directory; a real fs does not
            child.unlink()
        entry.rmdir()

    def inblob_writes(self) -> int:
        return sum(1 for name, _ in self.writes if name == "inblob")
