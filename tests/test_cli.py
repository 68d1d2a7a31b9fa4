"""`kbs verify snp`: exit codes, output forms and every way to hand it certificates."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kbs.cli import main
from kbs.evidence.snp.certtable import GUID_ARK, GUID_ASK, GUID_CRL, GUID_VCEK, build_cert_table
from tests.amd_synth import SyntheticAmd, build_report, sign_report
from tests.broker import REPO
from tests.conftest import load_snp_vector
from tests.test_snp_verify import certs_of

AT = "2026-11-25T18:30:00Z"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_valid_report_prints_claims(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    v = load_snp_vector("milan-v2-gsg")
    code, out, err = run(capsys, "verify", "snp", str(v.path / "report.bin"), "--certs",
                         str(v.path / "vcek.der"), "--certs", str(v.chain_file), "--at", AT, "--offline",
                         "--cache-dir", str(tmp_path))
    assert code == 0
    claims = json.loads(out)
    assert claims["measurement"] == v.expected["measurement"]
    assert claims["reported_tcb_snp"] == 5 and claims["policy_debug_allowed"] is True
    assert "verified: Milan SNP report v2" in err


def test_certs_in_one_file_any_order(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    v = load_snp_vector("milan-v2-azure-trustee")  # VCEK, ASK, ARK in one PEM, as Azure serves them
    code, out, _ = run(capsys, "verify", "snp", str(v.path / "report.bin"), "--certs",
                       str(v.path / "vcek_ask_ark.pem"), "--at", AT, "--offline", "--json",
                       "--cache-dir", str(tmp_path))
    assert code == 0 and json.loads(out)["product"] == "Milan"


def test_expired_vlek_exit_1_one_line_and_passes_inside_validity(capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:
    v = load_snp_vector("milan-v3-vlek-aws-trustee")
    args = ["verify", "snp", str(v.path / "report.bin"), "--certs", str(v.path / "vlek.der"),
            "--certs", str(v.chain_file), "--offline", "--cache-dir", str(tmp_path)]
    code, out, err = run(capsys, *args, "--at", AT)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "chain.validity" in err and "SEV-VLEK expired" in err
    code, out, err = run(capsys, *args, "--at", "2025-06-01T00:00:00+00:00")
    assert code == 1 and "report.vmpl" in err  # the AWS report is from VMPL 1
    args += ["--vmpl", "1"]
    code, out, _ = run(capsys, *args, "--at", "2025-06-01T00:00:00+00:00", "--json")
    assert code == 0 and json.loads(out)["signing_key"] == "VLEK"
    code, out, _ = run(capsys, *args, "--json")
    assert code == 1 and json.loads(out)["error"]["check"] == "chain.validity"


def test_cert_table_supplies_the_chain(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A synthetic table (no real one exists) built from the real certificates."""
    v = load_snp_vector("genoa-v5-oak")
    vek, ask, ark = certs_of(v)
    table = tmp_path / "table.bin"
    table.write_bytes(build_cert_table([(GUID_VCEK, vek.der), (GUID_ASK, ask.der), (GUID_ARK, ark.der)]))
    code, out, _ = run(capsys, "verify", "snp", str(v.path / "report.bin"), "--cert-table", str(table),
                       "--at", AT, "--offline", "--json", "--cache-dir", str(tmp_path))
    assert code == 0 and json.loads(out)["launch_mit_vector"] == "0x1"


def test_trust_root_replaces_pins(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    synth = SyntheticAmd("Genoa")
    vek = synth.issue_vek(hwid=bytes(range(64)))
    assert vek.private_key is not None
    report = sign_report(build_report(cpuid=(0x19, 0x11, 1), chip_id=bytes(range(64))), vek.private_key)
    (tmp_path / "r.bin").write_bytes(report)
    (tmp_path / "root.pem").write_bytes(synth.ark_pem)
    table = build_cert_table([(GUID_VCEK, vek.der), (GUID_ASK, synth.ask_der), (GUID_ARK, synth.ark_der),
                              (GUID_CRL, synth.crl())])
    (tmp_path / "t.bin").write_bytes(table)
    base = ["verify", "snp", str(tmp_path / "r.bin"), "--cert-table", str(tmp_path / "t.bin"),
            "--offline", "--cache-dir", str(tmp_path), "--at", AT]
    assert run(capsys, *base, "--trust-root", str(tmp_path / "root.pem"), "--check-crl")[0] == 0
    code, _, err = run(capsys, *base)
    assert code == 1 and "chain.root" in err and "not the pinned AMD root" in err


@pytest.mark.parametrize("argv", [
    ["verify", "snp"],
    ["verify", "tdx"],
    ["verify", "nvgpu"],
    ["verify", "nvgpu", "r.txt", "--ocsp-dir", "d", "--no-ocsp"],
    ["verify", "nvgpu", "r.txt", "--arch", "LS10"],
    ["verify", "tdx", "q.dat", "--at", "yesterday"],
    ["verify", "snp", "r.bin", "--at", "yesterday"],
    ["verify", "snp", "r.bin", "--at", "2026-01-01T00:00:00"],
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_unreadable_file_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "verify", "snp", str(tmp_path / "missing.bin"))
    assert code == 2 and "cannot read report" in err
    code, _, err = run(capsys, "verify", "tdx", str(tmp_path / "missing.dat"))
    assert code == 2 and "cannot read quote" in err


def test_garbage_report_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "r.bin").write_bytes(b"\x00" * 100)
    code, _, err = run(capsys, "verify", "snp", str(tmp_path / "r.bin"), "--offline")
    assert code == 1 and "report.length" in err


def test_entry_point_runs_as_a_program(tmp_path: Path) -> None:
    v = load_snp_vector("turin-v5-oak")
    proc = subprocess.run([sys.executable, "-m", "kbs.cli", "verify", "snp", str(v.path / "report.bin"),
                           "--certs", str(v.path / "vcek.der"), "--certs", str(v.chain_file), "--json",
                           "--at", AT, "--offline", "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    claims = json.loads(proc.stdout)
    assert claims["product"] == "Turin" and claims["reported_tcb_fmc"] == 0
    assert claims["chip_id"].startswith("3b42092f69c656d3")


def test_version_is_printed() -> None:
    done = subprocess.run([sys.executable, "-m", "kbs.cli", "--version"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == f"kbs {importlib.metadata.version('kbs')}", done


def test_a_reader_that_left_is_no_traceback(tmp_path: Path) -> None:
    """`kbs verify ... | head`: stdout's reader is gone; the command ends quietly with the SIGPIPE status."""
    v = load_snp_vector("milan-v2-gsg")
    argv = ["verify", "snp", str(v.path / "report.bin"), "--certs", str(v.path / "vcek.der"), "--certs",
            str(v.chain_file), "--at", AT, "--offline", "--cache-dir", str(tmp_path)]
    code = ("import os, sys\nr, w = os.pipe()\nos.close(r)\nos.dup2(w, 1)\n"
            f"from kbs.cli import main\nsys.exit(main({argv!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 141 and "Traceback" not in done.stderr and "Exception" not in done.stderr, done
