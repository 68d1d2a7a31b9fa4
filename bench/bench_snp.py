"""SNP report verification throughput: the C path against a plain pyca/cryptography one.

Both verify the same real reports in the same run, in interleaved rounds (these machines
are noisy), and the ratio is what to read.  Run: `make bench` or
`.venv/bin/python bench/bench_snp.py [--seconds 1.0] [--rounds 5]`.

- C path: one call parses the report, hashes bytes 0x000-0x29F with SHA-384 and
  verifies the ECDSA P-384 signature (`kbs.native.snp_verify_status`).
- pyca path: slice r and s from the report in Python, DER-encode them, load the key and
  verify with `cryptography` (what a Python verifier would write without the core).
- Full pipeline: `verify_snp` (parse, chain from cache, signature, TCB and chip-id checks,
  claims) for context.
- Message decoding (issue 12): a /attest body as a CoCo guest sends it (the report as sev's JSON,
  VEK + ASK + ARK), decoded by the one-pass C scanner (`coco_fast.decode_message`: scan, report
  format check, runtime-data) against the Python path it replaces (orjson + `jsondoc.check_shape` +
  `report_from_coco`); both end with the same CocoSnpEvidence, report parsed.
  `--decode-only` runs just this part.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from timing import interleaved, print_rates

from kbs import jsondoc, native
from kbs.evidence.composite import AttestationMessage
from kbs.evidence.snp.coco import report_from_coco, report_to_coco
from kbs.evidence.snp.coco_fast import decode_message
from kbs.evidence.snp.verify import verify_snp
from kbs.keys.jwe import generate_tee_key
from kbs.trust.x509 import Certificate, load_certificates

VECTORS = Path(os.environ.get("KBS_VECTORS", Path(__file__).resolve().parents[2] / "shared" / "vectors"))


def load() -> list[tuple[bytes, list[Certificate], dt.datetime]]:
    cases = []
    for report in sorted((VECTORS / "snp").glob("*/report.bin")):
        d = report.parent
        certs = [c for f in [*d.glob("*.der"), *d.glob("*.pem")] for c in load_certificates(f.read_bytes())]
        kind = "vlek" if any(c.subject_cn == "SEV-VLEK" for c in certs) else "vcek"
        product = next(c.issuer_cn for c in certs if c.subject_cn.startswith("SEV-V")).split("-")[-1]
        chain = VECTORS / "snp" / "chains" / f"{product.lower()}_{kind}_cert_chain.pem"
        vek = next(c for c in certs if c.subject_cn.startswith("SEV-V"))
        # A day into the VEK's validity: inside every vector's window, the expired VLEK's too.
        at = vek.not_before + dt.timedelta(days=1)
        cases.append((report.read_bytes(), certs + load_certificates(chain.read_bytes()), at))
    if not cases:
        sys.exit(f"no SNP vectors under {VECTORS}; set KBS_VECTORS")
    return cases


def pyca_verify(report: bytes, key: ec.EllipticCurvePublicKey) -> None:
    r = int.from_bytes(report[0x2A0:0x2E8], "little")
    s = int.from_bytes(report[0x2E8:0x330], "little")
    key.verify(encode_dss_signature(r, s), report[:0x2A0], ec.ECDSA(hashes.SHA384()))


def threaded(fn: Callable[[], None], threads: int) -> Callable[[], None]:
    """`fn` run once on each of `threads` threads at the same time (one call of the result = threads calls)."""
    pool = ThreadPoolExecutor(threads)

    def run() -> None:
        for future in [pool.submit(fn) for _ in range(threads)]:
            future.result()
    return run


ANY_VMPL = frozenset(range(4))  # the vectors include a VMPL 1 report (AWS); this measures speed, not policy


def messages(cases: list[tuple[bytes, list[Certificate], dt.datetime]]) -> list[bytes]:
    """Each real report as the /attest body a CoCo guest sends: sev's JSON, VEK + ASK + ARK, runtime-data."""
    jwk = generate_tee_key("EC-P256").jwk
    out = []
    for report, certs, _ in cases:
        chain = [("VLEK" if c.subject_cn == "SEV-VLEK" else "VCEK" if c.subject_cn == "SEV-VCEK" else
                  "ARK" if c.subject_cn.startswith("ARK") else "ASK", c.der) for c in certs]
        chain = [next(e for e in chain if e[0] in ("VCEK", "VLEK")), *[e for e in chain if e[0] in ("ASK", "ARK")][:2]]
        family = "Turin" if report[0x188] >= 0x1A else "Milan"  # v2: Milan's layout fits every v2 vector
        out.append(orjson.dumps({"init-data": None, "runtime-data": {"nonce": "bm9uY2UtYmVuY2g", "tee-pubkey": jwk},
                                 "tee-evidence": {"primary_evidence": report_to_coco(report, chain, family=family),
                                                  "additional_evidence": ""}}))
    return out


def bench_decode(cases: list[tuple[bytes, list[Certificate], dt.datetime]], args: argparse.Namespace) -> None:
    bodies = messages(cases)
    for raw in bodies:  # both paths give the same evidence, and the fast one did not decline
        fast, slow = decode_message(raw), jsondoc.loads(raw, what="m", check="c")
        assert fast is not None, "the fast path declined a real message"
        assert fast["tee-evidence"]["primary_evidence"] == report_from_coco(slow["tee-evidence"]["primary_evidence"])

    def python_path() -> None:
        for raw in bodies:
            report_from_coco(jsondoc.loads(raw, what="m", check="c")["tee-evidence"]["primary_evidence"])

    def fast_path() -> None:
        for raw in bodies:
            decode_message(raw)

    def c_scan() -> None:
        for raw in bodies:
            native.snp_coco_decode(raw)

    def message_python() -> None:
        for raw in bodies:
            report_from_coco(AttestationMessage.from_bytes(raw).primary_evidence)

    def message_fast() -> None:
        for raw in bodies:
            AttestationMessage.from_bytes(raw, decode_message)

    sizes = sorted(len(b) for b in bodies)
    print(f"SNP attestation message decoding, {len(bodies)} real reports as CoCo messages "
          f"({sizes[0]}-{sizes[-1]} bytes), {args.rounds} rounds x {args.seconds}s:")
    paths: dict[str, Callable[[], object]] = {
        "Python: orjson+check_shape+coco": python_path, "fast: coco_fast.decode_message": fast_path,
        "  of which the C scan alone": c_scan, "AttestationMessage, Python path": message_python,
        "AttestationMessage, fast path": message_fast}
    results = interleaved(paths, args.rounds, args.seconds, per_call=len(bodies))
    print_rates(results, "Python: orjson+check_shape+coco", "messages/s")
    for name in paths:
        print(f"  {name:34s} {1e6 / statistics.median(results[name]):8.1f} us per message")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one trial")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--decode-only", action="store_true", help="only the message-decoding comparison")
    args = parser.parse_args()

    cases = load()
    bench_decode(cases, args)
    if args.decode_only:
        return
    points = [next(c.public_key_bits for c in certs if c.subject_cn.startswith("SEV-V"))
              for _, certs, _ in cases]
    keys = [ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), p) for p in points]
    reports = [r for r, _, _ in cases]
    for (report, certs, at), point in zip(cases, points, strict=True):
        assert native.snp_verify_status(report, point) == native.lib.KBS_OK
        verify_snp(report, certs, at, allowed_vmpls=ANY_VMPL)  # also warms the chain cache

    def c_path() -> None:
        for report, point in zip(reports, points, strict=True):
            if native.snp_verify_status(report, point) != native.lib.KBS_OK:
                raise AssertionError("C path rejected a valid report")

    tables = native.P384KeyCache(max_tables=64, build_after=1)

    def c_cached() -> None:
        for report, point in zip(reports, points, strict=True):
            native.snp_verify_cached(report, point, tables)

    def pyca_path() -> None:
        for report, key in zip(reports, keys, strict=True):
            pyca_verify(report, key)

    def pipeline() -> None:
        for report, certs, at in cases:
            verify_snp(report, certs, at, allowed_vmpls=ANY_VMPL)

    paths = {"C core, cold key": c_path, "C core, cached key table": c_cached, "pyca/cryptography": pyca_path,
             "full verify_snp (chain cached)": pipeline}
    print(f"SNP report verification, {len(reports)} real reports, {args.rounds} rounds x {args.seconds}s; "
          f"P-384 field multiply: {native.p384_implementation()}")
    print(" one thread:")
    print_rates(interleaved(paths, args.rounds, args.seconds, per_call=len(reports)), "pyca/cryptography",
                "reports/s")
    two = {name: threaded(paths[name], 2) for name in ("C core, cold key", "full verify_snp (chain cached)",
                                                       "pyca/cryptography")}
    print(" two threads (C calls release the GIL; the Python around them does not):")
    print_rates(interleaved(two, args.rounds, args.seconds, per_call=2 * len(reports)), "pyca/cryptography",
                "reports/s")


if __name__ == "__main__":
    main()
