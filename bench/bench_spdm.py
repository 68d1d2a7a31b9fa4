"""NVIDIA GPU report verification, one core: the C core (parse + SHA-384 + ECDSA P-384 in one GIL-free
call, cold and through the leaf key's table) against pyca/cryptography verifying the same bytes with
nothing to parse (signature offset, DER signature and key object prepared outside the timed call).

    .venv/bin/python bench/bench_spdm.py [--rounds 5] [--seconds 1.0]

The reports are the genuine ones of $KBS_VECTORS/gpu (41 GPUs and NVSwitches; synthetic ones signed
here when the vectors are absent), each with its own leaf key, verified in turn inside every call, so
per-report numbers are what is printed.  Every path runs once per round, interleaved with the others
(these machines are noisy); the ratio of medians against pyca is what to read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from timing import interleaved, print_rates

from kbs import native

REPO = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("KBS_VECTORS", REPO.parent / "shared" / "vectors"))


def load() -> tuple[str, list[tuple[bytes, bytes]]]:
    """(where from, [(report, leaf point)]): the real reports, or synthetic ones without the vectors."""
    sys.path.insert(0, str(REPO))
    from tests.gpu_reports import real_reports
    from tests.spdm_synth import SyntheticSpdm, point_of

    real = [(r.data, r.leaf_point) for r in real_reports(VECTORS.resolve()) if r.genuine]
    if real:
        return f"{len(real)} real reports from {VECTORS}", real
    keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(8)]
    return "8 synthetic reports (no vectors)", [(SyntheticSpdm(k).build(), point_of(k)) for k in keys]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()

    source, reports = load()
    lib = native.lib
    algo = ec.ECDSA(hashes.SHA384())
    # pyca, parse-free: the signed length, the DER signature and the key object are prepared here.
    prepared = []
    for data, point in reports:
        p = native.spdm_verify(data, point)
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), point)
        der = encode_dss_signature(int.from_bytes(p.signature[:48], "big"), int.from_bytes(p.signature[48:], "big"))
        key.verify(der, data[:p.signed_size], algo)
        prepared.append((key, der, data[:p.signed_size]))
    cache = native.P384KeyCache()
    for _ in range(2):  # the second verified report of a GPU earns its key a table
        for data, point in reports:
            native.spdm_verify_status(data, point, cache)
    assert len(cache) == len({point for _, point in reports})
    out = native.ffi.new("struct kbs_spdm_report *")
    tables = [cache.get(point) for _, point in reports]
    table_ptrs = [(data, t.c_pointer()) for (data, _), t in zip(reports, tables, strict=True) if t is not None]

    def each(fn: Callable[[bytes, bytes], object]) -> Callable[[], None]:
        def run() -> None:
            for data, point in reports:
                fn(data, point)
        return run

    def pyca() -> None:
        for key, der, signed in prepared:
            key.verify(der, signed, algo)

    def c_cold() -> None:
        for data, point in reports:
            lib.kbs_spdm_verify(data, len(data), 0, point, 97, out)

    def c_table() -> None:
        for data, table in table_ptrs:
            lib.kbs_spdm_verify_with_table(data, len(data), 0, table, out)

    paths: dict[str, Callable[[], object]] = {
        "pyca: SHA-384 + verify (no parse)": pyca,
        "kbs_spdm_verify, cold (C call)": c_cold,
        "kbs_spdm_verify_with_table (C call)": c_table,
        "spdm_verify_status, cold": each(lambda d, p: native.spdm_verify_status(d, p)),
        "spdm_verify_status, key table": each(lambda d, p: native.spdm_verify_status(d, p, cache)),
        "spdm_verify (-> SpdmReport), cold": each(lambda d, p: native.spdm_verify(d, p)),
        "spdm_verify (-> SpdmReport), table": each(lambda d, p: native.spdm_verify(d, p, cache)),
        "spdm_parse (no crypto)": each(lambda d, p: native.spdm_parse(d)),
    }
    print(f"NVIDIA GPU reports verified per second, one thread ({source}; P-384 multiply: "
          f"{native.p384_implementation()}; {args.rounds} interleaved rounds of {args.seconds:.1f} s)")
    results = interleaved(paths, args.rounds, args.seconds, per_call=len(reports))
    print_rates(results, "pyca: SHA-384 + verify (no parse)", "reports/s")


if __name__ == "__main__":
    main()
