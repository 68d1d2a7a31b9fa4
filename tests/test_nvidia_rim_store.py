"""Where RIMs come from (kbs.trust.nvidia.rim_store): a directory, and a fake NVIDIA RIM service on loopback
through the shared fetcher (good, 404, bad sha256, garbage, forged, offline); and `kbs collateral` for RIMs
(add, list, export, import, prune) down to an offline store that reads what it added."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from kbs.cli import main
from kbs.errors import KbsError
from kbs.trust.cachedir import CacheDir, CacheKey, Entry
from kbs.trust.collateral_cache import CollateralCache
from kbs.trust.nvidia.rim_kinds import rim_entry_certificates
from kbs.trust.nvidia.rim_store import KIND_RIM, SERVICE, RimServiceClient, RimStore, answer_for, rim_path
from kbs.trust.nvidia.rim_xml import MAX_RIM_BYTES
from tests import fake_http
from tests.conftest import vector_file
from tests.nvidia_rim_synth import SyntheticRims

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)  # the CLI verifies at the real clock by default
RIM_ID = "NV_GPU_DRIVER_GH100_1.2.3"
ENTRIES = {7: hashlib.sha384(b"block 8").digest()}


@pytest.fixture(scope="module")
def rims() -> SyntheticRims:
    return SyntheticRims(NOW)


@pytest.fixture(scope="module")
def xml(rims: SyntheticRims) -> bytes:
    return rims.sign(RIM_ID, "1.2.3", ENTRIES)


@dataclass
class FakeRimService:
    """Scripted answers per path; counts requests and keeps the last request's headers."""

    replies: dict[str, list[fake_http.Reply]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    def add(self, rim_id: str, *replies: fake_http.Reply) -> None:
        self.replies[rim_path(rim_id)] = list(replies)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        self.headers = dict(request.headers)
        return fake_http.scripted(self.replies.get(request.path))


def ok(body: bytes) -> fake_http.Reply:
    return 200, body, {"Content-Type": "application/json"}


def run(body: Callable[[FakeRimService, str], Awaitable[None]]) -> FakeRimService:
    fake = FakeRimService()

    async def main_() -> None:
        async with fake_http.serve(fake.handle, "GET") as base:
            await body(fake, base)
    asyncio.run(main_())
    return fake


def client(base: str, rims: SyntheticRims, cache: Path | None = None, **kwargs: Any) -> RimServiceClient:
    return RimServiceClient(base, cache, trust_roots=rims.trust_roots, retries=0, **kwargs)


def store_of(service: RimServiceClient | None, rims: SyntheticRims, directory: Path | None = None) -> RimStore:
    return RimStore(directory=directory, service=service, trust_roots=rims.trust_roots)


async def refusal(store: RimStore, check: str, rim_id: str = RIM_ID) -> str:
    with pytest.raises(KbsError) as info:
        await store.get(rim_id, NOW)
    assert info.value.check == check, str(info.value)
    return str(info.value)


# -- the directory ------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".xml", ".swidtag"])
def test_directory(rims: SyntheticRims, xml: bytes, tmp_path: Path, suffix: str) -> None:
    (tmp_path / f"{RIM_ID}{suffix}").write_bytes(xml)
    store = store_of(None, rims, tmp_path)
    rim = asyncio.run(store.get(RIM_ID, NOW))
    assert rim.colloquial_version == "1.2.3"
    found = asyncio.run(store.find(RIM_ID))
    assert found.source == f"file:{tmp_path / (RIM_ID + suffix)}"


def test_directory_misses_and_bad_files(rims: SyntheticRims, xml: bytes, tmp_path: Path) -> None:
    store = store_of(None, rims, tmp_path)
    message = asyncio.run(refusal(store, "nvgpu.rim.missing"))
    assert RIM_ID in message and str(tmp_path) in message
    (tmp_path / f"{RIM_ID}.xml").write_bytes(b" " * (MAX_RIM_BYTES + 1))
    assert "larger than" in asyncio.run(refusal(store, "nvgpu.rim.parse"))
    (tmp_path / f"{RIM_ID}.xml").write_bytes(xml.replace(ENTRIES[7].hex().encode(), bytes(48).hex().encode()))
    asyncio.run(refusal(store, "nvgpu.rim.signature"))  # found but bad: its own label, not "missing"
    assert "no RIM directory and no RIM service" in asyncio.run(refusal(RimStore(), "nvgpu.rim.missing"))


def test_hostile_ids_never_reach_the_disk_or_the_network(rims: SyntheticRims, tmp_path: Path) -> None:
    async def body(fake: FakeRimService, base: str) -> None:
        store = store_of(client(base, rims), rims, tmp_path)
        await refusal(store, "nvgpu.rim.id", "NV_../../etc/passwd")
        await refusal(store, "nvgpu.rim.id", "NV_GPU?x=1")
        await store.close()
    assert run(body).hits == Counter()


# -- the service --------------------------------------------------------------------------------------

def test_service_fetches_checks_and_caches(rims: SyntheticRims, xml: bytes, tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    async def body(fake: FakeRimService, base: str) -> None:
        fake.add(RIM_ID, ok(answer_for(RIM_ID, xml)))
        store = store_of(client(base, rims, cache, service_key="secret"), rims)
        rim = await store.get(RIM_ID, NOW)
        assert rim.colloquial_version == "1.2.3" and fake.hits[rim_path(RIM_ID)] == 1
        assert fake.headers.get("Authorization") == "Bearer secret"
        assert (await store.get(RIM_ID, NOW)) is rim and fake.hits[rim_path(RIM_ID)] == 1  # memory
        await store.close()
        offline = store_of(client(base, rims, cache, offline=True), rims)
        assert (await offline.get(RIM_ID, NOW)).sha256 == rim.sha256 and fake.total == 1  # disk, nothing sent
        await offline.close()

    run(body)
    entry = CacheDir(cache).read(SERVICE, CacheKey("GET", rim_path(RIM_ID)))
    assert entry is not None and entry.kind == KIND_RIM and entry.valid_until is None  # immutable
    assert json.loads(entry.body)["sha256"] == hashlib.sha256(xml).hexdigest()


def test_the_directory_comes_first(rims: SyntheticRims, xml: bytes, tmp_path: Path) -> None:
    (tmp_path / f"{RIM_ID}.xml").write_bytes(xml)

    async def body(fake: FakeRimService, base: str) -> None:
        store = store_of(client(base, rims), rims, tmp_path)
        assert (await store.find(RIM_ID)).source.startswith("file:")
        await store.close()
    assert run(body).hits == Counter()


def test_not_found_is_missing_and_remembered(rims: SyntheticRims, tmp_path: Path) -> None:
    async def body(fake: FakeRimService, base: str) -> None:
        store = store_of(client(base, rims), rims, tmp_path)
        message = await refusal(store, "nvgpu.rim.missing")
        assert RIM_ID in message and str(tmp_path) in message and "404" in message
        assert "nvidia-rim.not_found" in message
        await refusal(store, "nvgpu.rim.missing")
        assert fake.hits[rim_path(RIM_ID)] == 1  # the 404 is remembered
        await store.close()
    run(body)


def test_offline_without_the_rim_is_missing(rims: SyntheticRims, tmp_path: Path) -> None:
    async def body(fake: FakeRimService, base: str) -> None:
        store = store_of(client(base, rims, tmp_path / "cache", offline=True), rims)
        message = await refusal(store, "nvgpu.rim.missing")
        assert "offline" in message and "nvidia-rim.offline" in message
        await store.close()
    assert run(body).hits == Counter()


def _answer(xml: bytes, **changes: Any) -> bytes:
    answer = json.loads(answer_for(RIM_ID, xml))
    answer.update(changes)
    return json.dumps(answer).encode()


@pytest.mark.parametrize(("name", "make", "check", "said"), [
    ("bad sha256", lambda x: _answer(x, sha256="00" * 32), "nvgpu.rim.parse", "its sha256 field says"),
    ("not JSON", lambda x: b"<html>maintenance</html>", "nvgpu.rim.parse", "not JSON"),
    ("JSON list", lambda x: b"[]", "nvgpu.rim.parse", "not a JSON object"),
    ("other id", lambda x: _answer(x, id="NV_GPU_DRIVER_GH100_9.9"), "nvgpu.rim.parse", "wanted"),
    ("no rim", lambda x: _answer(x, rim=None), "nvgpu.rim.parse", "lacks a base64"),
    ("not base64", lambda x: _answer(x, rim="@@@@"), "nvgpu.rim.parse", "not base64"),
    ("not XML", lambda x: _answer(b"garbage", rim=base64.b64encode(b"garbage").decode(),
                                  sha256=hashlib.sha256(b"garbage").hexdigest()), "nvgpu.rim.parse", "well-formed"),
    ("forged", lambda x: answer_for(RIM_ID, x.replace(ENTRIES[7].hex().encode(), bytes(48).hex().encode())),
     "nvgpu.rim.signature", "InvalidDigest"),
])
def test_bad_answers_are_refused_and_not_cached(rims: SyntheticRims, xml: bytes, tmp_path: Path, name: str,
                                                make: Callable[[bytes], bytes], check: str, said: str) -> None:
    cache = tmp_path / "cache"

    async def body(fake: FakeRimService, base: str) -> None:
        fake.add(RIM_ID, ok(make(xml)))
        store = store_of(client(base, rims, cache), rims)
        assert said in await refusal(store, check)
        await store.close()
    run(body)
    assert not any(cache.rglob("*.meta.json")), "a refused answer was cached"


def test_an_untrusted_rim_from_the_service_is_refused(rims: SyntheticRims, xml: bytes, tmp_path: Path) -> None:
    async def body(fake: FakeRimService, base: str) -> None:
        fake.add(RIM_ID, ok(answer_for(RIM_ID, xml)))
        store = RimStore(service=RimServiceClient(base, tmp_path, retries=0))  # NVIDIA's pin, not the test root
        await refusal(store, "nvgpu.rim.chain")
        await store.close()
    run(body)
    assert not any(tmp_path.rglob("*.meta.json"))


# -- kbs collateral -----------------------------------------------------------------------------------

def kbs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_collateral_add_list_export_import_prune(rims: SyntheticRims, xml: bytes, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(rims.root.cert.public_bytes(Encoding.PEM))
    rim_file = tmp_path / f"{RIM_ID}.xml"
    rim_file.write_bytes(xml)
    cache, airgap, archive = tmp_path / "cache", tmp_path / "airgap", tmp_path / "rims.tar.gz"
    trust = ("--trust-root", str(root))
    code, out, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), *trust, str(rim_file))
    assert code == 0, err
    assert f"added nvidia.rim GET {rim_path(RIM_ID)}" in out
    code, out, _ = kbs(capsys, "collateral", "list", "--cache-dir", str(cache), "--json")
    [entry] = json.loads(out)["entries"]
    assert (entry["kind"], entry["service"], entry["valid_until"]) == (KIND_RIM, SERVICE, None)
    # The RIM offers its signing chain to chain building (OCSP answers about its certificates).
    assert [c.subject_cn for c in CollateralCache(cache).certificates()] == [n.cn for n in rims.chain]
    assert rim_entry_certificates(Entry(SERVICE, KIND_RIM, CacheKey("GET", rim_path(RIM_ID)), b"{}", "x", NOW)) == ()
    # The daemon's offline store reads what was added.
    store = store_of(client("http://127.0.0.1:9", rims, cache, offline=True), rims)
    assert asyncio.run(store.get(RIM_ID, NOW)).colloquial_version == "1.2.3"
    assert kbs(capsys, "collateral", "export", "--cache-dir", str(cache), str(archive))[0] == 0
    code, _, err = kbs(capsys, "collateral", "import", "--cache-dir", str(airgap), *trust, str(archive))
    assert code == 0, err
    assert CacheDir(airgap).read(SERVICE, CacheKey("GET", rim_path(RIM_ID))) is not None
    # Without the test root the import is refused whole: the RIM is not NVIDIA's.
    code, _, err = kbs(capsys, "collateral", "import", "--cache-dir", str(tmp_path / "other"), str(archive))
    assert code == 1 and "nvgpu.rim.chain" in err
    code, out, _ = kbs(capsys, "collateral", "prune", "--cache-dir", str(cache))
    assert code == 0 and "removed" not in out  # RIMs never expire in the cache


def test_collateral_add_refuses_bad_rims(rims: SyntheticRims, xml: bytes, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(rims.root.cert.public_bytes(Encoding.PEM))
    cache = tmp_path / "cache"
    trust = ("--trust-root", str(root))
    misnamed = tmp_path / "NV_GPU_DRIVER_GH100_9.9.9.xml"
    misnamed.write_bytes(xml)
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), *trust, str(misnamed))
    assert code == 1 and "collateral.key" in err and "misnamed" in err
    unnamed = tmp_path / "driver.xml"
    unnamed.write_bytes(xml)
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), *trust, str(unnamed))
    assert code == 2 and "<RIM id>.xml" in err
    forged = tmp_path / f"{RIM_ID}.swidtag"
    forged.write_bytes(xml.replace(ENTRIES[7].hex().encode(), bytes(48).hex().encode()))
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), *trust, str(forged))
    assert code == 1 and "nvgpu.rim.signature" in err
    late = tmp_path / f"{RIM_ID}.xml"
    late.write_bytes(xml)
    after = (rims.signer.cert.not_valid_after_utc + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, _, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), *trust, "--at", after, str(late))
    assert code == 1 and "nvgpu.rim.chain" in err
    assert not cache.exists() or not any(cache.rglob("*.meta.json"))


def test_a_rim_under_another_key_is_refused(rims: SyntheticRims, xml: bytes, tmp_path: Path) -> None:
    other = CacheKey("GET", rim_path("NV_GPU_DRIVER_GH100_9.9"))
    entry = Entry(SERVICE, KIND_RIM, other, answer_for(RIM_ID, xml), "test", NOW)
    with pytest.raises(KbsError, match="belongs under") as info:
        CollateralCache(tmp_path).check([entry], at=NOW, now=NOW, trust_roots=rims.trust_roots)
    assert "collateral.key" in str(info.value)
    garbage = Entry(SERVICE, KIND_RIM, other, b"not json", "test", NOW)
    with pytest.raises(KbsError, match="nvgpu.rim.parse"):
        CollateralCache(tmp_path).check([garbage], at=NOW, now=NOW, trust_roots=rims.trust_roots)


def test_collateral_add_real_rim_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = ("NV_GPU_DRIVER_GH100_550.90.07.xml", "NV_GPU_VBIOS_1010_0200_882_96009F0001.xml")
    files = []
    for name in names:
        copy = tmp_path / name  # a temporary copy: the vectors stay where they are
        copy.write_bytes(vector_file("gpu", "go-nvattest-tools", "rim", name).read_bytes())
        files.append(str(copy))
    cache = tmp_path / "cache"
    code, out, err = kbs(capsys, "collateral", "add", "--cache-dir", str(cache), "--at", "2025-06-01T00:00:00Z",
                         *files)
    assert code == 0, err
    assert out.count("added nvidia.rim") == 2
    store = RimStore(service=RimServiceClient(cache_dir=cache, offline=True))
    at = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    assert asyncio.run(store.get("NV_GPU_VBIOS_1010_0200_882_96009F0001", at)).colloquial_version == "96.00.9F.00.01"
    # Today the driver RIM's signer has expired: the cached RIM is served, and refused at that time.
    with pytest.raises(KbsError) as info:
        asyncio.run(store.get("NV_GPU_DRIVER_GH100_550.90.07", dt.datetime(2026, 6, 2, tzinfo=dt.UTC)))
    assert info.value.check == "nvgpu.rim.chain"
