"""Policy evaluations per second for both dialects on one realistic release policy.

The policy (in JSON and in Rego, the same nine conditions): SNP evidence present, debug and
migration off, VMPL 0, measurement in a reference set of three, two TCB minimums, firmware
version minimum, and every submod affirming.  Each evaluation includes handing the claims
to the engine, as the server does per request.  The obvious alternative measured in the
same run is a hand-written Python function with the same conditions (no explanation).

Rego runs in worker processes (kbs.policy.rego_pool); the cost of that isolation is measured
against the same engine code (kbs.policy.rego_worker.Engine) called in this process, on the
same policy, claims and data, with the same per-request work (data document, cache key, input).

With `--threads N` (default 2) the two Rego paths are also measured from N threads at once:
the pool's workers run in parallel, the in-process engine needs a lock (rego-cpp's thread
safety is undocumented).

Run: `.venv/bin/python bench/bench_policy.py [--seconds 1] [--rounds 5] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from timing import interleaved, print_rates

from kbs.evidence.base import AFFIRMING, GPU, Appraisal, trust_vector
from kbs.evidence.snp.verifier import snp_appraisal
from kbs.policy.ear import Submod, ear_document
from kbs.policy.loader import validate_policy
from kbs.policy.model import ResourceRequest
from kbs.policy.refvalues import ReferenceSet, ReferenceValues
from kbs.policy.rego_pool import RegoWorkerPool
from kbs.policy.rego_worker import Engine

NOW = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
GOOD = "f5" * 48
REFS = ReferenceValues([ReferenceSet("measurements", ("aa" * 48, "bb" * 48, GOOD))])
REQUEST = ResourceRequest.parse("prod/key/disk")

JSON_POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": [
    {"claim": "snp.policy_debug_allowed", "equals": False},
    {"claim": "snp.policy_migrate_ma", "equals": False},
    {"claim": "snp.vmpl", "equals": 0},
    {"claim": "snp.measurement", "in": {"ref": "measurements"}},
    {"claim": "snp.reported_tcb_snp", "greaterOrEquals": 22},
    {"claim": "snp.reported_tcb_microcode", "greaterOrEquals": 84},
    {"claim": "snp.firmware_version", "versionGreaterOrEquals": "1.55.29"},
    {"claim": "submod.ear\\.status", "equals": "affirming"},
    {"claim": "submods.gpu0.ear\\.status", "equals": "affirming"}]}]})

REGO_POLICY = """package policy
import rego.v1
default allow := false
snp := input.submods.cpu0["ear.veraison.annotated-evidence"].snp
allow if {
    snp.policy_debug_allowed == false
    snp.policy_migrate_ma == false
    snp.vmpl == 0
    snp.measurement in data.reference.measurements
    snp.reported_tcb_snp >= 22
    snp.reported_tcb_microcode >= 84
    snp.firmware.current.minor >= 55
    input.submods.cpu0["ear.status"] == "affirming"
    input.submods.gpu0["ear.status"] == "affirming"
}
"""


def claims(debug: bool = False) -> dict[str, Any]:
    snp = {"measurement": GOOD, "policy_debug_allowed": debug, "policy_migrate_ma": False, "vmpl": 0,
           "reported_tcb_snp": 23, "reported_tcb_microcode": 84, "firmware_version": "1.55.40",
           "firmware": {"current": {"major": 1, "minor": 55, "build": 40}}, "report_data": "00" * 64,
           "init_data": "00" * 32, "chip_id": "11" * 64}
    gpu = Appraisal(tee="nvgpu", device_class=GPU, claims={"measres": "success"},
                    vector=trust_vector(instance_identity=AFFIRMING, hardware=AFFIRMING, configuration=AFFIRMING))
    return ear_document([Submod(snp_appraisal(snp)), Submod(gpu)], issued_at=NOW)


def handwritten(doc: dict[str, Any]) -> bool:
    cpu = doc["submods"]["cpu0"]
    snp = cpu["ear.veraison.annotated-evidence"]["snp"]
    return (snp["policy_debug_allowed"] is False and snp["policy_migrate_ma"] is False and snp["vmpl"] == 0
            and snp["measurement"] in REFS.as_data(NOW)["measurements"] and snp["reported_tcb_snp"] >= 22
            and snp["reported_tcb_microcode"] >= 84 and snp["firmware"]["current"]["minor"] >= 55
            and cpu["ear.status"] == "affirming" and doc["submods"]["gpu0"]["ear.status"] == "affirming")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    good, bad = claims(), claims(debug=True)
    engines: dict[str, Callable[[dict[str, Any]], bool]] = {"hand-written Python": handwritten}
    pool = RegoWorkerPool(workers=2)
    try:
        for name, text in (("JSON dialect (with explanation)", JSON_POLICY),
                           ("Rego, worker pool (isolated)", REGO_POLICY)):
            policy = validate_policy(text, REFS, rego=pool)
            engines[name] = lambda doc, p=policy: p.evaluate(doc, REFS, REQUEST, NOW).allow  # type: ignore[misc]
        engines["Rego, in-process regopy"] = in_process(Engine())
        for name, decide in engines.items():
            assert decide(good) is True and decide(bad) is False, name

        paths = {name: (lambda d=decide: d(good)) for name, decide in engines.items()}
        results = interleaved(paths, args.rounds, args.seconds)
        lock = threading.Lock()
        local = engines["Rego, in-process regopy"]

        def locked() -> None:
            with lock:
                local(good)

        concurrent = {"Rego, worker pool (isolated)": paths["Rego, worker pool (isolated)"],
                      "Rego, in-process regopy + lock": locked}
        threaded: dict[str, list[float]] = {name: [] for name in concurrent}
        for _ in range(args.rounds):
            for name, fn in concurrent.items():
                threaded[name].append(threaded_rate(fn, args.threads, args.seconds))
    finally:
        pool.close()
    print(f"Policy evaluation, nine conditions, {args.rounds} rounds x {args.seconds}s, one thread")
    print_rates(results, "hand-written Python", "evals/s")
    isolated, inproc = (statistics.median(results[n]) for n in ("Rego, worker pool (isolated)",
                                                                  "Rego, in-process regopy"))
    print(f"  Rego per evaluation: worker pool {1e6 / isolated:.0f} us, in-process {1e6 / inproc:.0f} us; "
          f"pool/in-process rate ratio {isolated / inproc:.2f}x")
    print(f"Rego from {args.threads} threads at once (pool of 2 workers)")
    print_rates(threaded, "Rego, in-process regopy + lock", "evals/s")


def threaded_rate(fn: Callable[[], object], threads: int, seconds: float) -> float:
    """Calls of `fn` per second, summed over `threads` threads calling it for `seconds`."""
    counts = [0] * threads
    end = time.perf_counter() + seconds

    def run(i: int) -> None:
        while time.perf_counter() < end:
            fn()
            counts[i] += 1

    start = time.perf_counter()
    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def in_process(engine: Engine) -> Callable[[dict[str, Any]], bool]:
    """What the pool's worker does, minus the process boundary: data document, cache key, input, query."""
    def decide(doc: dict[str, Any]) -> bool:
        data = {"plugin": REQUEST.plugin, "resource-path": list(REQUEST.path), "query": dict(REQUEST.query),
                "reference": REFS.as_data(NOW)}
        key = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        reply = engine.evaluate(key, doc, REGO_POLICY, data)
        return reply.get("status") == "ok" and reply.get("allow") is True
    return decide


if __name__ == "__main__":
    main()
