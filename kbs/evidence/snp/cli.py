"""`kbs verify snp`: an SNP report file verified from the command line, with KDS or its cache."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path
from typing import Any

from kbs.evidence.snp.certtable import parse_cert_table
from kbs.evidence.snp.collateral import gather_snp_collateral
from kbs.evidence.snp.report import parse_report
from kbs.evidence.snp.verify import DEFAULT_VMPLS, verify_snp
from kbs.files import read_input
from kbs.timearg import rfc3339
from kbs.trust.amd.kds import DEFAULT_BASE_URL, KdsClient
from kbs.trust.collateral_cache import default_cache_dir
from kbs.trust.x509 import Certificate, load_certificates


class SnpVerifyCommand:
    help = "verify an AMD SEV-SNP attestation report (1184 bytes)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("report", help="the raw report file")
        parser.add_argument("--certs", action="append", default=[], metavar="FILE",
                            help="PEM or DER certificates (VCEK/VLEK, ASK/ASVK, ARK in any order); repeatable")
        parser.add_argument("--cert-table", metavar="FILE", help="extended-report certificate table (GUID table)")
        parser.add_argument("--trust-root", action="append", default=[], metavar="PEM",
                            help="trust this ARK instead of the pinned AMD roots (labs, tests); repeatable")
        parser.add_argument("--at", type=rfc3339, metavar="RFC3339", help="verification time (default: now)")
        parser.add_argument("--offline", action="store_true", help="never contact KDS; use only the cache")
        parser.add_argument("--check-crl", action="store_true", help="fetch the KDS CRL and check the ASK/ASVK")
        parser.add_argument("--crl", metavar="FILE", help="check the ASK/ASVK against this DER CRL")
        parser.add_argument("--kds-url", default=os.environ.get("KBS_KDS_URL", DEFAULT_BASE_URL),
                            help="KDS base URL")
        parser.add_argument("--cache-dir", type=Path, default=None,
                            help="collateral cache (default ~/.cache/kbs/kds; see kbs collateral)")
        parser.add_argument("--vmpl", action="append", type=int, choices=range(4), metavar="N",
                            help="allow reports requested at VMPL N (repeatable; default: 0 only)")

    async def run(self, args: argparse.Namespace) -> dict[str, Any]:
        data = read_input(args.report, "report")
        offered: list[Certificate] = []
        for path in args.certs:
            offered += load_certificates(read_input(path, "certificates"))
        table_crl = None
        if args.cert_table:
            table = parse_cert_table(read_input(args.cert_table, "certificate table"))
            offered += table.certificates
            table_crl = table.crl
        roots = [c for path in args.trust_root for c in load_certificates(read_input(path, "trust root"))] or None
        # A CRL from --crl wins, then one from the certificate table, then KDS (with --check-crl).
        crl = read_input(args.crl, "CRL") if args.crl else (table_crl if args.check_crl else None)
        at = args.at or dt.datetime.now(dt.UTC)
        report = parse_report(data)
        async with KdsClient(args.kds_url, cache_dir=args.cache_dir or default_cache_dir(),
                             offline=args.offline) as kds:
            collateral = await gather_snp_collateral(report, offered, kds, roots,
                                                     want_crl=args.check_crl and crl is None)
        vmpls = frozenset(args.vmpl) if args.vmpl else DEFAULT_VMPLS
        return verify_snp(data, collateral.certificates, at, roots, crl or collateral.crl, vmpls).claims()

    def summary(self, claims: dict[str, Any]) -> str:
        return (f"{claims['product']} SNP report v{claims['version']}, signed by the {claims['signing_key']}")
