"""TDX quote verification with warm collateral, one core: ours against dcap-qvl (Phala's Rust QVL).

Both verify the same real quotes with the same collateral at the same time, in interleaved rounds
(these machines are noisy); the ratio is what to read.  Ours is the whole verifier path after the
evidence arrived: base64 decode, quote parse (C), fixed bits, PCK chain (cached by its bytes), the
three checks in C (QE report signature, QE binding, quote signature) with the broker's per-key P-256
tables for the PCK and attestation keys, collateral (a verified set cached while its window holds),
Intel QVL's TCB evaluation (remembered with the set) and the claims.  dcap-qvl's `verify` takes the raw quote and
a parsed collateral object and does its whole verification each call.

Run: `make bench` (installs the benchmark-only `dcap-qvl`) or
`.venv/bin/python bench/bench_tdx.py [--seconds 1.0] [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import sys
from pathlib import Path

from timing import interleaved, print_rates

from kbs.evidence.tdx.verifier import appraise, prepare
from kbs.native import P256KeyCache
from kbs.trust.intel.collateral import IntelCollateral
from kbs.trust.intel.offline import load_dcap_qvl_bundle

VECTORS = Path(os.environ.get("KBS_VECTORS", Path(__file__).resolve().parents[2] / "shared" / "vectors"))
# Real quotes with a complete dcap-qvl collateral bundle, and a time inside the bundle's window.
CASES = (("quote_v4_b0c06f.dat", "quote_v4_b0c06f_collateral.json", "2025-07-01T00:00:00+00:00"),
         ("near_quote_v4_20a06f.dat", "near_quote_v4_20a06f_collateral.json", "2025-09-15T00:00:00+00:00"))


def load() -> list[tuple[bytes, bytes, IntelCollateral, dt.datetime]]:
    folder = VECTORS / "tdx" / "dcap-qvl"
    out = []
    for quote, bundle, when in CASES:
        raw = (folder / bundle).read_bytes()
        out.append(((folder / quote).read_bytes(), raw, load_dcap_qvl_bundle(raw), dt.datetime.fromisoformat(when)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one trial")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()
    if not (VECTORS / "tdx").is_dir():
        sys.exit(f"no TDX vectors under {VECTORS} (set KBS_VECTORS)")
    try:
        import dcap_qvl  # type: ignore[import-not-found]
    except ImportError:
        sys.exit("dcap-qvl is not installed: `make bench`, or pip install dcap-qvl")

    cases = load()
    ours = [({"quote": base64.b64encode(q).decode(), "cc_eventlog": None}, c, at) for q, _, c, at in cases]
    theirs = [(q, dcap_qvl.QuoteCollateralV3.from_json(raw.decode()), int(at.timestamp())) for q, raw, _, at in cases]
    tables = P256KeyCache()  # as TdxVerifier holds one
    for _ in range(2):  # warm: PCK chain and collateral set verified once, both keys earn their tables
        for evidence, collateral, at in ours:
            claims = appraise(prepare(evidence, None, at, None), collateral, at, None, tables)
            assert claims["tcb_status"] == "UpToDate"
    assert len(tables) == 2 * len(cases)
    for quote, collateral, now in theirs:
        assert dcap_qvl.verify(quote, collateral, now).status == "UpToDate"

    def kbs_path() -> None:
        for evidence, collateral, at in ours:
            appraise(prepare(evidence, None, at, None), collateral, at, None, tables)

    def kbs_cold_keys() -> None:  # a platform's first quote: no key tables yet
        for evidence, collateral, at in ours:
            appraise(prepare(evidence, None, at, None), collateral, at, None)

    def dcap_qvl_path() -> None:
        for quote, collateral, now in theirs:
            dcap_qvl.verify(quote, collateral, now)

    print(f"TDX quotes verified per second, warm collateral, one core ({len(cases)} real quotes; "
          f"{args.rounds} rounds x {args.seconds:.1f}s, interleaved)")
    results = interleaved({"kbs (full verifier path)": kbs_path, "kbs, keys without tables": kbs_cold_keys,
                           "dcap-qvl": dcap_qvl_path}, args.rounds,
                          args.seconds, per_call=len(cases))
    print_rates(results, "dcap-qvl", "quotes/s")


if __name__ == "__main__":
    main()
