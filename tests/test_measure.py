"""`kbs measure snp`: expected SEV-SNP launch measurements from a synthetic OVMF image.

No OVMF binary ships with the repository, so the tests build the smallest image that
sev-snp-measure accepts: one page ending in the OVMF footer GUID table (SEV-ES reset block,
SEV hash table, SEV metadata pointer) with an "ASEV" metadata block at its start.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sevsnpmeasure import guest  # type: ignore[import-untyped]
from sevsnpmeasure.sev_mode import SevMode  # type: ignore[import-untyped]
from sevsnpmeasure.vcpu_types import CPU_SIGS  # type: ignore[import-untyped]

from kbs.errors import UsageError
from kbs.evidence.snp.measure import REFERENCE_SET, add_measure_parser, run_measure, snp_launch_measurement
from kbs.policy.refvalues import ReferenceValues

PAGE = 4096
FOOTER_GUID = "96b582de-1fb2-45f7-baea-a366c55a082d"
HASH_TABLE_RV_GUID = "7255371f-3a3b-4b04-927b-1da6efa8d454"
RESET_BLOCK_GUID = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
METADATA_GUID = "dc886566-984a-4798-a75e-5585a7bf67cc"
SEC_MEM, SECRETS, CPUID, KERNEL_HASHES = 1, 2, 3, 0x10
# Laid out like OvmfPkg/AmdSev below 9 MiB (sizes shrunk; the package hashes them as zero pages).
SECTIONS = [(0x800000, 0x1000, SEC_MEM), (0x80D000, 0x1000, SECRETS), (0x80E000, 0x1000, CPUID),
            (0x80F000, 0x1000, KERNEL_HASHES)]
# Regression pin: sev-snp-measure 0.0.13 on build_ovmf() with 1 EPYC-v4 vCPU, QEMU, features 0x1.
PINNED = ("2eebec7c0e171880403fc34016f5e1c8160e59137033d5ad"
          "0cc439bb8c6e6f6e3f3853b1efd98ab9957e155e684a2065")


def _entry(guid: str, data: bytes) -> bytes:
    # Footer-table entries are parsed backwards: data, then u16 size (data + 18), then GUID.
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def build_ovmf(*, metadata: bool = True, sections: list[tuple[int, int, int]] = SECTIONS,
               hash_table: bool = True, reset_eip: int | None = 0x80B004, signature: bytes = b"ASEV",
               fill: int = 0xCC) -> bytes:
    image = bytearray([fill]) * PAGE
    items = b"".join(struct.pack("<III", *s) for s in sections)
    block = signature + struct.pack("<III", 16 + len(items), 1, len(sections)) + items
    image[:len(block)] = block
    entries = b""
    if hash_table:
        entries += _entry(HASH_TABLE_RV_GUID, struct.pack("<II", 0x80FC00, 0x400))
    if reset_eip is not None:
        entries += _entry(RESET_BLOCK_GUID, struct.pack("<I", reset_eip))
    if metadata:
        entries += _entry(METADATA_GUID, struct.pack("<I", PAGE))  # offset of the block from the end
    table = entries + struct.pack("<H", len(entries) + 18) + uuid.UUID(FOOTER_GUID).bytes_le
    image[PAGE - 32 - len(table):PAGE - 32] = table  # the last 32 bytes hold the reset vector
    return bytes(image)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {"ovmf": tmp_path / "OVMF.fd", "kernel": tmp_path / "vmlinuz", "initrd": tmp_path / "initrd.img"}
    out["ovmf"].write_bytes(build_ovmf())
    out["kernel"].write_bytes(b"MZ synthetic kernel" * 64)
    out["initrd"].write_bytes(b"070701 synthetic initrd" * 64)
    return out


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def flip(tmp_path: Path, source: Path, offset: int = 100) -> Path:
    data = bytearray(source.read_bytes())
    data[offset] ^= 1
    return write(tmp_path, source.name + ".flipped", bytes(data))


def test_returns_48_bytes_and_matches_pin(files: dict[str, Path]) -> None:
    digest = snp_launch_measurement(files["ovmf"], vcpus=1, vcpu_type="EPYC-v4")
    assert isinstance(digest, bytes) and len(digest) == 48
    assert digest.hex() == PINNED
    full = snp_launch_measurement(files["ovmf"], vcpus=4, vcpu_type="EPYC-Milan", kernel=files["kernel"],
                                  initrd=files["initrd"], append="console=ttyS0")
    assert len(full) == 48 and full != digest


@pytest.mark.parametrize("extra", [
    [],
    ["kernel", "initrd", "--append", "console=ttyS0 root=/dev/vda1"],
    ["--vmm-type", "ec2", "--guest-features", "0x21"],
])
def test_matches_the_package_cli(files: dict[str, Path], extra: list[str]) -> None:
    argv = [a if a not in files else f"--{a}={files[a]}" for a in extra]
    cmd = [sys.executable, "-m", "sevsnpmeasure.cli", "--mode", "snp", "--vcpus", "3",
           "--vcpu-type", "EPYC-Genoa", "--ovmf", str(files["ovmf"]), *argv]
    printed = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout.strip()
    opts = dict(zip(argv[::2], argv[1::2], strict=True)) if "--vmm-type" in argv else {}
    digest = snp_launch_measurement(
        files["ovmf"], vcpus=3, vcpu_type="EPYC-Genoa",
        kernel=files["kernel"] if "kernel" in extra else None,
        initrd=files["initrd"] if "initrd" in extra else None,
        append="console=ttyS0 root=/dev/vda1" if "--append" in extra else None,
        vmm_type=opts.get("--vmm-type", "QEMU"), guest_features=int(opts.get("--guest-features", "0x1"), 0))
    assert printed == digest.hex()


def test_every_input_changes_the_measurement(files: dict[str, Path], tmp_path: Path) -> None:
    base: dict[str, Any] = {"vcpus": 2, "vcpu_type": "EPYC-v4", "kernel": files["kernel"],
                            "initrd": files["initrd"], "append": "console=ttyS0"}
    variants: list[dict[str, Any]] = [
        {},
        {"kernel": flip(tmp_path, files["kernel"])},
        {"initrd": flip(tmp_path, files["initrd"])},
        {"append": "console=ttyS1"},
        {"vcpus": 3},
        {"vcpu_type": "EPYC-Milan"},
        {"guest_features": 0x3},
        {"vmm_type": "gce"},
        {"initrd": None},
        {"append": None},
    ]
    digests = {snp_launch_measurement(files["ovmf"], **{**base, **v}) for v in variants}
    digests.add(snp_launch_measurement(flip(tmp_path, files["ovmf"], 2000), **base))
    assert len(digests) == len(variants) + 1


def test_kernel_needs_the_kernel_hashes_page(files: dict[str, Path], tmp_path: Path) -> None:
    no_page = write(tmp_path, "nohash.fd", build_ovmf(sections=SECTIONS[:3]))
    assert len(snp_launch_measurement(no_page, vcpus=1, vcpu_type="EPYC-v4")) == 48
    with pytest.raises(UsageError, match="no SNP kernel-hashes page"):
        snp_launch_measurement(no_page, vcpus=1, vcpu_type="EPYC-v4", kernel=files["kernel"])
    # The package refuses too, so the check only turns its RuntimeError into a clear message.
    with pytest.raises(RuntimeError, match="SNP_KERNEL_HASHES"):
        guest.calc_launch_digest(SevMode.SEV_SNP, 1, CPU_SIGS["EPYC-v4"], str(no_page), str(files["kernel"]),
                                 None, None, 0x1)
    no_table = write(tmp_path, "notable.fd", build_ovmf(hash_table=False))
    with pytest.raises(UsageError, match="no SEV hash table entry"):
        snp_launch_measurement(no_table, vcpus=1, vcpu_type="EPYC-v4", kernel=files["kernel"])


@pytest.mark.parametrize(("name", "message"), [
    ("ovmf", r"cannot read OVMF .*missing: No such file or directory"),
    ("kernel", r"cannot read kernel .*missing: No such file or directory"),
    ("initrd", r"cannot read initrd .*missing: No such file or directory"),
])
def test_missing_files(files: dict[str, Path], tmp_path: Path, name: str, message: str) -> None:
    paths = {**files, name: tmp_path / "missing"}
    with pytest.raises(UsageError, match=message):
        snp_launch_measurement(paths["ovmf"], vcpus=1, vcpu_type="EPYC-v4", kernel=paths["kernel"],
                               initrd=paths["initrd"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"vcpu_type": "EPYC-v9"}, r"unknown vCPU type 'EPYC-v9'; known: EPYC, .*EPYC-v4"),
    ({"vmm_type": "xen"}, r"unknown VMM type 'xen'; known: QEMU, ec2, gce"),
    ({"vcpus": 0}, "vCPU count must be 1 to 4096, not 0"),
    ({"guest_features": 1 << 64}, "do not fit the 64-bit SEV_FEATURES"),
    ({"append": "quiet"}, "only together with a kernel"),
])
def test_bad_parameters(files: dict[str, Path], kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"vcpus": 1, "vcpu_type": "EPYC-v4", **kwargs}
    with pytest.raises(UsageError, match=message):
        snp_launch_measurement(files["ovmf"], **args)


@pytest.mark.parametrize(("image", "message"), [
    (b"\xcc" * 5000, "5000 bytes, not a firmware image"),
    (b"", "0 bytes, not a firmware image"),
    (b"\xcc" * PAGE, "carries no SEV metadata"),  # no footer table at all
    (build_ovmf(metadata=False), "carries no SEV metadata"),
    (build_ovmf(signature=b"XSEV"), "malformed SEV metadata table: Wrong SEV metadata signature"),
    (build_ovmf(sections=[(0x800000, 0x1000, 7)]), "malformed SEV metadata table: 7 is not a valid"),
    (build_ovmf(sections=[(0x800000, 0x1800, SEC_MEM)]), "section SNP_SEC_MEM of 6144 bytes"),
    (build_ovmf(reset_eip=None), "no SEV-ES reset block"),
    (build_ovmf(reset_eip=0), "can only start 1 vCPU"),
])
def test_unusable_firmware(tmp_path: Path, image: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        snp_launch_measurement(write(tmp_path, "bad.fd", image), vcpus=2, vcpu_type="EPYC-v4")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="kbs")
    add_measure_parser(parser.add_subparsers(dest="command", required=True))
    code = run_measure(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_measure_hex_and_reference_values(capsys: pytest.CaptureFixture[str],
                                              files: dict[str, Path]) -> None:
    argv = ["measure", "snp", "--ovmf", str(files["ovmf"]), "--vcpus", "2", "--vcpu-type", "EPYC-v4",
            "--kernel", str(files["kernel"]), "--initrd", str(files["initrd"]), "--append", "quiet",
            "--guest-features", "0x1"]
    expected = snp_launch_measurement(files["ovmf"], vcpus=2, vcpu_type="EPYC-v4", kernel=files["kernel"],
                                      initrd=files["initrd"], append="quiet").hex()
    assert run(capsys, *argv) == (0, expected + "\n", "")
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0 and err == ""
    assert json.loads(out) == {REFERENCE_SET: {"values": [expected]}}
    refs = ReferenceValues.load(out.encode())
    ref = refs.get(REFERENCE_SET)
    assert ref is not None and ref.values == (expected,)


def test_run_measure_usage_error_is_one_line(capsys: pytest.CaptureFixture[str], files: dict[str, Path],
                                             tmp_path: Path) -> None:
    code, out, err = run(capsys, "measure", "snp", "--ovmf", str(files["ovmf"]), "--vcpus", "1",
                         "--vcpu-type", "EPYC-v4", "--kernel", str(tmp_path / "nope"), "--json")
    assert code == 2 and out == ""
    assert err.startswith("kbs: error: cannot read kernel ") and err.count("\n") == 1


def test_measure_is_a_kbs_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kbs.cli import main

    assert main(["measure", "snp", "--ovmf", str(tmp_path / "missing.fd"), "--vcpus", "1",
                 "--vcpu-type", "EPYC-v4"]) == 2
    assert "OVMF" in capsys.readouterr().err
