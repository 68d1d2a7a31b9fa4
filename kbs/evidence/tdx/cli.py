"""`kbs verify tdx`: a DCAP quote file verified from the command line, with PCS or a collateral directory.

Same contract as `kbs verify snp`: exit 0 and the claims as JSON; 1 and one stderr line naming the
check; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
from pathlib import Path
from typing import Any

from kbs.files import read_input
from kbs.timearg import rfc3339
from kbs.trust.collateral_cache import default_cache_dir
from kbs.trust.intel import pcs
from kbs.trust.intel.offline import load_collateral_dir, load_dcap_qvl_bundle
from kbs.trust.x509 import load_certificates


class TdxVerifyCommand:
    help = "verify an Intel TDX DCAP quote (v4 or v5) with its PCK chain and Intel's collateral"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("quote", help="the raw quote file")
        parser.add_argument("--collateral", metavar="DIR|BUNDLE",
                            help="collateral directory (tcb_info.json, qe_identity.json, *_issuer_chain.pem, "
                                 "pck_crl.der, root_ca_crl.der) or a dcap-qvl collateral bundle (JSON); "
                                 "without it, PCS or its cache")
        parser.add_argument("--event-log", metavar="FILE", help="the CC event log (CCEL) to replay against RTMRs")
        parser.add_argument("--trust-root", action="append", default=[], metavar="PEM",
                            help="trust this root instead of the pinned Intel SGX Root CA (labs, tests)")
        parser.add_argument("--at", type=rfc3339, metavar="RFC3339", help="verification time (default: now)")
        parser.add_argument("--offline", action="store_true", help="never contact PCS; use only the cache")
        parser.add_argument("--pcs-url", default=os.environ.get("KBS_PCS_URL", pcs.DEFAULT_BASE_URL),
                            help="Intel PCS base URL (or a PCCS)")
        parser.add_argument("--cache-dir", type=Path, default=None,
                            help="collateral cache (default ~/.cache/kbs/kds; see kbs collateral)")

    async def run(self, args: argparse.Namespace) -> dict[str, Any]:
        from kbs.evidence.tdx.verifier import appraise, prepare  # the verifier imports this module

        quote = read_input(args.quote, "quote")
        log = read_input(args.event_log, "event log") if args.event_log else None
        roots = [c for path in args.trust_root for c in load_certificates(read_input(path, "trust root"))] or None
        at = args.at or dt.datetime.now(dt.UTC)
        evidence = {"quote": base64.b64encode(quote).decode(),
                    "cc_eventlog": base64.b64encode(log).decode() if log else None}
        prepared = prepare(evidence, None, at, roots)
        if args.collateral and Path(args.collateral).is_file():
            collateral = load_dcap_qvl_bundle(read_input(args.collateral, "collateral bundle"))
        elif args.collateral:
            collateral = load_collateral_dir(Path(args.collateral))
        else:
            async with pcs.PcsClient(args.pcs_url, cache_dir=args.cache_dir or default_cache_dir(),
                                     offline=args.offline, trust_roots=roots) as client:
                collateral = await client.collateral(prepared.pck.info.fmspc, prepared.pck.info.ca)
        return appraise(prepared, collateral, at, roots)

    def summary(self, claims: dict[str, Any]) -> str:
        debug = " (DEBUG TD)" if claims.get("td_attributes", {}).get("debug") else ""
        return (f"TDX quote v{claims.get('quote_version')}, TCB {claims.get('tcb_status')}, "
                f"FMSPC {claims.get('fmspc')}{debug}")
