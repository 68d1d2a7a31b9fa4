"""The Rego dialect: Trustee-style resource policies (`package policy`, rule `allow`), run by regopy.

regopy (Microsoft rego-cpp) is the only official, maintained Rego engine on PyPI.  Measured
against it and worked around here (regopy 1.5.2):

* It can crash, exhaust memory or run for tens of seconds on a policy that passed upload
  (`json.unmarshal` / `yaml.unmarshal` of a 6,000-deep string from the claims: SIGSEGV;
  `numbers.range(1, 4000000000)`; cross products).  So it never runs in the broker: every
  check and evaluation goes to a worker process (`kbs.policy.rego_pool`, `rego_worker`)
  with a deadline and an address-space limit; a crash, timeout or memory exhaustion costs
  that worker and is a deny naming why (`rego.crash`, `rego.timeout`, `rego.memory`).
* Its allocator reserves a 256 GiB page map at start-up, so RLIMIT_AS / RLIMIT_DATA must be
  set after the engine starts (at its size then plus the budget), not before it is loaded.
* `opa.runtime()` returns the process environment: workers get an empty one.
* The `with` keyword is unusable: `... with input as ...` aborts the process at build
  time and `... with data.plugin as ...` silently yields undefined.  Per-request `data`
  therefore cannot be passed into one compiled bundle; instead a bundle is compiled per
  distinct `data` document (request + active reference values) and cached in the worker,
  keyed by policy content hash and data hash, bounded by entries and approximate bytes.
  A miss costs one compile (~1-10 ms); a hit is one query.
* Only `data.policy.allow` is queried (a bundle entrypoint): rules allow does not need are
  never evaluated, so an expensive or failing helper rule costs nothing.
* `query_bundle` on a bundle whose build failed segfaults, so `Bundle.ok()` is checked
  and the build error is turned into a refusal (e.g. "Multiple default rules").
* Some valid policies abort the process while compiling (a C++ exception reaching
  `std::terminate`, e.g. `inner with input as input.c` next to a rule reading `input`).
  An uploaded policy is therefore compiled and queried once (empty input) in a worker;
  a crash there refuses the policy instead of killing the broker.
* Some compile-time checks of OPA (unknown functions, unsafe variables) happen at
  evaluation instead, so they show up as a deny with the engine's message.
* Outputs come in three shapes (JSON, "undefined", an S-expression error list, either
  as an error node or as an "ok" string) and regopy's own `Output` class raises on some
  of them, so the raw C API wrappers from `regopy.rego_shared` are used.

rego-cpp's thread safety is not documented: each worker runs one evaluation at a time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kbs.policy.model import Decision, Explanation, PolicyInvalid, ResourceRequest
from kbs.policy.refvalues import ReferenceValues
from kbs.policy.rego_pool import RegoWorkerPool

PACKAGE = "policy"
EMPTY_DATA: dict[str, Any] = {"plugin": "", "resource-path": [], "query": {}, "reference": {}}

_PACKAGE_LINE = re.compile(r"^\s*package\s+([^\s#]+)")
# `data.reference.name` or `data.reference["name"]`.  A regex over the source, not the
# AST: references built at run time (`data.reference[x]`) are not found, and mentions
# inside strings or comments are (harmlessly) counted.
_REFERENCE = re.compile(r"""\bdata\s*\.\s*reference\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*"([^"\\]*)"\s*\])""")


class RegoPolicy:
    """A checked Rego resource policy; `data.policy.allow` must be boolean true to release."""

    dialect = "rego"

    def __init__(self, text: str, pool: RegoWorkerPool) -> None:
        """Use `parse`: this does not validate."""
        self.text = text
        self.content_hash = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        self._pool = pool

    @classmethod
    def parse(cls, text: str, pool: RegoWorkerPool) -> RegoPolicy:
        """Compile and query once with an empty request, in a worker of `pool`, to refuse what the
        engine cannot build or crashes on."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PolicyInvalid("policy text is not valid UTF-8") from exc
        policy = cls(text, pool)
        pool.check(text, EMPTY_DATA)
        policy._check_package()
        return policy

    def referenced_sets(self) -> frozenset[str]:
        return frozenset(a or b for a, b in _REFERENCE.findall(_strip_comments(self.text)))

    def evaluate(self, claims: Mapping[str, Any], refs: ReferenceValues, request: ResourceRequest,
                 at: datetime) -> Decision:
        try:
            if not isinstance(claims, Mapping):
                return _deny("claims document is not a JSON object")
            data = {"plugin": request.plugin, "resource-path": list(request.path),
                    "query": dict(request.query), "reference": refs.as_data(at)}
            return self._pool.evaluate(self.text, self.content_hash, claims, data)
        except Exception as exc:  # never raise: an unexpected failure is a deny with its reason
            return _deny(f"policy engine failed: {type(exc).__name__}: {exc}")

    def _check_package(self) -> None:
        for number, line in enumerate(self.text.splitlines(), start=1):
            found = _PACKAGE_LINE.match(line)
            if found:
                if found.group(1) != PACKAGE:
                    raise PolicyInvalid(f"package must be {PACKAGE!r}, not {found.group(1)!r}", line=number)
                return
        raise PolicyInvalid(f"no 'package {PACKAGE}' statement")


def _deny(reason: str) -> Decision:
    return Decision(allow=False, explanation=Explanation(kind="policy", ok=False, detail=reason,
                                                         where="data.policy.allow"))


def _strip_comments(text: str) -> str:
    # Good enough for a name scan: '#' inside a string also cuts the rest of that line.
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())
