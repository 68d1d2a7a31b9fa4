"""Boot-storm benchmark: the broker under load, against the framework ceiling measured in the same run.

Starts its own broker(s) on loopback in a temporary directory (`kbs serve`, `--workers N`, SQLite by
default; `--postgres URL|auto` puts the store on PostgreSQL, `--replicas 2` runs two brokers on it) with
a synthetic AMD root, and load generators in their own processes (bench/loadgen.py).  Every guest is one
TCP connection: /auth, /attest with synthetic SNP evidence binding the nonce (verified fully by the
broker: chain, ECDSA P-384 signature, TCB, policy), GET the resource, decrypt it.

Phases (one line per measurement):
- closed: `--concurrency` guests back to back: releases/s at saturation;
- ceiling: the same generator against bench/ceiling.py, a minimal aiohttp app on as many processes
  answering canned bodies of the broker's sizes: the ratio broker / ceiling is the number to compare
  across machines (absolute numbers on shared machines drift); then the ceiling under Poisson arrivals at
  the `--rates` given in % of its own saturation: the latency and CPU an empty server has there;
- endpoints: closed loops that stop after /auth, and after /attest: broker CPU split by endpoint;
- open: Poisson arrivals at each of `--rates` (guests/s; "80%" is 80% of the closed-loop rate), latency
  counted from the scheduled arrival (no coordinated omission);
- storm (`--storm N`): N guests at once, retrying 503s after Retry-After: completion time, p99, peak
  memory of the whole broker (target: under 200 MB).

Broker CPU is summed over the supervisor, workers and helpers from /proc; memory is sampled (summed RSS,
and PSS which splits shared pages) and each process's VmHWM is reset per phase.  The generator's own CPU
is printed too: on a small machine it shares the cores with the broker.

Run: `make bench`, or `.venv/bin/python bench/bench_load.py [--workers 2] [--storm 10000] [--postgres auto
--replicas 2]`; `--help` for the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import procstat
from loadgen import ENDPOINTS, Result, Setup, capture, generator_main, header, merge

from tests.amd_synth import SyntheticAmd
from tests.broker import Broker, SnpGuest, free_port, run_broker

SECRET = b"boot-storm-key-0123456789abcdef"
RESOURCE = "bench/key/snp"
POLICY = {"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [
    {"claim": "snp.policy_debug_allowed", "equals": False}]}]}
MB = 1e6
ROUTES = {"/kbs/v0/auth": "auth", "/kbs/v0/attest": "attest", "/kbs/v0/resource/{repo}/{type}/{tag}": "resource"}


# -- generators ----------------------------------------------------------------------------------

class Generators:
    """`count` generator processes sharing each job (rates, concurrency and guests split evenly)."""

    def __init__(self, count: int, setup: Setup) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs = []
        for i in range(count):
            mine, theirs = context.Pipe()
            proc = context.Process(target=generator_main, args=(theirs, Setup(**{**setup.__dict__, "seed": i})),
                                   daemon=True)
            proc.start()
            self.procs.append(proc)
            self.pipes.append(mine)
        for pipe in self.pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a generator failed to start")
        self.jobs = 0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def run(self, job: dict[str, Any]) -> Result:
        n = len(self.pipes)
        self.jobs += 1
        for i, pipe in enumerate(self.pipes):
            part = dict(job, seed=self.jobs * 1000 + i, offset=i * (1 << 32) + self.jobs * (1 << 24))
            for key in ("rate", "concurrency", "guests", "cap"):
                if key in part:
                    share = part[key] / n
                    part[key] = share if key == "rate" else max(1, round(share))
            pipe.send(part)
        return merge([pipe.recv() for pipe in self.pipes])

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# -- what is measured ----------------------------------------------------------------------------

@dataclass
class Target:
    """What a phase measures: the server's process trees and, for the broker, its /metrics."""

    name: str
    roots: list[int]
    urls: list[str]
    postgres: list[int]


def scrape(urls: list[str]) -> dict[str, float]:
    """Per route: request duration sum and count (summed over replicas); 503s of admission control; the group
    commit's batches (writes, and the seconds each held the write lock)."""
    out: dict[str, float] = {}
    for url in urls:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith(("kbs_http_request_duration_seconds_sum{", "kbs_http_request_duration_seconds_count{")):
                metric, value = line.rsplit(" ", 1)
                route = metric.split('route="', 1)[1].split('"', 1)[0]
                if route in ROUTES:
                    key = f"{ROUTES[route]}.{'sum' if '_sum{' in metric else 'count'}"
                    out[key] = out.get(key, 0.0) + float(value)
            elif line.startswith(("kbs_overloaded_total ", "kbs_store_batch_writes_sum ",
                                  "kbs_store_batch_writes_count ", "kbs_store_batch_seconds_sum ")):
                name, value = line.split()
                key = name.removeprefix("kbs_").removesuffix("_total")
                out[key] = out.get(key, 0.0) + float(value)
    return out


def pct(values: Any, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * q))])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@dataclass
class Measured:
    result: Result
    seconds: float
    cpu: float
    pg_cpu: float
    memory: procstat.MemorySampler
    peaks: list[tuple[int, str, float]]
    server: dict[str, float]

    @property
    def rate(self) -> float:
        return self.result.completed / self.result.wall if self.result.wall else 0.0

    @property
    def cpu_ms(self) -> float:
        """The target's CPU per completed exchange (a release, for the broker), in milliseconds."""
        return self.cpu / max(1, self.result.completed) * 1000

    @property
    def cores(self) -> float:
        """The target's CPU over the phase's wall time: how many cores it kept busy."""
        return self.cpu / self.seconds if self.seconds else 0.0


def measure(target: Target, generators: Generators, job: dict[str, Any]) -> Measured:
    before = scrape(target.urls) if target.urls else {}
    cpu0 = procstat.cpu_seconds(target.roots)
    pg0 = procstat.cpu_seconds(target.postgres) if target.postgres else 0.0
    sampler = procstat.MemorySampler(target.roots).start()
    started = time.monotonic()
    result = generators.run(job)
    seconds = time.monotonic() - started
    sampler.stop()
    cpu = procstat.cpu_seconds(target.roots) - cpu0
    pg_cpu = (procstat.cpu_seconds(target.postgres) - pg0) if target.postgres else 0.0
    after = scrape(target.urls) if target.urls else {}
    server = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return Measured(result, seconds, cpu, pg_cpu, sampler, procstat.peaks_mib(target.roots), server)


def report(tag: str, target: Target, m: Measured, unit: str = "releases") -> None:
    r = m.result
    done = max(1, r.completed)
    refused = "/".join(str(x) for x in r.refused_503)
    print(f"[{tag}] {target.name}: {m.rate:.0f} {unit}/s ({r.completed} done, {r.failed} failed"
          f"{f', {r.dropped} not started (generator cap)' if r.dropped else ''}) in {r.wall:.1f} s;"
          f" exchange p50 {ms(pct(r.exchanges, .5))} p99 {ms(pct(r.exchanges, .99))} ms;"
          f" 503s auth/attest/resource {refused}; connection errors {r.connection_errors}", flush=True)
    pg = f", PostgreSQL {m.pg_cpu / done * 1000:.2f} ms/{unit[:-1]}" if target.postgres else ""
    print(f"[{tag}] {target.name} CPU: {m.cpu_ms:.2f} ms/{unit[:-1]} ({m.cores:.2f} cores){pg};"
          f" generator CPU {r.cpu / done * 1000:.2f} ms/exchange ({r.cpu / m.seconds:.2f} cores)"
          f"{f'; arrival lag p99 {ms(pct(r.lag, .99))} ms' if r.lag else ''}", flush=True)
    client = "  ".join(f"{name} {ms(pct(lat, .5))}/{ms(pct(lat, .99))}" for name, lat in zip(ENDPOINTS, r.endpoints,
                                                                                           strict=True))
    server = "  ".join(f"{name} {ms(m.server[f'{name}.sum'] / m.server[f'{name}.count'])}"
                       for name in ENDPOINTS if m.server.get(f"{name}.count"))
    batches = m.server.get("store_batch_writes_count", 0.0)
    commits = (f" | group commit: {m.server['store_batch_writes_sum'] / batches:.1f} writes per batch, write lock held"
               f" {ms(m.server['store_batch_seconds_sum'] / batches)} ms per batch" if batches else "")
    print(f"[{tag}] per endpoint, client p50/p99 ms (retries included): {client}"
          f"{f' | server mean ms: {server}' if server else ''}{commits}", flush=True)
    procs = ", ".join(f"{role} {mib * 1.048576:.0f}" for _, role, mib in m.peaks)
    print(f"[{tag}] {target.name} memory: peak total RSS {m.memory.peak_rss / MB:.0f} MB,"
          f" PSS {m.memory.peak_pss / MB:.0f} MB ({m.memory.peak_procs} processes);"
          f" peak RSS per process MB: {procs}", flush=True)
    if r.errors:
        print(f"[{tag}] errors: {dict(r.errors.most_common(5))}", flush=True)


# -- brokers -------------------------------------------------------------------------------------

async def provision(broker: Broker) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{broker.url}/kbs/v0/admin/policies/snp-any", data=json.dumps(POLICY),
                            headers=broker.admin_headers()) as r:
            assert r.status == 200, await r.text()
        async with http.post(f"{broker.url}/kbs/v0/resource/{RESOURCE}?policy=snp-any", data=SECRET,
                             headers=broker.admin_headers()) as r:
            assert r.status == 200, await r.text()


@contextlib.contextmanager
def postgres_database(spec: str) -> Iterator[tuple[str, list[int]]]:
    """(database URL, the cluster's postmaster pid when we started it)."""
    from tests.postgres import PostgresServer, throwaway_cluster

    if spec != "auto":
        server = PostgresServer(spec)
        url = server.create_database("kbs_bench")
        try:
            yield url, []
        finally:
            server.drop_database(url)
        return
    with throwaway_cluster() as server:
        root = server.url.split("host=", 1)[1].split("&", 1)[0]
        pid = int(Path(root, "data", "postmaster.pid").read_text().split()[0])
        yield server.create_database("kbs_bench"), [pid]


@contextlib.contextmanager
def brokers(tmp: Path, args: argparse.Namespace, pki: SyntheticAmd) -> Iterator[tuple[list[Broker], list[int]]]:
    (tmp / "ark.pem").write_bytes(pki.ark_pem)
    snp = '[verifiers]\nenabled = ["snp"]\n'  # an SNP-only site: the workers import no other verifier
    snp += f'[verifiers.snp]\ntrust_roots = ["{tmp / "ark.pem"}"]\noffline = true\ncache_dir = "{tmp / "kds"}"\n'
    # Every guest here comes from 127.0.0.1: the per-client connection cap (meant for one client among
    # many) is raised to the total one, and the per-client rates are off; everything else is the default.
    limits = ("[limits]\nmax_connections_per_client = 900\nauth_per_second = 0\nattest_per_second = 0\n"
              "resource_per_second = 0\n" + "".join(f"{line}\n" for line in args.limit))
    env = {"KBS_LOG_LEVEL": "WARNING"}
    with contextlib.ExitStack() as stack:
        database = ""
        pg_pids: list[int] = []  # the PostgreSQL server's processes, when there is one to measure
        if args.postgres:
            database, pg_pids = stack.enter_context(postgres_database(args.postgres))
        started: list[Broker] = []
        for i in range(args.replicas):
            state = tmp / f"replica-{i}"
            kek = f'kek_file = "{tmp / "replica-0" / "kek"}"\n' if i else ""
            db = f'database_url = "{database}"\n' if database else ""
            started.append(stack.enter_context(run_broker(tmp, f"{db}{kek}{snp}{limits}", state_dir=state, env=env,
                                                          workers=args.workers)))
        asyncio.run(provision(started[0]))
        yield started, pg_pids


@contextlib.contextmanager
def ceiling_server(tmp: Path, workers: int, canned: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    path = tmp / "canned.json"
    path.write_text(json.dumps(canned))
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("ceiling.py")), "--port", str(port),
                             "--workers", str(workers), "--canned", str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"listening":
            raise RuntimeError("the ceiling app did not start")
        proc.port = port  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rates(spec: str, saturation: float, relative_only: bool = False) -> list[float]:
    """The rates of `spec` (guests/s, or % of `saturation`); with `relative_only`, only the % ones."""
    out: list[float] = []
    for part in spec.split(","):
        part = part.strip()
        if part.endswith("%"):
            out.append(round(saturation * float(part[:-1]) / 100))
        elif part and not relative_only:
            out.append(float(part))
    return sorted(r for r in out if r > 0)  # overload last: its backlog would spill into the next rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--workers", type=int, default=cores, help="broker worker processes (default: one per core)")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes (default 1)")
    parser.add_argument("--concurrency", type=int, default=64, help="closed loop: guests back to back (default 64)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase (default 8)")
    parser.add_argument("--rates", default="100,200,400,50%,80%",
                        help="open-loop arrival rates, guests/s or %% of the closed-loop rate "
                             "(default 100,200,400,50%%,80%%)")
    parser.add_argument("--uniform", action="store_true", help="uniform arrivals (default: Poisson)")
    parser.add_argument("--storm", type=int, default=0, metavar="N", help="a boot storm of N guests (e.g. 10000)")
    parser.add_argument("--storm-cap", type=int, default=0, metavar="N",
                        help="at most N storm guests at a time from the generators (default: all of them)")
    parser.add_argument("--only-storm", action="store_true", help="skip the other phases")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the framework ceiling")
    parser.add_argument("--postgres", metavar="URL", help="store on PostgreSQL: a server URL the benchmark may "
                        "create a database on, or 'auto' for a throwaway local cluster (tests/postgres.py)")
    parser.add_argument("--replicas", type=int, default=1, help="broker replicas on the one PostgreSQL database")
    parser.add_argument("--limit", action="append", default=[], metavar="KEY=VALUE",
                        help="one more [limits] line for the broker, e.g. --limit 'max_in_flight = 64' (repeatable)")
    args = parser.parse_args()
    if args.replicas > 1 and not args.postgres:
        parser.error("--replicas needs --postgres (replicas share the store)")

    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {cores} cores, {platform.platform()}, Python {platform.python_version()},"
          f" aiohttp {aiohttp.__version__}, load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    pki = SyntheticAmd("Milan")
    guest = SnpGuest(pki)
    assert guest.vek.private_key is not None
    with tempfile.TemporaryDirectory(prefix="kbs-bench-") as tmp_name, \
            brokers(Path(tmp_name), args, pki) as (started, pg_pids):
        tmp = Path(tmp_name)
        store = (f"PostgreSQL ({'throwaway cluster, fsync off' if args.postgres == 'auto' else args.postgres})"
                 if args.postgres else "SQLite (synchronous=FULL)")
        print(f"broker: {args.replicas} replica(s) x {args.workers} worker(s), store {store}, at "
              f"{', '.join(b.url for b in started)}; {args.generators} generator process(es), "
              f"{'uniform' if args.uniform else 'Poisson'} arrivals")
        setup = Setup(targets=[("127.0.0.1", int(b.url.rsplit(":", 1)[1])) for b in started],
                      resource_path=RESOURCE, secret=SECRET,
                      vcek_key_pem=guest.vek.private_key.private_bytes(
                          serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
                      certificates=[("VCEK", guest.vek.der), ("ASK", pki.ask_der), ("ARK", pki.ark_der)],
                      chip=guest.chip, measurement=guest.measurement, policy=guest.policy,
                      keys=max(2048, min(args.storm, 20000)))
        broker = Target("broker", [b.process.pid for b in started], [b.url for b in started], pg_pids)
        generators = Generators(args.generators, setup)
        try:
            generators.run({"kind": "closed", "concurrency": 8, "seconds": 2.0})  # warm-up: caches, connections
            results: dict[str, Measured] = {}
            if not args.only_storm:
                run_phases(args, tmp, setup, broker, generators, results)
            if args.storm:
                cap = args.storm_cap or args.storm
                m = measure(broker, generators, {"kind": "storm", "guests": args.storm, "cap": cap,
                                                  "max_attempts": 10_000, "timeout": 1800.0})
                report(f"storm {args.storm}", broker, m)
                verdict = "under" if m.memory.peak_rss < 200 * MB else "OVER"
                print(f"[storm {args.storm}] {m.result.completed}/{args.storm} guests got their key in "
                      f"{m.result.wall:.1f} s; p99 {ms(pct(m.result.exchanges, .99))} ms; whole broker peak RSS "
                      f"{m.memory.peak_rss / MB:.0f} MB ({verdict} the 200 MB target), PSS "
                      f"{m.memory.peak_pss / MB:.0f} MB", flush=True)
                results["storm"] = m
            summary(args, results)
        finally:
            generators.close()


def open_job(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    return {"kind": "open", "rate": rate, "seconds": args.seconds, "poisson": not args.uniform, "cap": 4000}


def run_phases(args: argparse.Namespace, tmp: Path, setup: Setup, broker: Target, generators: Generators,
               results: dict[str, Measured]) -> None:
    tag = f"closed c={args.concurrency}"
    closed_job = {"kind": "closed", "concurrency": args.concurrency, "seconds": args.seconds}
    m = measure(broker, generators, closed_job)
    report(tag, broker, m)
    results["closed"] = m
    if not args.no_ceiling:
        responses, key_pem = asyncio.run(capture(setup))
        cookie = header(responses[0][0], b"set-cookie:")
        assert cookie is not None
        canned = {"auth": responses[0][1].decode(), "attest": responses[1][1].decode(),
                  "resource": responses[2][1].decode(), "cookie": cookie.decode()}
        with ceiling_server(tmp, args.workers * args.replicas, canned) as proc:
            port: int = proc.port  # type: ignore[attr-defined]
            ceiling_setup = Setup(**{**setup.__dict__, "targets": [("127.0.0.1", port)], "decrypt_key_pem": key_pem,
                                     "keys": 512})
            ceiling = Target("ceiling", [proc.pid], [], [])
            ceiling_generators = Generators(args.generators, ceiling_setup)
            try:
                ceiling_generators.run({"kind": "closed", "concurrency": 8, "seconds": 1.0})
                c = measure(ceiling, ceiling_generators, {"kind": "closed", "concurrency": args.concurrency,
                                                          "seconds": args.seconds})
                report(f"ceiling c={args.concurrency}", ceiling, c, unit="exchanges")
                results["ceiling"] = c
                # The empty framework at the same fractions of its own saturation as the broker's open rates: the
                # latency and CPU a server that does nothing costs there, on this machine, in this run.
                for rate in rates(args.rates, c.rate, relative_only=True):
                    o = measure(ceiling, ceiling_generators, open_job(args, rate))
                    report(f"ceiling open {rate:.0f}/s", ceiling, o, unit="exchanges")
                    results[f"ceiling open {rate:.0f}/s"] = o
            finally:
                ceiling_generators.close()
    for steps, name in ((1, "auth only"), (2, "auth+attest")):
        e = measure(broker, generators, {"kind": "closed", "concurrency": args.concurrency, "seconds": args.seconds / 2,
                                         "steps": steps})
        print(f"[endpoints] {name}: {e.rate:.0f} exchanges/s, broker CPU {e.cpu_ms:.2f} ms/exchange,"
              f" exchange p99 {ms(pct(e.result.exchanges, .99))} ms, {e.result.failed} failed", flush=True)
        results[name] = e
    for rate in rates(args.rates, m.rate):
        o = measure(broker, generators, open_job(args, rate))
        report(f"open {rate:.0f}/s", broker, o)
        results[f"open {rate:.0f}/s"] = o
    # The rates above are fractions of a saturation measured a minute earlier, on a shared machine whose speed
    # swings by a quarter within minutes: measured again after them, the two say how far the machine moved
    # meanwhile, and so at what load the open phases really ran.
    if any(name.startswith("open") for name in results):
        again = measure(broker, generators, closed_job)
        report(f"closed again c={args.concurrency}", broker, again)
        results["closed again"] = again


def cpu_load(m: Measured, saturated: list[Measured], unit: str = "release") -> str:
    """How busy the broker's CPUs were at an open rate, against the closed loop's: a worker that idles between
    requests pays more CPU for each (bench/idle_cost.py), so a fraction of the saturated rate can keep the cores
    busier than that fraction suggests, and the tail there is the CPU's queue."""
    full = max(c.cores for c in saturated)
    cheapest = min(c.cpu_ms for c in saturated)
    return (f"CPU {m.cores:.2f} cores, {100 * m.cores / full:.0f}% of the closed loop's busiest; "
            f"{m.cpu_ms:.2f} ms/{unit}, {100 * (m.cpu_ms / cheapest - 1):+.0f}% over the closed loop's cheapest")


def summary(args: argparse.Namespace, results: dict[str, Measured]) -> None:
    print("summary:")
    closed = results.get("closed")
    if closed:
        per = closed.cpu_ms
        print(f"  saturation (closed loop, {args.concurrency} guests): {closed.rate:.0f} releases/s, broker CPU "
              f"{per:.2f} ms/release, p99 {ms(pct(closed.result.exchanges, .99))} ms")
        auth, both = results.get("auth only"), results.get("auth+attest")
        if auth and both:
            a, b = auth.cpu_ms, both.cpu_ms
            print(f"  broker CPU by endpoint (differences of phases): /auth {a:.2f} ms, /attest {b - a:.2f} ms, "
                  f"GET resource {per - b:.2f} ms")
        ceiling = results.get("ceiling")
        if ceiling:
            cper = ceiling.cpu_ms
            print(f"  framework ceiling: {ceiling.rate:.0f} exchanges/s at {cper:.2f} ms CPU/exchange; "
                  f"ratio broker/ceiling: {closed.rate / ceiling.rate:.2f} (throughput), CPU per exchange "
                  f"{per / cper:.1f}x the ceiling's")
            for name, m in results.items():
                if name.startswith("ceiling open"):
                    print(f"  {name} ({100 * m.rate / ceiling.rate:.0f}% of the ceiling's saturation): p50 "
                          f"{ms(pct(m.result.exchanges, .5))} ms, p99 {ms(pct(m.result.exchanges, .99))} ms; "
                          f"{cpu_load(m, [ceiling], 'exchange')}")
    again = results.get("closed again")
    if closed and again:
        print(f"  saturation again after the open phases: {again.rate:.0f} releases/s, "
              f"{100 * (again.rate / closed.rate - 1):+.0f}% (the machine's drift meanwhile)")
    for name, m in results.items():
        if name.startswith("open"):
            load = ""
            if closed and again:
                load = (f" (the rate is {100 * m.rate / closed.rate:.0f}% of the saturation before, "
                        f"{100 * m.rate / again.rate:.0f}% of after)")
            print(f"  {name}: achieved {m.rate:.0f} releases/s, p50 {ms(pct(m.result.exchanges, .5))} ms, "
                  f"p99 {ms(pct(m.result.exchanges, .99))} ms, {m.result.failed} failed, "
                  f"{sum(m.result.refused_503)} 503s{load}")
            if closed:
                print(f"    broker {cpu_load(m, [c for c in (closed, again) if c])}")
    storm = results.get("storm")
    if storm:
        print(f"  storm {args.storm}: {storm.result.completed} keys in {storm.result.wall:.1f} s, p99 "
              f"{ms(pct(storm.result.exchanges, .99))} ms, peak RSS {storm.memory.peak_rss / MB:.0f} MB "
              f"(PSS {storm.memory.peak_pss / MB:.0f} MB)")


if __name__ == "__main__":
    main()
