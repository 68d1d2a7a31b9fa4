"""Seed corpora for the libFuzzer harnesses, generated at build time into build/ (never committed).

Real data is read in place from $KBS_VECTORS (default ../shared/vectors): every SNP report with
its VCEK/VLEK key, certificate tables laid out from the real certificates under AMD's GUIDs, every
TDX quote with the PCK key of its own PCK leaf, every NVIDIA GPU report with its leaf key, and the
Wycheproof P-384 and P-256 P1363 vectors.
Synthetic seeds cover each mode of every harness, so the corpora are useful where the vectors are
absent.  Standard library only.

    python3 fuzz/libfuzzer/make_seeds.py OUT_DIR     # writes OUT_DIR/<harness>/<seed>
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import struct
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REPORT_SIZE = 1184
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes
GUID_CRL = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea").bytes


def vectors_dir() -> Path:
    return Path(os.environ.get("KBS_VECTORS", REPO.parent / "shared" / "vectors")).resolve()


def pem_certs(text: str) -> list[bytes]:
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    return [base64.b64decode("".join(b.split())) for b in blocks]


def read_certs(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return pem_certs(data.decode("ascii", "replace")) if b"-----BEGIN" in data else [data]


def ec_point(der: bytes) -> bytes | None:
    """The P-384 key of a certificate: BIT STRING 03 62 00 || 04 X Y."""
    i = der.find(b"\x03\x62\x00\x04")
    return der[i + 3 : i + 100] if i >= 0 and len(der) >= i + 100 else None


def cert_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    header = (len(entries) + 1) * 24
    out, blobs, offset = b"", b"", header
    for guid, blob in entries:
        out += guid + struct.pack("<II", offset, len(blob))
        blobs += blob
        offset += len(blob)
    return out + bytes(24) + blobs


def snp_vectors(root: Path) -> list[tuple[str, bytes, bytes | None, list[bytes]]]:
    """(name, report, key point or None, [VEK, ASK, ARK] DER) for each real report."""
    found = []
    snp = root / "snp"
    # chains/milan_vcek_cert_chain.pem -> "milan_vcek"
    chains = {"_".join(p.name.split("_")[:2]): read_certs(p) for p in sorted(snp.glob("chains/*.pem"))}
    for report in sorted(snp.glob("*/report.bin")):
        vek: list[bytes] = []
        for name in ("vcek.der", "vlek.der", "vcek.pem", "vcek_ask_ark.pem"):
            if (report.parent / name).is_file():
                vek = read_certs(report.parent / name)
                break
        kind = "vlek" if (report.parent / "vlek.der").is_file() else "vcek"
        family = report.parent.name.split("-")[0]
        chain = chains.get(f"{family}_{kind}", [])
        certs = vek[:1] + (vek[1:] if len(vek) > 1 else chain)
        found.append((report.parent.name, report.read_bytes(), ec_point(vek[0]) if vek else None, certs))
    trustee = root / "trustee" / "evidence" / "snp"
    for rep_name, key_name in (("test-report.bin", "test-vcek.der"), ("test-vlek-report.bin", "test-vlek.der")):
        if (trustee / rep_name).is_file() and (trustee / key_name).is_file():
            der = (trustee / key_name).read_bytes()
            found.append(("trustee-" + rep_name[:-4], (trustee / rep_name).read_bytes(), ec_point(der), [der]))
    return found


def synthetic_report(version: int, fill: int) -> bytes:
    b = bytearray([fill]) * REPORT_SIZE
    struct.pack_into("<IIQ", b, 0, version, 1, (1 << 17) | (1 << 16))
    struct.pack_into("<I", b, 0x34, 1)
    struct.pack_into("<I", b, 0x48, 0)
    b[0x4C:0x50] = bytes(4)
    b[0x188 if version == 2 else 0x18B : 0x1A0] = bytes(0x1A0 - (0x188 if version == 2 else 0x18B))
    b[0x1EB] = b[0x1EF] = 0
    if version < 5:
        b[0x1F8:0x208] = bytes(16)
    b[0x208:0x2A0] = bytes(0x98)
    b[0x2D0:0x2E8] = bytes(24)
    b[0x318:] = bytes(REPORT_SIZE - 0x318)
    return bytes(b)


def wycheproof(root: Path) -> list[tuple[str, bytes, bytes, bytes, str]]:
    """(name, key, hash, r||s, result) from the P-384 P1363 files."""
    out = []
    for fname, hash_name in (("ecdsa_secp384r1_sha384_p1363_test.json", "sha384"),
                             ("ecdsa_secp384r1_sha512_p1363_test.json", "sha512")):
        path = root / "wycheproof" / fname
        if not path.is_file():
            continue
        for group in json.loads(path.read_text())["testGroups"]:
            key = bytes.fromhex(group["publicKey"]["uncompressed"])
            for t in group["tests"]:
                sig = bytes.fromhex(t["sig"])
                if len(key) == 97 and len(sig) == 96:
                    digest = hashlib.new(hash_name, bytes.fromhex(t["msg"])).digest()
                    out.append((f"{hash_name}-{t['tcId']}", key, digest, sig, t["result"]))
    return out


def tdx_quotes(root: Path) -> list[tuple[str, bytes]]:
    """(name, quote) for every real TDX quote: tdx/**/*.dat and *.bin, trustee/evidence/tdx/tdx_quote_{4,5}.dat."""
    tdx = root / "tdx"
    paths = sorted([*tdx.rglob("*.dat"), *tdx.rglob("*.bin")]) if tdx.is_dir() else []
    paths += [root / "trustee" / "evidence" / "tdx" / f"tdx_quote_{i}.dat" for i in (4, 5)]
    return [(str(p.relative_to(root)).replace("/", "-"), p.read_bytes()) for p in paths if p.is_file()]


def tdx_pck_point(quote: bytes) -> bytes | None:
    """The P-256 key of the quote's PCK leaf (its first PEM certificate): BIT STRING 03 42 00 || 04 X Y."""
    certs = pem_certs(quote.decode("latin-1"))
    if not certs:
        return None
    i = certs[0].find(b"\x03\x42\x00\x04")
    return certs[0][i + 3 : i + 68] if i >= 0 else None


def wycheproof_p256(root: Path) -> list[tuple[str, bytes, bytes, bytes, str]]:
    """(name, key, SHA-256, r||s, result) from the P-256 P1363 file."""
    path = root / "wycheproof" / "ecdsa_secp256r1_sha256_p1363_test.json"
    if not path.is_file():
        return []
    out = []
    for group in json.loads(path.read_text())["testGroups"]:
        key = bytes.fromhex(group["publicKey"]["uncompressed"])
        for t in group["tests"]:
            sig = bytes.fromhex(t["sig"])
            if len(key) == 65 and len(sig) == 64:
                out.append((f"{t['tcId']}", key, hashlib.sha256(bytes.fromhex(t["msg"])).digest(), sig, t["result"]))
    return out


def gpu_reports(root: Path) -> list[tuple[str, bytes, bytes | None]]:
    """(name, report, leaf P-384 point) for every NVIDIA GPU and NVSwitch report under gpu/: the hex text
    reports beside their PEM chains, the JSON bundles ({evidence, certificate} base64) and the jsonpickle
    dumps of go-nvattest-tools ({"py/b64": report} with {"pem": base64 PEM} chains)."""
    gpu = root / "gpu"
    if not gpu.is_dir():
        return []
    found: list[tuple[str, bytes, bytes | None]] = []

    def leaf(pem: bytes) -> bytes | None:
        certs = pem_certs(pem.decode("ascii", "replace"))
        return ec_point(certs[0]) if certs else None

    for report in sorted(gpu.rglob("*AttestationReport*.txt")) + sorted(gpu.rglob("*coco_report*.txt")):
        chain = report.with_name(report.name.replace("AttestationReport", "CertChain").replace(
            "InvalidSignature", "Expired").replace("coco_report", "coco_certs"))
        if chain.is_file():
            name = str(report.relative_to(gpu)).replace("/", "-")
            found.append((name, bytes.fromhex(report.read_text().strip()), leaf(chain.read_bytes())))
    for bundle in sorted(gpu.rglob("*.json")):
        data = json.loads(bundle.read_text())
        if isinstance(data, list) and data and isinstance(data[0], dict) and "evidence" in data[0]:
            for i, e in enumerate(data):
                found.append((f"{bundle.stem}-{i}", base64.b64decode(e["evidence"]),
                              leaf(base64.b64decode(e["certificate"]))))
        elif isinstance(data, dict) and "gpus" in data:
            devices = [(g["AttestationReport"], g["CertificateChains"]["GpuAttestationCertificateChain"])
                       for g in data["gpus"]]
            devices += [(s["attestation_report"], s["attestation_cert_chain"]) for s in data.get("nvswitches", [])]
            for i, (rep, chain_items) in enumerate(devices):
                found.append((f"{bundle.stem}-{i}", base64.b64decode(rep["py/b64"]),
                              leaf(base64.b64decode(chain_items[0]["pem"]))))
    return found


def write(out: Path, harness: str, name: str, data: bytes) -> None:
    (out / harness).mkdir(parents=True, exist_ok=True)
    (out / harness / name).write_bytes(data)


def main(out: Path) -> None:
    root = vectors_dir()
    harnesses = ("fuzz_snp_report", "fuzz_snp_verify", "fuzz_certtable", "fuzz_p384_verify",
                 "fuzz_p384_verify_portable", "fuzz_p384_batch", "fuzz_tdx_quote", "fuzz_p256_verify",
                 "fuzz_spdm_report", "fuzz_snp_coco")
    for harness in harnesses:
        shutil.rmtree(out / harness, ignore_errors=True)
        (out / harness).mkdir(parents=True)
    vectors = snp_vectors(root) if root.is_dir() else []

    # fuzz_snp_report: the real reports, synthetic well-formed ones of every version, odd lengths.
    for name, report, _, _ in vectors:
        write(out, "fuzz_snp_report", name, report)
    for version in (2, 3, 4, 5):
        write(out, "fuzz_snp_report", f"synthetic-v{version}", synthetic_report(version, 0x5A))
    for n in (0, 1, 4, REPORT_SIZE - 1, REPORT_SIZE + 1):
        write(out, "fuzz_snp_report", f"length-{n}", synthetic_report(3, 0)[:n].ljust(n, b"\0"))

    # fuzz_snp_verify: mode 0 = report with its own key (accepts) and with another's (refuses);
    # mode 1 = a report signed inside the harness, with and without a flipped bit.
    keyed = [(n, r, k) for n, r, k, _ in vectors if k is not None]
    for i, (name, report, key) in enumerate(keyed):
        write(out, "fuzz_snp_verify", f"own-key-{name}", b"\0\0" + key + b"\0" + report)
        other = keyed[(i + 1) % len(keyed)][2]
        if other != key:
            write(out, "fuzz_snp_verify", f"other-key-{name}", b"\0\0" + other + b"\0" + report)
        write(out, "fuzz_snp_verify", f"signed-{name}",
              b"\1\0" + struct.pack("<H", 0xFFFF) + bytes(range(1, 49)) + bytes(range(2, 50)) + report)
    for version in (2, 3, 5):
        rep = synthetic_report(version, 0x33)
        write(out, "fuzz_snp_verify", f"signed-synthetic-v{version}",
              b"\1\0" + struct.pack("<H", 100 * version) + bytes([version]) * 48 + bytes([7]) * 48 + rep)
    write(out, "fuzz_snp_verify", "unsigned-synthetic",
          b"\1\1" + struct.pack("<H", 0xFFFF) + bytes(96) + synthetic_report(3, 0)[:0x48] + b"\x1c")

    # fuzz_certtable: tables of the real certificates under AMD's GUIDs, and built ones.
    for name, _, _, certs in vectors:
        if not certs:
            continue
        guids = [GUID_VLEK if "vlek" in name else GUID_VCEK, GUID_ASK, GUID_ARK]
        table = cert_table(list(zip(guids, certs, strict=False)))
        write(out, "fuzz_certtable", f"real-{name}", b"\x08\x00" + table)
        write(out, "fuzz_certtable", f"real-{name}-crl", b"\x08\x00" + cert_table(
            [*zip(guids, certs, strict=False), (GUID_CRL, b"\x30\x03\x02\x01\x00")]))
    evidence = root / "trustee" / "evidence" / "snp" / "e2e-snp-evidence.json"
    if evidence.is_file():
        chain = json.loads(evidence.read_text()).get("cert_chain", [])
        guid_of = {"VCEK": GUID_VCEK, "VLEK": GUID_VLEK, "ASK": GUID_ASK, "ARK": GUID_ARK}
        entries = [(guid_of.get(c.get("cert_type"), GUID_CRL), bytes(c["data"])) for c in chain]
        write(out, "fuzz_certtable", "trustee-e2e", b"\x08\x00" + cert_table(entries))
    write(out, "fuzz_certtable", "empty", b"\x08\x00")
    write(out, "fuzz_certtable", "terminator-only", b"\x08\x00" + bytes(24))
    for k in range(9):
        desc = b"".join(bytes([i + 1]) * 16 + struct.pack("<HB", 3 + 5 * i, i) for i in range(k))
        write(out, "fuzz_certtable", f"built-{k}", b"\x08\x01" + bytes([k]) + desc + b"\0" + bytes(range(256)))
        write(out, "fuzz_certtable", f"built-{k}-perturbed",
              b"\x04\x01" + bytes([k]) + desc.replace(b"\x00\x00", b"\x00\x0b") + b"\x0f" + bytes(range(256)))

    # fuzz_p384_verify: Wycheproof in raw mode, then every mutation and crafted kind.
    # The portable-multiply build is about 5x slower: it gets every 8th Wycheproof case.
    for i, (name, key, digest, sig, result) in enumerate(wycheproof(root)):
        seed = bytes([0, 0, len(digest)]) + key + b"\0" + digest.ljust(64, b"\0") + sig
        for harness in ("fuzz_p384_verify", "fuzz_p384_verify_portable")[: 2 if i % 8 == 0 else 1]:
            write(out, harness, f"wycheproof-{name}-{result}", seed)
    for harness in ("fuzz_p384_verify", "fuzz_p384_verify_portable"):
        for mutation in range(16):
            write(out, harness, f"signed-{mutation}",
                  bytes([1, 0, mutation]) + struct.pack("<H", 77 * mutation + 5) + bytes(range(3, 51))
                  + bytes(range(60, 108)) + hashlib.sha512(bytes([mutation])).digest() + bytes(range(9, 57)))
        write(out, harness, "signed-short-hash",
              bytes([1, 41, 0, 0, 0]) + bytes(range(3, 51)) + bytes(range(60, 108)) + bytes(range(64)))
        for kind in range(4):
            write(out, harness, f"crafted-{kind}",
                  bytes([2, kind, 3]) + hashlib.sha384(b"s").digest() + hashlib.sha384(b"e").digest())

    # fuzz_p384_batch: small and chunk-crossing batches of every item kind.
    pool = b"".join(hashlib.sha384(bytes([j])).digest() + hashlib.sha384(bytes([j, 1])).digest() for j in range(4))
    for c, flags in ((1, 0), (8, 0), (7, 1), (6, 2), (5, 3), (200 + 8, 0), (200 + 15, 0)):
        items = b"".join(bytes([(37 * i) % 256, i]) for i in range(72))
        write(out, "fuzz_p384_batch", f"batch-{c}-{flags}",
              bytes([c, flags]) + bytes(range(5, 53)) + bytes(range(70, 118)) + pool + items)

    # fuzz_tdx_quote: mode 0 = the quote alone (parser), mode 1 = flags, the quote's own PCK point, the
    # quote (all three checks pass); mode 2 = quotes built and signed in the harness, one per mutation.
    for name, quote in (tdx_quotes(root) if root.is_dir() else []):
        write(out, "fuzz_tdx_quote", f"raw-{name}", b"\0" + quote)
        point = tdx_pck_point(quote)
        if point is not None:
            write(out, "fuzz_tdx_quote", f"keyed-{name}", b"\1\1" + point + quote)
    for shape in range(3):
        for mutation in range(12):
            header = bytes([2, shape, mutation]) + struct.pack("<HHHHB", 97 * mutation + 3, 0x0101 * shape + mutation,
                                                                 32 if mutation % 3 else 0, 40 + 61 * mutation,
                                                                 70 if shape == 0 else mutation)
            keys = b"".join(hashlib.sha256(bytes([shape, mutation, j])).digest() for j in range(5))
            write(out, "fuzz_tdx_quote", f"built-{shape}-{mutation}", header + keys + bytes(range(256)) * 4)

    # fuzz_p256_verify: Wycheproof P-256 in raw mode, then every mutation and crafted kind.
    for name, key, digest, sig, result in wycheproof_p256(root):
        write(out, "fuzz_p256_verify", f"wycheproof-{name}-{result}",
              bytes([0, 0, 32]) + key + b"\0" + digest.ljust(64, b"\0") + sig)
    for mutation in range(16):  # the same 16 mutations as P-384 (fuzz_common.h)
        write(out, "fuzz_p256_verify", f"signed-{mutation}",
              bytes([1, 0, mutation]) + struct.pack("<H", 77 * mutation + 5) + bytes(range(3, 35))
              + bytes(range(60, 92)) + hashlib.sha512(bytes([mutation])).digest() + bytes(range(9, 41)))
    write(out, "fuzz_p256_verify", "signed-short-hash",
          bytes([1, 41, 0, 0, 0]) + bytes(range(3, 35)) + bytes(range(60, 92)) + bytes(range(64)))
    for kind in range(4):
        write(out, "fuzz_p256_verify", f"crafted-{kind}",
              bytes([2, kind, 3]) + hashlib.sha256(b"s").digest() + hashlib.sha256(b"e").digest())

    # fuzz_spdm_report: mode 0 = the report alone (parser), mode 1 = flags, the report's own leaf point, the
    # report (verifies, but for the one NVIDIA broke on purpose); mode 2 = reports built and signed in the
    # harness, each mutation on a few shapes (64 blocks, 254 blocks, one block; every TLV count).
    for name, report, point in (gpu_reports(root) if root.is_dir() else []):
        write(out, "fuzz_spdm_report", f"raw-{name}", b"\0" + report)
        if point is not None:
            write(out, "fuzz_spdm_report", f"keyed-{name}", b"\1\0" + point + report)
            if report.endswith(b"\0"):  # trustee's CoCo report: its padding byte refused
                write(out, "fuzz_spdm_report", f"keyed-no-padding-{name}", b"\1\1" + point + report)
    for mutation in range(13):
        for shape, ntlvs in ((63, 16), (0, 31), (70, 0)):  # 64 blocks; 254 blocks; 1 block
            header = bytes([2, mutation]) + struct.pack("<HH", 97 * mutation + 3, 0x0101 * shape + mutation)
            keys = b"".join(hashlib.sha384(bytes([shape, mutation, j])).digest() for j in range(3))
            layout = bytes([shape, ntlvs, mutation % 8, 3 * mutation % 25, 7 * mutation, 2 * mutation + 1])
            write(out, "fuzz_spdm_report", f"built-{shape}-{mutation}", header + keys + layout + bytes(range(256)) * 80)

    # fuzz_snp_coco: mode 1 = a message built in the harness from report bytes (the first byte picks the
    # version: 2 + byte % 4), certificates, a style and one edit; mode 0 = a message as raw text.
    def coco_built(turin: int, style: int, certs: list[tuple[int, bytes]], at: int, action: int, token: int,
                   report: bytes, poison: int = 0) -> bytes:
        head = bytes([1, turin, style, len(certs)]) + b"".join(struct.pack("<BH", k, len(d)) for k, d in certs)
        return head + struct.pack("<HBBHB", at, action, token, 0x1234 + at, poison) + report + \
            b"".join(d for _, d in certs)

    body = bytes(range(256)) * 5
    for version in (2, 3, 4, 5):
        for turin in (0, 1):
            report = bytes([version - 2]) + hashlib.sha512(bytes([version, turin])).digest() * 19
            for style in (0, 7, 24, 63):
                built = [(3, body[:300]), (2, body[7:107]), (1, body[:50])][: style % 4]
                for action in (0, 3, 4, 7, 10):  # none; each edit kind (action // 3 % 4)
                    write(out, "fuzz_snp_coco", f"built-v{version}-t{turin}-s{style}-a{action}",
                          coco_built(turin, style, built, 17 * action + style, action, version + style, report,
                                     200 + (11 * action + version) % 56 if style == 24 else 0))
    for name, report, _, certs in vectors:
        version = int.from_bytes(report[:4], "little")
        chain = [(3, d) for d in certs[:1] if len(d) < 600]
        write(out, "fuzz_snp_coco", f"real-{name}",
              coco_built(0, 8, chain, 0, 0, 0, bytes([(version - 2) % 4]) + report[1:]))
    if evidence.is_file():
        text = evidence.read_bytes().strip()
        write(out, "fuzz_snp_coco", "raw-trustee-e2e",
              b'\0{"runtime-data":{"nonce":"n","tee-pubkey":{}},"tee-evidence":{"primary_evidence":' + text
              + b',"additional_evidence":""}}')
    for i, raw in enumerate((b"{}", b'{"runtime-data":1,"tee-evidence":{}}', b"[1,2,{\"a\":null}]")):
        write(out, "fuzz_snp_coco", f"raw-small-{i}", b"\0" + raw)

    counts = {h.name: len(list(h.iterdir())) for h in sorted(out.iterdir()) if h.is_dir()}
    print(f"libfuzzer seeds from {root if vectors else 'synthetic data only (no vectors at ' + str(root) + ')'}: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_seeds.py OUT_DIR")
    main(Path(sys.argv[1]))
