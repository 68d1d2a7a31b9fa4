"""The release log served as a transparency log: signed checkpoints and C2SP tlog-tiles under /kbs/v0/log/.

    GET  /kbs/v0/log/checkpoint                     the newest signed checkpoint (text/plain)
    GET  /kbs/v0/log/key                            the log's verifier key, in signed-note vkey form
    GET  /kbs/v0/log/tile/<L>/<N>[.p/<W>]           tree hashes (tlog-tiles)
    GET  /kbs/v0/log/tile/entries/<N>[.p/<W>]       entry bundles (tlog-tiles)
    GET  /kbs/v0/log/entries/<I>                    entry I as the tree holds it (RFC 8785 JSON)
    GET  /kbs/v0/log/proof/inclusion?index=I&size=S RFC 9162 proofs, JSON, hashes in base64
    GET  /kbs/v0/log/proof/consistency?old=M&new=N
    GET  /kbs/v0/log/checkpoints?after=S&limit=N    every signed checkpoint kept, oldest first (JSON)
    POST /kbs/v0/admin/log/checkpoint               sign one now (admin)

The log key is Ed25519, generated once and kept in the store sealed under the KEK like the token signing
key, so every worker and replica signs with it; its name is the checkpoint origin.  Each worker runs the
checkpointer: every `[log] checkpoint_seconds`, if the tree grew past the newest checkpoint, it checks the
tree is consistent with that checkpoint (RFC 9162 proof against the root the log signed: a database
rewritten behind the broker's back is never signed), signs the new head, and records it (once per size:
the same tree and key give the same note).  The worker that recorded it calls the witness hook.
Reads are public or need an admin/auditor token (`[log] read`); every resource is bounded (a tile is at
most 256 hashes or entries).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kbs.audit import merkle
from kbs.audit.note import Checkpoint, NoteError, NoteSigner, open_checkpoint
from kbs.audit.tiles import TILE_WIDTH, TileError, bundle, parse_tile_path
from kbs.keys.kek import Kek
from kbs.server.admin import admin_route, authenticate
from kbs.server.errors import ProtocolError
from kbs.server.protocol import STATE
from kbs.server.state import AdminIdentity, BrokerState
from kbs.store.base import Store, StoredCheckpoint
from kbs.store.integrity import StoreIntegrityError

log = logging.getLogger("kbs.log")

SECRET_NAME = "log-signing-key"
MAX_CHECKPOINTS_LISTED = 1000
HOOK_TIMEOUT = 10.0


def log_signer(get_or_create: Callable[[str, bytes], bytes], kek: Kek, origin: str) -> NoteSigner:
    """The shared Ed25519 log key (created by the first worker or replica), named `origin` or, by default, a
    name derived from the key itself (the same on every replica, unique to this log)."""
    fresh = Ed25519PrivateKey.generate().private_bytes_raw()
    seed = kek.unseal(get_or_create(SECRET_NAME, kek.seal(fresh, SECRET_NAME)), SECRET_NAME)
    key = Ed25519PrivateKey.from_private_bytes(seed)
    if not origin:
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        origin = f"kbs-log/{hashlib.sha256(public).hexdigest()[:16]}"
    return NoteSigner(origin, key)


class LogInconsistent(Exception):
    """The stored tree does not extend the newest signed checkpoint: the database was changed."""


@dataclass
class Checkpointer:
    store: Store
    signer: NoteSigner
    run: Callable[..., Awaitable[Any]]  # a store call off the event loop (BrokerState.run)
    hook: str = ""
    on_signed: Callable[[int], None] = lambda size: None

    async def checkpoint(self) -> StoredCheckpoint:
        """Sign the current tree head (if it grew) and return the newest checkpoint."""
        size: int = await self.run(self.store.log_tree_size)
        latest: StoredCheckpoint | None = await self.run(self.store.latest_log_checkpoint)
        if latest is not None and latest.size >= size:
            return latest
        root = await self.run(self.store.log_root, size)
        if latest is not None:
            await self._check_extends(latest, size, root)
        note = self.signer.sign(Checkpoint(self.signer.name, size, root).text())
        signed = StoredCheckpoint(size, note, time.time())
        if await self.run(self.store.add_log_checkpoint, signed):
            log.info("log checkpoint signed", extra={"size": size, "root": root.hex()})
            self.on_signed(size)
            if self.hook:
                asyncio.create_task(self._call_hook(note))  # noqa: RUF006 - bounded by its timeout, errors logged
        return signed

    async def _check_extends(self, latest: StoredCheckpoint, size: int, root: bytes) -> None:
        try:
            old = open_checkpoint(latest.note, self.signer.verifier)
            proof = await self.run(self.store.log_consistency_proof, old.size, size) if old.size else []
            if old.size:
                merkle.verify_consistency(old.size, size, old.root, root, proof)
        except (NoteError, merkle.ProofError) as exc:
            log.error("the release log does not extend its newest signed checkpoint: not signing",
                      extra={"checkpoint_size": latest.size, "size": size, "error": str(exc)})
            raise LogInconsistent(f"the stored log does not extend checkpoint {latest.size}: {exc}") from exc

    async def _call_hook(self, note: str) -> None:
        try:
            if self.hook.startswith(("http://", "https://")):
                async with ClientSession(timeout=ClientTimeout(total=HOOK_TIMEOUT)) as http, \
                        http.post(self.hook, data=note.encode(), headers={"Content-Type": "text/plain"}) as r:
                    if r.status >= 300:
                        raise RuntimeError(f"HTTP {r.status}")
            else:
                process = await asyncio.create_subprocess_exec(self.hook, stdin=asyncio.subprocess.PIPE,
                                                               stdout=asyncio.subprocess.DEVNULL,
                                                               stderr=asyncio.subprocess.PIPE)
                try:
                    _, err = await asyncio.wait_for(process.communicate(note.encode()), HOOK_TIMEOUT)
                except TimeoutError:
                    process.kill()
                    await process.wait()
                    raise RuntimeError(f"no exit within {HOOK_TIMEOUT:.0f} s") from None
                if process.returncode:
                    raise RuntimeError(f"exit {process.returncode}: {err.decode(errors='replace')[:200]}")
        except Exception as exc:  # the hook is the operator's: report it, never fail the log for it
            log.warning("witness hook failed", extra={"hook": self.hook, "error": str(exc)})

    async def loop(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.checkpoint()
            except Exception as exc:  # logged; the next round tries again (LogInconsistent keeps refusing)
                log.warning("log checkpoint failed", extra={"error": str(exc)})


# -- HTTP ------------------------------------------------------------------------------------------

def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def _missing(detail: str) -> ProtocolError:
    return ProtocolError("LogNotFound", detail, status=404, reason="not_found")


def _malformed(detail: str) -> ProtocolError:
    return ProtocolError("InvalidRequest", detail, status=400, reason="format")


def _int(request: web.Request, name: str, least: int = 0) -> int:
    text = request.query.get(name, "")
    if not text.isdigit() or len(text) > 19 or int(text) < least:
        raise _malformed(f"{name} must be an integer of at least {least}")
    return int(text)


async def _checkpoint_size(checkpointer: Checkpointer) -> int:
    latest = await checkpointer.run(checkpointer.store.latest_log_checkpoint)
    return latest.size if latest is not None else 0


def tile_response(data: bytes, full: bool) -> web.Response:
    # Full tiles never change; a partial one is replaced by a wider one as the log grows.
    cache = "public, max-age=31536000, immutable" if full else "public, max-age=5"
    return web.Response(body=data, content_type="application/octet-stream", headers={"Cache-Control": cache})


async def serve_tile(checkpointer: Checkpointer, path: str) -> web.Response:
    try:
        tile = parse_tile_path(path)
    except TileError as exc:
        raise _missing(str(exc)) from None
    size = await _checkpoint_size(checkpointer)
    scale = TILE_WIDTH ** (tile.level or 0)
    if (tile.first + tile.width) * scale > size:  # only what a signed checkpoint covers
        raise _missing(f"{path}: not in the log's checkpoint of size {size}")
    store = checkpointer.store
    if tile.level is None:
        data = bundle(await checkpointer.run(store.log_leaves, tile.first, tile.width))
    else:
        data = b"".join(await checkpointer.run(store.log_tree_hashes, tile.hash_level, tile.first, tile.width))
    return tile_response(data, tile.width == TILE_WIDTH)


async def inclusion(checkpointer: Checkpointer, request: web.Request) -> web.Response:
    index, size = _int(request, "index"), _int(request, "size", 1)
    if size > await _checkpoint_size(checkpointer) or index >= size:
        raise _missing("no such entry in a signed checkpoint of that size")
    proof = await checkpointer.run(checkpointer.store.log_inclusion_proof, index, size)
    return web.json_response({"index": index, "size": size, "proof": _b64(proof)})


async def consistency(checkpointer: Checkpointer, request: web.Request) -> web.Response:
    old, new = _int(request, "old", 1), _int(request, "new", 1)
    if old > new or new > await _checkpoint_size(checkpointer):
        raise _missing("old must be at most new, and new at most the newest checkpoint's size")
    proof = await checkpointer.run(checkpointer.store.log_consistency_proof, old, new)
    return web.json_response({"old": old, "new": new, "proof": _b64(proof)})


async def entry(checkpointer: Checkpointer, index_text: str) -> web.Response:
    if not index_text.isdigit() or len(index_text) > 19:
        raise _missing("an entry index is a non-negative integer")
    index = int(index_text)
    if index >= await _checkpoint_size(checkpointer):
        raise _missing(f"entry {index} is not in the newest checkpoint")
    [leaf] = await checkpointer.run(checkpointer.store.log_leaves, index, 1)
    return web.Response(body=leaf, content_type="application/json")


async def checkpoint_history(checkpointer: Checkpointer, request: web.Request) -> web.Response:
    after = _int(request, "after") if "after" in request.query else -1
    limit = min(_int(request, "limit", 1) if "limit" in request.query else 100, MAX_CHECKPOINTS_LISTED)
    kept = await checkpointer.run(checkpointer.store.log_checkpoints, after, limit)
    return web.json_response([{"size": c.size, "at": c.at, "note": c.note} for c in kept])



routes = web.RouteTableDef()


def _integrity(handler: Callable[[web.Request], Awaitable[web.Response]]) -> Callable[[web.Request],
                                                                            Awaitable[web.Response]]:
    """A tree damaged behind the broker's back is a 409 naming what is missing, not an internal error."""
    async def guarded(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except StoreIntegrityError as exc:
            raise ProtocolError("PluginInternalError", str(exc), status=409, reason=exc.check) from exc
    guarded.__name__ = handler.__name__
    return guarded


async def _reader(request: web.Request) -> Checkpointer:
    """The log's checkpointer, once the caller may read the log (`[log] read`)."""
    st = request.app[STATE]
    if st.config.log_read == "auditor":
        await authenticate(st, request)  # an admin or auditor token
    if st.log is None:
        raise ProtocolError("LogUnavailable", "the log is not ready", status=503, reason="log_unavailable")
    return st.log


@routes.get("/kbs/v0/log/checkpoint")
@_integrity
async def get_checkpoint(request: web.Request) -> web.Response:
    checkpointer = await _reader(request)
    latest = await checkpointer.run(checkpointer.store.latest_log_checkpoint)
    if latest is None:
        latest = await checkpointer.checkpoint()
    return web.Response(text=latest.note, content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "no-cache, max-age=2"})


@routes.get("/kbs/v0/log/key")
async def get_key(request: web.Request) -> web.Response:
    checkpointer = await _reader(request)
    return web.Response(text=checkpointer.signer.verifier.vkey() + "\n", content_type="text/plain", charset="utf-8")


@routes.get("/kbs/v0/log/tile/{path:.+}")
@_integrity
async def get_tile(request: web.Request) -> web.Response:
    return await serve_tile(await _reader(request), "tile/" + request.match_info["path"])


@routes.get("/kbs/v0/log/entries/{index}")
@_integrity
async def get_entry(request: web.Request) -> web.Response:
    return await entry(await _reader(request), request.match_info["index"])


@routes.get("/kbs/v0/log/proof/inclusion")
@_integrity
async def get_inclusion(request: web.Request) -> web.Response:
    return await inclusion(await _reader(request), request)


@routes.get("/kbs/v0/log/proof/consistency")
@_integrity
async def get_consistency(request: web.Request) -> web.Response:
    return await consistency(await _reader(request), request)


@routes.get("/kbs/v0/log/checkpoints")
@_integrity
async def get_checkpoints(request: web.Request) -> web.Response:
    return await checkpoint_history(await _reader(request), request)


@admin_route("POST", "/kbs/v0/admin/log/checkpoint", write=False)
async def sign_checkpoint(request: web.Request, st: BrokerState, who: AdminIdentity) -> web.Response:
    """A checkpoint now (for an operator about to publish one); the tree as it stands."""
    if st.log is None:
        raise ProtocolError("LogUnavailable", "the log is not ready", status=503, reason="log_unavailable")
    try:
        signed = await st.log.checkpoint()
    except LogInconsistent as exc:
        raise ProtocolError("PluginInternalError", str(exc), status=409, reason="log.inconsistent") from exc
    return web.Response(text=signed.note, content_type="text/plain", charset="utf-8")
