"""Expected SEV-SNP launch measurements, for reference-value sets.

The digest is computed by the `sev-snp-measure` package (virtee); this module only checks
the inputs first, so that an operator's mistake becomes one clear `UsageError` instead of
an assertion or traceback from deep inside the package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sevsnpmeasure import guest, vcpu_types  # type: ignore[import-untyped]
from sevsnpmeasure.ovmf import OVMF, SectionType  # type: ignore[import-untyped]
from sevsnpmeasure.sev_mode import SevMode  # type: ignore[import-untyped]
from sevsnpmeasure.vmm_types import VMMType  # type: ignore[import-untyped]

from kbs.errors import UsageError

REFERENCE_SET = "snp_launch_measurement"
MEASUREMENT_SIZE = 48
# sev-snp-measure's own CLI default: SEV_FEATURES with only SNPActive set.
DEFAULT_GUEST_FEATURES = 0x1
# KVM's x86 vCPU limit; a typo beyond it would otherwise hash VMSA pages for minutes.
MAX_VCPUS = 4096
PAGE = 4096
# The package places the firmware so that it ends at 4 GiB.
MAX_OVMF_SIZE = 1 << 32
EXIT_OK, EXIT_USAGE = 0, 2


def _vmm_types() -> dict[str, object]:
    return {name.lower(): member for name, member in VMMType.__members__.items()}


def _check_readable(path: Path, what: str) -> int:
    """The file's size; opened once so a missing or unreadable file is reported by name."""
    try:
        with path.open("rb") as fh:
            return os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _check_ovmf(path: Path, *, vcpus: int, kernel_hashes: bool) -> None:
    """Reject firmware the package would mis-measure or crash on (its checks are asserts)."""
    size = _check_readable(path, "OVMF")
    if size == 0 or size % PAGE or size > MAX_OVMF_SIZE:
        raise UsageError(f"OVMF {path} is {size} bytes, not a firmware image "
                         "(whole 4 KiB pages, at most 4 GiB)")
    try:
        ovmf = OVMF(str(path))
        sections = [(desc.section_type(), desc.size) for desc in ovmf.metadata_items()]
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"OVMF {path} has a malformed SEV metadata table: {exc}") from exc
    if not sections:
        raise UsageError(f"OVMF {path} carries no SEV metadata, so it cannot launch an SEV-SNP guest "
                         "(is it a build with SEV support?)")
    try:
        reset_eip = ovmf.sev_es_reset_eip()
    except RuntimeError as exc:
        raise UsageError(f"OVMF {path} has no SEV-ES reset block, so SEV-SNP vCPUs cannot start") from exc
    if reset_eip == 0 and vcpus > 1:
        raise UsageError(f"OVMF {path} gives no SEV-ES AP reset address, so it can only start 1 vCPU")
    for kind, length in sections:
        if length % PAGE or (kind is SectionType.SNP_KERNEL_HASHES and length != PAGE):
            raise UsageError(f"OVMF {path} has a malformed SEV metadata section {kind.name} "
                             f"of {length} bytes")
    if kernel_hashes:
        if all(kind is not SectionType.SNP_KERNEL_HASHES for kind, _ in sections):
            raise UsageError(f"OVMF {path} has no SNP kernel-hashes page, so it cannot measure a kernel, "
                             "initrd or command line (use an OvmfPkg/AmdSev build, or measure without them)")
        if not ovmf.is_sev_hashes_table_supported():
            raise UsageError(f"OVMF {path} has an SNP kernel-hashes page but no SEV hash table entry")


def snp_launch_measurement(ovmf: Path, *, vcpus: int, vcpu_type: str, kernel: Path | None = None,
                           initrd: Path | None = None, append: str | None = None, vmm_type: str = "QEMU",
                           guest_features: int = DEFAULT_GUEST_FEATURES) -> bytes:
    """The 48-byte SEV-SNP launch digest (MEASUREMENT) of a guest started from these inputs.

    kernel/initrd/append are measured only as QEMU does with kernel-hashes=on: pass them
    exactly when the guest is launched that way, or the value will never match.
    """
    if vcpu_type not in vcpu_types.CPU_SIGS:
        raise UsageError(f"unknown vCPU type {vcpu_type!r}; known: {', '.join(vcpu_types.CPU_SIGS)}")
    vmm = _vmm_types().get(vmm_type.lower())
    if vmm is None:
        raise UsageError(f"unknown VMM type {vmm_type!r}; known: {', '.join(VMMType.__members__)}")
    if not 1 <= vcpus <= MAX_VCPUS:
        raise UsageError(f"vCPU count must be 1 to {MAX_VCPUS}, not {vcpus}")
    # SEV_FEATURES is a 64-bit VMSA field; ctypes would silently truncate anything wider.
    if not 0 <= guest_features < 1 << 64:
        raise UsageError(f"guest features {guest_features:#x} do not fit the 64-bit SEV_FEATURES field")
    if kernel is None and (initrd is not None or append is not None):
        raise UsageError("an initrd or command line is measured only together with a kernel")
    for path, what in ((kernel, "kernel"), (initrd, "initrd")):
        if path is not None:
            _check_readable(path, what)
    _check_ovmf(ovmf, vcpus=vcpus, kernel_hashes=kernel is not None)
    try:
        digest: bytes = guest.calc_launch_digest(
            mode=SevMode.SEV_SNP, vcpus=vcpus, vcpu_sig=vcpu_types.CPU_SIGS[vcpu_type],
            ovmf_file=str(ovmf), kernel=None if kernel is None else str(kernel),
            initrd=None if initrd is None else str(initrd), append=append,
            guest_features=guest_features, vmm_type=vmm)
    except OSError as exc:  # a file changed between the checks and the hashing
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror or exc}") from exc
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"cannot compute the SNP measurement of {ovmf}: {exc}") from exc
    if len(digest) != MEASUREMENT_SIZE:
        raise UsageError(f"sev-snp-measure returned {len(digest)} bytes, "
                         f"not a {MEASUREMENT_SIZE}-byte digest")
    return digest


def _any_base_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (use 0x for hex)") from exc


def add_measure_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`kbs measure snp ...`; dispatch to run_measure when args.command == "measure"."""
    measure = subparsers.add_parser("measure",
                                    help="compute expected launch measurements for reference values")
    kinds = measure.add_subparsers(dest="kind", required=True)
    snp = kinds.add_parser("snp", help="expected SEV-SNP launch measurement (48 bytes, hex) of a guest")
    snp.add_argument("--ovmf", type=Path, required=True, metavar="FILE", help="OVMF firmware image")
    snp.add_argument("--vcpus", type=int, required=True, metavar="N", help="number of guest vCPUs")
    snp.add_argument("--vcpu-type", required=True, metavar="NAME",
                     help=f"QEMU CPU model of the guest ({', '.join(vcpu_types.CPU_SIGS)})")
    snp.add_argument("--kernel", type=Path, metavar="FILE",
                     help="kernel, as measured with QEMU kernel-hashes=on")
    snp.add_argument("--initrd", type=Path, metavar="FILE", help="initrd (needs --kernel)")
    snp.add_argument("--append", metavar="CMDLINE", help="kernel command line (needs --kernel)")
    snp.add_argument("--vmm-type", default="QEMU", metavar="NAME",
                     help=f"VMM that launches the guest ({', '.join(VMMType.__members__)}; default QEMU)")
    snp.add_argument("--guest-features", type=_any_base_int, default=DEFAULT_GUEST_FEATURES, metavar="VALUE",
                     help=f"VMSA SEV_FEATURES of the guest (default {DEFAULT_GUEST_FEATURES:#x})")
    snp.add_argument("--json", action="store_true",
                     help=f'print a reference-values document {{"{REFERENCE_SET}": {{"values": [hex]}}}}')


def run_measure(args: argparse.Namespace) -> int:
    """Print the measurement (hex, or a reference-values JSON document); 2 on a usage error."""
    try:
        digest = snp_launch_measurement(
            args.ovmf, vcpus=args.vcpus, vcpu_type=args.vcpu_type, kernel=args.kernel, initrd=args.initrd,
            append=args.append, vmm_type=args.vmm_type, guest_features=args.guest_features)
    except UsageError as exc:
        print(f"kbs: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({REFERENCE_SET: {"values": [digest.hex()]}}) if args.json else digest.hex())
    return EXIT_OK
