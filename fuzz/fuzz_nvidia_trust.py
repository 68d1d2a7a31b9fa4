"""Fuzz NVIDIA's device-chain and OCSP checks with mutations of real inputs: every input is refused with a
labelled error or accepted whole, and nothing mutated is ever accepted as NVIDIA's."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import re
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fuzz.mutations import mutated
from kbs.errors import KbsError
from kbs.trust.nvidia.certs import verify_device_chain
from kbs.trust.nvidia.fwid import leaf_fwid
from kbs.trust.nvidia.ocsp import OcspChecker, OcspRefused
from kbs.trust.x509 import load_certificates
from tests.conftest import vectors_dir

GPU = vectors_dir() / "gpu"
CHAIN = GPU / "nvtrust" / "hopperCertChain.txt"
BLACKWELL = GPU / "attestation-sdk" / "unit-tests" / "sample_attestation_data" / "gpu" / "blackwellCertChain.txt"
AT = dt.datetime(2025, 8, 21, 12, 0, tzinfo=dt.UTC)
CHAINS = [p.read_bytes() for p in (CHAIN, BLACKWELL) if p.is_file()] or [b"-----BEGIN CERTIFICATE-----"]
LEAVES = [load_certificates(c)[0] for c in CHAINS if c.startswith(b"-----")]
OCSP = sorted((GPU / "go-nvattest-tools" / "ocsp").glob("test_gpu_certificate_l4_*.dat"))
RESPONSES = [base64.b64decode(p.read_bytes()) for p in OCSP] or [b"\x30\x00"]


def _pem_bodies(chain: bytes) -> list[bytes]:
    return [base64.b64decode(b"".join(m.split())) for m in
            re.findall(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", chain, re.S)]


def _repem(ders: list[bytes]) -> bytes:
    return b"".join(b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(d) + b"-----END CERTIFICATE-----\n"
                    for d in ders)


@given(st.integers(0, len(CHAINS) - 1), st.integers(0, 4), st.data())
def test_a_mutated_certificate_is_never_accepted(which: int, index: int, data: st.DataObject) -> None:
    ders = _pem_bodies(CHAINS[which])
    if len(ders) != 5:
        return
    ders[index] = data.draw(mutated([ders[index]], max_edits=4))
    try:
        chain = verify_device_chain(_repem(ders), AT)
    except KbsError as exc:
        assert exc.check == "nvgpu.chain", exc.check
        return
    # Accepted only when the edit left the DER itself alone (the PEM text is what was mutated).
    assert [c.der for c in chain.certificates] == _pem_bodies(CHAINS[which])


@given(mutated([leaf.extensions[oid] for leaf in LEAVES for oid in leaf.extensions if oid.startswith("2.23.133.5.4.1")]
               or [b"\x30\x00"], max_edits=6))
def test_mutated_fwid_extensions_fail_cleanly(value: bytes) -> None:
    if not LEAVES:
        return
    leaf = LEAVES[0]
    oid = next(o for o in leaf.extensions if o.startswith("2.23.133.5.4.1"))
    forged = dataclasses.replace(leaf, extensions={**leaf.extensions, oid: value})
    try:
        fwid = leaf_fwid(forged)
    except KbsError as exc:
        assert exc.check == "nvgpu.chain"
        return
    assert len(fwid.digest) == 48 and fwid.digest in value


@given(mutated(RESPONSES, max_edits=4))
def test_mutated_ocsp_responses_fail_cleanly(response: bytes) -> None:
    if not CHAIN.is_file():
        return
    chain = verify_device_chain(CHAIN.read_bytes(), AT)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "r.der").write_bytes(response)
        try:
            results = asyncio.run(OcspChecker(directory=Path(folder)).check(chain.certificates, AT, indices=[1],
                                                                             stance="cached"))
        except OcspRefused as exc:
            assert exc.detail.startswith("ocsp."), exc.detail
            return
    assert results[0].status == "good" and response == RESPONSES[0]
