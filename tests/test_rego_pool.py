"""Rego in worker processes: hostile policies cost one evaluation (a deny with a reason label), never the
test process; the pool keeps answering correctly, concurrently, within its deadlines and limits.

Time bounds here only assert "does not hang" (generous); speed is bench/bench_policy.py's business.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kbs.cli import main
from kbs.policy.lifecycle import PolicyRegistry
from kbs.policy.loader import validate_policy
from kbs.policy.model import Decision, PolicyInvalid, ResourceRequest
from kbs.policy.refvalues import ReferenceSet, ReferenceValues
from kbs.policy.rego import RegoPolicy
from kbs.policy.rego_pool import (
    BUSY,
    CLOSED,
    CRASH,
    MEMORY,
    TIMEOUT,
    TOO_LARGE,
    RegoUnavailable,
    RegoWorkerPool,
)

NOW = dt.datetime(2026, 11, 25, 18, 30, tzinfo=dt.UTC)
REQUEST = ResourceRequest.parse("prod/key/disk")
NO_REFS = ReferenceValues()
MIB = 1 << 20

NORMAL = "package policy\nimport rego.v1\ndefault allow := false\nallow if input.ok == true\n"
REF = ("package policy\nimport rego.v1\ndefault allow := false\n"
       "allow if input.m in data.reference.measurements\n")
DEEP = "[" * 6000 + "]" * 6000  # 12 KB of claims: rego-cpp's parsers recurse once per level

# Each passes upload (the guard is false for an empty input) and misbehaves on hostile claims.
GUARDED = "package policy\nimport rego.v1\ndefault allow := false\n"
JSON_BOMB = GUARDED + "allow if { input.s; json.unmarshal(input.s) }\n"
YAML_BOMB = GUARDED + "allow if { input.s; yaml.unmarshal(input.s) }\n"
RANGE_BOMB = GUARDED + "allow if { input.go; count(numbers.range(1, 4000000000)) > 0 }\n"
# 9 million pairs, no collection built: seconds of CPU in little memory (rego-cpp stops it after ~4 s).
SLOW = GUARDED + ('allow if { input.go; xs := numbers.range(1, 3000); some a in xs; some b in xs; '
                  'sprintf("%d-%d", [a, b]) == "x" }\n')
HOSTILE_CLAIMS = {"s": DEEP, "go": True}


def evaluate(policy: RegoPolicy, claims: Any, refs: ReferenceValues = NO_REFS) -> Decision:
    return policy.evaluate(claims, refs, REQUEST, NOW)


def label_of(decision: Decision) -> str:
    return decision.explanation.detail.split(":", 1)[0]


def assert_still_serving(pool: RegoWorkerPool) -> None:
    normal = RegoPolicy.parse(NORMAL, pool)
    assert evaluate(normal, {"ok": True}).allow
    assert not evaluate(normal, {"ok": False}).allow
    assert evaluate(normal, {"ok": True}).allow


@pytest.fixture(scope="module")
def pool() -> Iterator[RegoWorkerPool]:
    """Timeout long enough that memory exhaustion is reported as such on a loaded machine."""
    with RegoWorkerPool(workers=2, timeout=15.0, memory_bytes=192 * MIB) as p:
        yield p


@pytest.fixture(scope="module")
def quick() -> Iterator[RegoWorkerPool]:
    """A short deadline for the timeout tests (a healthy evaluation takes milliseconds)."""
    with RegoWorkerPool(workers=2, timeout=0.75, memory_bytes=192 * MIB) as p:
        yield p


# -- hostile policies: a deny with the reason, and the pool serves on ---------------------------------

@pytest.mark.parametrize(("text", "label", "sign"), [
    (JSON_BOMB, CRASH, "SIGSEGV"),
    (YAML_BOMB, CRASH, "SIGSEGV"),
    (RANGE_BOMB, MEMORY, "bad_alloc"),
], ids=["json.unmarshal", "yaml.unmarshal", "numbers.range"])
def test_hostile_policy_is_a_deny_with_its_reason(pool: RegoWorkerPool, text: str, label: str, sign: str) -> None:
    policy = RegoPolicy.parse(text, pool)  # upload passes: an empty input does not reach the bomb
    before = pool.stats()
    decision = evaluate(policy, HOSTILE_CLAIMS)
    assert not decision.allow
    assert label_of(decision) == label, decision.explanation.detail
    assert sign in decision.explanation.detail
    after = pool.stats()
    assert after[label] == before[label] + 1
    assert after["restarts"] >= before["restarts"] + 1
    assert_still_serving(pool)
    benign = evaluate(policy, {"s": "[1]", "go": False})  # the same policy on benign claims: a plain answer
    assert benign.explanation.detail.startswith("data.policy.allow is "), benign.explanation.detail


def test_slow_policy_times_out(quick: RegoWorkerPool) -> None:
    policy = RegoPolicy.parse(SLOW, quick)
    start = time.monotonic()
    decision = evaluate(policy, HOSTILE_CLAIMS)
    assert time.monotonic() - start < 30  # killed at the deadline, not after rego-cpp's own ~4 s limit
    assert not decision.allow and label_of(decision) == TIMEOUT, decision.explanation.detail
    assert quick.stats()[TIMEOUT] >= 1
    assert_still_serving(quick)


def test_memory_limit_applies_to_the_worker_not_the_broker(pool: RegoWorkerPool) -> None:
    def limit(pid: int, name: str) -> str:
        rows = Path(f"/proc/{pid}/limits").read_text().splitlines()
        return next(row for row in rows if row.startswith(name))[len(name):].split()[0]

    for pid in pool.worker_pids():
        give_up = time.monotonic() + 30  # a worker just (re)started sets its limits once the engine is up
        while limit(pid, "Max address space") == "unlimited" and time.monotonic() < give_up:
            time.sleep(0.02)
        assert limit(pid, "Max address space") != "unlimited"
        assert limit(pid, "Max data size") != "unlimited"
        assert limit(pid, "Max core file size") == "0"
    policy = RegoPolicy.parse(RANGE_BOMB, pool)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    decision = evaluate(policy, HOSTILE_CLAIMS)  # would take gigabytes without the limit
    assert label_of(decision) == MEMORY, decision.explanation.detail
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < 64 * MIB


def test_hostile_policies_refused_at_upload_when_unguarded(quick: RegoWorkerPool) -> None:
    with pytest.raises(PolicyInvalid, match=r"crashed .*rego\.crash"):
        RegoPolicy.parse("package policy\nimport rego.v1\nev := input.a\ninner if ev.b == 1\n"
                         "allow if { inner with input as input.c }\n", quick)
    with pytest.raises(PolicyInvalid, match=r"rego\.timeout"):
        RegoPolicy.parse(SLOW.replace("input.go; ", ""), quick)
    with pytest.raises(PolicyInvalid, match="line 4"):
        RegoPolicy.parse("package policy\n\nallow if {\n    input.x ==\n}\n", quick)
    assert_still_serving(quick)


# -- concurrency --------------------------------------------------------------------------------------

def test_concurrent_evaluations_are_independent(pool: RegoWorkerPool) -> None:
    normal, ref = RegoPolicy.parse(NORMAL, pool), RegoPolicy.parse(REF, pool)
    refs_a = ReferenceValues([ReferenceSet("measurements", ("aa",))])
    refs_b = ReferenceValues([ReferenceSet("measurements", ("bb",))])
    cases = [(normal, {"ok": True}, NO_REFS, True), (normal, {"ok": 1}, NO_REFS, False),
             (ref, {"m": "aa"}, refs_a, True), (ref, {"m": "aa"}, refs_b, False),
             (ref, {"m": "bb"}, refs_b, True), (ref, {"m": "bb"}, NO_REFS, False)]
    failures: list[str] = []

    def worker(offset: int) -> None:
        for i in range(40):
            policy, claims, refs, expected = cases[(i + offset) % len(cases)]
            decision = evaluate(policy, claims, refs)
            if decision.allow is not expected:
                failures.append(f"thread {offset} case {(i + offset) % len(cases)}: {decision.explanation.detail}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert failures == [] and not any(t.is_alive() for t in threads)


def test_a_slow_evaluation_does_not_hold_up_a_healthy_one(quick: RegoWorkerPool) -> None:
    slow, normal = RegoPolicy.parse(SLOW, quick), RegoPolicy.parse(NORMAL, quick)
    results: list[Decision] = []
    hostile = threading.Thread(target=lambda: results.append(evaluate(slow, HOSTILE_CLAIMS)))
    hostile.start()
    time.sleep(0.1)
    start = time.monotonic()
    for _ in range(5):
        assert evaluate(normal, {"ok": True}).allow
    elapsed = time.monotonic() - start
    hostile.join(timeout=60)
    assert label_of(results[0]) == TIMEOUT
    assert elapsed < quick.timeout + 5  # the other worker answered; at worst, after one deadline


def test_one_worker_serves_the_next_request_after_a_timeout() -> None:
    with RegoWorkerPool(workers=1, timeout=0.75, memory_bytes=192 * MIB, queue_timeout=60) as one:
        slow, normal = RegoPolicy.parse(SLOW, one), RegoPolicy.parse(NORMAL, one)
        hostile = threading.Thread(target=lambda: evaluate(slow, HOSTILE_CLAIMS))
        hostile.start()
        time.sleep(0.1)
        start = time.monotonic()
        assert evaluate(normal, {"ok": True}).allow
        assert time.monotonic() - start < 30  # one deadline, a restart, then the answer
        hostile.join(timeout=60)
        assert one.stats()[TIMEOUT] == 1


# -- restarts, limits, lifecycle ----------------------------------------------------------------------

def test_restarts_are_rate_limited() -> None:
    """A policy that crashes every time: past a burst of 2 * workers, one restart per interval."""
    events: list[str] = []
    interval = 0.5
    start = time.monotonic()
    with RegoWorkerPool(workers=1, timeout=15.0, restart_interval=interval, queue_timeout=60,
                        on_event=events.append) as one:
        bomb = RegoPolicy.parse(JSON_BOMB, one)
        for _ in range(5):
            assert label_of(evaluate(bomb, HOSTILE_CLAIMS)) == CRASH
        elapsed = time.monotonic() - start
        stats = one.stats()
        assert stats[CRASH] == 5 and stats["restarts"] >= 4  # each crash but the last needed a new worker
        assert stats["restarts"] <= 2 + elapsed / interval  # the token bucket's bound: here >= 1 s of waiting
        assert events.count(CRASH) == 5 and events.count("restarts") == stats["restarts"]
        assert_still_serving(one)


def test_busy_when_no_worker_can_start_in_time() -> None:
    with RegoWorkerPool(workers=1, timeout=15.0, restart_interval=60, queue_timeout=0.3) as one:
        bomb = RegoPolicy.parse(JSON_BOMB, one)
        labels = [label_of(evaluate(bomb, HOSTILE_CLAIMS)) for _ in range(4)]
        assert labels[:3] == [CRASH] * 3 and labels[3] == BUSY  # the burst spent, the next restart is far
        assert one.stats()[BUSY] == 1


def test_worker_killed_while_idle_is_replaced_without_a_deny(pool: RegoWorkerPool) -> None:
    normal = RegoPolicy.parse(NORMAL, pool)
    assert evaluate(normal, {"ok": True}).allow
    pids = pool.worker_pids()
    for pid in pids:
        os.kill(pid, 9)
    give_up = time.monotonic() + 10
    while time.monotonic() < give_up and not all(dead(pid) for pid in pids):
        time.sleep(0.01)
    for _ in range(3):
        assert evaluate(normal, {"ok": True}).allow


def dead(pid: int) -> bool:
    """A zombie whose every thread is gone (only then can its parent reap it)."""
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except FileNotFoundError:
        return True
    return status["State"].split()[0] in ("Z", "X") and int(status["Threads"]) <= 1


def test_oversized_request_is_a_deny() -> None:
    with RegoWorkerPool(workers=1, max_message_bytes=4096) as small:
        normal = RegoPolicy.parse(NORMAL, small)
        decision = evaluate(normal, {"ok": True, "pad": "x" * 5000})
        assert label_of(decision) == TOO_LARGE
        assert evaluate(normal, {"ok": True}).allow


def test_evicted_bundles_are_sent_again() -> None:
    """A worker that cannot keep the bundle asks for the source again (the 'miss' answer)."""
    with RegoWorkerPool(workers=1, cache_bytes=1) as nocache:
        ref = RegoPolicy.parse(REF, nocache)
        refs_a = ReferenceValues([ReferenceSet("measurements", ("aa",))])
        for _ in range(3):
            assert evaluate(ref, {"m": "aa"}, refs_a).allow
            assert not evaluate(ref, {"m": "bb"}, refs_a).allow


def test_workers_do_not_see_the_broker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBS_TEST_SECRET", "hunter2")
    with RegoWorkerPool(workers=1) as fresh:
        policy = RegoPolicy.parse("package policy\nimport rego.v1\nallow := object.keys(opa.runtime().env)\n", fresh)
        detail = evaluate(policy, {}).explanation.detail
        assert "KBS_TEST_SECRET" not in detail and "LC_ALL" in detail


def test_closed_pool_denies_and_refuses() -> None:
    with RegoWorkerPool(workers=1, timeout=15.0) as doomed:
        slow = RegoPolicy.parse(SLOW, doomed)
        in_flight: list[Decision] = []
        hostile = threading.Thread(target=lambda: in_flight.append(evaluate(slow, HOSTILE_CLAIMS)))
        hostile.start()
        time.sleep(0.3)
        doomed.close()
        hostile.join(timeout=30)
        assert label_of(in_flight[0]) == CLOSED
        assert label_of(evaluate(slow, {"go": False})) == CLOSED
        with pytest.raises(RegoUnavailable):
            doomed.check(NORMAL)
        assert doomed.stats()["workers_alive"] == 0


# -- wiring -------------------------------------------------------------------------------------------

def test_registry_and_loader_use_the_pool(pool: RegoWorkerPool) -> None:
    refs = ReferenceValues([ReferenceSet("measurements", ("aa",))])
    registry = PolicyRegistry(refs=refs, rego=pool)
    registry.put("disk", REF, created_by="alice", at=NOW)
    assert registry.policy("disk").evaluate({"m": "aa"}, refs, REQUEST, NOW).allow
    assert validate_policy(REF, refs, rego=pool).dialect == "rego"
    with pytest.raises(PolicyInvalid, match="no Rego worker pool"):
        PolicyRegistry(refs=refs).put("disk", REF, created_by="alice", at=NOW)


def test_cli_check_and_eval_of_a_rego_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.rego").write_text(REF)
    (tmp_path / "bomb.rego").write_text(JSON_BOMB)
    (tmp_path / "refs.json").write_text(json.dumps({"measurements": ["aa"]}))
    claims = {"submods": {}, "m": "aa", "s": DEEP}
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    refs, c = str(tmp_path / "refs.json"), str(tmp_path / "claims.json")
    assert main(["policy", "check", str(tmp_path / "p.rego"), "--refs", refs]) == 0
    assert main(["policy", "eval", str(tmp_path / "p.rego"), c, "--refs", refs]) == 0
    capsys.readouterr()
    assert main(["policy", "eval", str(tmp_path / "bomb.rego"), c, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["explanation"]["detail"].startswith(CRASH)


def test_a_lazy_pool_starts_a_worker_only_when_used() -> None:
    """The broker's pool: no process until a Rego policy is checked or evaluated (a JSON-only broker runs none)."""
    with RegoWorkerPool(workers=2, timeout=15.0, lazy=True) as p:
        assert p.stats()["workers_alive"] == 0
        p.check("package policy\nimport rego.v1\ndefault allow := false\n")
        stats = p.stats()
        assert stats["workers_alive"] == 1 and stats["restarts"] == 0
