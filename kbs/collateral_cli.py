"""`kbs collateral list|add|fetch|export|import|prune`: fill, carry and inspect the collateral cache.

The cache is the directory the daemon (the SNP verifier's `cache_dir`) and `kbs verify snp --offline
--cache-dir` read (`kbs.trust.collateral_cache`): AMD KDS artefacts under `kds/`, Intel PCS ones under
`pcs/`, NVIDIA RIMs under `nvidia-rim/` and OCSP responses under `nvidia-ocsp/`.  Exit codes: 0 done;
1 refused (an artefact failed its checks, a fetch failed: nothing of a refused batch was cached); 2 usage
error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbs.errors import CollateralUnavailable, KbsError, MalformedEvidence, UsageError
from kbs.evidence.snp.collateral import candidate_products
from kbs.evidence.snp.report import parse_report
from kbs.files import read_input
from kbs.timearg import rfc3339
from kbs.trust.amd.certs import PRODUCTS, VCEK, VLEK
from kbs.trust.amd.collateral import Sourced, entries_from_files, read_inputs
from kbs.trust.amd.kds import CHIP_ID_SIZE, DEFAULT_BASE_URL, TURIN_HWID_SIZE, KdsClient, TcbVersion
from kbs.trust.cachedir import Entry, iso
from kbs.trust.collateral_cache import Admitted, CheckContext, CollateralCache, default_cache_dir
from kbs.trust.fetch import Fetcher, Request
from kbs.trust.intel import pcs as intel_pcs
from kbs.trust.intel.cache_kinds import IntelInputs, entries_from_inputs, is_intel_certificate, is_intel_crl
from kbs.trust.intel.certs import CA_NAMES, CaType, verify_pck_chain
from kbs.trust.intel.offline import load_collateral_dir
from kbs.trust.nvidia.certs import DeviceChain, verify_device_chain
from kbs.trust.nvidia.ocsp import DEVICE_OCSP_INDICES
from kbs.trust.nvidia.ocsp_kinds import entries_from_inputs as ocsp_entries
from kbs.trust.nvidia.ocsp_kinds import split_ocsp_files
from kbs.trust.nvidia.ocsp_service import DEFAULT_BASE_URL as NVIDIA_OCSP_URL
from kbs.trust.nvidia.ocsp_service import OcspClient
from kbs.trust.nvidia.rim_kinds import split_rim_files
from kbs.trust.x509 import Certificate, load_certificates

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
Run = Callable[[argparse.Namespace], int]
SubParsers = Any  # argparse._SubParsersAction, private in typeshed
_NOT_ASKED = ("kds.rate_limited", "kds.busy", "kds.throttled", "pcs.rate_limited", "pcs.busy", "pcs.throttled",
              "nvidia-ocsp.rate_limited", "nvidia-ocsp.busy", "nvidia-ocsp.throttled")


def _guarded(run: Run) -> Run:
    def func(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except UsageError as exc:
            print(f"kbs: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KbsError as exc:
            print(f"kbs: rejected: {exc.check}: {exc}", file=sys.stderr)
            if getattr(args, "json", False):
                print(json.dumps({"error": {"check": exc.check, "message": str(exc)}}))
            return EXIT_REFUSED
    return func


def add_collateral_parser(commands: SubParsers) -> None:
    collateral = commands.add_parser(
        "collateral", help="fill, carry and inspect the collateral cache (AMD VCEKs, chains, CRLs; Intel TCB info, "
                           "QE identity, CRLs) for offline use",
        description="The cache the broker and `kbs verify --offline` read. Artefacts are checked against the "
                    "pinned vendor roots (or --trust-root) before they are cached.")
    verbs = collateral.add_subparsers(dest="verb", required=True)

    def verb(name: str, help_text: str, run: Run) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = verbs.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                            help=f"the collateral cache (default: the one kbs verify uses, {default_cache_dir()})")
        parser.set_defaults(func=_guarded(run))
        return parser

    def trust(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--trust-root", action="append", default=[], metavar="PEM",
                            help="trust these roots instead of the pinned vendor roots (labs, tests); repeatable")
        parser.add_argument("--at", type=rfc3339, metavar="RFC3339",
                            help="time certificates must be valid at (default: now)")

    listing = verb("list", "show what is cached and until when", _run_list)
    listing.add_argument("--json", action="store_true", help="machine output")

    add = verb("add", "check certificates, CRLs and Intel collateral against the pinned roots and cache them", _run_add)
    add.add_argument("files", nargs="+", metavar="FILE",
                     help="PEM or DER certificates (VCEK, ASK/ASVK, ARK, in any order and files) and CRLs; Intel: a "
                          "collateral directory (the layout of kbs verify tdx --collateral), a dcap-qvl collateral "
                          "bundle, or PCS TCB info / QE identity JSON with their issuer chains (PEM) and CRLs; "
                          "NVIDIA: RIM files named <RIM id>.xml (or .swidtag), e.g. NV_GPU_DRIVER_GH100_550.90.07.xml, "
                          "and OCSP responses (DER or base64) with the PEM chain of the certificates they answer for")
    add.add_argument("--vlek-crl", action="store_true",
                     help="the CRLs given are the VLEK (ASVK) CRLs, /vlek/v1/{P}/crl (default: /vcek/v1/{P}/crl)")
    trust(add)

    fetch = verb("fetch", "fetch from AMD KDS (or Intel PCS) what given chips need, check it, cache it",
                 _run_fetch)
    fetch.add_argument("--report", action="append", default=[], metavar="FILE",
                       help="an SNP report whose chip and REPORTED_TCB to fetch for; repeatable")
    fetch.add_argument("--product", choices=PRODUCTS, help="product of --chip-id, or whose chains and CRLs to fetch")
    fetch.add_argument("--chip-id", metavar="HEX", help="CHIP_ID (128 hex digits; Turin: the first 16 suffice)")
    fetch.add_argument("--tcb", metavar="bl=,tee=,snp=,ucode=[,fmc=]", help="the TCB of --chip-id's VCEK")
    fetch.add_argument("--vlek", action="store_true", help="also the VLEK (ASVK) chains and CRLs")
    fetch.add_argument("--no-crl", action="store_true", help="leave the CRLs out")
    fetch.add_argument("--refresh", action="store_true", help="fetch again what is cached and current")
    fetch.add_argument("--kds-url", default=os.environ.get("KBS_KDS_URL", DEFAULT_BASE_URL), help="KDS base URL")
    fetch.add_argument("--fmspc", action="append", default=[], metavar="HEX",
                       help="Intel: the TDX TCB info of this FMSPC (12 hex digits), with the TD QE identity, the PCK "
                            "CRL and the root CA CRL; repeatable")
    fetch.add_argument("--pck-chain", action="append", default=[], metavar="PEM",
                       help="Intel: a PCK certificate chain (as a TDX quote carries it): what its platform needs")
    fetch.add_argument("--pck-ca", action="append", default=[], choices=sorted(CA_NAMES),
                       help="Intel: the PCK CA whose CRL to fetch (default: the CA of each --pck-chain, else platform)")
    fetch.add_argument("--pcs-url", default=os.environ.get("KBS_PCS_URL", intel_pcs.DEFAULT_BASE_URL),
                       help="Intel PCS (or PCCS) base URL")
    fetch.add_argument("--root-ca-crl-url", default=os.environ.get("KBS_ROOT_CA_CRL_URL", intel_pcs.ROOT_CA_CRL_URL),
                       help="where to fetch the Intel SGX Root CA CRL (a PCCS serves it at "
                            f"{intel_pcs.PCCS_ROOT_CA_CRL_PATH}); it is cached under Intel's URL")
    fetch.add_argument("--nvidia-chain", action="append", default=[], metavar="PEM",
                       help="NVIDIA: a GPU's (or NVSwitch's) device certificate chain: the OCSP responses about its "
                            "BROM, provisioner ICA and identity CA (good for 24 hours); repeatable")
    fetch.add_argument("--nvidia-ocsp-url", default=os.environ.get("KBS_NVIDIA_OCSP_URL", NVIDIA_OCSP_URL),
                       help="NVIDIA's OCSP responder")
    trust(fetch)

    export = verb("export", "write the cache into one archive (tar, with a manifest) to carry elsewhere", _run_export)
    export.add_argument("out", type=Path, metavar="OUT", help="archive to write (.tar, or .tar.gz to compress)")
    export.add_argument("--include-expired", action="store_true", help="also what has expired")

    imp = verb("import", "check every item of an archive, then cache them all (or none)", _run_import)
    imp.add_argument("archive", type=Path, metavar="ARCHIVE", help="an archive written by kbs collateral export")
    trust(imp)

    verb("prune", "remove what has expired, and broken files", _run_prune)


# -- helpers ----------------------------------------------------------------------------------

def _cache(args: argparse.Namespace) -> CollateralCache:
    root: Path = args.cache_dir or default_cache_dir()
    if root.exists() and not root.is_dir():
        raise UsageError(f"cache directory {root} is not a directory")
    return CollateralCache(root)


def _roots(args: argparse.Namespace) -> list[Certificate] | None:
    return [c for path in args.trust_root for c in load_certificates(read_input(path, "trust root"))] or None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _short_key(entry: Entry) -> str:
    """The key with long hex runs (a CHIP_ID) shortened, for tables."""
    path = entry.key.path
    parts = []
    for part in path.split("/"):
        head, sep, query = part.partition("?")
        if len(head) > 24 and all(c in "0123456789abcdef" for c in head):
            head = f"{head[:8]}…{head[-4:]}"
        parts.append(head + sep + query)
    return f"{entry.key.method} {'/'.join(parts)}"


def _until(entry: Entry, now: dt.datetime) -> str:
    if entry.valid_until is None:
        return "never expires"
    return f"until {iso(entry.valid_until)}{' (EXPIRED)' if entry.expired(now) else ''}"


def _report(admitted: Admitted, verb: str) -> None:
    for entry in admitted.written:
        print(f"{verb} {entry.kind} {_short_key(entry)} ({_until(entry, _now())})")
    for entry in admitted.kept:
        print(f"kept {entry.kind} {_short_key(entry)}: the cached copy is newer ({_until(entry, _now())})")
    for entry, why in admitted.skipped:
        print(f"skipped {entry.kind} {_short_key(entry)}: {why}", file=sys.stderr)


# -- verbs ------------------------------------------------------------------------------------

def _entry_json(entry: Entry, cache: CollateralCache, now: dt.datetime) -> dict[str, Any]:
    meta = entry.meta()
    del meta["format"]
    return {**meta, "key": str(entry.key), "expired": entry.expired(now),
            "file": str(cache.dir.paths(entry.service, entry.key)[0])}


def _run_list(args: argparse.Namespace) -> int:
    cache = _cache(args)
    entries, problems = cache.scan()
    now = _now()
    if args.json:
        print(json.dumps({"cache_dir": str(cache.root), "entries": [_entry_json(e, cache, now) for e in entries],
                          "problems": [{"path": str(p.path), "reason": p.reason} for p in problems]}, indent=2))
        return EXIT_OK
    print(f"{cache.root}: {len(entries)} artefact(s)")
    for entry in entries:
        print(f"  {entry.kind:<15} {_until(entry, now):<36} {_short_key(entry)}")
    for problem in problems:
        print(f"  problem: {problem.path}: {problem.reason}")
    return EXIT_OK


def _read_add_inputs(names: list[str]) -> tuple[list[Sourced], IntelInputs]:
    """AMD certificates and CRLs, and Intel artefacts (directories, JSON, Intel certificates and CRLs)."""
    inputs: list[Sourced] = []
    intel = IntelInputs()
    for name in names:
        path = Path(name)
        source = f"file:{path.resolve()}"
        if path.is_dir():
            intel.collaterals.append((source, load_collateral_dir(path)))
            continue
        data = read_input(name, "file")
        if data.lstrip()[:1] == b"{":
            intel.add_json(source, data)
            continue
        for item in read_inputs(path, data):
            if item.certificate is not None and is_intel_certificate(item.certificate):
                intel.certificates.append(item.certificate)
            elif item.crl is not None and is_intel_crl(item.crl):
                intel.crls.append((item.source, item.crl))
            else:
                inputs.append(item)
    return inputs, intel


def _run_add(args: argparse.Namespace) -> int:
    cache = _cache(args)
    roots = _roots(args)
    now = _now()
    rims, files = split_rim_files(args.files, now)
    ocsp_inputs, files = split_ocsp_files(files)
    inputs, intel = _read_add_inputs(files)
    at = args.at or now
    context = CheckContext(at=at, now=now, trust_roots=roots, certificates=[*cache.certificates(), *(roots or ())])
    entries = entries_from_files(inputs, context, now, VLEK if args.vlek_crl else VCEK) if inputs else []
    if intel:
        entries += entries_from_inputs(intel, context.certificates, now)
    entries += rims
    if ocsp_inputs:
        entries += ocsp_entries(ocsp_inputs, [*context.certificates, *cache.certificates(rims)], now)
    if not entries:
        raise UsageError("nothing to cache in the files given: give a VCEK, an ASK/ASVK with its ARK, or a CRL; "
                         "Intel: a collateral directory, a dcap-qvl bundle, TCB info or QE identity JSON, or a CRL; "
                         "NVIDIA: a RIM file named <RIM id>.xml, or an OCSP response with its certificate chain")
    _report(cache.admit(entries, at=at, now=now, trust_roots=roots), "added")
    return EXIT_OK


@dataclass(frozen=True)
class Tcb:
    bl: int
    tee: int
    snp: int
    ucode: int
    fmc: int | None = None


def _parse_tcb(text: str) -> Tcb:
    values: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in ("bl", "tee", "snp", "ucode", "fmc") or name in values \
                or not value.isdigit() or int(value) > 255:
            raise UsageError(f"--tcb {text!r}: each part must be NAME=0..255 with NAME one of bl, tee, snp, "
                             "ucode, fmc, each once")
        values[name] = int(value)
    missing = {"bl", "tee", "snp", "ucode"} - set(values)
    if missing:
        raise UsageError(f"--tcb {text!r} lacks {', '.join(sorted(missing))}")
    return Tcb(**values)


@dataclass(frozen=True)
class _Chip:
    what: str
    chip_id: bytes
    tcbs: dict[str, TcbVersion]  # candidate product -> the TCB its VCEK is issued for


def _targets(args: argparse.Namespace) -> tuple[list[_Chip], set[str], set[str]]:
    """Chips to fetch VCEKs for, products to fetch chains and CRLs for, and the kinds of those."""
    chips: list[_Chip] = []
    products: set[str] = set()
    kinds = {VCEK, VLEK} if args.vlek else {VCEK}
    for name in args.report:
        report = parse_report(read_input(name, "report"))
        if report.signer.signing_key == VLEK:
            kinds.add(VLEK)  # the VLEK itself comes with the evidence; its chain and CRL can be cached
            products.update(candidate_products(report))
            continue
        chips.append(_Chip(name, bytes(report.raw.chip_id),
                           {p: report.tcbs(p)["reported"] for p in candidate_products(report)}))
    if args.chip_id or args.tcb:
        if not (args.chip_id and args.tcb and args.product):
            raise UsageError("--chip-id goes with --tcb and --product")
        try:
            chip = bytes.fromhex(args.chip_id)
        except ValueError as exc:
            raise UsageError(f"--chip-id is not hex: {exc}") from exc
        wanted = TURIN_HWID_SIZE if args.product == "Turin" else CHIP_ID_SIZE
        if len(chip) not in (wanted, CHIP_ID_SIZE):
            raise UsageError(f"--chip-id is {len(chip)} bytes, wanted {CHIP_ID_SIZE}"
                             f"{' (or 8 for Turin)' if args.product == 'Turin' else ''}")
        tcb = _parse_tcb(args.tcb)
        if (args.product == "Turin") != (tcb.fmc is not None):
            raise UsageError("--tcb has fmc= for Turin and only for Turin")
        chips.append(_Chip(f"chip {args.chip_id[:16]}…", chip.ljust(CHIP_ID_SIZE, b"\0"), {args.product: tcb}))
    elif args.product:
        products.add(args.product)
    return chips, products, kinds


@dataclass(frozen=True)
class _IntelTargets:
    fmspcs: tuple[bytes, ...]
    cas: tuple[CaType, ...]


def _intel_targets(args: argparse.Namespace, at: dt.datetime, roots: list[Certificate] | None) -> _IntelTargets:
    """FMSPCs to fetch TCB info for and PCK CAs to fetch CRLs of: given, or read from verified PCK chains."""
    fmspcs = [intel_pcs.parse_fmspc(value) for value in args.fmspc]
    cas: list[CaType] = list(args.pck_ca)
    for name in args.pck_chain:
        chain = verify_pck_chain(read_input(name, "PCK chain"), at, trust_roots=roots)
        fmspcs.append(chain.info.fmspc)
        cas.append(chain.info.ca)
    if (fmspcs or args.pck_ca) and not cas:
        cas.append("platform")
    return _IntelTargets(tuple(dict.fromkeys(fmspcs)), tuple(dict.fromkeys(cas)))


async def _fetch_all(args: argparse.Namespace, cache: CollateralCache, now: dt.datetime,
                     roots: list[Certificate] | None) -> tuple[list[Entry], list[str]]:
    chips, products, kinds = _targets(args)
    intel = _intel_targets(args, args.at or now, roots)
    gpus = [verify_device_chain(read_input(name, "NVIDIA device chain"), args.at or now, trust_roots=roots)
            for name in args.nvidia_chain]
    if not chips and not products and not intel.fmspcs and not intel.cas and not gpus:
        raise UsageError("say what to fetch: --report FILE, --product P --chip-id HEX --tcb ..., or --product P; "
                         "Intel: --fmspc HEX, --pck-chain PEM or --pck-ca CA; NVIDIA: --nvidia-chain PEM")
    fetched: list[Entry] = []
    errors: list[str] = []

    async def fetch_into(fetcher: Fetcher, request: Request) -> None:
        if not args.refresh and cache.current(fetcher.service, request.key, now) is not None:
            print(f"already cached: {request.what} {request.path}")
            return
        result = await fetcher.fetch(request)
        fetched.append(Entry(fetcher.service, request.kind, request.key, result.body, result.source, now,
                             result.valid_until, result.headers))

    if intel.fmspcs or intel.cas:
        await _fetch_intel(args, intel, roots, fetch_into, errors)
    if gpus:
        await _fetch_nvidia_ocsp(args, gpus, fetch_into, errors)
    if not chips and not products:
        return fetched, errors
    # Wait for the client's request limit rather than fail: an operator's batch may exceed the burst.
    async with KdsClient(args.kds_url, token_wait=120.0) as kds:

        async def get(request: Request) -> None:
            await fetch_into(kds.fetcher, request)

        for chip in chips:
            failures = []
            for product, tcb in chip.tcbs.items():
                try:
                    await get(kds.vcek_request(product, chip.chip_id, tcb))
                except CollateralUnavailable as exc:
                    if exc.check in _NOT_ASKED:
                        raise
                    failures.append(f"{product}: {exc}")
                    continue
                products.add(product)
                break
            else:
                errors.append(f"{chip.what}: no VCEK: {'; '.join(failures)}")
        for product in sorted(products):
            for kind in sorted(kinds):
                requests = [kds.cert_chain_request(product, kind)]
                if not args.no_crl:
                    requests.append(kds.crl_request(product, kind))
                for request in requests:
                    try:
                        await get(request)
                    except CollateralUnavailable as exc:
                        if exc.check in _NOT_ASKED:
                            raise
                        errors.append(str(exc))
    return fetched, errors


async def _fetch_intel(args: argparse.Namespace, targets: _IntelTargets, roots: list[Certificate] | None,
                       fetch_into: Callable[[Fetcher, Request], Awaitable[None]], errors: list[str]) -> None:
    async with intel_pcs.PcsClient(args.pcs_url, token_wait=120.0, root_ca_crl_url=args.root_ca_crl_url,
                                   trust_roots=roots) as client:
        requests = [client.tcb_info_request(fmspc) for fmspc in targets.fmspcs]
        if targets.fmspcs:
            requests.append(client.qe_identity_request())
        if not args.no_crl:
            requests += [client.pck_crl_request(ca) for ca in targets.cas]
            requests.append(client.root_ca_crl_request())
        await _fetch_each(client.fetcher, requests, fetch_into, errors)


async def _fetch_each(fetcher: Fetcher, requests: Iterable[Request],
                      fetch_into: Callable[[Fetcher, Request], Awaitable[None]], errors: list[str]) -> None:
    """Fetch each request, collecting what failed; a refusal to be asked at all (rate limits) stops all."""
    for request in requests:
        try:
            await fetch_into(fetcher, request)
        except (CollateralUnavailable, MalformedEvidence) as exc:
            if exc.check in _NOT_ASKED:
                raise
            errors.append(f"{exc.check}: {exc}")


async def _fetch_nvidia_ocsp(args: argparse.Namespace, gpus: list[DeviceChain],
                             fetch_into: Callable[[Fetcher, Request], Awaitable[None]], errors: list[str]) -> None:
    async with OcspClient(args.nvidia_ocsp_url, token_wait=120.0) as client:
        requests = [client.request(gpu.certificates, index) for gpu in gpus for index in DEVICE_OCSP_INDICES]
        unique = {request.key: request for request in requests}  # GPUs of one model share two CAs
        await _fetch_each(client.fetcher, unique.values(), fetch_into, errors)


def _run_fetch(args: argparse.Namespace) -> int:
    cache = _cache(args)
    roots = _roots(args)
    now = _now()
    fetched, errors = asyncio.run(_fetch_all(args, cache, now, roots))
    for error in errors:  # before admitting: a refused batch must not hide why the rest was not fetched
        print(f"kbs: not fetched: {error}", file=sys.stderr)
    if fetched:
        _report(cache.admit(fetched, at=args.at or now, now=now, trust_roots=roots), "fetched")
    return EXIT_REFUSED if errors else EXIT_OK


def _run_export(args: argparse.Namespace) -> int:
    cache = _cache(args)
    out: Path = args.out
    if not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: {out.parent} is not a directory")
    try:
        entries = cache.export(out, _now(), include_expired=args.include_expired)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc}") from exc
    print(f"exported {len(entries)} artefact(s) from {cache.root} to {out}")
    return EXIT_OK


def _run_import(args: argparse.Namespace) -> int:
    cache = _cache(args)
    archive: Path = args.archive
    if not archive.is_file():
        raise UsageError(f"cannot read archive {archive}: not a file")
    now = _now()
    admitted = cache.import_archive(archive, at=args.at or now, now=now, trust_roots=_roots(args))
    _report(admitted, "imported")
    print(f"imported {len(admitted.written)} artefact(s) into {cache.root}", file=sys.stderr)
    return EXIT_OK


def _run_prune(args: argparse.Namespace) -> int:
    cache = _cache(args)
    pruned = cache.prune(_now())
    for entry in pruned.removed:
        print(f"removed {entry.kind} {_short_key(entry)}: expired at "
              f"{iso(entry.valid_until) if entry.valid_until else '?'}")
    for problem in pruned.problems:
        print(f"{'removed' if problem.removable else 'left'} {problem.path}: {problem.reason}")
    return EXIT_OK

