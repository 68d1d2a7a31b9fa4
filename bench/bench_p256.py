"""Single-core ECDSA P-256 verifications/s of the C core (cold key, and with the key's table) against
pyca/cryptography (prehashed, key loaded once) and the system libcrypto; then a real TDX quote's three
checks, cold and through key tables, against the same checks written with pyca.

    .venv/bin/python bench/bench_p256.py [--rounds 8] [--seconds 1.0]

Every path runs once per round, in turn (these machines are noisy); the ratio of medians against
pyca/cryptography is what to read.  The C lines call the cffi function directly, as pyca's line
calls its verify; the native.* lines add the Python wrapper.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from timing import interleaved, print_rates

from kbs import native

VECTORS = Path(os.environ.get("KBS_VECTORS", Path(__file__).resolve().parents[2] / "shared" / "vectors"))
QUOTE = VECTORS / "tdx" / "dcap-qvl" / "quote_v4_b0c06f.dat"


def pck_key(quote: native.TdxQuote) -> ec.EllipticCurvePublicKey:
    from cryptography import x509

    key = x509.load_pem_x509_certificates(quote.pck_chain_pem)[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def pyca_tdx_checks(data: bytes, q: native.TdxQuote, pck: ec.EllipticCurvePublicKey) -> None:
    """The three checks of `tdx_verify` as a Python verifier would write them with pyca (fields pre-sliced)."""
    algo = ec.ECDSA(hashes.SHA256())

    def der(sig: bytes) -> bytes:
        return utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))

    pck.verify(der(q.qe_report_signature), q.qe_report.raw, algo)
    if q.qe_report.report_data != hashlib.sha256(q.attestation_key + q.qe_auth_data).digest() + bytes(32):
        raise ValueError("binding")
    ak = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + q.attestation_key)
    ak.verify(der(q.signature), data[:q.signed_size], algo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()

    priv = ec.generate_private_key(ec.SECP256R1())
    pub = priv.public_key()
    point = pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    message = b"bench" * 100
    digest = hashlib.sha256(message).digest()
    der = priv.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    r_int, s_int = utils.decode_dss_signature(der)
    r, s = r_int.to_bytes(32, "big"), s_int.to_bytes(32, "big")
    sig = r + s
    lib = native.lib
    prehashed = ec.ECDSA(utils.Prehashed(hashes.SHA256()))

    # Each must accept before it is timed.
    assert lib.kbs_p256_verify_digest(point, 65, digest, r, s) == 0
    native.p256_verify(point, message, sig)
    pub.verify(der, digest, prehashed)

    table = native.P256KeyTable(point)
    table_ptr = table.c_pointer()
    cache = native.P256KeyCache()
    for _ in range(2):
        cache.verify(point, digest, sig)  # the second sighting builds the table
    assert lib.kbs_p256_verify_digest_with_table(table_ptr, digest, r, s) == 0 and len(cache) == 1

    paths: dict[str, Callable[[], object]] = {
        "pyca/cryptography (prehashed)": lambda: pub.verify(der, digest, prehashed),
        "kbs fast, cold key (C)": lambda: lib.kbs_p256_verify_digest(point, 65, digest, r, s),
        "kbs fast, key table (C)": lambda: lib.kbs_p256_verify_digest_with_table(table_ptr, digest, r, s),
        "kbs libcrypto (system OpenSSL, C)": lambda: lib.kbs_p256_verify_digest_libcrypto(point, 65, digest, r, s),
        "native.p256_verify_digest (cold)": lambda: native.p256_verify_digest(point, digest, sig),
        "P256KeyCache.verify (table)": lambda: cache.verify(point, digest, sig),
        "P256KeyTable build": lambda: native.P256KeyTable(point),
    }
    if QUOTE.is_file():
        data = QUOTE.read_bytes()
        quote = native.tdx_parse(data)
        pck = pck_key(quote)
        pck_point = pck.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        native.tdx_verify(data, pck_point)
        pyca_tdx_checks(data, quote, pck)
        quote_cache = native.P256KeyCache()
        for _ in range(2):  # the second verified quote builds both tables
            native.tdx_verify_signatures(data, pck_point, cache=quote_cache)
        assert len(quote_cache) == 2
        paths |= {
            "tdx_verify_status, cold": lambda: native.tdx_verify_status(data, pck_point),
            "tdx_verify_status, key tables": lambda: native.tdx_verify_status(data, pck_point, cache=quote_cache),
            "tdx_verify_signatures, key tables": lambda: native.tdx_verify_signatures(data, pck_point,
                                                                                      cache=quote_cache),
            "tdx_verify (-> TdxQuote), key tables": lambda: native.tdx_verify(data, pck_point, cache=quote_cache),
            "tdx_parse (no crypto)": lambda: native.tdx_parse(data),
            "pyca: the same three checks": lambda: pyca_tdx_checks(data, quote, pck),
        }
    else:
        print(f"note: {QUOTE} not found (KBS_VECTORS); the quote lines are skipped", file=sys.stderr)

    print(f"P-256 verify, one thread; {args.rounds} interleaved rounds of {args.seconds:.1f} s each")
    results = interleaved(paths, args.rounds, args.seconds)
    print_rates({k: v for k, v in results.items() if not k.startswith(("tdx", "pyca: the same"))},
                "pyca/cryptography (prehashed)", "verifies/s")
    if QUOTE.is_file():
        print(f"TDX quote {QUOTE.name}: parse + QE report signature + binding + quote signature")
        print_rates({k: v for k, v in results.items() if k.startswith(("tdx", "pyca: the same"))},
                    "pyca: the same three checks", "quotes/s")


if __name__ == "__main__":
    main()
