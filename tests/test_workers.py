"""`kbs serve` with several worker processes over real HTTP: requests land on every worker, guests get
keys, one scrape of /metrics counts the whole broker, a SIGKILLed worker is replaced, SIGTERM drains and
exits 0, a port in use is one error line, the supervisor is a lean process (the PID `kbs serve` started)
with only its workers under it; and admission control answers 503 with Retry-After beyond `max_in_flight`
while the broker keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.multiprocess import _LIVE_GAUGE_MULTIPROCESS_MODES

from kbs.keys.jwe import decrypt, generate_tee_key
from kbs.server import app, supervisor
from kbs.server.config import Config, ConfigError, parse_config
from kbs.server.workers import worker_count
from tests import fake_http
from tests.amd_synth import SyntheticAmd
from tests.broker import (
    REPO,
    Broker,
    SnpGuest,
    attest,
    attestation,
    auth,
    free_port,
    full_flow,
    jar,
    run_broker,
    write_config,
)
from tests.test_server_e2e import logged

SAMPLE_POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
    {"claim": "sample.svn", "equals": "1"}]}]})
SECRET = b"workers-secret"
DEADLINE = 30.0


def until(check: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll `check` until it returns something true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def get(broker: Broker, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (so the kernel picks a worker anew); errors as status 0."""
    try:
        with urllib.request.urlopen(f"{broker.url}{path}", timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except OSError:
        return 0, {}, b""


def workers_view(broker: Broker) -> list[dict[str, Any]]:
    status, _, body = get(broker, "/healthz?all")
    return list(json.loads(body)["workers"]) if status in (200, 503) else []


def running(broker: Broker, count: int = 2) -> list[dict[str, Any]]:
    """The supervisor's view once `count` workers run, else nothing."""
    view = workers_view(broker)
    return view if sum(w["state"] == "running" for w in view) == count else []


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry these labels (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        sample = line.startswith(name) and line[len(name):len(name) + 1] in ("{", " ")
        if sample and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(broker: Broker) -> str:
    status, _, body = get(broker, "/metrics")
    assert status == 200
    return body.decode()


def provision(broker: Broker) -> None:
    async def go() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.put(f"{broker.url}/kbs/v0/admin/policies/sample-ok", data=SAMPLE_POLICY,
                                headers=broker.admin_headers()) as r:
                assert r.status == 200, await r.text()
            async with http.post(f"{broker.url}/kbs/v0/resource/lab/key/w?policy=sample-ok", data=SECRET,
                                 headers=broker.admin_headers()) as r:
                assert r.status == 200, await r.text()
    asyncio.run(go())


def obtain_keys(broker: Broker, guests: int) -> None:
    async def one() -> None:
        status, body, key = await full_flow(broker.url, "sample", "lab/key/w")
        assert status == 200, body
        assert decrypt(body, key.private_key) == SECRET

    async def go() -> None:
        await asyncio.gather(*(one() for _ in range(guests)))
    asyncio.run(go())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_share_the_port_the_keys_and_the_metrics(tmp_path: Path) -> None:
    with run_broker(tmp_path, workers=2) as broker:
        view = until(lambda: running(broker), "both workers running")
        assert sorted(w["index"] for w in view) == [0, 1] and len({w["pid"] for w in view}) == 2, view

        seen: dict[str, str] = {}
        served = 0

        def both_answered() -> bool:
            nonlocal served
            status, headers, body = get(broker, "/healthz")
            assert status == 200 and body == b"ok"
            served += 1
            seen[headers["Kbs-Worker-Pid"]] = headers["Kbs-Worker"]
            return len(seen) == 2
        until(both_answered, "/healthz answered by both workers")
        assert set(seen) == {str(w["pid"]) for w in view} and sorted(seen.values()) == ["0", "1"]

        provision(broker)
        obtain_keys(broker, 24)  # sessions made on one worker are attested and served on another

        text = scrape(broker)  # one scrape, from whichever worker: the whole broker's counts
        assert metric(text, "kbs_http_requests_total", route="/healthz", status="200") >= served
        assert metric(text, "kbs_attestations_total", tee="sample", result="ok") == 24
        assert metric(text, "kbs_resource_requests_total", decision="release") == 24
        assert metric(text, "kbs_worker_starts_total") == 2
        assert metric(text, "kbs_build_info") == 1  # a max across workers, not a sum
        # Every release is two durable writes (the nonce consumed with its attestation, the release's log entry),
        # each in one of the group commit's batches, on both workers; no batch was retried.
        batches = metric(text, "kbs_store_batch_writes_count")
        assert metric(text, "kbs_store_batch_writes_sum") == 48 and 1 <= batches <= 48, text
        assert metric(text, "kbs_store_batch_seconds_count") == batches
        assert metric(text, "kbs_store_batch_seconds_sum") > 0
        assert metric(text, "kbs_store_batch_retries_total") == 0
        assert "kbs_open_connections" in text and "kbs_requests_in_flight" in text

        status, _, body = get(broker, "/readyz?all")
        ready = json.loads(body)
        assert status == 200 and ready["status"] == "ready" and len(ready["workers"]) == 2


def test_a_killed_worker_is_replaced_and_service_continues(tmp_path: Path) -> None:
    with run_broker(tmp_path, workers=2) as broker:
        provision(broker)
        before = until(lambda: running(broker), "both workers running")
        victim = before[0]
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced() -> list[dict[str, Any]]:
            view = workers_view(broker)
            mine = [w for w in view if w["index"] == victim["index"]]
            return view if mine and mine[0]["pid"] != victim["pid"] and mine[0]["state"] == "running" else []
        after = until(replaced, "the killed worker replaced")
        assert [w["restarts"] for w in after if w["index"] == victim["index"]] == [1]
        assert not alive(victim["pid"])
        assert broker.process.poll() is None

        obtain_keys(broker, 12)
        text = scrape(broker)
        assert metric(text, "kbs_worker_starts_total") == 3
        assert metric(text, "kbs_resource_requests_total", decision="release") == 12


class HeldChainGuest(SnpGuest):
    """A synthetic SNP guest that sends its VCEK only: the broker asks KDS for the ASK at /attest."""

    def evidence(self, report_data: bytes, host_data: bytes = b"") -> dict[str, Any]:
        full = super().evidence(report_data, host_data)
        full["cert_chain"] = full["cert_chain"][:1]
        return full


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    """An /attest still waiting for KDS when SIGTERM comes is answered 200 after the workers stopped
    listening; then the supervisor exits 0 and no worker is left."""
    pki = SyntheticAmd("Milan")
    chain = b"".join(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
                     for der in (pki.ask_der, pki.ark_der))
    asked, answer = threading.Event(), threading.Event()

    async def kds(request: web.Request) -> web.Response:
        if not request.path.endswith("/cert_chain"):
            return web.Response(status=404)
        asked.set()
        await asyncio.to_thread(answer.wait, DEADLINE)  # held until the broker is draining
        return web.Response(body=chain)

    (tmp_path / "ark.pem").write_bytes(pki.ark_pem)
    with fake_http.in_thread(lambda: fake_http.serve(kds, "GET")) as kds_url, \
            run_broker(tmp_path, f'[verifiers.snp]\ntrust_roots = ["{tmp_path / "ark.pem"}"]\nkds_url = "{kds_url}"\n'
                       f'cache_dir = "{tmp_path / "kds"}"\n', workers=2) as broker:
        pids = [w["pid"] for w in until(lambda: running(broker), "both workers running")]
        port = int(broker.url.rsplit(":", 1)[1])

        async def go() -> tuple[int, dict[str, Any]]:
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                nonce = await auth(http, broker.url, "snp")
                body = attestation(nonce, generate_tee_key("EC-P256"), "snp", HeldChainGuest(pki))
                request = asyncio.create_task(attest(http, broker.url, body))
                assert await asyncio.to_thread(asked.wait, DEADLINE), "the broker never asked KDS"
                broker.process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(until, lambda: refused(port), "the workers stop listening")
                answer.set()
                async with asyncio.timeout(DEADLINE):
                    return await request
        status, token = asyncio.run(go())
        assert status == 200 and token["token"], token
        assert broker.process.wait(DEADLINE) == 0, broker.log()
        assert not any(alive(pid) for pid in pids)
        assert "all workers stopped" in broker.log()


def test_verification_past_the_request_timeout_is_refused_and_logged(tmp_path: Path) -> None:
    """KDS holds the chain longer than `request_timeout_seconds`: /attest is refused with the timeout named
    (in the answer and in the refusal log), and the broker keeps serving."""
    pki = SyntheticAmd("Milan")
    release = threading.Event()

    async def kds(request: web.Request) -> web.Response:
        await asyncio.to_thread(release.wait, DEADLINE)
        return web.Response(status=404)

    (tmp_path / "ark.pem").write_bytes(pki.ark_pem)
    with fake_http.in_thread(lambda: fake_http.serve(kds, "GET")) as kds_url, \
            run_broker(tmp_path, f'[verifiers.snp]\ntrust_roots = ["{tmp_path / "ark.pem"}"]\nkds_url = "{kds_url}"\n'
                       f'cache_dir = "{tmp_path / "kds"}"\n[limits]\nrequest_timeout_seconds = 1\n') as broker:
        async def go() -> tuple[int, dict[str, Any], float]:
            async with aiohttp.ClientSession(cookie_jar=jar()) as http:
                nonce = await auth(http, broker.url, "snp")
                started = time.monotonic()
                status, body = await attest(http, broker.url, attestation(
                    nonce, generate_tee_key("EC-P256"), "snp", HeldChainGuest(pki)))
                return status, body, time.monotonic() - started
        try:
            status, body, took = asyncio.run(go())
        finally:
            release.set()
        assert status == 401 and "verification took longer than 1.0s" in body["detail"], body
        assert took < 10, took
        assert logged(broker, body["reference"])["reason"] == "timeout"
        with urllib.request.urlopen(f"{broker.url}/readyz", timeout=10) as ready:
            assert ready.status == 200


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kbs.cli", "serve", "--config", str(config), "--check-config"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_check_config_loads_everything_and_serves_nothing(tmp_path: Path) -> None:
    port = free_port()
    done = _check(write_config(tmp_path / "kbs.toml", port, tmp_path / "state", workers=2))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"kbs: configuration OK: http://127.0.0.1:{port}, store sqlite, verifiers snp, tdx, "
                                   "sample, 2 worker(s), 1 admin key(s), dev mode")
    assert refused(port)  # nothing listens afterwards
    assert (tmp_path / "state" / "kbs.sqlite3").exists()  # the store was opened (and its schema made)
    (tmp_path / "state" / "kek").unlink()
    missing = write_config(tmp_path / "nokek.toml", port, tmp_path / "state",
                           f'dev_mode = false\nkek_file = "{tmp_path / "state" / "kek"}"\n')
    done = _check(missing)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f"kbs: error: kek: cannot read the key encryption key {tmp_path / 'state' / 'kek'}: No such file or directory"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        done = _check(write_config(tmp_path / "busy.toml", busy, tmp_path / "state"))
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{busy}: Address already in use" in done.stderr


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_is_one_error_line(tmp_path: Path, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "kbs.toml", port, tmp_path / "state", workers=workers)
        done = subprocess.run([sys.executable, "-m", "kbs.cli", "serve", "--config", str(config)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1, done.stderr
    assert last == f"kbs: error: serve: cannot listen on 127.0.0.1:{port}: Address already in use", done.stderr
    assert "Traceback" not in done.stderr


def test_workers_flag_overrides_the_config(tmp_path: Path) -> None:
    """`--workers` beats `[server] workers`; a second broker cannot take the port."""
    port = free_port()
    config = write_config(tmp_path / "kbs.toml", port, tmp_path / "state", workers=1)
    command = [sys.executable, "-m", "kbs.cli", "serve", "--config", str(config)]
    log = tmp_path / "kbs.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([*command, "--workers", "2"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    broker = Broker(f"http://127.0.0.1:{port}", tmp_path / "state", process, log)
    try:
        until(lambda: running(broker), "two workers running")
        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1 and "Address already in use" in second.stderr, second.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE) == 0, broker.log()


# -- admission control ---------------------------------------------------------------------------

def test_beyond_max_in_flight_is_503_with_retry_after(tmp_path: Path) -> None:
    """Two requests held in flight (their bodies trickle) fill a worker with max_in_flight = 2: the third
    is refused at once, probes and metrics still answer, and once they finish the worker serves again."""
    with run_broker(tmp_path, "[limits]\nmax_in_flight = 2\n") as broker:
        async def go() -> None:
            rest = asyncio.Event()

            async def body() -> AsyncIterator[bytes]:
                yield b'{"version": "0.4.0", '
                await rest.wait()
                yield b'"tee": "sample", "extra-params": {}}'

            async with aiohttp.ClientSession() as held, aiohttp.ClientSession() as other:
                slow = [asyncio.create_task(held.post(f"{broker.url}/kbs/v0/auth", data=body(),
                                                      headers={"Content-Type": "application/json"}))
                        for _ in range(2)]

                async def in_flight() -> float:
                    async with other.get(f"{broker.url}/metrics") as r:
                        return metric(await r.text(), "kbs_requests_in_flight")
                deadline = time.monotonic() + DEADLINE
                while await in_flight() < 2:
                    assert time.monotonic() < deadline, "the slow requests never reached their handler"
                    await asyncio.sleep(0.05)

                started = time.monotonic()
                async with other.post(f"{broker.url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample",
                                                                         "extra-params": {}}) as r:
                    assert r.status == 503 and r.headers["Retry-After"] == "1"
                    assert (await r.json())["type"].endswith("/ServiceUnavailable")
                assert time.monotonic() - started < 2.0  # refused at once, not queued
                for path in ("/healthz", "/readyz", "/metrics"):
                    async with other.get(f"{broker.url}{path}") as r:
                        assert r.status == 200, path

                rest.set()
                for task in slow:
                    async with asyncio.timeout(DEADLINE):
                        response = await task
                        assert response.status == 200
                        response.release()
                async with other.get(f"{broker.url}/metrics") as r:
                    text = await r.text()
                assert metric(text, "kbs_overloaded_total") == 1
                assert metric(text, "kbs_requests_in_flight") == 0
        asyncio.run(go())
        provision(broker)
        obtain_keys(broker, 1)  # serving again


def test_an_attest_storm_over_two_workers_is_served_or_told_to_retry(tmp_path: Path) -> None:
    """max_in_flight = 1 per worker and 48 guests at once: each request is answered 200 or 503 with
    Retry-After (never dropped or queued without bound), and after the storm every guest gets its key."""
    with run_broker(tmp_path, "[limits]\nmax_in_flight = 1\n", workers=2) as broker:
        provision(broker)

        async def guest(http: aiohttp.ClientSession) -> list[int]:
            """Auth, attest and fetch the key, retrying each refused step after its Retry-After (bounded)."""
            key = generate_tee_key("EC-P256")
            statuses = []
            deadline = time.monotonic() + DEADLINE

            async def step(method: str, path: str, **kwargs: Any) -> Any:
                while True:
                    async with http.request(method, f"{broker.url}{path}", **kwargs) as r:
                        statuses.append(r.status)
                        if r.status != 503:
                            assert r.status == 200, await r.text()
                            return await r.json()
                        assert r.headers["Retry-After"] == "1"
                    assert time.monotonic() < deadline, "a guest was refused for too long"
                    await asyncio.sleep(0.05)  # shorter than Retry-After: the test would be slow otherwise

            nonce = (await step("POST", "/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample",
                                                              "extra-params": {}}))["nonce"]
            await step("POST", "/kbs/v0/attest", json=attestation(nonce, key, "sample"))
            assert decrypt(await step("GET", "/kbs/v0/resource/lab/key/w"), key.private_key) == SECRET
            return statuses

        async def storm() -> list[int]:
            sessions = [aiohttp.ClientSession(cookie_jar=jar()) for _ in range(48)]
            try:
                results = await asyncio.gather(*(guest(http) for http in sessions))
            finally:
                await asyncio.gather(*(http.close() for http in sessions))
            return [status for statuses in results for status in statuses]
        statuses = asyncio.run(storm())
        refused = statuses.count(503)
        assert refused > 0 and statuses.count(200) == 48 * 3, (refused, len(statuses))
        assert metric(scrape(broker), "kbs_overloaded_total") == refused
        obtain_keys(broker, 1)  # one guest at a time: served at once


def test_workers_die_with_their_supervisor(tmp_path: Path) -> None:
    """SIGKILL of the supervisor leaves no orphan serving: each worker sees its pipe close and stops."""
    with run_broker(tmp_path, workers=2) as broker:
        pids = [w["pid"] for w in until(lambda: running(broker), "both workers running")]
        broker.process.kill()
        broker.process.wait(DEADLINE)
        until(lambda: not any(alive(pid) for pid in pids), "the workers gone")
        assert refused(int(broker.url.rsplit(":", 1)[1]))


def parents() -> dict[int, int]:
    """Every process's parent, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def vm_rss_kib(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_supervisor_is_lean_and_alone_with_its_workers(tmp_path: Path) -> None:
    """After the first start, `kbs serve` execs the lean supervisor (same PID, standard library only): under
    30 MB, and nothing under it but its workers (no multiprocessing resource tracker) and their Rego pools."""
    with run_broker(tmp_path, workers=2) as broker:
        workers = {w["pid"] for w in until(lambda: running(broker), "both workers running")}
        pid = broker.process.pid
        command = cmdline(pid)
        assert command[1:3] == ["-m", "kbs.server.supervisor"], command
        status = json.loads((Path(command[3]) / supervisor.STATUS_FILE).read_text())
        assert status["supervisor"] == pid
        assert vm_rss_kib(pid) < 30 * 1024, f"supervisor VmRSS {vm_rss_kib(pid)} kB"

        tree = parents()
        assert {child for child, parent in tree.items() if parent == pid} == workers
        helpers = {child for child, parent in tree.items() if parent in workers}
        for worker in workers:
            assert cmdline(worker)[1:3] == ["-m", "kbs.server.workers"]
        for helper in helpers:  # a worker's children can only be its Rego pool
            assert cmdline(helper)[1:3] == ["-I", "-c"], cmdline(helper)
            assert not any(parent == helper for parent in tree.values())


def listening_inodes(port: int) -> list[int]:
    """The inodes of the sockets listening on `port` (TCP, IPv4 and IPv6), from /proc/net."""
    found = []
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.append(int(fields[9]))
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:["):-1]))
    return inodes


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc")
def test_the_workers_accept_from_one_listening_socket(tmp_path: Path) -> None:
    """One socket listens on the port (not one per worker, as with SO_REUSEPORT): made before the workers, held
    by each of them and by the supervisor (so a restarted worker gets it too), and by nothing the workers
    start (their Rego pools)."""
    with run_broker(tmp_path, workers=2) as broker:
        port = int(broker.url.rsplit(":", 1)[1])
        view = until(lambda: running(broker), "both workers running")
        [listener] = listening_inodes(port)
        assert listener in socket_inodes(broker.process.pid)
        for worker in view:
            assert listener in socket_inodes(worker["pid"]), worker
        helpers = [child for child, parent in parents().items() if parent in {w["pid"] for w in view}]
        assert all(listener not in socket_inodes(helper) for helper in helpers)

        killed = view[0]["pid"]
        os.kill(killed, signal.SIGKILL)

        def replaced() -> list[dict[str, Any]]:
            now = running(broker)
            return now if now and killed not in {w["pid"] for w in now} else []
        after = until(replaced, "the killed worker replaced")
        assert listening_inodes(port) == [listener]
        assert all(listener in socket_inodes(worker["pid"]) for worker in after)


def test_a_stalled_worker_strands_no_connection(tmp_path: Path) -> None:
    """With one worker stopped (SIGSTOP: as good as a worker stuck on a long step), every new connection is
    served by the other: the queue is one, and a worker takes from it only when it is free.  With a queue per
    worker (SO_REUSEPORT) about half of them would wait in the stopped worker's queue until it woke."""
    with run_broker(tmp_path, workers=2) as broker:
        view = until(lambda: running(broker), "both workers running")
        stalled, other = view[0], view[1]
        os.kill(stalled["pid"], signal.SIGSTOP)
        try:
            answers = [get(broker, "/healthz") for _ in range(12)]  # a fresh connection each, 5 s to answer
        finally:
            os.kill(stalled["pid"], signal.SIGCONT)
        assert [status for status, _, _ in answers] == [200] * 12
        assert {headers["Kbs-Worker-Pid"] for _, headers, _ in answers} == {str(other["pid"])}


def test_the_supervisor_imports_the_standard_library_only() -> None:
    probe = ("import sys, kbs.server.supervisor; "
             "print(' '.join(m for m in sys.modules if m.partition('.')[0] in "
             "('aiohttp', 'prometheus_client', 'multiprocessing', 'pythonjsonlogger', 'cryptography', 'kbs')))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert sorted(done.stdout.split()) == ["kbs", "kbs.server", "kbs.server.supervisor"]


def test_the_listening_descriptors_on_the_command_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """The supervisor passes its listening sockets on to each worker by number; anything but numbers is a usage
    error, before it starts anything."""
    assert supervisor.worker_command(Path("/run/x"), 1, 2, 7, [3, 4])[-2:] == ["7", "3,4"]
    assert supervisor.supervisor_command(Path("/run/x"), 2, [5])[-2:] == ["2", "5"]
    assert supervisor.parse_fd_list("3,4") == (3, 4)
    for bad in ("", "3,", "x", "-1", "3;4"):
        with pytest.raises(ValueError):
            supervisor.parse_fd_list(bad)
    assert supervisor.main(["/nonexistent", "2"]) == 2
    assert supervisor.main(["/nonexistent", "2", "3,x"]) == 2
    assert "LISTEN_FDS" in capsys.readouterr().err


def test_the_supervisor_forgets_exactly_the_live_gauges_of_a_dead_worker(tmp_path: Path) -> None:
    """What prometheus_client.multiprocess.mark_process_dead removes, re-done without its imports."""
    assert set(supervisor.LIVE_GAUGE_MODES) == _LIVE_GAUGE_MULTIPROCESS_MODES
    kept = ["counter_7.db", "gauge_max_7.db", "gauge_all_7.db", "gauge_livesum_8.db", "histogram_7.db"]
    for name in [*kept, *(f"gauge_{mode}_7.db" for mode in supervisor.LIVE_GAUGE_MODES)]:
        (tmp_path / name).write_bytes(b"")
    supervisor.forget_live_gauges(tmp_path, 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_the_supervisor_logs_lines_of_the_brokers_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its stdlib formatter writes what kbs.server.app.setup_logging's python-json-logger writes."""
    configured: dict[str, Any] = {}
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: configured.update(kwargs))
    app.setup_logging("INFO")
    broker_formatter = configured["handlers"][0].formatter
    try:
        raise ValueError("boom")
    except ValueError:
        failure = sys.exc_info()
    for exc_info in (None, failure):
        record = logging.LogRecord("kbs.server.workers", logging.WARNING, __file__, 1, "worker %s died", (1,),
                                   exc_info)
        record.__dict__.update(worker=1, pid=4321, status=-9, reason="exited with status -9")
        theirs, ours = json.loads(broker_formatter.format(record)), json.loads(supervisor.JsonLines().format(record))
        assert list(ours) == list(theirs) and ours == theirs


def test_config_keys_and_worker_count() -> None:
    config = parse_config({"server": {"workers": 3}, "limits": {"max_in_flight": 8}})
    assert (config.workers, config.max_in_flight) == (3, 8)
    assert (Config().workers, Config().max_in_flight, Config().max_connections) == (0, 64, 256)
    assert worker_count(3) == 3 and worker_count(0) >= 1
    for document, message in (({"server": {"workers": -1}}, "[server] workers"),
                               ({"limits": {"max_in_flight": 0}}, "[limits] max_in_flight"),
                               ({"server": {"threads": 2}}, "unknown configuration key [server] threads")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_config(document)


def _cpus_of(pid: int) -> set[int]:
    """The CPUs every thread of process `pid` may run on (their union; each thread's set for pinned ones)."""
    return {cpu for task in os.listdir(f"/proc/{pid}/task") for cpu in os.sched_getaffinity(int(task))}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to pin to")
@pytest.mark.parametrize("pinned", [True, False], ids=["pin_workers (default)", "pin_workers = false"])
def test_each_worker_runs_on_a_cpu_of_its_own(tmp_path: Path, pinned: bool) -> None:
    """Two workers on a machine with two or more CPUs: each worker's threads (loop, commit, pools) on one CPU,
    not the other's; with `pin_workers = false`, everywhere the broker may run."""
    allowed = sorted(os.sched_getaffinity(0))
    with run_broker(tmp_path, "" if pinned else "[server]\npin_workers = false\n", workers=2) as broker:
        view = until(lambda: running(broker), "both workers running")
        provision(broker)
        obtain_keys(broker, 4)  # the commit thread and the I/O pool exist by now
        per_worker = {w["index"]: _cpus_of(w["pid"]) for w in view}
    if pinned:
        assert per_worker == {0: {allowed[0]}, 1: {allowed[1]}}
    else:
        assert per_worker == {0: set(allowed), 1: set(allowed)}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to pin to")
def test_a_pinned_worker_gives_the_processes_it_starts_every_cpu() -> None:
    """kbs.cpus: a pinned process's child (a Rego worker) is given back the CPUs the parent had before."""
    probe = ("import os, subprocess, sys\nfrom kbs import cpus\nbefore = os.sched_getaffinity(0)\n"
             "cpu = cpus.pin(1, 2)\nchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(5)'])\n"
             "inherited = os.sched_getaffinity(child.pid)\ncpus.unpin(child.pid)\n"
             "print(sorted(before), cpu, sorted(os.sched_getaffinity(0)), sorted(inherited),"
             " sorted(os.sched_getaffinity(child.pid)))\nchild.kill()\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO).stdout
    allowed = sorted(os.sched_getaffinity(0))
    assert out.strip() == f"{allowed} {allowed[1]} {[allowed[1]]} {[allowed[1]]} {allowed}"
