"""Release inputs cached on the store's decision generation (kbs.server.decisions)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from kbs.policy.lifecycle import PolicyRegistry
from kbs.policy.refvalues import ReferenceSet
from kbs.server.decisions import DecisionInputs
from kbs.store.sqlite import SqliteStore

NOW = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
POLICY = ('{"version": "1.0.0", "anyOf": [{"authority": "local:snp", "allOf": '
          '[{"claim": "snp.measurement", "in": {"ref": "m"}}]}]}')


def test_inputs_are_read_once_per_generation_and_fresh_after_any_change(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32)
    registry = PolicyRegistry(store)
    store.put_reference_set(ReferenceSet("m", ("aa",)))
    registry.put("p", POLICY, created_by="a", at=NOW)
    store.put_resource("r/t/k", b"sealed-1", "p", "a", NOW)
    inputs = DecisionInputs(store, registry)
    first = inputs.get("r/t/k")
    assert inputs.get("r/t/k") is first and (inputs.hits, inputs.misses) == (1, 1)
    resource, policy_id, resolved, disabled = first
    assert resource is not None and resource.sealed == b"sealed-1" and policy_id == "p" and not disabled
    assert not isinstance(resolved, Exception) and resolved[2].get("m").values == ("aa",)  # type: ignore[union-attr]

    other = SqliteStore(tmp_path / "kbs.sqlite3", b"k" * 32)  # another worker or replica changes things
    other.put_reference_set(ReferenceSet("m", ("bb",)))
    _, _, resolved, _ = inputs.get("r/t/k")
    assert not isinstance(resolved, Exception) and resolved[2].get("m").values == ("bb",)  # type: ignore[union-attr]
    other.set_resource_state("r/t/k", 1, "disabled")
    resource, policy_id, _, disabled = inputs.get("r/t/k")
    assert resource is None and disabled and policy_id == "p"  # still judged by the policy it is bound to
    other.set_resource_state("r/t/k", 1, "active")
    other.bind_policy("r/t/k", "default")
    assert inputs.get("r/t/k")[1] == "default"
    assert inputs.misses == 4

    missing = inputs.get("no/such/key")  # no resource: the default policy, which does not exist here
    assert missing[0] is None and missing[1] == "default" and isinstance(missing[2], Exception) and not missing[3]
