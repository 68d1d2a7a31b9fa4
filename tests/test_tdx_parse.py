"""TDX quotes in the C core: bytes -> fields (every field of every real quote), the format checks each
with its label, and `tdx_verify`'s three checks, each refusing exactly its own defect.

Real quotes are read in place from $KBS_VECTORS (tests.tdx_quotes.real_quotes); synthetic quotes,
signed by keys made here, cover what the real ones cannot and run without the vectors.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable

import pytest
from cryptography import x509

from kbs import native
from kbs.errors import EvidenceError, MalformedEvidence, SignatureInvalid
from tests.conftest import vectors_dir
from tests.tdx_quotes import P256_N, QuoteKeys, RealQuote, build_quote, layout, real_quotes, sign_raw
from tests.threads import on_threads

REAL = real_quotes(vectors_dir())
needs_vectors = pytest.mark.skipif(not REAL, reason=f"no TDX quotes under KBS_VECTORS={vectors_dir()}")
EXTRA_BYTES_QUOTE = "tdx/go-tdx-guest/quote_v4_50806f_spr_extra_bytes.dat"


@pytest.fixture(params=list[RealQuote | None](REAL) or [None], ids=[q.name for q in REAL] or ["no-vectors"])
def real(request: pytest.FixtureRequest) -> RealQuote:
    if request.param is None:
        pytest.skip(f"no TDX quotes under KBS_VECTORS={vectors_dir()}")
    quote: RealQuote = request.param
    return quote


def allow(quote: RealQuote) -> bool:
    """Only go-tdx-guest's extra-bytes vector needs trailing bytes allowed."""
    return quote.name.endswith(EXTRA_BYTES_QUOTE.split("/", 1)[1])


def refusal(fn: Callable[..., object]) -> EvidenceError:
    with pytest.raises(EvidenceError) as err:
        fn()
    assert str(err.value), "every refusal says what was wrong"
    return err.value


# --- every field of every real quote against expected.json ---

@needs_vectors
def test_every_real_quote_is_found() -> None:
    """Ten distinct quotes (trustee/evidence/tdx holds copies of two of them), each with its expected.json entry."""
    assert len(REAL) == 12 and EXTRA_BYTES_QUOTE in {q.name for q in REAL}
    assert len({q.expected["file"] for q in REAL}) == 10


def test_fields_equal_expected(real: RealQuote) -> None:
    exp, data = real.expected, real.data
    assert len(data) == exp["size"] and hashlib.sha256(data).hexdigest() == exp["sha256"]
    q = native.tdx_parse(data, allow_trailing_bytes=allow(real))
    ints = {"version": q.version, "att_key_type": q.att_key_type, "body_size": q.body_size,
            "signed_region_len": q.signed_size, "signed_data_len": q.signature_data_len}
    for name, value in ints.items():
        assert value == exp[name], name
    assert hex(q.tee_type) == exp["tee_type"]
    assert q.body_type == (exp["body_type"] if q.version == 5 else 2) and (q.version == 5) == (exp["body_type"]
                                                                                             is not None)
    hexes = {"qe_vendor_id": q.qe_vendor_id, "user_data": q.user_data, "header_bytes_8_12": q.header_reserved,
             "tee_tcb_svn": q.tee_tcb_svn, "mrseam": q.mr_seam, "mrsignerseam": q.mr_signer_seam,
             "seam_attributes": q.seam_attributes, "mrtd": q.mr_td, "mrconfigid": q.mr_config_id,
             "mrowner": q.mr_owner, "mrownerconfig": q.mr_owner_config, "report_data": q.report_data,
             "qe_auth_data": q.qe_auth_data,
             **{f"rtmr{i}": rtmr for i, rtmr in enumerate(q.rtmrs)}}
    for name, raw in hexes.items():
        assert raw.hex() == exp[name], name
    assert q.td_attributes == int.from_bytes(bytes.fromhex(exp["td_attributes"]), "little")
    assert q.xfam == int.from_bytes(bytes.fromhex(exp["xfam"]), "little")
    for name, optional in (("tee_tcb_svn2", q.tee_tcb_svn2), ("mrservicetd", q.mr_service_td)):
        assert (optional.hex() if optional is not None else None) == exp[name], name
    assert (exp["cert_data_type_outer"], exp["cert_data_type_inner"]) == (6, 5)  # the parser requires both
    assert len(q.pck_chain_pem) + exp["pck_chain_ends_with_nul"] == exp["pck_chain_pem_len"]
    assert not q.pck_chain_pem.endswith(b"\0") and q.pck_chain_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    trailing = exp["trailing_bytes_after_signed_data"]
    assert (q.padding, len(q.extra_bytes)) == ((0, trailing) if allow(real) else (trailing, 0))
    assert q.signed_size + 4 + q.signature_data_len + trailing == len(data)

    qe, qe_exp = q.qe_report, exp["qe_report"]
    assert (qe.misc_select, qe.isv_prod_id, qe.isv_svn) == (qe_exp["miscselect"], qe_exp["isvprodid"],
                                                          qe_exp["isvsvn"])
    for name, raw in (("cpusvn", qe.cpu_svn), ("attributes", qe.attributes), ("mrenclave", qe.mr_enclave),
                        ("mrsigner", qe.mr_signer), ("report_data", qe.report_data)):
        assert raw.hex() == qe_exp[name], name
    # The raw parts are the quote's own bytes, at the offsets tdx.md §1 gives.
    assert q.raw_header == data[:48] and q.raw_body == data[q.signed_size - q.body_size:q.signed_size]
    sig_at = q.signed_size + 4
    assert q.signature == data[sig_at:sig_at + 64] and q.attestation_key == data[sig_at + 64:sig_at + 128]
    assert qe.raw == data[sig_at + 134:sig_at + 518] and q.qe_report_signature == data[sig_at + 518:sig_at + 582]
    # The chain is the PCK leaf expected.json describes.
    leaf = x509.load_pem_x509_certificates(q.pck_chain_pem)[0]
    assert format(leaf.serial_number, "x").rjust(len(exp["pck"]["serial"]), "0") == exp["pck"]["serial"]


def test_real_quote_verifies_with_its_pck_key(real: RealQuote) -> None:
    checks = real.expected["checks"]
    assert checks["quote_signature_valid"] and checks["qe_report_signature_valid"]
    assert checks["qe_report_data_binding_valid"]
    q = native.tdx_verify(real.data, real.pck_point, allow_trailing_bytes=allow(real))
    assert q == native.tdx_parse(real.data, allow_trailing_bytes=allow(real))
    assert native.tdx_verify_status(real.data, real.pck_point, allow_trailing_bytes=allow(real)) == 0
    # What is signed, checked independently of the C core (pyca over the same bytes).
    ak, auth = q.attestation_key, q.qe_auth_data
    native.p256_verify(b"\x04" + ak, real.data[:q.signed_size], q.signature)
    native.p256_verify(real.pck_point, q.qe_report.raw, q.qe_report_signature)
    assert q.qe_report.report_data == hashlib.sha256(ak + auth).digest() + bytes(32)


def test_real_quote_with_another_pck_key(real: RealQuote) -> None:
    other = next(q for q in REAL if q.pck_point != real.pck_point)
    err = refusal(lambda: native.tdx_verify(real.data, other.pck_point, allow_trailing_bytes=True))
    assert isinstance(err, SignatureInvalid) and err.check == "quote.qe_report_signature"


# --- the trailing-bytes rule ---

@needs_vectors
def test_extra_ascii_bytes_are_refused_by_default() -> None:
    spr = next(q for q in REAL if q.name == EXTRA_BYTES_QUOTE)
    err = refusal(lambda: native.tdx_parse(spr.data))
    assert isinstance(err, MalformedEvidence) and err.check == "quote.trailing_bytes"
    err = refusal(lambda: native.tdx_verify(spr.data, spr.pck_point))
    assert err.check == "quote.trailing_bytes"
    q = native.tdx_verify(spr.data, spr.pck_point, allow_trailing_bytes=True)
    assert q.extra_bytes == b"\nextra bytes(only for testing purpose)\n" and q.padding == 0
    # The same quote without them is a clean quote.
    trimmed = spr.data[:len(spr.data) - 39]
    assert native.tdx_verify(trimmed, spr.pck_point).padding == 0


@needs_vectors
def test_real_zero_padding_is_accepted() -> None:
    cos = next(q for q in REAL if "zero_padded" in q.name)
    assert len(cos.data) == 8000 and native.tdx_verify(cos.data, cos.pck_point).padding == 3065


def test_padding_rule_on_real_quote(real: RealQuote) -> None:
    q = native.tdx_parse(real.data, allow_trailing_bytes=True)
    clean = real.data[:q.signed_size + 4 + q.signature_data_len]
    assert native.tdx_parse(clean + bytes(100)).padding == 100
    for at in (0, 50, 99):
        dirty = bytearray(clean + bytes(100))
        dirty[len(clean) + at] = 0x01
        assert refusal(lambda d=bytes(dirty): native.tdx_parse(d)).check == "quote.trailing_bytes"
        assert native.tdx_parse(bytes(dirty), allow_trailing_bytes=True).extra_bytes == bytes(dirty[len(clean):])


def test_synthetic_padding() -> None:
    data, keys = build_quote(padding=7)
    assert native.tdx_verify(data, keys.pck_point).padding == 7
    assert refusal(lambda: native.tdx_verify(data + b"\x80", keys.pck_point)).check == "quote.trailing_bytes"
    assert native.tdx_verify(data + b"\x80", keys.pck_point, allow_trailing_bytes=True).extra_bytes == \
        bytes(7) + b"\x80"


# --- single-bit flips, each refused by the check that owns the bytes ---

# region -> (expected label, exception type)
FLIP_LABELS: dict[str, tuple[str, type[EvidenceError]]] = {
    "header.version": ("quote.version", MalformedEvidence),
    "header.att_key_type": ("quote.att_key_type", MalformedEvidence),
    "header.tee_type": ("quote.tee_type", MalformedEvidence),
    "header.reserved": ("quote.signature", SignatureInvalid),
    "header.qe_vendor_id": ("quote.qe_vendor_id", MalformedEvidence),
    "header.user_data": ("quote.signature", SignatureInvalid),
    "body": ("quote.signature", SignatureInvalid),
    "signature": ("quote.signature", SignatureInvalid),
    "attestation_key": ("quote.qe_binding", EvidenceError),
    "qe_report": ("quote.qe_report_signature", SignatureInvalid),
    "qe_report_signature": ("quote.qe_report_signature", SignatureInvalid),
    "qe_auth_data": ("quote.qe_binding", EvidenceError),
}


def regions(q: native.TdxQuote) -> dict[str, range]:
    sig = q.signed_size + 4
    auth = sig + 134 + 384 + 64 + 2
    return {
        "header.version": range(0, 2), "header.att_key_type": range(2, 4), "header.tee_type": range(4, 8),
        "header.reserved": range(8, 12), "header.qe_vendor_id": range(12, 28), "header.user_data": range(28, 48),
        "body": range(q.signed_size - q.body_size, q.signed_size), "signature": range(sig, sig + 64),
        "attestation_key": range(sig + 64, sig + 128), "qe_report": range(sig + 134, sig + 518),
        "qe_report_signature": range(sig + 518, sig + 582), "qe_auth_data": range(auth, auth + len(q.qe_auth_data)),
    }


def flip_and_check(data: bytes, point: bytes, allow_trailing: bool, rng: random.Random, per_region: int) -> int:
    q = native.tdx_parse(data, allow_trailing_bytes=allow_trailing)
    checked = 0
    for region, span in regions(q).items():
        label, kind = FLIP_LABELS[region]
        positions = {span.start, span.stop - 1, *(rng.choice(span) for _ in range(per_region))}
        for pos in positions:
            bits = [1] if region == "header.version" else [rng.randrange(8)]  # 4 ^ 1 = 5 is another version
            for bit in bits:
                bad = bytearray(data)
                bad[pos] ^= 1 << bit
                if region == "header.version":
                    bad[0:2] = struct.pack("<H", q.version ^ 2)  # 6 or 7: an unknown version
                err = refusal(lambda b=bytes(bad): native.tdx_verify(b, point, allow_trailing_bytes=allow_trailing))
                assert err.check == label, (region, pos, bit, err.check, str(err))
                assert isinstance(err, kind) and (kind is not EvidenceError or not isinstance(err, SignatureInvalid))
                checked += 1
    return checked


def test_single_bit_flips_real(real: RealQuote) -> None:
    assert flip_and_check(real.data, real.pck_point, allow(real), random.Random(real.name), 6) > 60


@pytest.mark.parametrize(("version", "body_type"), [(4, 2), (5, 2), (5, 3)])
def test_single_bit_flips_synthetic(version: int, body_type: int) -> None:
    data, keys = build_quote(version=version, body_type=body_type, padding=3)
    assert flip_and_check(data, keys.pck_point, False, random.Random(version * 10 + body_type), 4) > 40


def test_pck_chain_is_not_signed_by_the_quote(real: RealQuote) -> None:
    """The chain is judged by the trust layer (its own signatures); a changed byte there still verifies here."""
    q = native.tdx_parse(real.data, allow_trailing_bytes=True)
    at = real.data.index(q.pck_chain_pem) + 100
    bad = bytearray(real.data)
    bad[at] ^= 0x20
    assert native.tdx_verify(bytes(bad), real.pck_point, allow_trailing_bytes=True).pck_chain_pem != q.pck_chain_pem


# --- structural refusals, each with its label ---

def edit(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def structural_cases() -> list[tuple[str, bytes, str]]:
    """(what, quote bytes, expected check) on a v5/TD 1.5 synthetic quote with a 10-byte chain."""
    chain = b"0123456789"
    data, _ = build_quote(version=5, body_type=3, pck_chain=chain)
    lay = layout(5, 3, 32, len(chain))
    v4, _ = build_quote(version=4, pck_chain=chain)
    return [
        ("empty", b"", "quote.length"),
        ("47 bytes", data[:47], "quote.length"),
        ("v5 without its body descriptor", data[:50], "quote.length"),
        ("cut inside the body", data[:600], "quote.length"),
        ("v4 cut inside the body", v4[:631], "quote.length"),
        ("version 3", edit(data, 0, "<H", 3), "quote.version"),
        ("version 6", edit(data, 0, "<H", 6), "quote.version"),
        ("attestation key type 3 (P-384)", edit(data, 2, "<H", 3), "quote.att_key_type"),
        ("TEE type 0 (SGX)", edit(data, 4, "<I", 0), "quote.tee_type"),
        ("another QE vendor", data[:12] + bytes(16) + data[28:], "quote.qe_vendor_id"),
        ("body type 1 (SGX report)", edit(data, 48, "<H", 1), "quote.body_type"),
        ("body type 4 (TD 1.5 Ex)", edit(data, 48, "<H", 4), "quote.body_type"),
        ("body type 2 with 648 bytes", edit(data, 48, "<H", 2), "quote.body_size"),
        ("body type 3 with 584 bytes", edit(data, 50, "<I", 584), "quote.body_size"),
        ("no signature_data_len", data[:lay.signed_size + 3], "quote.signature_data_length"),
        ("signature data cut short", data[:-1], "quote.signature_data_length"),
        ("signature_data_len past the end", edit(data, lay.signed_size, "<I", 2**32 - 1),
         "quote.signature_data_length"),
        ("signature_data_len too small", edit(data, lay.signed_size, "<I", 100), "quote.signature_data_length"),
        ("signature_data_len one more, a zero byte behind",
         edit(data + b"\0", lay.signed_size, "<I", lay.end - lay.signed_size - 3), "quote.signature_data_length"),
        ("certification data type 5", edit(data, lay.cert_type, "<H", 5), "quote.cert_data_type"),
        ("certification data type 7", edit(data, lay.cert_type, "<H", 7), "quote.cert_data_type"),
        ("certification data size past the signature data", edit(data, lay.cert_size, "<I", 2**32 - 1),
         "quote.cert_data_size"),
        ("certification data too small for the QE report", edit(data, lay.cert_size, "<I", 400),
         "quote.cert_data_size"),
        ("QE auth data size past its container", edit(data, lay.qe_auth_size, "<H", 0xFFFF), "quote.qe_auth_data"),
        ("PCK data type 6", edit(data, lay.pck_type, "<H", 6), "quote.pck_cert_type"),
        ("PCK data type 4 (PCK leaf only)", edit(data, lay.pck_type, "<H", 4), "quote.pck_cert_type"),
        ("PCK data size one more", edit(data, lay.pck_size, "<I", len(chain) + 1), "quote.pck_cert_size"),
        ("PCK data size one less", edit(data, lay.pck_size, "<I", len(chain) - 1), "quote.pck_cert_size"),
        ("certification data size one less", edit(data, lay.cert_size, "<I", lay.end - lay.qe_report - 1),
         "quote.pck_cert_size"),
        ("non-zero byte after the signature data", data + b"\0\0\x01", "quote.trailing_bytes"),
    ]


@pytest.mark.parametrize(("what", "data", "check"), structural_cases(), ids=[c[0] for c in structural_cases()])
def test_structural_refusal(what: str, data: bytes, check: str) -> None:
    err = refusal(lambda: native.tdx_parse(data))
    assert isinstance(err, MalformedEvidence) and err.check == check, (what, err.check, str(err))


def test_every_truncation_of_a_real_quote(real: RealQuote) -> None:
    q = native.tdx_parse(real.data, allow_trailing_bytes=True)
    end = q.signed_size + 4 + q.signature_data_len
    for n in range(end):
        err = refusal(lambda n=n: native.tdx_parse(real.data[:n]))
        want = ("quote.length" if n < q.signed_size else "quote.signature_data_length")
        assert err.check == want, (n, err.check)
    assert native.tdx_parse(real.data[:end]).padding == 0


# --- the cryptographic checks on synthetic quotes: every other rule intact ---

def test_synthetic_shapes_verify() -> None:
    keys = QuoteKeys()
    for version, body_type in ((4, 2), (5, 2), (5, 3)):
        for auth in (b"", b"\x01", bytes(range(32)), bytes(300)):
            for chain in (b"", b"\0", b"PEM\0", b"PEM"):
                data, _ = build_quote(keys, version=version, body_type=body_type, qe_auth_data=auth, pck_chain=chain)
                q = native.tdx_verify(data, keys.pck_point)
                assert (q.version, q.body_type, q.body_size) == (version, body_type, 648 if body_type == 3 else 584)
                assert q.qe_auth_data == auth and q.pck_chain_pem == chain.removesuffix(b"\0")
                assert (q.tee_tcb_svn2 is None) == (body_type == 2)
                assert q.attestation_key == keys.attestation_key and q.attestation_point == b"\x04" + q.attestation_key


def test_binding_compares_all_64_bytes() -> None:
    data, keys = build_quote(report_data_tail=bytes(31) + b"\x01")  # the QE signed it: only the binding fails
    err = refusal(lambda: native.tdx_verify(data, keys.pck_point))
    assert type(err) is EvidenceError and err.check == "quote.qe_binding"


def test_attestation_key_off_the_curve() -> None:
    keys = QuoteKeys()
    data, _ = build_quote(keys)
    lay = layout(auth_size=32, chain_size=len(b"-----BEGIN CERTIFICATE-----\n\0"))
    bad = bytearray(data)
    bad[lay.attestation_key + 63] ^= 1
    # Re-bind and re-sign the QE report for the broken key, so only the key itself is wrong.
    qe = bytearray(bad[lay.qe_report:lay.qe_report + 384])
    qe[320:352] = hashlib.sha256(bytes(bad[lay.attestation_key:lay.attestation_key + 64]) + bytes(range(32))).digest()
    bad[lay.qe_report:lay.qe_report + 384] = qe
    bad[lay.qe_report_signature:lay.qe_report_signature + 64] = sign_raw(keys.pck, bytes(qe))
    err = refusal(lambda: native.tdx_verify(bytes(bad), keys.pck_point))
    assert isinstance(err, SignatureInvalid) and err.check == "quote.signature" and "point" in str(err)


@pytest.mark.parametrize(("where", "check"), [("signature", "quote.signature"),
                                              ("qe_report_signature", "quote.qe_report_signature")])
@pytest.mark.parametrize("value", [0, P256_N, 2**256 - 1])
def test_signature_scalar_ranges(where: str, check: str, value: int) -> None:
    data, keys = build_quote()
    at = getattr(layout(chain_size=len(b"-----BEGIN CERTIFICATE-----\n\0")), where)
    for half in (0, 32):
        bad = bytearray(data)
        bad[at + half:at + half + 32] = value.to_bytes(32, "big")
        err = refusal(lambda b=bytes(bad): native.tdx_verify(b, keys.pck_point))
        assert isinstance(err, SignatureInvalid) and err.check == check and "order" in str(err)


def test_bad_pck_keys() -> None:
    data, keys = build_quote()
    point = keys.pck_point
    for bad in (b"", point[:64], point + b"\0", b"\x02" + point[1:], point[:64] + bytes([point[64] ^ 1])):
        err = refusal(lambda k=bad: native.tdx_verify(data, k))
        assert isinstance(err, SignatureInvalid) and err.check == "quote.qe_report_signature", bad.hex()
        assert "PCK public key" in str(err)


def test_verify_releases_the_gil_and_is_thread_safe() -> None:
    """Several threads verifying good and bad quotes at once each get their own answer."""
    keys = QuoteKeys()
    good, _ = build_quote(keys, version=5, body_type=3)
    bad = bytearray(good)
    bad[100] ^= 1
    def check() -> None:
        for _ in range(30):
            assert native.tdx_verify_status(good, keys.pck_point) == 0
            assert native.tdx_verify_status(bytes(bad), keys.pck_point) == native.lib.KBS_ERR_TDX_QUOTE_SIG_INVALID

    on_threads(check)


def test_every_status_has_a_label() -> None:
    from kbs.native._ffi import _STATUS

    names = [n for n in dir(native.lib) if n.startswith("KBS_ERR_TDX_")]
    assert len(names) == 25
    for name in names:
        cls, check, message = _STATUS[getattr(native.lib, name)]
        if name.endswith("_TABLE_MISMATCH"):  # a key table of another key: the caller's bug, not the quote's
            assert not issubclass(cls, EvidenceError) and check == "internal" and message
        else:
            assert issubclass(cls, EvidenceError) and check.startswith("quote.") and message
