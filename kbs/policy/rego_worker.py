"""The Rego engine (regopy) and the worker process that runs it away from the broker.

`Engine` compiles policies into bundles (cached per policy and `data` document) and queries
`data.policy.allow` only.  It works in any process; the broker only ever uses it inside a
worker started by `kbs.policy.rego_pool`, as

    python -I -c BOOTSTRAP CONFIG_JSON       (BOOTSTRAP imports this module and calls `main`)

`main` makes the process safe to lose before the engine is loaded: no core dumps, stdin and
stdout moved aside for the protocol (anything the engine prints goes to stderr), SIGINT
ignored, a watchdog that exits when the parent goes away.  Then it loads regopy, lets its
allocator start, and caps the address space: rego-cpp's allocator (snmalloc) reserves a
256 GiB page map at start-up, so RLIMIT_AS / RLIMIT_DATA set before that make the engine
fail to start; set after it, at the current size plus the budget, they bound every later
mapping, and an allocation past them ends in `std::bad_alloc` (SIGABRT), which the parent
reports as `rego.memory`.

Protocol: each message is a 4-byte big-endian length and that many bytes of UTF-8 JSON, both
ways, one request answered by one reply.  The worker first sends `{"status": "ready"}`.
Requests: `{"op": "check", "text", "data"}` and `{"op": "eval", "key", "input"[, "text",
"data"]}` (text and data may be left out when the worker holds the key's bundle).  Replies
carry `status`: ok (with a boolean `allow` for eval), undefined, value (allow is not a
boolean: `value` or a `preview`), error (`phase` compile / eval / input, `message`, `line`),
miss (send text and data again), memory (a Python MemoryError; the worker exits after it).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

MODULE_NAME = "policy.rego"
ALLOW_ENTRYPOINT = "policy/allow"
HEADER = struct.Struct(">I")
MESSAGE_PREVIEW = 1000  # characters of an engine message sent back
VALUE_PREVIEW = 200  # characters of a non-boolean allow value sent back
EXIT_PROTOCOL, EXIT_MEMORY = 2, 3

# `(errormsg 24:Invalid boolean operator)`: the number is the message length.
_ERRORMSG = re.compile(r"\(errormsg (\d+):")
# A source location `11:policy.rego|60|2`: byte offset 60, length 2, in our module.
_LOCATION = re.compile(rf"\d+:{re.escape(MODULE_NAME)}\|(\d+)\|\d+")


class ProtocolError(Exception):
    """A frame that is truncated, too large or not a JSON object."""


def encode_frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def read_frame(fd: int, max_bytes: int) -> dict[str, Any] | None:
    """One message from a blocking descriptor; None at end of file before a header."""
    header = _read_exact(fd, HEADER.size, eof_ok=True)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes exceeds the limit of {max_bytes}")
    body = _read_exact(fd, size, eof_ok=False)
    assert body is not None
    return decode_body(body)


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError("message is not a JSON object")
    return message


def _read_exact(fd: int, size: int, *, eof_ok: bool) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            if eof_ok and left == size:
                return None
            raise ProtocolError("end of file inside a message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Engine:
    """regopy behind a small API: `check` a policy, `evaluate` data.policy.allow.

    Not thread-safe (rego-cpp's thread safety is undocumented): one per worker process.
    """

    def __init__(self, cache_entries: int = 64, cache_bytes: int = 64 << 20) -> None:
        import regopy  # type: ignore[import-untyped]  # here, not at import: main() sets limits first
        from regopy import rego_shared

        self._regopy: Any = regopy
        self._c: Any = rego_shared
        self._runner = self._interpreter()
        self._cache_entries = cache_entries
        self._cache_bytes = cache_bytes
        self._bundles: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    # -- requests ------------------------------------------------------------------------------

    def check(self, text: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Compile, then query allow once with an empty input (to meet crashes at upload, not release)."""
        bundle, error = self._build(text, data)
        if bundle is None:
            return error
        self._runner.set_input(self._regopy.Input({}))
        self._query(bundle)  # its result does not matter; an evaluation error is a deny later
        return {"status": "ok"}

    def evaluate(self, key: str, input_document: Any, text: str | None = None,
                 data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """data.policy.allow of the bundle for `key` (compiled from text and data on a miss)."""
        cached = self._bundles.get(key)
        if cached is not None:
            self._bundles.move_to_end(key)
            bundle = cached[0]
        elif text is None or data is None:
            return {"status": "miss"}
        else:
            bundle, error = self._build(text, data)
            if bundle is None:
                return error
            self._remember(key, bundle, _bundle_cost(text, data))
        try:
            engine_input = self._regopy.Input(input_document)
        except (ValueError, TypeError, UnicodeEncodeError, OverflowError, RecursionError,
                self._regopy.RegoError) as exc:
            return {"status": "error", "phase": "input", "message": _clip(str(exc)), "line": None}
        self._runner.set_input(engine_input)
        del engine_input  # the interpreter holds its own copy
        return self._query(bundle)

    def handle(self, request: Mapping[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "check":
            return self.check(str(request["text"]), request["data"])
        if op == "eval":
            return self.evaluate(str(request["key"]), request.get("input"), request.get("text"),
                                 request.get("data"))
        raise ProtocolError(f"unknown operation {op!r}")

    # -- internals -----------------------------------------------------------------------------

    def _interpreter(self) -> Any:
        engine = self._regopy.Interpreter()
        engine.log_level = self._regopy.LogLevel.NONE  # else rego-cpp prints errors to stdout
        # Fail closed: a built-in error (divide by zero, bad conversion) is an error, not undefined,
        # so `not something_failing` cannot turn into an allow.
        engine.strict_built_in_errors = True
        return engine

    def _build(self, text: str, data: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(bundle, {}) or (None, an error reply with the engine's first message and its line)."""
        builder = self._interpreter()
        try:
            builder.add_module(MODULE_NAME, text)
            builder.add_data(data)
            bundle = builder.build(None, [ALLOW_ENTRYPOINT])
        except self._regopy.RegoError as exc:
            return None, _compile_error(text, str(exc))
        # Querying a bundle whose build failed segfaults: check ok() first.
        if not bundle.ok():
            return None, _compile_error(text, self._node_text(self._c.rego_bundle_node(bundle._impl)))
        return bundle, {}

    def _remember(self, key: str, bundle: Any, cost: int) -> None:
        if cost > self._cache_bytes or self._cache_entries <= 0:
            return
        self._bundles[key] = (bundle, cost)
        self._bytes += cost
        while len(self._bundles) > self._cache_entries or self._bytes > self._cache_bytes:
            _, (_, freed) = self._bundles.popitem(last=False)
            self._bytes -= freed

    def _query(self, bundle: Any) -> dict[str, Any]:
        """Query the allow entrypoint alone (rules allow does not need are never evaluated)."""
        c, runner = self._c, self._runner
        try:
            output = c.rego_bundle_query_entrypoint(runner._impl, bundle._impl, ALLOW_ENTRYPOINT)
        except self._regopy.RegoError as exc:
            return _eval_error(str(exc))
        try:
            if not c.rego_output_ok(output):
                return _eval_error(self._node_text(c.rego_output_node(output)))
            text = c.rego_output_string(output)
        finally:
            c.rego_free_output(output)
        # Three output shapes: JSON, "undefined", or an error list reported as an "ok" string.
        if text.strip() == "undefined":
            return {"status": "undefined"}
        if text.lstrip().startswith("("):
            return _eval_error(text)
        document = json.loads(text)
        if isinstance(document, list):  # several results: only a single one is a decision
            if len(document) != 1:
                return {"status": "error", "phase": "eval", "message": f"query produced {len(document)} results",
                        "line": None}
            document = document[0]
        expressions = document.get("expressions") if isinstance(document, dict) else None
        if not expressions:
            return {"status": "undefined"}
        allow = expressions[0]
        if allow is True or allow is False:
            return {"status": "ok", "allow": allow}
        shown = json.dumps(allow, sort_keys=True)
        if len(shown) <= VALUE_PREVIEW:
            return {"status": "value", "value": allow}
        return {"status": "value", "preview": shown[: VALUE_PREVIEW - 3] + "..."}

    def _node_text(self, node: Any) -> str:
        """The S-expression text of an error node and its children (the root prints only its address)."""
        if not node:
            return ""
        c = self._c
        parts = [c.rego_node_json(c.rego_node_get(node, i)) for i in range(c.rego_node_size(node))]
        return "\n".join(parts) or str(c.rego_node_json(node))


def _bundle_cost(text: str, data: Mapping[str, Any]) -> int:
    """Approximate resident bytes of a compiled bundle (measured: ~110 KB for a 500-byte policy with
    400 bytes of data, ~310 KB with 30 KB of data)."""
    return 80_000 + 50 * len(text) + 8 * len(json.dumps(data, separators=(",", ":")))


def _error_messages(text: str) -> list[str]:
    messages = []
    raw = text.encode("utf-8")
    for found in _ERRORMSG.finditer(text):
        start = len(text[: found.end()].encode("utf-8"))
        messages.append(raw[start: start + int(found.group(1))].decode("utf-8", "replace"))
    return messages


def _compile_error(source: str, text: str) -> dict[str, Any]:
    errors = _error_messages(text)
    message = errors[0] if errors else (text.strip() or "the Rego engine refused the policy")
    where = _LOCATION.search(text)
    line = source.encode("utf-8")[: int(where.group(1))].count(b"\n") + 1 if where else None
    return {"status": "error", "phase": "compile", "message": _clip(message), "line": line}


def _eval_error(text: str) -> dict[str, Any]:
    messages = list(dict.fromkeys(_error_messages(text)))  # rego-cpp repeats an error per rule body
    message = "; ".join(messages) if messages else (text.strip() or "unknown engine error")
    return {"status": "error", "phase": "eval", "message": _clip(message), "line": None}


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_PREVIEW else text[: MESSAGE_PREVIEW - 3] + "..."


# -- the worker process ---------------------------------------------------------------------------

def _vm_sizes() -> dict[str, int]:
    sizes = {}
    with open("/proc/self/status", encoding="ascii", errors="replace") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmSize", "VmData"):
                sizes[name] = int(value.split()[0]) * 1024
    return sizes


def _limit_memory(budget: int) -> dict[str, int]:
    """Cap RLIMIT_AS and RLIMIT_DATA at the current sizes plus `budget` (soft = hard: no way back)."""
    limits = {}
    sizes = _vm_sizes()
    for name, which, current in (("RLIMIT_AS", resource.RLIMIT_AS, sizes["VmSize"]),
                                 ("RLIMIT_DATA", resource.RLIMIT_DATA, sizes["VmData"])):
        _, hard = resource.getrlimit(which)
        limit = current + budget if hard == resource.RLIM_INFINITY else min(current + budget, hard)
        resource.setrlimit(which, (limit, limit))
        limits[name] = limit
    return limits


def _watch_parent(parent: int) -> None:
    """Exit when the broker is gone (its pipe closes too, but only a waiting worker reads it)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """Entry point of a worker process; CONFIG_JSON is the only argument."""
    config = json.loads((argv if argv is not None else sys.argv[1:])[0])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core with claims in it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the broker's to handle
    requests, replies = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # anything the engine prints lands on stderr, never inside the protocol
    os.close(devnull)
    threading.Thread(target=_watch_parent, args=(int(config["parent"]),), daemon=True).start()

    engine = Engine(int(config["cache_entries"]), int(config["cache_bytes"]))  # the allocator starts here
    limits = _limit_memory(int(config["memory_bytes"])) if config.get("memory_bytes") else {}
    max_bytes = int(config["max_message_bytes"])
    _write_all(replies, encode_frame(json.dumps({"status": "ready", "pid": os.getpid(), **limits}).encode()))
    while True:
        try:
            request = read_frame(requests, max_bytes)
        except ProtocolError as exc:
            print(f"kbs rego worker: {exc}", file=sys.stderr, flush=True)
            os._exit(EXIT_PROTOCOL)
        except MemoryError:
            os._exit(EXIT_MEMORY)
        if request is None:
            os._exit(0)  # the broker closed the pipe
        try:
            reply = engine.handle(request)
        except MemoryError:
            _write_all(replies, encode_frame(b'{"status": "memory"}'))
            os._exit(EXIT_MEMORY)  # the heap may be in any state now: start afresh
        except Exception as exc:  # a bug or an odd request: report it, keep serving
            reply = {"status": "error", "phase": "internal", "message": _clip(f"{type(exc).__name__}: {exc}"),
                     "line": None}
        del request
        _write_all(replies, encode_frame(json.dumps(reply).encode()))
