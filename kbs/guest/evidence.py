"""Evidence sources for the guest: SEV-SNP and Intel TDX through Linux configfs-tsm, and the sample TEE.

Each source has a `tee` name (what /auth announces) and `evidence(report_data)`, which returns
the JSON value sent as `tee-evidence.primary_evidence`.  `report_data` is the 48-byte binding
digest; SNP zero-pads it to the report's 64 bytes, the sample TEE carries it as is
(reference/trustee-kbs.md §2.1).

configfs-tsm (Linux 6.7+, Documentation/ABI/testing/configfs-tsm): mkdir an entry under
/sys/kernel/config/tsm/report, write `inblob`, read `outblob` (the 1184-byte SNP report, or the TDX
quote) and `auxblob` (SNP: the extended-report certificate table); `generation` counts writes, so
a change between our write and our read means another writer raced us.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from kbs import native
from kbs.errors import KbsError
from kbs.evidence.snp.certtable import CERT_GUIDS, GUID_CRL
from kbs.evidence.snp.coco import FAMILIES, report_to_coco
from kbs.guest import GuestError

log = logging.getLogger("kbs.guest")

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
SNP_PROVIDERS = frozenset({"sev_guest"})  # the sev-guest driver's KBUILD_MODNAME
TDX_PROVIDERS = frozenset({"tdx_guest"})
CCEL_DATA = Path("/sys/firmware/acpi/tables/data/CCEL")  # the TD's CC event log, as firmware left it
SNP_REPORT_DATA_SIZE = 64
_REPORT_DATA_OFFSET = 0x50
_TRANSIENT_ERRNOS = frozenset({errno.EBUSY, errno.EAGAIN, errno.EINTR})


class EvidenceSource(Protocol):
    """A TEE that can produce evidence binding `report_data`."""

    @property
    def tee(self) -> str: ...

    def evidence(self, report_data: bytes) -> Any: ...


class SampleEvidence:
    """Trustee's `sample` TEE: unsigned, for tests and labs; brokers refuse it unless a policy names it."""

    tee = "sample"

    def __init__(self, svn: str = "1") -> None:
        self.svn = svn

    def evidence(self, report_data: bytes) -> dict[str, str]:
        return {"svn": self.svn, "report_data": base64.b64encode(report_data).decode("ascii")}


class ConfigfsTsm:
    """One report through configfs-tsm: create an entry, write `inblob`, read `outblob` (and `auxblob`).

    Subclasses say which providers they drive, how an outblob is checked, and what evidence they
    make of it.  `_mkdir`/`_rmdir`/`_read`/`_write` are the only file-system access, so tests can
    emulate the kernel's side of configfs.
    """

    tee = ""
    providers: frozenset[str] = frozenset()
    technology = ""  # for messages: "SEV-SNP (sev_guest)"
    report_data_size = 64

    def __init__(self, root: Path | str = TSM_REPORT_ROOT, *, privlevel: int | None = None,
                 attempts: int = 3) -> None:
        if privlevel is not None and not 0 <= privlevel <= 3:
            raise GuestError(f"privlevel must be 0..3, got {privlevel}", check="guest.usage")
        self.root = Path(root)
        self.privlevel = privlevel
        self.attempts = max(1, attempts)

    # -- the file-system seam ------------------------------------------------------------------

    def _mkdir(self, entry: Path) -> None:
        entry.mkdir()

    def _rmdir(self, entry: Path) -> None:
        entry.rmdir()  # configfs removes the attribute files with the directory

    def _read(self, path: Path) -> bytes:
        return path.read_bytes()

    def _write(self, path: Path, data: bytes) -> None:
        # No O_CREAT/O_TRUNC: attributes exist already; configfs takes a blob in one write.
        fd = os.open(path, os.O_WRONLY)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, "short write", str(path))
        finally:
            os.close(fd)

    # -- what a subclass decides -------------------------------------------------------------------

    def _carries(self, outblob: bytes, inblob: bytes, where: Path) -> bool:
        """Whether `outblob` is a well-formed report of ours carrying `inblob` (False: read again)."""
        raise NotImplementedError

    # -- the protocol ----------------------------------------------------------------------------

    def _fail(self, what: str, path: Path, exc: OSError, check: str = "guest.tsm") -> GuestError:
        return GuestError(f"{what} {path}: {exc.strerror or exc}", check=check)

    def _open_entry(self) -> Path:
        if not self.root.is_dir():
            raise GuestError(f"configfs-tsm is not available: {self.root} does not exist (needs Linux 6.7+ with "
                             "CONFIG_TSM_REPORTS, the sev-guest or tdx-guest driver, and configfs mounted on "
                             "/sys/kernel/config)", check="guest.tsm.absent")
        entry = self.root / f"kbs-guest-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self._mkdir(entry)
        except PermissionError as exc:
            raise self._fail("cannot create a report entry in", self.root, exc, "guest.tsm.permission") from exc
        except OSError as exc:
            check = "guest.tsm.permission" if exc.errno == errno.EROFS else "guest.tsm"
            raise self._fail("cannot create a report entry in", self.root, exc, check) from exc
        return entry

    def provider(self) -> str | None:
        """The entry's `provider` (e.g. "sev_guest", "tdx_guest"), or None when this kernel shows none."""
        entry = self._open_entry()
        try:
            return self._provider(entry)
        finally:
            self._close_entry(entry)

    def _provider(self, entry: Path) -> str | None:
        path = entry / "provider"
        try:
            return self._read(path).decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail("cannot read", path, exc) from exc

    def _close_entry(self, entry: Path) -> None:
        try:
            self._rmdir(entry)
        except OSError as exc:  # never hides the real outcome; the entry holds no secret
            log.warning("could not remove configfs-tsm entry %s: %s", entry, exc.strerror or exc)

    def _generation(self, entry: Path) -> int:
        path = entry / "generation"
        try:
            return int(self._read(path).strip())
        except OSError as exc:
            raise self._fail("cannot read", path, exc) from exc
        except ValueError as exc:
            raise GuestError(f"{path} is not a number", check="guest.tsm") from exc

    def _request(self, entry: Path, inblob: bytes) -> tuple[bytes, bytes] | None:
        """One write/read round; None when it must be repeated (raced, or the firmware was busy)."""
        try:
            self._write(entry / "inblob", inblob)
            before = self._generation(entry)
            report = self._read(entry / "outblob")
            try:
                aux = self._read(entry / "auxblob")
            except FileNotFoundError:
                aux = b""
            after = self._generation(entry)
        except OSError as exc:
            if exc.errno in _TRANSIENT_ERRNOS:
                log.info("configfs-tsm busy (%s); retrying", exc.strerror)
                return None
            raise self._fail("configfs-tsm request failed at", Path(exc.filename or entry), exc) from exc
        if before != after:
            log.info("configfs-tsm entry %s was rewritten while we read it; retrying", entry)
            return None
        if not self._carries(report, inblob, entry / "outblob"):
            log.info("configfs-tsm report does not carry our report_data; retrying")
            return None
        return report, aux

    def report(self, report_data: bytes) -> tuple[bytes, bytes]:
        """The raw outblob and auxblob (possibly empty) for `report_data_size` bytes of report_data."""
        if len(report_data) != self.report_data_size:
            raise GuestError(f"report_data must be {self.report_data_size} bytes, got {len(report_data)}",
                             check="guest.usage")
        entry = self._open_entry()
        try:
            provider = self._provider(entry)
            if provider is not None and provider not in self.providers:
                raise GuestError(f"{entry / 'provider'} is {provider!r}, not {self.technology}; use --tee to "
                                 "choose another TEE", check="guest.tsm.provider")
            if self.privlevel is not None:
                path = entry / "privlevel"
                try:
                    self._write(path, str(self.privlevel).encode())
                except OSError as exc:
                    raise self._fail("cannot set privlevel in", path, exc) from exc
            for _ in range(self.attempts):
                result = self._request(entry, report_data)
                if result is not None:
                    return result
        finally:
            self._close_entry(entry)
        raise GuestError(f"configfs-tsm under {self.root} kept changing while we read it "
                         f"({self.attempts} attempts)", check="guest.tsm.race")

    def padded(self, report_data: bytes) -> bytes:
        if len(report_data) > self.report_data_size:
            raise GuestError(f"report_data is {len(report_data)} bytes; the report carries at most "
                             f"{self.report_data_size}", check="guest.usage")
        return report_data + bytes(self.report_data_size - len(report_data))


class TsmReport(ConfigfsTsm):
    """SEV-SNP evidence from configfs-tsm, in the CoCo JSON form (`report_to_coco`).

    `family` gives the TCB layout of a version 2 report, which has no CPUID (v3+ ignore it).
    `privlevel`, when set, is written before the request (the VMPL the report is taken at).
    """

    tee = "snp"
    providers = SNP_PROVIDERS
    technology = "SEV-SNP (sev_guest)"
    report_data_size = SNP_REPORT_DATA_SIZE

    def __init__(self, root: Path | str = TSM_REPORT_ROOT, *, family: str = "Milan", privlevel: int | None = None,
                 attempts: int = 3) -> None:
        if family not in FAMILIES:
            raise GuestError(f"SNP family must be one of {', '.join(FAMILIES)}, got {family!r}", check="guest.usage")
        super().__init__(root, privlevel=privlevel, attempts=attempts)
        self.family = family

    def _carries(self, outblob: bytes, inblob: bytes, where: Path) -> bool:
        if len(outblob) != native.SNP_REPORT_SIZE:
            raise GuestError(f"{where} holds {len(outblob)} bytes, not an SNP report "
                             f"({native.SNP_REPORT_SIZE} bytes)", check="guest.tsm.report")
        return outblob[_REPORT_DATA_OFFSET:_REPORT_DATA_OFFSET + SNP_REPORT_DATA_SIZE] == inblob

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        report, aux = self.report(self.padded(report_data))
        try:
            return report_to_coco(report, certificates(aux), family=self.family)
        except KbsError as exc:
            raise GuestError(f"the SNP report from {self.root} cannot be sent: {exc}",
                             check="guest.tsm.report") from exc


class TdxQuote(ConfigfsTsm):
    """TDX evidence from configfs-tsm (provider tdx_guest), in the CoCo TDX form
    `{"cc_eventlog": base64 | null, "quote": base64}`; the event log is the firmware's CCEL, when present."""

    tee = "tdx"
    providers = TDX_PROVIDERS
    technology = "Intel TDX (tdx_guest)"

    def __init__(self, root: Path | str = TSM_REPORT_ROOT, *, eventlog: Path | str | None = CCEL_DATA,
                 attempts: int = 3) -> None:
        super().__init__(root, attempts=attempts)
        self.eventlog = Path(eventlog) if eventlog is not None else None

    def _carries(self, outblob: bytes, inblob: bytes, where: Path) -> bool:
        try:
            quote = native.tdx_parse(outblob)
        except KbsError as exc:
            raise GuestError(f"{where} does not hold a TDX quote: {exc}", check="guest.tsm.report") from exc
        return quote.report_data == inblob

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        quote, _ = self.report(self.padded(report_data))
        log_data = None
        if self.eventlog is not None:
            try:
                log_data = self._read(self.eventlog)
            except FileNotFoundError:
                log_data = None
            except OSError as exc:
                raise self._fail("cannot read the event log", self.eventlog, exc) from exc
        return {"cc_eventlog": base64.b64encode(log_data).decode() if log_data else None,
                "quote": base64.b64encode(quote).decode()}


def certificates(table: bytes) -> list[tuple[str, bytes]]:
    """The certificate table's VCEK/VLEK/ASK/ARK (and CRL) as (sev CertType name, DER) pairs.

    Entries with other GUIDs are not certificates the broker uses, so they are left out.
    """
    if not table.strip(b"\0"):
        return []  # no table: the broker fetches the VCEK from AMD KDS
    try:
        entries = native.snp_certtable_parse(table)
    except KbsError as exc:
        raise GuestError(f"the certificate table (auxblob) is malformed: {exc}", check="guest.tsm.report") from exc
    names = {**CERT_GUIDS, GUID_CRL: "CRL"}
    return [(names[e.guid], table[e.offset:e.offset + e.length]) for e in entries if e.guid in names]
