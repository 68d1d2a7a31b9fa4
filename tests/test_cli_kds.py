"""`kbs verify snp` as a real program fetching what it lacks from a KDS on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kbs.evidence.snp.report import parse_report
from kbs.trust.amd.kds import vcek_url_path
from tests.amd_synth import NOW, SyntheticAmd, build_report, sign_report
from tests.conftest import load_snp_vector
from tests.test_kds import FakeKds, chain_pem, serve

AT = "2026-11-25T18:30:00Z"


async def kbs(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "kbs.cli", *argv,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_fetches_vcek_and_chain_then_works_offline(tmp_path: Path) -> None:
    v = load_snp_vector("milan-v3-oak")
    report = parse_report(v.report)
    kds = FakeKds()
    vcek_key = kds.ok(vcek_url_path("Milan", report.raw.chip_id, report.tcbs("Milan")["reported"]),
                      (v.path / "vcek.der").read_bytes())
    kds.ok("/vcek/v1/Milan/cert_chain", chain_pem("Milan"))
    cache = tmp_path / "cache"

    async def scenario() -> None:
        async with serve(kds) as base:
            code, out, err = await kbs("verify", "snp", str(v.path / "report.bin"), "--kds-url", base,
                                       "--cache-dir", str(cache), "--at", AT, "--json")
            assert code == 0, err
            assert json.loads(out)["measurement"] == v.expected["measurement"]
            assert kds.hits[vcek_key] == 1 and kds.total == 2
            code, out, err = await kbs("verify", "snp", str(v.path / "report.bin"), "--offline",
                                       "--cache-dir", str(cache), "--at", AT, "--json")
            assert code == 0, err
            assert kds.total == 2  # offline: served from the cache

    asyncio.run(scenario())


def test_missing_vcek_on_kds_is_a_clear_rejection(tmp_path: Path) -> None:
    v = load_snp_vector("turin-v5-oak")
    kds = FakeKds()

    async def scenario() -> None:
        async with serve(kds) as base:
            code, out, err = await kbs("verify", "snp", str(v.path / "report.bin"), "--kds-url", base,
                                       "--cache-dir", str(tmp_path), "--at", AT)
            assert code == 1 and out == ""
            assert "collateral.vek" in err and "/vcek/v1/Turin/3b42092f69c656d3?" in err

    asyncio.run(scenario())


def test_crl_from_kds_checked_with_synthetic_pki(tmp_path: Path) -> None:
    synth = SyntheticAmd("Milan")
    chip = bytes(range(2, 66))
    vek = synth.issue_vek(hwid=chip)
    assert vek.private_key is not None
    data = sign_report(build_report(chip_id=chip), vek.private_key)
    report_file = tmp_path / "report.bin"
    report_file.write_bytes(data)
    root = tmp_path / "root.pem"
    root.write_bytes(synth.ark_pem)
    ask_pem = x509.load_der_x509_certificate(synth.ask_der).public_bytes(Encoding.PEM)
    report = parse_report(data)
    kds = FakeKds()
    kds.ok(vcek_url_path("Milan", chip, report.tcbs("Milan")["reported"]), vek.der)
    kds.ok("/vcek/v1/Milan/cert_chain", ask_pem + synth.ark_pem)
    crl_key = kds.ok("/vcek/v1/Milan/crl", synth.crl())
    args = ["verify", "snp", str(report_file), "--trust-root", str(root), "--check-crl", "--at", AT]

    async def scenario() -> None:
        async with serve(kds) as base:
            code, _, err = await kbs(*args, "--kds-url", base, "--cache-dir", str(tmp_path / "c1"))
            assert code == 0, err
            assert kds.hits[crl_key] == 1
            ask_serial = x509.load_der_x509_certificate(synth.ask_der).serial_number
            kds.ok("/vcek/v1/Milan/crl", synth.crl((ask_serial,), last=NOW - dt.timedelta(hours=1)))
            code, _, err = await kbs(*args, "--kds-url", base, "--cache-dir", str(tmp_path / "c2"))
            assert code == 1 and "crl.revoked" in err

    asyncio.run(scenario())
