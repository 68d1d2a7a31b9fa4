"""The Rego dialect: Trustee-style resource policies (`package policy`, rule `allow`), run by regopy.

regopy (Microsoft rego-cpp) is the only official, maintained Rego engine on PyPI.  Measured
against it and worked around here (regopy 1.5.2):

* The `with` keyword is unusable: `... with input as ...` aborts the process at build
  time and `... with data.plugin as ...` silently yields undefined.  Per-request `data`
  therefore cannot be passed into one compiled bundle; instead a bundle is compiled per
  distinct `data` document (request + active reference values) and kept in a small LRU.
  A miss costs one compile (~4-10 ms); a hit is one query (~0.6-0.9 ms).
* `query_bundle` on a bundle whose build failed segfaults, so `Bundle.ok()` is checked
  and the build error is turned into a refusal (e.g. "Multiple default rules").
* Some valid policies abort the process while compiling (a C++ exception reaching
  `std::terminate`, e.g. `inner with input as input.c` next to a rule reading `input`).
  An uploaded policy is therefore first compiled and queried once in a child process;
  a crash there refuses the policy instead of killing the broker.
* Some compile-time checks of OPA (unknown functions, unsafe variables) happen at
  evaluation instead, so they show up as a deny with the engine's message.
* Outputs come in three shapes (JSON, "undefined", an S-expression error list, either
  as an error node or as an "ok" string) and regopy's own `Output` class raises on some
  of them, so the raw C API wrappers from `regopy.rego_shared` are used.

rego-cpp's thread safety is not documented, so every engine call runs under one
process-wide lock.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import regopy  # type: ignore[import-untyped]
from regopy import rego_shared as _c

from kbs.policy.model import Decision, Explanation, PolicyInvalid, ResourceRequest
from kbs.policy.refvalues import ReferenceValues

MODULE_NAME = "policy.rego"
PACKAGE = "policy"
ALLOW_ENTRYPOINT = "policy/allow"
PACKAGE_QUERY = "pkg := data.policy"
BUNDLE_CACHE_SIZE = 32
VALUE_PREVIEW = 200  # characters of a rule value shown in an explanation
ISOLATED_CHECK_TIMEOUT = 20.0  # seconds for the child compile of an uploaded policy
EMPTY_DATA: dict[str, Any] = {"plugin": "", "resource-path": [], "query": {}, "reference": {}}

# Run by the child process: compile the policy from stdin and query it once.  Exits 0 even
# when the engine refuses the policy; the parent then reads the refusal in-process.
_CHILD = f"""
import sys, regopy
engine = regopy.Interpreter()
engine.log_level = regopy.LogLevel.NONE
try:
    engine.add_module({MODULE_NAME!r}, sys.stdin.read())
    engine.add_data({EMPTY_DATA!r})
    bundle = engine.build({PACKAGE_QUERY!r}, [{ALLOW_ENTRYPOINT!r}])
except regopy.RegoError:
    sys.exit(0)
if bundle.ok():
    runner = regopy.Interpreter()
    runner.log_level = regopy.LogLevel.NONE
    runner.set_input({{}})
    try:
        runner.query_bundle(bundle)
    except Exception:
        pass
"""

# rego-cpp state is per interpreter, but the library's globals are undocumented: one lock.
_ENGINE_LOCK = threading.Lock()

# `(errormsg 24:Invalid boolean operator)`: the number is the message length.
_ERRORMSG = re.compile(r"\(errormsg (\d+):")
# A source location `11:policy.rego|60|2`: byte offset 60, length 2, in our module.
_LOCATION = re.compile(rf"\d+:{re.escape(MODULE_NAME)}\|(\d+)\|\d+")
_PACKAGE_LINE = re.compile(r"^\s*package\s+([^\s#]+)")
# `data.reference.name` or `data.reference["name"]`.  A regex over the source, not the
# AST: references built at run time (`data.reference[x]`) are not found, and mentions
# inside strings or comments are (harmlessly) counted.
_REFERENCE = re.compile(r"""\bdata\s*\.\s*reference\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*"([^"\\]*)"\s*\])""")


class RegoPolicy:
    """A compiled Rego resource policy; `data.policy.allow` must be boolean true to release."""

    dialect = "rego"

    def __init__(self, text: str) -> None:
        """Use `parse`: this does not validate."""
        self.text = text
        self._source = b""
        self._bundles: OrderedDict[str, Any] = OrderedDict()
        self._runner: Any = None

    @classmethod
    def parse(cls, text: str) -> RegoPolicy:
        """Compile once with an empty request to refuse what the engine cannot build."""
        policy = cls(text)
        try:
            policy._source = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PolicyInvalid("policy text is not valid UTF-8") from exc
        _check_isolated(policy._source)
        with _ENGINE_LOCK:
            policy._runner = _interpreter()
            bundle, error = policy._build(EMPTY_DATA)
        if bundle is None:
            message, line = error
            raise PolicyInvalid(message, line=line)
        policy._check_package()
        return policy

    def referenced_sets(self) -> frozenset[str]:
        return frozenset(a or b for a, b in _REFERENCE.findall(_strip_comments(self.text)))

    def evaluate(self, claims: Mapping[str, Any], refs: ReferenceValues, request: ResourceRequest,
                 at: datetime) -> Decision:
        try:
            data = {"plugin": request.plugin, "resource-path": list(request.path),
                    "query": dict(request.query), "reference": refs.as_data(at)}
            return self._evaluate(claims, data)
        except Exception as exc:  # never raise: an unexpected failure is a deny with its reason
            return _deny(f"policy engine failed: {type(exc).__name__}: {exc}")

    # -- internals -------------------------------------------------------------------------

    def _check_package(self) -> None:
        for number, line in enumerate(self.text.splitlines(), start=1):
            found = _PACKAGE_LINE.match(line)
            if found:
                if found.group(1) != PACKAGE:
                    raise PolicyInvalid(f"package must be {PACKAGE!r}, not {found.group(1)!r}", line=number)
                return
        raise PolicyInvalid(f"no 'package {PACKAGE}' statement")

    def _build(self, data: Mapping[str, Any]) -> tuple[Any, tuple[str, int | None]]:
        """(bundle, _) or (None, (engine message, line)).  Caller holds the lock."""
        builder = _interpreter()
        try:
            builder.add_module(MODULE_NAME, self.text)
            builder.add_data(data)
            bundle = builder.build(PACKAGE_QUERY, [ALLOW_ENTRYPOINT])
        except regopy.RegoError as exc:
            return None, self._first_error(str(exc))
        if not bundle.ok():
            return None, self._first_error(_node_text(_c.rego_bundle_node(bundle._impl)))
        return bundle, ("", None)

    def _first_error(self, text: str) -> tuple[str, int | None]:
        errors = _error_messages(text)
        message = errors[0] if errors else (text.strip() or "the Rego engine refused the policy")
        where = _LOCATION.search(text)
        line = self._source[: int(where.group(1))].count(b"\n") + 1 if where else None
        return message, line

    def _bundle_for(self, data: Mapping[str, Any]) -> tuple[Any, str]:
        """The compiled bundle for this `data`, from the LRU or freshly built.  Caller holds the lock."""
        key = json.dumps(data, sort_keys=True, separators=(",", ":"))
        bundle = self._bundles.get(key)
        if bundle is not None:
            self._bundles.move_to_end(key)
            return bundle, ""
        bundle, (message, line) = self._build(data)
        if bundle is None:
            return None, message + (f" (line {line})" if line else "")
        self._bundles[key] = bundle
        if len(self._bundles) > BUNDLE_CACHE_SIZE:
            self._bundles.popitem(last=False)
        return bundle, ""

    def _evaluate(self, claims: Mapping[str, Any], data: Mapping[str, Any]) -> Decision:
        if not isinstance(claims, Mapping):
            return _deny("claims document is not a JSON object")
        with _ENGINE_LOCK:
            try:
                engine_input = regopy.Input(claims)
            except (ValueError, TypeError, UnicodeEncodeError, OverflowError, RecursionError,
                    regopy.RegoError) as exc:
                return _deny(f"claims document cannot be handed to the Rego engine: {exc}")
            bundle, error = self._bundle_for(data)
            if bundle is None:
                return _deny(f"policy does not compile for this request: {error}")
            runner = self._runner
            runner.set_input(engine_input)
            del engine_input  # the interpreter holds a copy; free ours under the lock
            # One query gives every rule value (for the explanation) and allow with it.
            package = _run(runner, lambda: _c.rego_bundle_query(runner._impl, bundle._impl))
            if package.error is None:
                values = package.binding("pkg")
                rules = values if isinstance(values, dict) else {}
                return _decide(rules.get("allow", _UNDEFINED), rules, None)
            # Some rule failed; allow alone may still evaluate (Trustee only evaluates allow).
            allow = _run(runner, lambda: _c.rego_bundle_query_entrypoint(runner._impl, bundle._impl,
                                                                          ALLOW_ENTRYPOINT))
        if allow.error is not None:
            return _deny(f"evaluating data.policy.allow failed: {allow.error}")
        return _decide(allow.expression(), {}, package.error)


def _check_isolated(source: bytes) -> None:
    """Compile and query in a child first: a policy that crashes rego-cpp must not crash us."""
    try:
        child = subprocess.run([sys.executable, "-I", "-c", _CHILD], input=source, capture_output=True,
                               timeout=ISOLATED_CHECK_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PolicyInvalid(f"the Rego engine did not finish compiling the policy in "
                            f"{ISOLATED_CHECK_TIMEOUT:.0f} s") from exc
    if child.returncode != 0:
        how = (f"signal {signal.Signals(-child.returncode).name}" if child.returncode < 0
               else f"exit status {child.returncode}")
        last = child.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise PolicyInvalid(f"the Rego engine crashed on this policy ({how}): {last[0].strip()}".rstrip(": "))


class _Undefined:
    def __repr__(self) -> str:
        return "undefined"


_UNDEFINED: Any = _Undefined()


class _Result:
    """One query's outcome: a JSON result, undefined, or the engine's error message."""

    def __init__(self, document: Any = _UNDEFINED, error: str | None = None) -> None:
        self.document = document
        self.error = error

    def binding(self, name: str) -> Any:
        if isinstance(self.document, dict):
            return self.document.get("bindings", {}).get(name, _UNDEFINED)
        return _UNDEFINED

    def expression(self) -> Any:
        if isinstance(self.document, dict):
            expressions = self.document.get("expressions") or [_UNDEFINED]
            return expressions[0]
        return _UNDEFINED


def _run(runner: Any, query: Any) -> _Result:
    """Run one C query and free its output; classify the three output shapes."""
    try:
        output = query()
    except regopy.RegoError as exc:
        return _Result(error=_describe(str(exc)))
    try:
        if not _c.rego_output_ok(output):
            return _Result(error=_describe(_node_text(_c.rego_output_node(output))))
        text = _c.rego_output_string(output)
    finally:
        _c.rego_free_output(output)
    if text.strip() == "undefined":
        return _Result()
    if text.lstrip().startswith("("):  # an error list reported as an "ok" output
        return _Result(error=_describe(text))
    document = json.loads(text)
    if isinstance(document, list):  # several results: only a single one is a decision
        if len(document) != 1:
            return _Result(error=f"query produced {len(document)} results")
        document = document[0]
    return _Result(document=document)


def _decide(allow: Any, rules: Mapping[str, Any], package_error: str | None) -> Decision:
    children = tuple(_rule(name, value) for name, value in sorted(rules.items()))
    if package_error is not None:
        children += (Explanation(kind="rule", ok=False, where="data.policy",
                                 detail=f"the other rule values are unavailable: {package_error}"),)
    if allow is True:
        detail, ok = "data.policy.allow is true", True
    elif allow is _UNDEFINED:
        detail, ok = "data.policy.allow is undefined (no allow rule matched and there is no default)", False
    elif allow is False:
        detail, ok = "data.policy.allow is false", False
    else:
        detail, ok = f"data.policy.allow is not a boolean: {_preview(allow)}", False
    return Decision(allow=ok, explanation=Explanation(kind="policy", ok=ok, detail=detail,
                                                      where="data.policy.allow", seen=_seen(allow),
                                                      children=children))


def _rule(name: str, value: Any) -> Explanation:
    ok = value is True if name == "allow" else not (value is False or value is None)
    return Explanation(kind="rule", ok=ok, detail=f"{name} = {_preview(value)}", where=f"data.policy.{name}",
                       seen=value)


def _deny(reason: str) -> Decision:
    return Decision(allow=False, explanation=Explanation(kind="policy", ok=False, detail=reason,
                                                         where="data.policy.allow"))


def _seen(value: Any) -> Any:
    return None if value is _UNDEFINED else value


def _preview(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if value is not _UNDEFINED else "undefined"
    return text if len(text) <= VALUE_PREVIEW else text[: VALUE_PREVIEW - 3] + "..."


def _interpreter() -> Any:
    engine = regopy.Interpreter()
    engine.log_level = regopy.LogLevel.NONE  # else rego-cpp prints errors to stdout
    # Fail closed: a built-in error (divide by zero, bad conversion) is an error, not undefined,
    # so `not something_failing` cannot turn into an allow.
    engine.strict_built_in_errors = True
    return engine


def _node_text(node: Any) -> str:
    """The S-expression text of an error node and its children (the root prints only its address)."""
    if not node:
        return ""
    parts = [_c.rego_node_json(_c.rego_node_get(node, i)) for i in range(_c.rego_node_size(node))]
    return "\n".join(parts) or _c.rego_node_json(node)


def _error_messages(text: str) -> list[str]:
    messages = []
    raw = text.encode("utf-8")
    for found in _ERRORMSG.finditer(text):
        start = len(text[: found.end()].encode("utf-8"))
        messages.append(raw[start: start + int(found.group(1))].decode("utf-8", "replace"))
    return messages


def _describe(text: str) -> str:
    messages = list(dict.fromkeys(_error_messages(text)))  # rego-cpp repeats an error per rule body
    return "; ".join(messages) if messages else (text.strip() or "unknown engine error")


def _strip_comments(text: str) -> str:
    # Good enough for a name scan: '#' inside a string also cuts the rest of that line.
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())
