"""TDX claims (Trustee's names, so its policies work unchanged, plus our decoded fields) and the AR4SI
trust vector a verified TD earns.

Trustee's claims (deps/verifier/src/tdx/claims.rs, intel_dcap/claims.rs), reproduced exactly:

    quote.header  {version, att_key_type, tee_type, reserved, vendor_id, user_data}   hex of the raw
                  little-endian bytes ("0400", "0200", "81000000", ...)
    quote.body    {tcb_svn, mr_seam, mrsigner_seam, seam_attributes, td_attributes, xfam, mr_td,
                   mr_config_id, mr_owner, mr_owner_config, rtmr_0..rtmr_3, report_data}  hex;
                  TD 1.5 bodies add tee_tcb_svn2 and mr_servicetd
    quote.type, quote.size      v5 only: hex of the body descriptor's u16 type and u32 size
    td_attributes {debug, key_locker, perfmon, protection_keys, septve_disable}  booleans
    report_data, init_data      hex of REPORT_DATA and MRCONFIGID
    uefi_event_logs             the CC event log's events (eventlog.py), when the guest sent one
    platform_instance_id        from the PCK certificate (platform-CA PCKs only), its 16 bytes in
                                reverse order as Trustee prints them (our `pck` keeps them as they are)
    tcb_status, advisory_ids, collateral_expiration_status, tcb_date, ... from the TCB evaluation

Ours, under names Trustee does not use: `quote_version`, `body_type`, `tee_tcb_svn` (16 ints),
`tee_tcb_svn2` (16 ints or null), `mr_service_td` (hex or null), `td_attributes_bits` (every known
TD_ATTRIBUTES bit, the raw value and the unknown bits), `xfam` (every XSAVE feature bit, raw and
unknown bits), `fmspc`, `pce_id`, `pck` (what the trust layer read from the PCK certificate) and
`eventlog` (events, banks, and whether the replay equals the quote's RTMRs).

The TCB and PCK values come from the Intel trust layer as plain mappings (`TcbInput`, `PckInput`),
so this module needs none of its classes.  `collateral_expiration_status` is "0" whenever a TCB
status is given: the trust layer refuses collateral outside its validity window, so a status implies
current collateral (Trustee's default policy requires "0").  Dates may be datetimes and the SGX type a
number or QVL's spelling: they are printed as Trustee prints them ("2024-03-13T00:00:00Z",
"Scalable with Integrity").  `report_data`/`init_data` are the quote's fields, or a shorter form of
them the caller bound (an init-data digest zero-padded in MRCONFIGID), checked against the quote.

`tdx_claims` does not check the event log against the RTMRs: the verifier must call
`eventlog.check_rtmrs` first (Trustee refuses a log that does not replay).  The claims say what the
replay gave in `eventlog.rtmrs_match_quote`, so claims made offline cannot pass for checked ones.
Trustee's own sample pair (tdx_quote_4.dat with CCEL_data) does *not* replay: the log is from
another boot (RTMR0 2dc7…, the quote e940…); Trustee's claims test never replays it.

Trust vector (`tdx_trust_vector`), for claims of a quote whose signature, QE and PCK chain verified:

    instance-identity  2   the quote is signed by a QE that Intel's PCK chain certifies
    executables        0   no claim: whether MRTD/RTMRs are acceptable is the policy's decision
    configuration      2   32 (warning) if a TD-under-debug bit is set (DEBUG and the other TUD bits
                           0..7: the host can read or profile the TD), the TD is MIGRATABLE (a migration
                           TD may move its state), or any TD_ATTRIBUTES bit we do not know is set;
                           96 if the claims carry no TD_ATTRIBUTES at all
    hardware           by TCB status: UpToDate 2; SWHardeningNeeded, ConfigurationNeeded,
                           ConfigurationAndSWHardeningNeeded 32 (warning: known issues that need
                           software or configuration mitigations); OutOfDate,
                           OutOfDateConfigurationNeeded 32 (warning: a TCB recovery exists and is not
                           applied; AR4SI's 32 is "known security vulnerabilities"); TDRelaunchAdvised
                           (+ConfigurationNeeded) 32 (the platform is current but the TD started on an
                           older TDX module); Revoked 96 (the trust layer refuses it first); no status
                           or one we do not know 97 (fail closed: unrecognised, as Trustee's default
                           policy leaves hardware at 97 unless the status is UpToDate)

So a DEBUG TD verifies, its claims say `td_attributes.debug: true`, and its vector is a warning:
never affirming.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, Required, TypedDict

from kbs.errors import EvidenceError
from kbs.evidence.base import AFFIRMING, CONTRAINDICATED, WARNING, trust_vector
from kbs.evidence.tdx.eventlog import EventLog, replay_rtmrs, uefi_event_logs

UNRECOGNIZED = 97  # AR4SI hardware: "does not recognize an Attester's hardware or firmware, but it should"


class TdxQuoteFields(Protocol):
    """The fields of a parsed quote these claims read (kbs.native.TdxQuote has them all)."""

    @property
    def version(self) -> int: ...
    @property
    def att_key_type(self) -> int: ...
    @property
    def tee_type(self) -> int: ...
    @property
    def header_reserved(self) -> bytes: ...
    @property
    def qe_vendor_id(self) -> bytes: ...
    @property
    def user_data(self) -> bytes: ...
    @property
    def body_type(self) -> int: ...
    @property
    def body_size(self) -> int: ...
    @property
    def tee_tcb_svn(self) -> bytes: ...
    @property
    def mr_seam(self) -> bytes: ...
    @property
    def mr_signer_seam(self) -> bytes: ...
    @property
    def seam_attributes(self) -> bytes: ...
    @property
    def td_attributes(self) -> int: ...
    @property
    def xfam(self) -> int: ...
    @property
    def mr_td(self) -> bytes: ...
    @property
    def mr_config_id(self) -> bytes: ...
    @property
    def mr_owner(self) -> bytes: ...
    @property
    def mr_owner_config(self) -> bytes: ...
    @property
    def rtmrs(self) -> Sequence[bytes]: ...
    @property
    def report_data(self) -> bytes: ...
    @property
    def tee_tcb_svn2(self) -> bytes | None: ...
    @property
    def mr_service_td(self) -> bytes | None: ...


class TcbInput(TypedDict, total=False):
    """The TCB evaluation (Intel QVL's algorithm), as plain values; names as Trustee's claims use them."""

    status: Required[str]  # PCS spelling: UpToDate, SWHardeningNeeded, OutOfDate, TDRelaunchAdvised, ...
    advisory_ids: Sequence[str]  # INTEL-SA-xxxxx
    tcb_date: str | datetime  # the matching TCB level's tcbDate (claims: RFC 3339, "…Z")
    tcb_eval_num: int  # tcbEvaluationDataNumber of the TCB info used
    status_current: str  # TD 1.5: the status for TEE_TCB_SVN2 (the running module)
    advisory_ids_current: Sequence[str]
    tcb_date_current: str | datetime
    earliest_issue_date: str | datetime  # over the collateral used
    latest_issue_date: str | datetime
    earliest_expiration_date: str | datetime
    pck_crl_num: int
    root_ca_crl_num: int


class PckInput(TypedDict, total=False):
    """What the trust layer read from the PCK certificate's SGX extension, as plain values."""

    fmspc: str  # hex, 6 bytes
    pce_id: str  # hex, 2 bytes
    platform_instance_id: str | None  # hex of the certificate's 16-byte OCTET STRING; platform-CA PCKs only
    ppid: str  # hex (Trustee calls it platform_provider_id)
    sgx_type: str | int  # 0/"Standard", 1/"Scalable", 2/"ScalableWithIntegrity" (Trustee: "Scalable with Integrity")
    cpu_svn: str  # hex, 16 bytes
    pce_svn: int
    tcb_components: Sequence[int]  # the 16 SGX TCB component SVNs
    dynamic_platform: bool | None
    cached_keys: bool | None
    smt_enabled: bool | None


# TD_ATTRIBUTES (Linux arch/x86/include/asm/shared/tdx.h; Trustee decodes five of them).
TD_ATTRIBUTE_BITS = {"debug": 0, "hgs_plus_prof": 4, "perf_prof": 5, "pmt_prof": 6, "icssd": 16, "lass": 27,
                     "septve_disable": 28, "migratable": 29, "protection_keys": 30, "key_locker": 31,
                     "tpa": 62, "perfmon": 63}
TRUSTEE_TD_ATTRIBUTES = ("debug", "key_locker", "perfmon", "protection_keys", "septve_disable")
TUD_MASK = 0xFF  # bits 7:0, "TD under debug": the host may inspect or profile the TD
_KNOWN_TD_ATTRIBUTES = sum(1 << bit for bit in TD_ATTRIBUTE_BITS.values())

# XFAM: the XSAVE feature bits the TD may use (XCR0 | IA32_XSS layout).
XFAM_BITS = {"x87": 0, "sse": 1, "avx": 2, "mpx_bndregs": 3, "mpx_bndcsr": 4, "avx512_opmask": 5,
             "avx512_zmm_hi256": 6, "avx512_hi16_zmm": 7, "pt": 8, "pkru": 9, "pasid": 10, "cet_user": 11,
             "cet_supervisor": 12, "hdc": 13, "uintr": 14, "lbr": 15, "hwp": 16, "amx_tilecfg": 17,
             "amx_tiledata": 18, "apx": 19}
_KNOWN_XFAM = sum(1 << bit for bit in XFAM_BITS.values())

UP_TO_DATE = "UpToDate"
WARNING_STATUSES = frozenset({"SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                              "OutOfDate", "OutOfDateConfigurationNeeded", "TDRelaunchAdvised",
                              "TDRelaunchAdvisedConfigurationNeeded"})
REVOKED = "Revoked"

_TCB_PASSTHROUGH = {"tcb_date": "tcb_date", "tcb_eval_num": "tcb_eval_num", "tcb_date_current": "tcb_date_current",
                    "earliest_issue_date": "earliest_issue_date", "latest_issue_date": "latest_issue_date",
                    "earliest_expiration_date": "earliest_expiration_date", "pck_crl_num": "pck_crl_num",
                    "root_ca_crl_num": "root_ca_crl_num"}


def _le(value: int, size: int) -> str:
    return value.to_bytes(size, "little").hex()


def _bound_hex(given: str | None, field: bytes, name: str, check: str) -> str:
    """The value reported for `report_data`/`init_data`: the quote's field, or a caller's shorter form
    of it (e.g. the 32-byte init-data digest held in the 48-byte MRCONFIGID), which must match it."""
    if given is None:
        return field.hex()
    try:
        value = bytes.fromhex(given)
    except ValueError:
        raise ValueError(f"{name} must be hex, got {given[:20]!r}") from None
    if len(value) > len(field) or (value + bytes(len(field)))[:len(field)] != field:
        raise EvidenceError(f"{name} {value.hex()[:16]}… is not what the quote holds ({field.hex()[:16]}…)",
                            check=check)
    return value.hex()


def _bits(value: int, names: Mapping[str, int], known: int) -> dict[str, Any]:
    return {"raw": f"{value:#018x}", **{name: bool(value >> bit & 1) for name, bit in names.items()},
            "unknown_bits": f"{value & ~known & (2**64 - 1):#x}"}


def tdx_claims(quote: TdxQuoteFields, *, eventlog: EventLog | None = None, tcb: Mapping[str, Any] | None = None,
               pck: Mapping[str, Any] | None = None, init_data_hex: str | None = None,
               report_data_hex: str | None = None) -> dict[str, Any]:
    """Claims for a quote that passed every check (see the module docstring for names and choices).

    `tcb` is a TcbInput, `pck` a PckInput.  `init_data_hex`/`report_data_hex` replace the quote's
    MRCONFIGID/REPORT_DATA in `init_data`/`report_data` by a form of them the caller bound (a digest
    shorter than the field, zero-padded in it); anything else is EvidenceError binding.*."""
    if quote.version not in (4, 5):
        raise ValueError(f"a TDX quote is version 4 or 5, got {quote.version}")
    rtmrs = [bytes(r) for r in quote.rtmrs]
    header = {"version": _le(quote.version, 2), "att_key_type": _le(quote.att_key_type, 2),
              "tee_type": _le(quote.tee_type, 4), "reserved": quote.header_reserved.hex(),
              "vendor_id": quote.qe_vendor_id.hex(), "user_data": quote.user_data.hex()}
    body = {"tcb_svn": quote.tee_tcb_svn.hex(), "mr_seam": quote.mr_seam.hex(),
            "mrsigner_seam": quote.mr_signer_seam.hex(), "seam_attributes": quote.seam_attributes.hex(),
            "td_attributes": _le(quote.td_attributes, 8), "xfam": _le(quote.xfam, 8), "mr_td": quote.mr_td.hex(),
            "mr_config_id": quote.mr_config_id.hex(), "mr_owner": quote.mr_owner.hex(),
            "mr_owner_config": quote.mr_owner_config.hex(),
            **{f"rtmr_{i}": rtmr.hex() for i, rtmr in enumerate(rtmrs)},
            "report_data": quote.report_data.hex()}
    if quote.tee_tcb_svn2 is not None and quote.mr_service_td is not None:
        body["tee_tcb_svn2"] = quote.tee_tcb_svn2.hex()
        body["mr_servicetd"] = quote.mr_service_td.hex()
    quote_claim: dict[str, Any] = {"header": header, "body": body}
    if quote.version == 5:
        quote_claim["type"] = _le(quote.body_type, 2)
        quote_claim["size"] = _le(quote.body_size, 4)

    claims: dict[str, Any] = {
        "quote": quote_claim,
        "td_attributes": {name: bool(quote.td_attributes >> TD_ATTRIBUTE_BITS[name] & 1)
                          for name in TRUSTEE_TD_ATTRIBUTES},
        "report_data": _bound_hex(report_data_hex, quote.report_data, "report_data", "binding.report_data"),
        "init_data": _bound_hex(init_data_hex, quote.mr_config_id, "init_data", "binding.init_data"),
    }
    if eventlog is not None:
        claims["uefi_event_logs"] = uefi_event_logs(eventlog)
    if pck is not None and pck.get("platform_instance_id"):
        claims["platform_instance_id"] = _trustee_platform_instance_id(str(pck["platform_instance_id"]))
    if tcb is not None:
        claims.update(_tcb_claims(tcb))
    if pck is not None:
        claims.update(_pck_claims(pck))

    # Ours.
    claims.update({
        "quote_version": quote.version,
        "body_type": quote.body_type,
        "tee_tcb_svn": list(quote.tee_tcb_svn),
        "tee_tcb_svn2": list(quote.tee_tcb_svn2) if quote.tee_tcb_svn2 is not None else None,
        "mr_service_td": quote.mr_service_td.hex() if quote.mr_service_td is not None else None,
        "td_attributes_bits": _bits(quote.td_attributes, TD_ATTRIBUTE_BITS, _KNOWN_TD_ATTRIBUTES),
        "xfam": _bits(quote.xfam, XFAM_BITS, _KNOWN_XFAM),
    })
    if eventlog is not None:
        claims["eventlog"] = {"events": len(eventlog.events), "algorithms": eventlog.algorithm_names,
                              "rtmrs_match_quote": list(replay_rtmrs(eventlog)) == rtmrs}
    return claims


def _trustee_platform_instance_id(certificate_hex: str) -> str:
    """Trustee reports the PCK's PlatformInstanceID with its 16 bytes reversed (it reads them as a
    little-endian u128 and prints it big-endian); `pck.platform_instance_id` keeps them as they are."""
    raw = bytes.fromhex(certificate_hex)
    if len(raw) != 16:
        raise ValueError(f"a PlatformInstanceID is 16 bytes, got {len(raw)}")
    return raw[::-1].hex()


def _tcb_claims(tcb: Mapping[str, Any]) -> dict[str, Any]:
    status = tcb.get("status")
    if not isinstance(status, str):
        raise ValueError("tcb must hold the TCB status string under 'status'")
    out: dict[str, Any] = {"tcb_status": status, "advisory_ids": [str(a) for a in tcb.get("advisory_ids", ())],
                           "collateral_expiration_status": "0"}
    if "status_current" in tcb:
        out["tcb_status_current"] = str(tcb["status_current"])
        out["advisory_ids_current"] = [str(a) for a in tcb.get("advisory_ids_current", ())]
    out.update({claim: _rfc3339(tcb[key]) for key, claim in _TCB_PASSTHROUGH.items() if key in tcb})
    return out


def _rfc3339(value: Any) -> Any:
    """Dates as Trustee prints them (RFC 3339 in UTC, "Z"); other values unchanged."""
    if isinstance(value, datetime):
        utc = value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return utc.isoformat().replace("+00:00", "Z")
    return value


_SGX_TYPES = {0: "Standard", 1: "Scalable", 2: "Scalable with Integrity", "Standard": "Standard",
              "Scalable": "Scalable", "ScalableWithIntegrity": "Scalable with Integrity",
              "Scalable with Integrity": "Scalable with Integrity"}


def _pck_claims(pck: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Trustee's names for what its QVL supplemental data carries.
    if "ppid" in pck:
        out["platform_provider_id"] = str(pck["ppid"])
    if "sgx_type" in pck:
        sgx_type = pck["sgx_type"]
        out["sgx_type"] = _SGX_TYPES.get(sgx_type, f"Unknown ({sgx_type})")
        if out["sgx_type"] != "Standard":
            for key in ("dynamic_platform", "cached_keys", "smt_enabled"):
                if pck.get(key) is not None:
                    out[f"is_{key}"] = bool(pck[key])
    # Ours.
    if "fmspc" in pck:
        out["fmspc"] = str(pck["fmspc"]).lower()
    if "pce_id" in pck:
        out["pce_id"] = str(pck["pce_id"]).lower()
    out["pck"] = {key: (list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value)
                  for key, value in pck.items()}
    return out


def _td_attributes(claims: Mapping[str, Any]) -> int | None:
    """TD_ATTRIBUTES from Trustee's `quote.body.td_attributes` (8 bytes, little-endian hex)."""
    try:
        raw = bytes.fromhex(claims["quote"]["body"]["td_attributes"])
    except (KeyError, TypeError, ValueError):
        return None
    return int.from_bytes(raw, "little") if len(raw) == 8 else None


def configuration_exposed(td_attributes: int) -> list[str]:
    """Why a TD's configuration is not affirming: the attribute bits that expose it (empty: none)."""
    reasons = [name for name, bit in TD_ATTRIBUTE_BITS.items() if bit < 8 and td_attributes >> bit & 1]
    reasons += [f"bit {bit}" for bit in range(8) if td_attributes >> bit & 1 and
                bit not in TD_ATTRIBUTE_BITS.values()]
    if td_attributes >> TD_ATTRIBUTE_BITS["migratable"] & 1:
        reasons.append("migratable")
    unknown = td_attributes & ~_KNOWN_TD_ATTRIBUTES & ~TUD_MASK & (2**64 - 1)
    reasons += [f"bit {bit}" for bit in range(8, 64) if unknown >> bit & 1]
    return reasons


def hardware_value(status: object) -> int:
    if status == UP_TO_DATE:
        return AFFIRMING
    if status in WARNING_STATUSES:
        return WARNING
    if status == REVOKED:
        return CONTRAINDICATED
    return UNRECOGNIZED


def tdx_trust_vector(claims: Mapping[str, Any]) -> dict[str, int]:
    """What a quote that passed every check proves (choices in the module docstring)."""
    attributes = _td_attributes(claims)
    if attributes is None:
        configuration = CONTRAINDICATED
    else:
        configuration = WARNING if configuration_exposed(attributes) else AFFIRMING
    return trust_vector(instance_identity=AFFIRMING, configuration=configuration,
                        hardware=hardware_value(claims.get("tcb_status")))
