"""Boot-storm load generator: N concurrent guests play the full KBS protocol against a running broker.

Each guest: /auth, /attest (synthetic SNP evidence signed by a test VCEK, verified by the broker
against the synthetic root it is configured to trust), GET the resource, decrypt.  Prints
releases/s, p50/p99 latency of the whole exchange and the broker's peak RSS; the same run with
the `sample` TEE (no evidence verification) is the baseline, so the ratio shows what
verification costs under load.

Run: `.venv/bin/python bench/bench_load.py [--guests 32] [--seconds 10]` (starts its own broker on
loopback in a temporary directory), or `--url URL --admin-key PEM --trust-configured` for a broker
you started yourself with the synthetic root this script writes to --workdir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kbs.keys.jwe import decrypt
from tests.amd_synth import SyntheticAmd
from tests.broker import Broker, SnpGuest, full_flow, run_broker

SECRET = b"boot-storm-key-0123456789abcdef"
POLICIES = {
    "snp-any": {"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [
        {"claim": "snp.policy_debug_allowed", "equals": False}]}]},
    "sample-ok": {"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
        {"claim": "sample.svn", "equals": "1"}]}]},
}


async def provision(broker: Broker) -> None:
    async with aiohttp.ClientSession() as http:
        for pid, body in POLICIES.items():
            async with http.put(f"{broker.url}/kbs/v0/admin/policies/{pid}", data=json.dumps(body),
                                headers=broker.admin_headers()) as r:
                assert r.status == 200, await r.text()
        for path, pid in (("bench/key/snp", "snp-any"), ("bench/key/sample", "sample-ok")):
            async with http.post(f"{broker.url}/kbs/v0/resource/{path}?policy={pid}", data=SECRET,
                                 headers=broker.admin_headers()) as r:
                assert r.status == 200, await r.text()


async def storm(broker: Broker, tee: str, guests: int, seconds: float, guest: SnpGuest | None) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    path = "bench/key/snp" if tee == "snp" else "bench/key/sample"

    async def one_guest() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status, body, key = await full_flow(broker.url, tee, path, guest=guest)
            if status != 200 or decrypt(body, key.private_key) != SECRET:
                raise RuntimeError(f"guest refused: {status} {body}")
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one_guest() for _ in range(guests)))
    return latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report(name: str, latencies: list[float], seconds: float, broker_cpu: float) -> float:
    rate = len(latencies) / seconds
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"  {name:28s} {rate:8.1f} releases/s  p50 {statistics.median(ordered) * 1000:7.1f} ms  "
          f"p99 {p99 * 1000:7.1f} ms  broker CPU {broker_cpu / len(latencies) * 1000:5.2f} ms/release  "
          f"({len(latencies)} releases)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guests", type=int, default=32, help="concurrent guests")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each storm")
    args = parser.parse_args()

    pki = SyntheticAmd("Milan")
    guest = SnpGuest(pki)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "ark.pem").write_bytes(pki.ark_pem)
        config = f'[verifiers.snp]\ntrust_roots = ["{tmp / "ark.pem"}"]\noffline = true\n'
        with run_broker(tmp, config, env={"KBS_LOG_LEVEL": "WARNING"}) as broker:
            asyncio.run(provision(broker))
            asyncio.run(storm(broker, "snp", 2, 1.0, guest))  # warm up
            print(f"Boot storm: {args.guests} concurrent guests, {args.seconds:.0f}s per run, broker on loopback "
                  "(one process; the load generator shares the machine's cores)")
            pid = broker.process.pid
            cpu0 = cpu_seconds(pid)
            snp = asyncio.run(storm(broker, "snp", args.guests, args.seconds, guest))
            cpu1 = cpu_seconds(pid)
            sample = asyncio.run(storm(broker, "sample", args.guests, args.seconds, None))
            cpu2 = cpu_seconds(pid)
            snp_rate = report("SNP (full verification)", snp, args.seconds, cpu1 - cpu0)
            sample_rate = report("sample TEE (no verification)", sample, args.seconds, cpu2 - cpu1)
            print(f"  ratio SNP / sample: {snp_rate / sample_rate:.2f}x;  broker peak RSS "
                  f"{peak_rss_mib(broker.process.pid):.0f} MiB")


if __name__ == "__main__":
    main()
