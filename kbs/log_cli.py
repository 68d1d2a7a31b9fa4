"""`kbs log key|checkpoint|verify|prove|receipts|verify-receipt`: the release log checked from outside the broker.

The broker serves its release log as a transparency log (kbs.server.tlog): signed checkpoints, C2SP tlog-tiles
and entry bundles, RFC 9162 proofs.  These verbs trust none of it but the log's key, which operators and key
owners pin (`--key`, `--key-file` or $KBS_LOG_KEY; without one the key the broker serves is used, trust on
first use, with a warning that prints it to pin):

- `verify` checks the newest checkpoint's signature, streams every entry bundle and level-0 tile, checks each
  entry hashes to its stored leaf, recomputes the tree and compares its root at every size a signed
  checkpoint names: the broker's own (its history, each note verified) and those the caller kept
  (`--checkpoint`, any number).  When they disagree it says which index is the first bad one, or the range
  the signed checkpoints bound it to.  Memory stays bounded: one bundle at a time, and of the tree only its
  right edge (the O(log n) hashes of the complete subtrees the prefix splits into), so any prefix's root is
  read the moment the stream reaches its size.
- `prove` and `receipts` give inclusion proofs under a signed checkpoint, each verified before it is printed;
  a receipt holds the entry, the proof and the signed note, so `verify-receipt --key` checks it offline.

Every failure is one line `kbs: log: ...` on stderr and exit 1; usage problems exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import rfc8785

from kbs.admin_client import (
    DEFAULT_ADMIN_KEY,
    DEFAULT_URL,
    EXIT_OK,
    EXIT_REFUSED,
    AdminError,
    UsageProblem,
    tls_context,
)
from kbs.audit import merkle
from kbs.audit.note import MAX_NOTE_BYTES, Checkpoint, NoteError, NoteVerifier, open_checkpoint
from kbs.audit.tiles import MAX_ENTRY_BYTES, TILE_WIDTH, Tile, TileError, unbundle
from kbs.resource_uri import ResourceNameError, split_resource

PREFIX = "/kbs/v0/log"
MAX_BUNDLE = TILE_WIDTH * (2 + MAX_ENTRY_BYTES)
MAX_TILE = TILE_WIDTH * merkle.HASH_SIZE
MAX_JSON = 4 << 20  # a page of 1000 checkpoint notes, a proof, an entry
MAX_RECEIPT_FILE = 16 << 20
HISTORY_PAGE = 1000
RECEIPT_FORMAT = "kbs-log-receipt/v1"
ACTIONS = ("key", "checkpoint", "prove", "receipts", "verify-receipt")

ServerCheck = Callable[[argparse.Namespace], tuple[dict[str, Any], list[str]]]


class LogFailure(Exception):
    """Something the log or the broker got wrong (or would not serve): exit 1, the message one line."""


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """The transparency-log flags of `kbs log` (kbs.admin_cli owns the parser and its other flags)."""
    parser.add_argument("operands", nargs="*", metavar="ARG",
                        help="prove: the entry's index (0-based); verify-receipt: receipt files")
    parser.add_argument("--key", dest="log_key", metavar="VKEY",
                        help="the log's verifier key (<name>+<id>+<base64>, as `kbs log key` prints it) to check "
                             "signatures with: pin it (default: $KBS_LOG_KEY, else the key the broker serves, "
                             "trusted on first use)")
    parser.add_argument("--key-file", metavar="FILE", help="read the verifier key from FILE")
    parser.add_argument("--checkpoint", dest="kept", action="append", default=[], metavar="FILE",
                        help="with verify: a checkpoint you kept (`kbs log checkpoint --out`); the log must still "
                             "extend it (repeatable)")
    parser.add_argument("--out", metavar="PATH", help="checkpoint: write (or advance) this file, only when the "
                        "new checkpoint extends the one it holds; receipts: a directory, one <index>.json each")
    parser.add_argument("--size", type=int, metavar="N", help="with prove: under the signed checkpoint of size N "
                        "(default: the newest)")


def admin_key_available(args: argparse.Namespace) -> bool:
    """An admin/auditor key named (flag or $KBS_ADMIN_KEY) or at its default place."""
    return bool(getattr(args, "admin_key", None) or os.environ.get("KBS_ADMIN_KEY")) or Path(DEFAULT_ADMIN_KEY).exists()


def run(args: argparse.Namespace, server_check: ServerCheck | None = None) -> int:
    """`kbs log ACTION` for the transparency-log actions and `verify`; `server_check` (verify) is the broker's
    own chain-and-MAC check, run as well when an admin key is at hand."""
    try:
        if args.action == "verify-receipt":
            return _verify_receipt_files(args)
        if args.action == "verify":
            return _run_verify(args, server_check)
        return asyncio.run(_ONLINE[args.action](args, Fetcher.from_args(args)))
    except LogFailure as exc:
        print(f"kbs: log: {exc}", file=sys.stderr)
        return EXIT_REFUSED


# -- HTTP ------------------------------------------------------------------------------------------

class Fetcher:
    """GETs under /kbs/v0/log/ with bounded answers; an admin/auditor token only once the broker asks for one."""

    def __init__(self, url: str, ssl: Any, token: Callable[[], str] | None) -> None:
        self.url, self._ssl, self._token, self._authenticate = url.rstrip("/"), ssl, token, False
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Fetcher:
        url = getattr(args, "url", None) or os.environ.get("KBS_URL") or DEFAULT_URL
        if not url.startswith(("http://", "https://")):
            raise UsageProblem(f"{url!r} is not a broker URL (want http(s)://HOST:PORT)")
        ssl = tls_context(url, *(getattr(args, n, None) or os.environ.get(f"KBS_{n.upper()}")
                                 for n in ("ca_cert", "client_cert", "client_key")))
        token = None
        if admin_key_available(args):
            from kbs.admin_cli import broker_client  # here: kbs.admin_cli imports this module

            client: list[Any] = []

            def token() -> str:
                client[:] = client or [broker_client(args)]
                return str(client[0].token())
        return cls(url, ssl, token)

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def get(self, path: str, limit: int, params: dict[str, str] | None = None) -> bytes:
        assert self._http is not None
        for _ in range(2):
            headers = {"Authorization": f"Bearer {self._token()}"} if self._authenticate and self._token else {}
            try:
                async with self._http.get(f"{self.url}{PREFIX}/{path}", params=params, headers=headers) as r:
                    body = await r.content.read(limit + 1)
                    status = r.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise LogFailure(f"cannot reach the broker at {self.url}: {str(exc) or type(exc).__name__}") from exc
            if status == 401 and not self._authenticate and self._token is not None:
                self._authenticate = True  # [log] read = "auditor": every read carries a fresh token
                continue
            break
        if status != 200:
            hint = " (the log is for auditors: give --admin-key)" if status == 401 and not self._token else ""
            detail = body[:200].decode(errors="replace").strip() or "no detail"
            raise LogFailure(f"GET {PREFIX}/{path}: HTTP {status}: {detail}{hint}")
        if len(body) > limit:
            raise LogFailure(f"GET {PREFIX}/{path}: answer larger than {limit} bytes")
        return body

    async def json(self, path: str, params: dict[str, str] | None = None) -> Any:
        body = await self.get(path, MAX_JSON, params)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LogFailure(f"GET {PREFIX}/{path}: not JSON") from exc


# -- keys and checkpoints --------------------------------------------------------------------------

def pinned_key(args: argparse.Namespace) -> NoteVerifier | None:
    text = getattr(args, "log_key", None)
    if getattr(args, "key_file", None):
        if text:
            raise UsageProblem("give --key or --key-file, not both")
        text = _read_text(args.key_file, "key file", 4096).strip()
    text = text or os.environ.get("KBS_LOG_KEY")
    if not text:
        return None
    try:
        return NoteVerifier.from_vkey(text)
    except NoteError as exc:
        raise UsageProblem(f"log key: {exc}") from None


async def log_key(args: argparse.Namespace, fetch: Fetcher) -> NoteVerifier:
    """The pinned key, else the served one (trust on first use: said on stderr, with the key to pin)."""
    pinned = pinned_key(args)
    if pinned is not None:
        return pinned
    served = await _served_key(fetch)
    print("kbs: warning: no --key given: trusting the key the broker serves now (trust on first use); a broker "
          f"that lies is caught only against a pinned key. Pin this one: --key {served.vkey()}", file=sys.stderr)
    return served


async def _served_key(fetch: Fetcher) -> NoteVerifier:
    text = (await fetch.get("key", 4096)).decode(errors="replace").strip()
    try:
        return NoteVerifier.from_vkey(text)
    except NoteError as exc:
        raise LogFailure(f"the broker's log key {text[:80]!r} is not a verifier key: {exc}") from None


async def current_checkpoint(fetch: Fetcher, verifier: NoteVerifier) -> tuple[str, Checkpoint]:
    note = (await fetch.get("checkpoint", MAX_NOTE_BYTES)).decode(errors="replace")
    try:
        return note, open_checkpoint(note, verifier)
    except NoteError as exc:
        raise LogFailure(f"the broker's checkpoint does not verify with the log key {verifier.vkey()}: {exc}") from None


def _read_text(path: str, what: str, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise UsageProblem(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise UsageProblem(f"{what} {path} is larger than {limit} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise UsageProblem(f"{what} {path} is not UTF-8 text") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hashes(values: Any, what: str) -> list[bytes]:
    if not isinstance(values, list) or len(values) > 64:
        raise LogFailure(f"{what}: not a list of at most 64 hashes")
    try:
        out = [base64.b64decode(v, validate=True) for v in values]
    except (binascii.Error, TypeError, ValueError):
        raise LogFailure(f"{what}: a hash is not base64") from None
    if any(len(h) != merkle.HASH_SIZE for h in out):
        raise LogFailure(f"{what}: a hash is not {merkle.HASH_SIZE} bytes")
    return out


def _emit(args: argparse.Namespace, answer: Any, human: Iterable[str]) -> None:
    print(json.dumps(answer) if args.json else "\n".join(human))


async def _run_key(args: argparse.Namespace, fetch: Fetcher) -> int:
    async with fetch:
        served = await _served_key(fetch)
    pinned = pinned_key(args)
    if pinned is not None and pinned.vkey() != served.vkey():
        raise LogFailure(f"the broker serves the log key {served.vkey()}, not the pinned {pinned.vkey()}")
    _emit(args, {"vkey": served.vkey(), "origin": served.name}, [served.vkey()])
    return EXIT_OK


async def _run_checkpoint(args: argparse.Namespace, fetch: Fetcher) -> int:
    """Print the newest checkpoint, or keep it in --out as a witness does: the file is replaced only by a
    checkpoint proven to extend the one it holds (never silently, never backwards)."""
    async with fetch:
        verifier = await log_key(args, fetch)
        note, checkpoint = await current_checkpoint(fetch, verifier)
        said = f"checkpoint of {checkpoint.origin}: size {checkpoint.size}, root {_b64(checkpoint.root)}"
        if not args.out:
            _emit(args, {"size": checkpoint.size, "root": _b64(checkpoint.root), "note": note}, [note.rstrip("\n")])
            return EXIT_OK
        out = Path(args.out)
        if out.exists() and await _advance(fetch, verifier, out, checkpoint):
            said += f"; {out} already holds it"
            _emit(args, {"size": checkpoint.size, "root": _b64(checkpoint.root), "note": note, "out": str(out)},
                  [said])
            return EXIT_OK
        if out.exists():
            said += f"; proven to extend the one {out} held"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(note)
    os.replace(tmp, out)  # atomic: a witness never holds half a note
    _emit(args, {"size": checkpoint.size, "root": _b64(checkpoint.root), "note": note, "out": str(out)},
          [f"{said}; written to {out}"])
    return EXIT_OK


async def _advance(fetch: Fetcher, verifier: NoteVerifier, out: Path, new: Checkpoint) -> bool:
    """Whether `out` already holds `new`; LogFailure unless `new` extends what it holds."""
    try:
        old = open_checkpoint(_read_text(str(out), "checkpoint", MAX_NOTE_BYTES), verifier)
    except (NoteError, UsageProblem) as exc:
        raise LogFailure(f"{out} holds no checkpoint of this log ({exc}): not overwritten") from None
    if old.size > new.size:
        raise LogFailure(f"the broker's checkpoint (size {new.size}) is older than the one in {out} (size "
                         f"{old.size}): entries from index {new.size} on are gone or hidden; {out} not overwritten")
    if old.size == new.size:
        if old.root != new.root:
            raise LogFailure(f"two signed trees of size {new.size}: {out} holds root {_b64(old.root)}, the broker "
                             f"now signs {_b64(new.root)} (a fork); {out} not overwritten")
        return True
    if old.size:
        answer = await fetch.json("proof/consistency", {"old": str(old.size), "new": str(new.size)})
        try:
            merkle.verify_consistency(old.size, new.size, old.root, new.root,
                                      _hashes(answer.get("proof") if isinstance(answer, dict) else None, "proof"))
        except merkle.ProofError as exc:
            raise LogFailure(f"the broker's checkpoint of size {new.size} does not extend the one of size {old.size} "
                             f"in {out} ({exc}): the log was rewritten; {out} not overwritten") from None
    return False


# -- verify ----------------------------------------------------------------------------------------

@dataclass
class Signed:
    """A signed tree head to hold the entries to."""

    size: int
    root: bytes
    source: str  # "kept" (a --checkpoint file), "current", "history"
    name: str = ""


@dataclass
class Verification:
    findings: list[str] = field(default_factory=list)
    checked: int = 0  # entries streamed and hashed
    history: int = 0  # the broker's signed checkpoints compared
    good: int = 0  # the largest signed size the entries reproduce, below the first that they do not
    good_before: int = 0  # the one before it
    bad: int | None = None  # the smallest signed size the entries do not reproduce
    leaf_mismatch: int | None = None  # the first entry whose hash is not its stored leaf hash
    leaf_mismatches: int = 0
    missing: int | None = None  # the first index a signed checkpoint covers that is not served

    def first_bad(self) -> tuple[int, int] | None:
        """[lo, hi]: where the first bad index lies, as precisely as the evidence says."""
        candidates = [i for i in (self.missing, self.leaf_mismatch) if i is not None]
        if self.bad is not None:
            lo, hi = self.good, self.bad - 1
            exact = [i for i in candidates if lo <= i <= hi]
            return (min(exact), min(exact)) if exact else (lo, hi)
        return (min(candidates), min(candidates)) if candidates else None


class History:
    """The broker's signed checkpoints, oldest first, a page at a time, each note verified with the key."""

    def __init__(self, fetch: Fetcher, verifier: NoteVerifier, report: Verification) -> None:
        self.fetch, self.verifier, self.report = fetch, verifier, report
        self.buffer: deque[Signed] = deque()
        self.after, self.done = -1, False

    async def peek(self) -> Signed | None:
        while not self.buffer and not self.done:
            after = {"after": str(self.after)} if self.after >= 0 else {}
            page = await self.fetch.json("checkpoints", {**after, "limit": str(HISTORY_PAGE)})
            if not isinstance(page, list):
                raise LogFailure("the broker's checkpoint history is not a list")
            self.done = len(page) < HISTORY_PAGE
            for item in page:
                size = item.get("size") if isinstance(item, dict) else None
                if not isinstance(size, int) or size <= self.after:
                    raise LogFailure("the broker's checkpoint history is not in increasing size order")
                self.after = size
                try:
                    checkpoint = open_checkpoint(str(item.get("note")), self.verifier)
                except NoteError as exc:
                    self.report.findings.append(f"the broker's checkpoint history holds a note for size {size} "
                                                f"that does not verify with the log key: {exc}")
                    continue
                if checkpoint.size != size:
                    self.report.findings.append(f"the broker's checkpoint history files a note of size "
                                                f"{checkpoint.size} under size {size}")
                self.buffer.append(Signed(checkpoint.size, checkpoint.root, "history"))
        return self.buffer[0] if self.buffer else None


async def verify_log(fetch: Fetcher, verifier: NoteVerifier, current: Checkpoint,
                     kept: list[tuple[str, Checkpoint]]) -> Verification:
    """Stream the log's entries and level-0 tiles up to the current checkpoint, holding them to every signed
    tree head: the current checkpoint, the kept ones and the broker's history."""
    report = Verification()
    size = current.size
    points = sorted([Signed(size, current.root, "current"), *(Signed(c.size, c.root, "kept", name)
                                                              for name, c in kept)], key=lambda s: s.size)
    for point in points:
        if point.source == "kept" and point.size == size and point.root != current.root:
            report.findings.append(f"the broker signed two different trees of size {size}: your checkpoint "
                                   f"{point.name} and its current one; together they prove the log forked")
        if point.size > size:
            report.missing = size if report.missing is None else min(report.missing, size)
            report.findings.append(f"your checkpoint {point.name} covers {point.size} entries, but the broker's "
                                   f"newest checkpoint only {size}: entries from index {size} on were deleted or "
                                   f"are hidden (first missing index {size})")
    pending = deque(p for p in points if p.size <= size)
    history = History(fetch, verifier, report)
    frontier = merkle.RootBuilder()  # the right edge alone: O(log n) hashes

    async def compare(at: int) -> None:
        """Hold every signed head of size `at` to the tree's root at that size (computed only then)."""
        while pending and pending[0].size == at:
            _judge(report, pending.popleft(), frontier.root())
        while (point := await history.peek()) is not None and point.size <= at:
            history.buffer.popleft()
            if point.size == at:
                report.history += 1
                _judge(report, point, frontier.root())

    await compare(0)
    for n in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
        first, width = n * TILE_WIDTH, min(TILE_WIDTH, size - n * TILE_WIDTH)
        entries, complete = await _bundle(fetch, Tile(None, n, width), report)
        stored = await _leaf_tile(fetch, Tile(0, n, width), report)
        for offset, entry in enumerate(entries):
            leaf = merkle.leaf_hash(entry)
            if stored is not None and stored[offset] != leaf:
                report.leaf_mismatches += 1
                if report.leaf_mismatch is None:
                    report.leaf_mismatch = first + offset
            frontier.push(leaf)
            report.checked += 1
            await compare(frontier.size)
        if not complete:
            break
    while (tail := await history.peek()) is not None:  # the tail: signed sizes past what is served
        history.buffer.popleft()
        if tail.size > size:
            report.missing = size if report.missing is None else min(report.missing, size)
            report.findings.append(f"the broker signed a checkpoint of size {tail.size} but serves one of size "
                                   f"{size}: entries from index {size} on are gone (first missing index {size})")
            break
    if report.leaf_mismatch is not None:
        more = f" ({report.leaf_mismatches - 1} more after it)" if report.leaf_mismatches > 1 else ""
        report.findings.append(f"entry {report.leaf_mismatch} does not hash to the tree's stored leaf hash "
                               f"{report.leaf_mismatch}: the entry or the tree was changed after it was logged{more}")
    return report


def _judge(report: Verification, point: Signed, root: bytes) -> None:
    if point.root == root:
        if report.bad is None and point.size > report.good:
            report.good_before, report.good = report.good, point.size
        return
    if report.bad is None:
        report.bad = point.size
        if report.good == point.size:  # another signed root of this same size matched: a fork, not a bound
            report.good = report.good_before
    if point.source == "kept":
        report.findings.append(f"the first {point.size} entries do not reproduce the root of your checkpoint "
                               f"{point.name} (size {point.size}): the log was rewritten since")
    elif point.source == "current":
        report.findings.append(f"the {point.size} entries served do not reproduce the root of the broker's own signed "
                               f"checkpoint of size {point.size}: entries were changed after they were signed")
    elif report.bad == point.size:
        report.findings.append(f"the first {point.size} entries do not reproduce the root the broker signed for "
                               f"size {point.size} (its checkpoint history); they reproduce every one up to size "
                               f"{report.good}")


async def _bundle(fetch: Fetcher, tile: Tile, report: Verification) -> tuple[list[bytes], bool]:
    """The tile's entries, and whether all of them came; what went wrong is a finding."""
    last = tile.first + tile.width - 1
    try:
        entries = unbundle(await fetch.get(tile.path, MAX_BUNDLE))
    except (LogFailure, TileError) as exc:
        report.missing = tile.first if report.missing is None else min(report.missing, tile.first)
        report.findings.append(f"cannot read entries {tile.first}..{last} ({tile.path}): {exc}; not checked from "
                               f"index {tile.first} on")
        return [], False
    if len(entries) > tile.width:
        report.findings.append(f"{tile.path} holds {len(entries)} entries, not {tile.width}")
        return entries[:tile.width], True
    if len(entries) < tile.width:
        gone = tile.first + len(entries)
        report.missing = gone if report.missing is None else min(report.missing, gone)
        report.findings.append(f"the broker serves {len(entries)} of the {tile.width} entries {tile.first}..{last} its "
                               f"checkpoint signs: entry {gone} is missing (first missing index {gone})")
        return entries, False
    return entries, True


async def _leaf_tile(fetch: Fetcher, tile: Tile, report: Verification) -> list[bytes] | None:
    try:
        data = await fetch.get(tile.path, MAX_TILE)
    except LogFailure as exc:
        report.findings.append(f"cannot read the tree's leaf hashes {tile.first}..{tile.first + tile.width - 1}: {exc}")
        return None
    if len(data) != tile.width * merkle.HASH_SIZE:
        report.findings.append(f"{tile.path} holds {len(data)} bytes, not {tile.width} hashes")
        return None
    return [data[i:i + merkle.HASH_SIZE] for i in range(0, len(data), merkle.HASH_SIZE)]


def _kept(args: argparse.Namespace, verifier: NoteVerifier) -> tuple[list[tuple[str, Checkpoint]], list[str]]:
    kept, findings = [], []
    for path in args.kept:
        try:
            kept.append((path, open_checkpoint(_read_text(path, "checkpoint", MAX_NOTE_BYTES), verifier)))
        except NoteError as exc:
            findings.append(f"your checkpoint {path} does not verify with the log key {verifier.vkey()}: {exc}")
    return kept, findings


def _run_verify(args: argparse.Namespace, server_check: ServerCheck | None) -> int:
    findings, lines, answer = asyncio.run(_verify(args, Fetcher.from_args(args)))
    if server_check is not None:  # the broker's own check of its hash chains and row MACs
        try:
            heads, head_lines = server_check(args)
            answer.update(heads)
            lines += head_lines
        except AdminError as exc:
            findings.append(f"the broker's own check of its hash chains: {exc.detail}")
    answer["findings"] = findings
    _emit(args, answer, lines)
    for finding in findings:
        print(f"kbs: log: {finding}", file=sys.stderr)
    return EXIT_REFUSED if findings else EXIT_OK


async def _verify(args: argparse.Namespace, fetch: Fetcher) -> tuple[list[str], list[str], dict[str, Any]]:
    async with fetch:
        try:
            verifier = await log_key(args, fetch)
            kept, findings = _kept(args, verifier)
            _, current = await current_checkpoint(fetch, verifier)
            report = await verify_log(fetch, verifier, current, kept)
        except LogFailure as exc:
            return [str(exc)], [], {}
    findings += report.findings
    where = report.first_bad()
    if where is not None:
        lo, hi = where
        findings.append(f"first bad index: {lo}" if lo == hi else
                        f"first bad index: between {lo} and {hi} (no signed checkpoint of a size between {lo} and "
                        f"{hi + 1} is left to narrow it)")
    answer: dict[str, Any] = {"origin": current.origin, "size": current.size, "root": _b64(current.root),
                              "entries_checked": report.checked, "history_checked": report.history,
                              "kept": [{"file": name, "size": c.size} for name, c in kept],
                              "first_bad_index": None if where is None else {"from": where[0], "to": where[1]}}
    lines = [f"log {current.origin}: checkpoint of size {current.size}, root {_b64(current.root)}, signed by "
             f"{verifier.vkey()}"]
    if not findings:
        lines.append(f"{report.checked} entries: each hashes to its stored leaf, and together they reproduce the "
                     "signed root")
        lines += [f"consistent with your checkpoint {name} (size {c.size})" for name, c in kept]
        lines.append(f"the broker's {report.history} signed checkpoints are all reproduced by the entries")
    return findings, lines, answer


# -- proofs and receipts ---------------------------------------------------------------------------

async def _signed_at(fetch: Fetcher, verifier: NoteVerifier, size: int | None) -> tuple[str, Checkpoint]:
    note, current = await current_checkpoint(fetch, verifier)
    if size is None or size == current.size:
        return note, current
    if not 0 < size < current.size:
        raise LogFailure(f"no signed checkpoint of size {size}: the newest has size {current.size}")
    page = await fetch.json("checkpoints", {"after": str(size - 1), "limit": "1"})
    if not isinstance(page, list) or not page or not isinstance(page[0], dict) or page[0].get("size") != size:
        raise LogFailure(f"the broker kept no signed checkpoint of size {size}")
    try:
        return str(page[0]["note"]), open_checkpoint(str(page[0]["note"]), verifier)
    except NoteError as exc:
        raise LogFailure(f"the broker's checkpoint of size {size} does not verify: {exc}") from None


async def make_receipt(fetch: Fetcher, verifier: NoteVerifier, note: str, checkpoint: Checkpoint, index: int,
                       entry: bytes | None = None) -> dict[str, Any]:
    """Entry `index`'s inclusion proof under `checkpoint`, verified here before anyone relies on it."""
    if entry is None:
        entry = await fetch.get(f"entries/{index}", MAX_ENTRY_BYTES)
    try:
        parsed = json.loads(entry)
        canonical = isinstance(parsed, dict) and rfc8785.dumps(parsed) == entry
    except (json.JSONDecodeError, UnicodeDecodeError, rfc8785.CanonicalizationError):
        canonical = False
    if not canonical:
        raise LogFailure(f"entry {index} is not an RFC 8785 canonical JSON object")
    answer = await fetch.json("proof/inclusion", {"index": str(index), "size": str(checkpoint.size)})
    proof = _hashes(answer.get("proof") if isinstance(answer, dict) else None, f"the inclusion proof of entry {index}")
    receipt = {"format": RECEIPT_FORMAT, "log": checkpoint.origin, "index": index, "size": checkpoint.size,
               "leaf_hash": _b64(merkle.leaf_hash(entry)), "proof": [_b64(h) for h in proof], "checkpoint": note,
               "entry": parsed}
    try:
        check_receipt(receipt, verifier)
    except ReceiptError as exc:
        raise LogFailure(f"the broker's proof for entry {index} does not verify: {exc}") from None
    return receipt


class ReceiptError(ValueError):
    pass


def check_receipt(receipt: Any, verifier: NoteVerifier) -> dict[str, Any]:
    """The receipt's entry, once its proof leads from the entry to the root of a checkpoint the key signed;
    ReceiptError naming what failed.  Needs nothing but the receipt and the key."""
    if not isinstance(receipt, dict) or receipt.get("format") != RECEIPT_FORMAT:
        raise ReceiptError(f"not a {RECEIPT_FORMAT} document")
    index, size, entry = receipt.get("index"), receipt.get("size"), receipt.get("entry")
    if not isinstance(index, int) or not isinstance(size, int) or not isinstance(entry, dict):
        raise ReceiptError("index and size must be integers and entry an object")
    try:
        checkpoint = open_checkpoint(str(receipt.get("checkpoint")), verifier)
    except NoteError as exc:
        raise ReceiptError(f"its checkpoint does not verify with the log key {verifier.vkey()}: {exc}") from None
    if checkpoint.size != size:
        raise ReceiptError(f"it claims size {size} but its checkpoint signs size {checkpoint.size}")
    try:
        leaf = merkle.leaf_hash(rfc8785.dumps(entry))
        proof = _hashes(receipt.get("proof"), "proof")
    except (rfc8785.CanonicalizationError, LogFailure) as exc:
        raise ReceiptError(str(exc)) from None
    if receipt.get("leaf_hash") != _b64(leaf):
        raise ReceiptError("its entry does not hash to its leaf_hash (the entry was changed)")
    try:
        merkle.verify_inclusion(leaf, index, size, proof, checkpoint.root)
    except merkle.ProofError as exc:
        raise ReceiptError(str(exc)) from None
    return entry


def describe(entry: dict[str, Any]) -> str:
    """One line for a release entry: what, to which TEE, under which policy, when."""
    at = entry.get("at")
    when = datetime.fromtimestamp(at, UTC).isoformat() if isinstance(at, int | float) else "?"
    version = f" v{entry['version']}" if entry.get("version") is not None else ""
    parts = [f"{entry.get('decision')}({entry.get('reason')}) of {entry.get('resource')}{version} at {when}"]
    shown = {"at", "decision", "reason", "resource", "version", "session_id", "ref", "actor", "detail"}
    parts += [f"{k} {v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}" for k, v in entry.items()
              if k not in shown and v not in (None, "", [], {})]
    return ", ".join(parts)


async def _run_prove(args: argparse.Namespace, fetch: Fetcher) -> int:
    if len(args.operands) != 1 or not args.operands[0].isdigit():
        raise UsageProblem("kbs log prove ENTRY: one entry index (0-based)")
    index = int(args.operands[0])
    async with fetch:
        verifier = await log_key(args, fetch)
        note, checkpoint = await _signed_at(fetch, verifier, args.size)
        if index >= checkpoint.size:
            raise LogFailure(f"entry {index} is not in the signed checkpoint of size {checkpoint.size}")
        receipt = await make_receipt(fetch, verifier, note, checkpoint, index)
    print(json.dumps(receipt, indent=None if args.json else 2))
    print(f"kbs: verified: entry {index} is in the tree of size {checkpoint.size} signed by {verifier.vkey()}",
          file=sys.stderr)
    return EXIT_OK


async def _run_receipts(args: argparse.Namespace, fetch: Fetcher) -> int:
    if not args.resource:
        raise UsageProblem("kbs log receipts --resource REPO/TYPE/TAG")
    try:
        resource = "/".join(split_resource(args.resource))
    except ResourceNameError as exc:
        raise UsageProblem(str(exc)) from None
    receipts = []
    async with fetch:
        verifier = await log_key(args, fetch)
        note, checkpoint = await current_checkpoint(fetch, verifier)
        for n in range((checkpoint.size + TILE_WIDTH - 1) // TILE_WIDTH):
            tile = Tile(None, n, min(TILE_WIDTH, checkpoint.size - n * TILE_WIDTH))
            try:
                entries = unbundle(await fetch.get(tile.path, MAX_BUNDLE))
            except TileError as exc:
                raise LogFailure(f"{tile.path}: {exc}") from None
            if len(entries) != tile.width:
                raise LogFailure(f"{tile.path}: {len(entries)} entries, not the {tile.width} the checkpoint signs")
            for offset, entry in enumerate(entries):
                if b'"release"' in entry:  # cheap filter before parsing
                    try:
                        parsed = json.loads(entry)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise LogFailure(f"entry {tile.first + offset} is not JSON") from None
                    if isinstance(parsed, dict) and parsed.get("decision") == "release" \
                            and parsed.get("resource") == resource:
                        receipts.append(await make_receipt(fetch, verifier, note, checkpoint,
                                                           tile.first + offset, entry))
    lines = [f"{len(receipts)} releases of {resource} in {checkpoint.origin} (checkpoint size {checkpoint.size}), "
             "each with its inclusion proof, verified"]
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        for receipt in receipts:
            (folder / f"{receipt['index']}.json").write_text(json.dumps(receipt, indent=2) + "\n")
        lines += [f"  {folder / str(r['index'])}.json: entry {r['index']}: {describe(r['entry'])}" for r in receipts]
        _emit(args, [f"{folder / str(r['index'])}.json" for r in receipts], lines)
    else:
        print(json.dumps(receipts, indent=None if args.json else 2))
        for line in lines:
            print(f"kbs: {line}", file=sys.stderr)
    return EXIT_OK


def _verify_receipt_files(args: argparse.Namespace) -> int:
    """Offline: nothing but the files and the pinned key."""
    verifier = pinned_key(args)
    if verifier is None:
        raise UsageProblem("verify-receipt needs the log's key (--key, --key-file or $KBS_LOG_KEY): a receipt proves "
                           "nothing against a key it would bring itself")
    if not args.operands:
        raise UsageProblem("kbs log verify-receipt FILE... --key VKEY")
    failed, results = 0, []
    for path in args.operands:
        try:
            document = json.loads(_read_text(path, "receipt", MAX_RECEIPT_FILE))
        except json.JSONDecodeError:
            document = None
        for receipt in document if isinstance(document, list) else [document]:
            try:
                entry = check_receipt(receipt, verifier)
            except ReceiptError as exc:
                failed += 1
                print(f"kbs: log: receipt {path}: {exc}", file=sys.stderr)
                results.append({"file": path, "ok": False, "error": str(exc)})
                continue
            results.append({"file": path, "ok": True, "index": receipt["index"], "size": receipt["size"],
                            "entry": entry})
            if not args.json:
                print(f"{path}: entry {receipt['index']} of {verifier.name} (size {receipt['size']}): "
                      f"{describe(entry)}")
    if args.json:
        print(json.dumps(results))
    return EXIT_REFUSED if failed else EXIT_OK


_ONLINE = {"key": _run_key, "checkpoint": _run_checkpoint, "prove": _run_prove, "receipts": _run_receipts}
