"""Single-core ECDSA P-384 verifications per second, fast core against libcrypto and pyca.

    .venv/bin/python bench/bench_p384.py [--rounds 8] [--seconds 1.0]

Prints, per implementation, the median and range over interleaved rounds (the machine is
noisy, so every round runs every implementation back to back), and the ratio of medians
against pyca/cryptography.  Issue 5's targets: cold key >= 2.5x pyca, cached key >= 5x.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kbs import native


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of fn, in chunks of 16 so the clock is read rarely."""
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(16):
            fn()
        count += 16
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()

    priv = ec.generate_private_key(ec.SECP384R1())
    pub = priv.public_key()
    point = pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    digest = hashlib.sha384(b"bench").digest()
    der = priv.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA384())))
    r_int, s_int = utils.decode_dss_signature(der)
    r, s = r_int.to_bytes(48, "big"), s_int.to_bytes(48, "big")
    table = native.P384KeyTable(point)
    lib = native.lib
    algo = ec.ECDSA(utils.Prehashed(hashes.SHA384()))

    # Each must accept before it is timed.
    assert lib.kbs_p384_verify_digest(point, 97, digest, r, s) == 0
    assert lib.kbs_p384_verify_digest_libcrypto(point, 97, digest, r, s) == 0
    assert table.verify_status(digest, r, s) == 0
    pub.verify(der, digest, algo)

    batch = [(table, digest, r, s)] * 64
    contenders: dict[str, Callable[[], object]] = {
        "kbs fast, cold key": lambda: lib.kbs_p384_verify_digest(point, 97, digest, r, s),
        "kbs fast, cached key table": lambda: lib.kbs_p384_verify_digest_with_table(
            table.c_pointer(), digest, r, s),
        "kbs fast, batch of 64 (cached), per item": lambda: native.p384_verify_batch(batch),
        "kbs libcrypto (system OpenSSL)": lambda: lib.kbs_p384_verify_digest_libcrypto(
            point, 97, digest, r, s),
        "pyca/cryptography": lambda: pub.verify(der, digest, algo),
        "kbs fast, key table build": lambda: native.P384KeyTable(point),
    }
    per_call = {"kbs fast, batch of 64 (cached), per item": 64}
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    print(f"P-384 verify, field multiply: {native.p384_implementation()}; "
          f"{args.rounds} interleaved rounds of {args.seconds:.1f} s each")
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            samples[name].append(rate(fn, args.seconds) * per_call.get(name, 1))
    base = statistics.median(samples["pyca/cryptography"])
    print(f"{'implementation':44} {'median/s':>9} {'min':>8} {'max':>8} {'vs pyca':>8}")
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"{name:44} {med:9.0f} {min(values):8.0f} {max(values):8.0f} {med / base:7.2f}x")


if __name__ == "__main__":
    main()
