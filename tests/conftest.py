"""Shared fixtures: the real vectors (read in place through KBS_VECTORS) and a synthetic AMD PKI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

from tests.amd_synth import SyntheticAmd
from tests.postgres import PostgresServer, postgres_server

# CI runs derandomized (reproducible, never decided by chance); local runs explore.
settings.register_profile("ci", derandomize=True, deadline=None, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent


def vectors_dir() -> Path:
    return Path(os.environ.get("KBS_VECTORS", REPO.parent / "shared" / "vectors")).resolve()


def vector_file(*parts: str) -> Path:
    """A file under the vectors directory; the test is skipped (saying which) when it is absent."""
    path = vectors_dir().joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"vector {'/'.join(parts)} not found under KBS_VECTORS={vectors_dir()}")
    return path


def snp_vector_names() -> list[str]:
    root = vectors_dir() / "snp"
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/report.bin"))


@dataclass(frozen=True)
class SnpVector:
    name: str
    path: Path
    report: bytes
    expected: dict[str, object]

    @property
    def vek_files(self) -> list[Path]:
        return sorted([*self.path.glob("*.der"), *self.path.glob("*.pem")])

    @property
    def vmpls(self) -> frozenset[int]:
        """The report's own VMPL: tests of other checks allow it (the AWS report is from VMPL 1)."""
        return frozenset({int.from_bytes(self.report[0x30:0x34], "little")})

    @property
    def chain_file(self) -> Path:
        return vectors_dir() / "snp" / str(self.expected["verify_chain_file"])


def load_snp_vector(name: str) -> SnpVector:
    path = vectors_dir() / "snp" / name
    if not (path / "report.bin").is_file():
        pytest.skip(f"SNP vector {name} not found under KBS_VECTORS={vectors_dir()}")
    return SnpVector(name, path, (path / "report.bin").read_bytes(),
                     json.loads((path / "expected.json").read_text()))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "snp_vector" in metafunc.fixturenames:
        names = snp_vector_names()
        if not names:
            metafunc.parametrize("snp_vector", [pytest.param(None, marks=pytest.mark.skip(
                reason=f"no SNP vectors under KBS_VECTORS={vectors_dir()}"))])
        else:
            metafunc.parametrize("snp_vector", [load_snp_vector(n) for n in names], ids=names)


@pytest.fixture(scope="session")
def synth_milan() -> SyntheticAmd:
    return SyntheticAmd("Milan")


@pytest.fixture(scope="module")
def pki() -> SyntheticAmd:
    """A Milan PKI of the module's own (modules that start brokers trust its ARK)."""
    return SyntheticAmd("Milan")


@pytest.fixture(scope="session")
def synth_turin() -> SyntheticAmd:
    return SyntheticAmd("Turin")


@pytest.fixture(scope="session")
def synth_genoa() -> SyntheticAmd:
    return SyntheticAmd("Genoa")


@pytest.fixture(scope="session")
def synth_milan_vlek() -> SyntheticAmd:
    return SyntheticAmd("Milan", kind="VLEK")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL (tests/postgres.py): one throwaway cluster per test process, started on first use."""
    with ExitStack() as stack:
        try:
            server = stack.enter_context(postgres_server())
        except RuntimeError as exc:  # binaries missing, initdb or pg_ctl failing: say so, never skip
            pytest.fail(str(exc), pytrace=False)
        yield server
