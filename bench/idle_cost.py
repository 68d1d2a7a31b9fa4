"""How much more CPU the broker's own hot-path work costs on this machine when the CPU idled just before it.

    .venv/bin/python bench/idle_cost.py [--calls 300] [--gaps 0,0.5,2,10]

Why it exists: bench_load.py reports broker CPU per release at each open-loop rate, and on these shared
virtual machines that number grows as the rate falls (e.g. 2.1 ms at saturation, ~3.4 ms at half of it,
~5 ms at 50/s) although the broker does the same work per release.  This shows the cause without the
broker: the same calls, measured by the calling thread's CPU time, once back to back and once with the
thread asleep for a gap before each call (as a worker sleeps in epoll between requests at partial load).
The ratio to the back-to-back cost is what to read: caches and predictors emptied by whatever ran in the
gap (other processes, other tenants of the host) make every instruction after it slower.  At 80% of the
saturated rate a worker idles in short gaps, so each release costs more CPU than at saturation and the
cores are busier than "80%" suggests: that is the p99 there.

The calls: a session cookie opened 20 times (pure Python, kbs.server.sessions), an ES256 signature (the
attestation token's, through pyca/cryptography), and a report's P-384 verification in the C core
(with its key's precomputed table, as the broker verifies a known VCEK's reports).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kbs import native
from kbs.server.sessions import SessionCookies


def cpu_per_call(fn: Callable[[], object], calls: int, gap: float) -> float:
    """Median CPU time of the calling thread per call (microseconds), sleeping `gap` seconds before each."""
    samples = []
    for _ in range(calls):
        if gap:
            time.sleep(gap)
        start = time.thread_time_ns()
        fn()
        samples.append((time.thread_time_ns() - start) / 1000)
    return statistics.median(samples)


def snp_like_report() -> tuple[bytes, bytes]:
    """A report-sized message signed like an SNP report (P-384 over its first 0x2A0 bytes), and the key."""
    key = ec.generate_private_key(ec.SECP384R1())
    report = bytearray(0x4A0)  # reserved fields zero, as the C core requires
    report[0x50:0xC0] = os.urandom(0x70)  # report data and measurement
    report[0:4] = (2).to_bytes(4, "little")  # version 2
    report[0x08:0x10] = (1 << 17).to_bytes(8, "little")  # guest policy: the reserved bit that must be set
    report[0x34:0x38] = (1).to_bytes(4, "little")  # signature algorithm: ECDSA P-384 with SHA-384
    r, s = decode_dss_signature(key.sign(bytes(report[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    report[0x2A0:0x2E8] = r.to_bytes(72, "little")
    report[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(report), key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per measurement (default 300)")
    parser.add_argument("--gaps", default="0,0.5,2,10", help="idle gaps before each call, ms (default 0,0.5,2,10)")
    args = parser.parse_args()
    gaps = [float(g) / 1000 for g in args.gaps.split(",")]

    cookies = SessionCookies(os.urandom(32), timedelta(seconds=300))
    cookie = cookies.seal(cookies.new_session("snp", datetime.now(UTC)))
    signing_key = ec.generate_private_key(ec.SECP256R1())
    report, public = snp_like_report()
    tables = native.P384KeyCache(max_tables=1)  # the broker's path: the VCEK's precomputed table
    native.snp_check_signature(report, public, tables)  # the message really verifies: the full C path is measured
    digest = hashlib.sha256(b"payload").digest()

    def open_cookies() -> None:
        for _ in range(20):
            assert cookies.open(cookie) is not None

    work: dict[str, Callable[[], object]] = {
        "20 session cookies opened (Python)": open_cookies,
        "ES256 signature (pyca/cryptography)": lambda: signing_key.sign(digest, ec.ECDSA(hashes.SHA256())),
        "SNP report P-384 verify (C core)": lambda: native.snp_check_signature(report, public, tables),
    }
    print(f"CPU per call (median of {args.calls}), by idle gap before each call; ratio to back to back:")
    for name, fn in work.items():
        for _ in range(50):
            fn()  # warm: the first calls pay for imports and tables
        base = cpu_per_call(fn, args.calls, 0.0)
        cells = [f"{base:7.1f} us"]
        for gap in gaps:
            if gap:
                cost = cpu_per_call(fn, args.calls, gap)
                cells.append(f"{gap * 1000:g} ms: {cost:7.1f} us ({cost / base:.2f}x)")
        print(f"  {name:38s} back to back {' | '.join(cells)}")


if __name__ == "__main__":
    main()
