"""Each verifier's published claim schema against the claims it really emits on real evidence.

Both directions: every claim the verifiers produce on the vectors is in their schema with its type
(`conforms`), and every name a schema publishes is produced by at least one vector, so a schema
cannot promise claims that never come (a policy naming one would pass the upload check and never hold).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import io
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from kbs import cli, native
from kbs.evidence.base import GPU as GPU_CLASS
from kbs.evidence.base import Appraisal, Binding
from kbs.evidence.claimschema import WILDCARD, Schema, conforms, lookup, validate_schema
from kbs.evidence.nvgpu.verifier import EVIDENCE_KEY, NvgpuVerifier
from kbs.evidence.registry import KNOWN
from kbs.evidence.sample import verify_sample
from kbs.evidence.snp.verify import verify_snp
from kbs.evidence.tdx.claims import tdx_claims
from kbs.evidence.tdx.eventlog import parse_eventlog
from kbs.policy.ear import Submod, document_schema, ear_document
from kbs.trust.nvidia.ocsp import OcspChecker
from tests.appraisals import AFFIRMED, snp_sub
from tests.conftest import load_snp_vector, snp_vector_names, vector_file, vectors_dir
from tests.test_nvgpu_verifier import GPU, GPU_OCSP_DAY, NVTRUST_NONCE, NVTRUST_RIMS, _entry, _nvtrust_verifier, _verify
from tests.test_snp_verify import certs_of

needs_vectors = pytest.mark.skipif(not (vectors_dir() / "tdx" / "SOURCES.md").is_file(),
                                   reason=f"no vectors under KBS_VECTORS={vectors_dir()}")
SNP_AT = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)


def snp_claims() -> Iterator[dict[str, Any]]:
    for name in snp_vector_names():
        v = load_snp_vector(name)
        try:
            yield verify_snp(v.report, certs_of(v), SNP_AT).claims()
        except Exception:  # vectors that must fail (bad signature, expired) are other tests' business
            continue


def tdx_cli_claims() -> dict[str, Any]:
    """The full verifier's claims (TCB status, PCK, collateral dates) as `kbs verify tdx --json` prints them."""
    folder = vectors_dir() / "tdx" / "dcap-qvl"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(["verify", "tdx", "--collateral", str(folder / "quote_v4_b0c06f_collateral.json"),
                         "--at", "2025-07-01T00:00:00Z", "--json", str(folder / "quote_v4_b0c06f.dat")])
    assert code == 0, buffer.getvalue()
    document: dict[str, Any] = json.loads(buffer.getvalue())
    return document


def tdx_claims_all(tmp: Path) -> list[dict[str, Any]]:
    def trustee(name: str) -> Path:
        return vector_file("trustee", "evidence", "tdx", name)
    quote4 = native.tdx_parse(trustee("tdx_quote_4.dat").read_bytes())
    log = parse_eventlog(trustee("CCEL_data").read_bytes())
    return [tdx_cli_claims(), tdx_claims(quote4, eventlog=log),
            tdx_claims(native.tdx_parse(trustee("tdx_quote_5.dat").read_bytes()))]


def nvgpu_claims(tmp: Path) -> list[dict[str, Any]]:
    report = bytes.fromhex((GPU / "nvtrust/hopperAttestationReport.txt").read_text().strip())
    evidence = [_entry(report, (GPU / "nvtrust/hopperCertChain.txt").read_bytes())]
    device = _nvtrust_verifier(tmp / "a", ocsp="cached", rim_ocsp="off", rims=NVTRUST_RIMS)
    [matched] = _verify(device, evidence, NVTRUST_NONCE, GPU_OCSP_DAY)
    coco = bytes.fromhex((GPU / "trustee/hopper_coco_report1.txt").read_text().strip())
    chain = (GPU / "trustee/hopper_coco_certs1.txt").read_bytes()
    report_data = bytes.fromhex("87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec"
                                "e279b616efefc2aae21da80cf5581250")

    async def inline(fn: Callable[..., Any], *args: Any, inline: bool = False) -> Any:
        return fn(*args)
    verifier = NvgpuVerifier(rims=None, ocsp=OcspChecker(), ocsp_stance="off")
    [unchecked] = asyncio.run(verifier.verify([_entry(coco, chain)], Binding("n", {}, report_data=report_data),
                                              GPU_OCSP_DAY, inline))
    return [dict(matched.claims), dict(unchecked.claims)]


def sample_claims() -> list[dict[str, Any]]:
    digest = bytes(range(32))
    return [verify_sample({"svn": "1", "report_data": base64.b64encode(digest).decode()}, digest)]


def claims_of(tee: str, tmp: Path) -> list[dict[str, Any]]:
    producers: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "snp": lambda: list(snp_claims()), "tdx": lambda: tdx_claims_all(tmp), "nvgpu": lambda: nvgpu_claims(tmp),
        "sample": sample_claims}
    return producers[tee]()


def leaf_paths(schema: Schema, prefix: str = "") -> Iterator[str]:
    """Every path a schema names, down to its leaves (arrays as `[]`, varying keys as `*`)."""
    if isinstance(schema, tuple):
        for alternative in schema:
            yield from leaf_paths(alternative, prefix)
    elif isinstance(schema, list):
        yield from leaf_paths(schema[0], f"{prefix}[]")
    elif isinstance(schema, Mapping):
        for key, item in schema.items():
            yield from leaf_paths(item, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def produced_paths(value: Any, schema: Schema, prefix: str = "") -> Iterator[str]:
    """The schema paths a claims value fills (a key under a `*` object counts as `*`)."""
    if isinstance(schema, tuple):
        for alternative in schema:
            if not conforms(value, alternative):
                yield from produced_paths(value, alternative, prefix)
                return
    elif isinstance(schema, list) and isinstance(value, list):
        for item in value:
            yield from produced_paths(item, schema[0], f"{prefix}[]")
    elif isinstance(schema, Mapping) and isinstance(value, Mapping):
        for key, item in value.items():
            name = key if key in schema else WILDCARD
            yield from produced_paths(item, schema[name], f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix


# Names a schema publishes that these vectors do not exercise, each with where it comes from.
NOT_IN_THE_VECTORS = {
    "tdx": {"tcb_status_current", "advisory_ids_current[]", "tcb_date_current",  # TD 1.5 quotes' TCB level
            "pck_crl_num", "root_ca_crl_num",  # collateral bundles that carry the CRL numbers
            "advisory_ids[]"},  # an up-to-date platform: the list is empty
    "nvgpu": {"x-nvidia-gpu-attestation-report-cert-chain.x-nvidia-cert-revocation-reason",  # a revoked cert
              "x-nvidia-gpu-driver-rim-cert-chain.x-nvidia-cert-revocation-reason",
              "x-nvidia-gpu-vbios-rim-cert-chain.x-nvidia-cert-revocation-reason", "uuid", "chip_info"},
}


@needs_vectors
@pytest.mark.parametrize("tee", sorted(KNOWN))
def test_every_claim_is_in_its_verifiers_schema_and_every_schema_name_is_emitted(tee: str, tmp_path: Path) -> None:
    schema = KNOWN[tee].claim_schema()
    validate_schema(schema, tee)
    documents = claims_of(tee, tmp_path)
    assert documents
    for document in documents:
        assert conforms(document, schema) == [], tee
    emitted = {path for document in documents for path in produced_paths(document, schema)}
    never = set(leaf_paths(schema)) - emitted - NOT_IN_THE_VECTORS.get(tee, set())
    assert never == set(), f"{tee} publishes claims no vector produces: {sorted(never)}"


@needs_vectors
def test_the_ear_document_is_of_its_schema(tmp_path: Path) -> None:
    """The document policies read (verifier claims inside the EAR envelope) is what the checker assumes."""
    gpu = Appraisal(tee="nvgpu", device_class=GPU_CLASS, claims=nvgpu_claims(tmp_path)[0], vector=AFFIRMED,
                    evidence_key=EVIDENCE_KEY)  # as the verifier builds it: claims under `nvidia`
    submods = [snp_sub(next(snp_claims())), Submod(gpu)]
    document = ear_document([*submods, Submod(submods[0].appraisal, runtime_data_claims={"k": [1]})], SNP_AT)
    schema = document_schema({known.annotation or known.name: known.claim_schema() for known in KNOWN.values()})
    assert conforms(document, schema) == []
    document["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["snp"]["vmpl"] = "0"
    assert conforms(document, schema) == ["submods.cpu0.ear.veraison.annotated-evidence.snp.vmpl: string, "
                                          "schema says number"]


@pytest.mark.parametrize("tee", sorted(KNOWN))
def test_identity_claims_are_in_the_schema(tee: str) -> None:
    """What the release log records of a piece of evidence (kbs.server.identity) names claims the verifier emits."""
    schema = KNOWN[tee].claim_schema()
    assert KNOWN[tee].identity()
    for path in KNOWN[tee].identity():
        found = lookup(schema, path.split("."))
        assert found is not None and not isinstance(found, dict), (tee, path)  # a value or a list, not an object


def test_conforms_names_each_misfit() -> None:
    schema: Schema = {"a": "number", "b": ["string"], "c": {"*": "boolean"}, "d": ("null", ["number"])}
    assert conforms({"a": 1, "b": ["x"], "c": {"k": True}, "d": None}, schema) == []
    assert conforms({"a": 1, "d": [1, 2]}, schema) == []
    assert conforms({"a": "1"}, schema) == ["a: string, schema says number"]
    assert conforms({"b": ["x", 2]}, schema) == ["b[1]: number, schema says string"]
    assert conforms({"c": {"k": 1}}, schema) == ["c.k: number, schema says boolean"]
    assert conforms({"d": "x"}, schema) == ["d: string, schema says null"]
    assert conforms({"e": 1}, schema) == ["e: not in the schema"]
    with pytest.raises(ValueError, match="unknown type 'text'"):
        validate_schema({"a": "text"})
    with pytest.raises(ValueError, match="exactly one element"):
        validate_schema({"a": ["string", "number"]})


def test_schemas_load_without_their_verifiers() -> None:
    """The policy checker reads every schema; a broker worker must not import a disabled verifier for it."""
    import subprocess
    import sys
    code = ("import sys; from kbs.evidence.registry import KNOWN\n"
            "[k.claim_schema() for k in KNOWN.values()]\n"
            "heavy = [m for m in sys.modules if m.endswith('.verifier') or m.startswith(('lxml', 'signxml'))]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
