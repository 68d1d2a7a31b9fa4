"""The load generator: guests playing /auth, /attest, GET resource + decrypt, in their own process(es).

Lean on purpose, so that what it costs is small and measured (its own CPU is reported beside the
broker's):

- HTTP/1.1 over a bare asyncio.Protocol (no client framework): each guest is one TCP connection that
  carries its three requests and the session cookie; requests are pre-built bytes.
- TEE keys (P-256) are generated before the run; a guest takes one from the pool.
- The SNP report must bind the /auth nonce, so it is signed per exchange, cheaply: the template report
  and the CoCo JSON body are built once, and per exchange only report_data, r and s change.  ECDSA
  P-384 uses nonces k_i = k_0 + i*step whose points are one point addition apart, inverted a block at a
  time (~15 us a signature in Python) instead of a scalar multiplication in OpenSSL (~1 ms): the
  signatures are ordinary, valid ECDSA signatures the broker verifies fully (and the generator checks
  some at start).  (Related nonces would leak a real key; this one is synthetic.)
- A 503 is retried after its Retry-After; a refused or reset connection is retried after a short,
  growing, jittered pause.  Every step, retry and failure is counted.

`generator_main` is the body of a generator process (multiprocessing, spawn): it receives the setup once
and then jobs (open-loop, closed-loop, storm), and answers each with a `Result`.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import json
import random
import re
import resource
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kbs.evidence.binding import primary_runtime_digest
from kbs.evidence.snp.coco import report_to_coco
from kbs.keys.jwe import TeeKey, decrypt, generate_tee_key
from kbs.server.app import run_loop
from tests.amd_synth import build_report, sign_report

P384_P = 2**384 - 2**128 - 2**96 + 2**32 - 1
P384_N = int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973", 16)
AUTH, ATTEST, RESOURCE = 0, 1, 2
ENDPOINTS = ("auth", "attest", "resource")
_DECIMAL = [str(b) for b in range(256)]


# -- evidence ------------------------------------------------------------------------------------

class ReportSigner:
    """ECDSA P-384 signatures of SNP reports with the VCEK key, one cheap nonce per signature.

    The nonces are k_i = k_0 + i*step: each nonce point is the previous one plus step*G, one mixed
    Jacobian addition; a block of them is brought to affine coordinates, and the block's nonces inverted,
    with one modular inversion each (Montgomery's trick), so a signature costs a few multiplications, a
    SHA-384 and no inversion of its own (~60 us per signature with two inversions each)."""

    BLOCK = 128

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self.d = private_key.private_numbers().private_value
        start, step = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
        self.k = start.private_numbers().private_value
        x, y = _point(start)
        self.jacobian = (x, y, 1)
        self.step = step.private_numbers().private_value
        self.sx, self.sy = _point(step)
        self.ready: list[tuple[int, int]] = []  # (r, k^-1 mod n) of the nonces to come, last one next

    def _refill(self) -> None:
        x1, y1, z1 = self.jacobian
        sx, sy, k = self.sx, self.sy, self.k
        xs, zs, ks = [], [], []
        for _ in range(self.BLOCK):  # (x1, y1, z1) += (sx, sy): madd-2007-bl, the curve's a not needed
            zz = z1 * z1 % P384_P
            h = (sx * zz - x1) % P384_P
            assert h, "a nonce point met step*G: start again"  # probability ~2^-384
            hh = h * h % P384_P
            i = 4 * hh % P384_P
            j = h * i % P384_P
            r = 2 * (sy * z1 * zz - y1) % P384_P
            v = x1 * i % P384_P
            x1 = (r * r - j - 2 * v) % P384_P
            y1 = (r * (v - x1) - 2 * y1 * j) % P384_P
            z1 = ((z1 + h) ** 2 - zz - hh) % P384_P
            k = (k + self.step) % P384_N
            xs.append(x1)
            zs.append(z1)
            ks.append(k)
        self.jacobian, self.k = (x1, y1, z1), k
        z_inverses, k_inverses = _inverses(zs, P384_P), _inverses(ks, P384_N)
        self.ready = [(x * zi * zi % P384_P % P384_N, ki) for x, zi, ki in zip(xs, z_inverses, k_inverses, strict=True)]
        self.ready.reverse()

    def sign(self, report: bytearray) -> tuple[bytes, bytes]:
        """Store r and s (72 bytes little-endian each) in report[0x2A0:0x330] and return them."""
        if not self.ready:
            self._refill()
        r, k_inverse = self.ready.pop()
        z = int.from_bytes(hashlib.sha384(memoryview(report)[:0x2A0]).digest(), "big")
        s = k_inverse * (z + r * self.d) % P384_N
        rb, sb = r.to_bytes(72, "little"), s.to_bytes(72, "little")
        report[0x2A0:0x2E8] = rb
        report[0x2E8:0x330] = sb
        return rb, sb


def _inverses(values: list[int], modulus: int) -> list[int]:
    """Every value's inverse modulo a prime, with one modular inversion (Montgomery's trick)."""
    prefix, running = [], 1
    for value in values:
        prefix.append(running)
        running = running * value % modulus
    inverse = pow(running, -1, modulus)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inverse * prefix[i] % modulus
        inverse = inverse * values[i] % modulus
    return out


def _point(key: ec.EllipticCurvePrivateKey) -> tuple[int, int]:
    numbers = key.public_key().public_numbers()
    return numbers.x, numbers.y


def _ints(data: bytes) -> str:
    return "[" + ",".join([_DECIMAL[b] for b in data]) + "]"


class AttestBody:
    """The /attest body as a template: the CoCo JSON of one guest's report with holes for the nonce,
    the TEE key, report_data and the signature."""

    def __init__(self, report: bytes, certificates: list[tuple[str, bytes]], signer: ReportSigner) -> None:
        self.report = bytearray(report)
        self.signer = signer
        coco = report_to_coco(report, certificates)
        ar = coco["attestation_report"]
        ar["report_data"] = "@@RD@@"
        ar["signature"] = {"r": "@@R@@", "s": "@@S@@"}
        body = {"init-data": None, "runtime-data": {"nonce": "@@NONCE@@", "tee-pubkey": "@@JWK@@"},
                "tee-evidence": {"primary_evidence": coco, "additional_evidence": ""}}
        self.pieces = re.split(r'"@@(\w+)@@"', json.dumps(body, separators=(",", ":")))
        assert self.pieces[1::2].count("RD") == 1 and len(self.pieces) == 11, self.pieces[1::2]

    def build(self, nonce: str, jwk_json: str, digest_tail: bytes) -> bytes:
        """`digest_tail` is the canonical JSON of the runtime data after the nonce (see Guests.tail)."""
        digest = hashlib.sha384(b'{"additional-evidence":"","nonce":"' + nonce.encode() + digest_tail).digest()
        report = self.report[:]
        report_data = digest + bytes(16)
        report[0x50:0x90] = report_data
        r, s = self.signer.sign(report)
        values = {"NONCE": f'"{nonce}"', "JWK": jwk_json, "RD": _ints(report_data), "R": _ints(r), "S": _ints(s)}
        pieces = self.pieces[:]
        for i in range(1, len(pieces), 2):
            pieces[i] = values[pieces[i]]
        return "".join(pieces).encode()


# -- HTTP ----------------------------------------------------------------------------------------

class HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (Content-Length bodies only)."""

    __slots__ = ("buf", "closed", "transport", "waiter")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's does not subclass asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end + 2])
        low = head.lower()
        at = low.find(b"\r\ncontent-length:")
        if at < 0:
            self.waiter = None
            waiter.set_exception(ConnectionError("response without Content-Length"))
            return
        length = int(head[at + 17:head.index(b"\r\n", at + 2)])
        total = end + 4 + length
        if len(self.buf) < total:
            return
        body = bytes(self.buf[end + 4:total])
        del self.buf[:total]
        if b"\r\nconnection: close" in low:
            self.closed = True
        self.waiter = None
        if not waiter.done():
            waiter.set_result((int(head[9:12]), head, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection closed by the server"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bytes, bytes]]:
        assert self.transport is not None
        waiter: asyncio.Future[tuple[int, bytes, bytes]] = asyncio.get_running_loop().create_future()
        self.waiter = waiter
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def header(head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lower case, with the colon) in a response head."""
    at = head.lower().find(b"\r\n" + name)
    if at < 0:
        return None
    start = at + 2 + len(name)
    return head[start:head.index(b"\r\n", start)].strip()


# -- results -------------------------------------------------------------------------------------

@dataclass
class Result:
    """What a job measured in one generator (merged across generators by `merge`)."""

    exchanges: array[float] = field(default_factory=lambda: array("d"))  # seconds, per completed guest
    endpoints: list[array[float]] = field(default_factory=lambda: [array("d") for _ in ENDPOINTS])
    lag: array[float] = field(default_factory=lambda: array("d"))  # arrival: how late the generator started it
    started: int = 0
    completed: int = 0
    failed: int = 0
    dropped: int = 0  # open loop: arrivals not started because the generator's concurrency cap was reached
    refused_503: list[int] = field(default_factory=lambda: [0, 0, 0])
    connection_errors: int = 0
    reconnects: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0  # first arrival to last completion
    cpu: float = 0.0  # this generator's own CPU seconds during the job
    peak_in_flight: int = 0


def merge(results: list[Result]) -> Result:
    out = Result()
    for r in results:
        out.exchanges.extend(r.exchanges)
        for mine, theirs in zip(out.endpoints, r.endpoints, strict=True):
            mine.extend(theirs)
        out.lag.extend(r.lag)
        out.started += r.started
        out.completed += r.completed
        out.failed += r.failed
        out.dropped += r.dropped
        out.refused_503 = [a + b for a, b in zip(out.refused_503, r.refused_503, strict=True)]
        out.connection_errors += r.connection_errors
        out.reconnects += r.reconnects
        out.errors.update(r.errors)
        out.wall = max(out.wall, r.wall)
        out.cpu += r.cpu
        out.peak_in_flight += r.peak_in_flight
    return out


# -- guests --------------------------------------------------------------------------------------

@dataclass
class Setup:
    """Everything a generator process needs, picklable."""

    targets: list[tuple[str, int]]
    resource_path: str
    secret: bytes
    vcek_key_pem: bytes
    certificates: list[tuple[str, bytes]]
    chip: bytes
    measurement: bytes
    policy: int
    keys: int = 2048  # TEE keys in the pool
    seed: int = 0
    decrypt_key_pem: bytes | None = None  # the framework ceiling answers one canned JWE, sealed for this key


class ExchangeFailed(Exception):
    pass


class Guests:
    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        vcek = serialization.load_pem_private_key(setup.vcek_key_pem, None)
        assert isinstance(vcek, ec.EllipticCurvePrivateKey)
        self.vcek_public = vcek.public_key()
        template = sign_report(build_report(chip_id=setup.chip, measurement=setup.measurement, policy=setup.policy),
                               vcek)
        self.body = AttestBody(template, setup.certificates, ReportSigner(vcek))
        self.keys: list[TeeKey] = [generate_tee_key("EC-P256") for _ in range(setup.keys)]
        self.jwk_json = [json.dumps(k.jwk, separators=(",", ":"), sort_keys=True) for k in self.keys]
        # The canonical (RFC 8785) runtime data after the nonce: the JWK members are ASCII, sorted.
        self.tails = [b'","tee-pubkey":' + j.encode() + b"}" for j in self.jwk_json]
        if setup.decrypt_key_pem is not None:
            canned = serialization.load_pem_private_key(setup.decrypt_key_pem, None)
            assert isinstance(canned, ec.EllipticCurvePrivateKey)
            self.decrypt_keys: list[Any] = [canned]
        else:
            self.decrypt_keys = [k.private_key for k in self.keys]
        self.requests: list[tuple[bytes, bytes, bytes]] = []
        auth = b'{"version":"0.4.0","tee":"snp","extra-params":{}}'
        for host, port in setup.targets:
            hostline = f"Host: {host}:{port}\r\n".encode()
            self.requests.append((
                b"POST /kbs/v0/auth HTTP/1.1\r\n" + hostline + b"Content-Type: application/json\r\nContent-Length: "
                + str(len(auth)).encode() + b"\r\n\r\n" + auth,
                b"POST /kbs/v0/attest HTTP/1.1\r\n" + hostline + b"Content-Type: application/json\r\n",
                f"GET /kbs/v0/resource/{setup.resource_path} HTTP/1.1\r\n".encode() + hostline,
            ))
        self.result = Result()
        self.in_flight = 0
        self.max_attempts = 40  # per request; a storm job raises it (guests keep asking until served)
        self.timeout = 120.0  # per exchange
        self.rng = random.Random(setup.seed)

    def self_check(self) -> None:
        """The templated body binds exactly what kbs.evidence.binding computes, and the signer's signatures verify
        (past a block boundary) with the VCEK's key."""
        nonce = "bm9uY2Utc2VsZi1jaGVjaw"
        expected = primary_runtime_digest(nonce, self.keys[0].jwk, "")
        body = json.loads(self.body.build(nonce, self.jwk_json[0], self.tails[0]))
        assert bytes(body["tee-evidence"]["primary_evidence"]["attestation_report"]["report_data"][:48]) == expected
        report = bytearray(self.body.report)
        for i in range(ReportSigner.BLOCK + 2):
            report[0x50] = i % 256
            r, s = self.body.signer.sign(report)
            self.vcek_public.verify(encode_dss_signature(int.from_bytes(r, "little"), int.from_bytes(s, "little")),
                                    bytes(report[:0x2A0]), ec.ECDSA(hashes.SHA384()))

    async def _call(self, conn: HttpConn | None, index: int, kind: int,
                    data: bytes) -> tuple[HttpConn, int, bytes, bytes]:
        """Send one request until it is answered with something other than 503 (reconnecting as needed)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempts = 0
        result = self.result
        while True:
            attempts += 1
            try:
                if conn is None or conn.closed:
                    if conn is not None:
                        result.reconnects += 1
                    host, port = self.setup.targets[index % len(self.setup.targets)]
                    _, conn = await loop.create_connection(HttpConn, host, port)
                status, head, body = await conn.request(data)
            except OSError as exc:  # refused, reset: ConnectionError is an OSError
                result.connection_errors += 1
                conn = None
                if attempts >= self.max_attempts:
                    raise ExchangeFailed(f"{ENDPOINTS[kind]}: {type(exc).__name__}") from exc
                await asyncio.sleep(min(2.0, 0.05 * 2 ** min(attempts, 6)) * (0.5 + self.rng.random()))
                continue
            if status == 503 and attempts < self.max_attempts:
                result.refused_503[kind] += 1
                retry_after = header(head, b"retry-after:")
                wait = float(retry_after) if retry_after and retry_after.isdigit() else 1.0
                await asyncio.sleep(wait * (1 + 0.2 * self.rng.random()))
                continue
            result.endpoints[kind].append(loop.time() - started)
            return conn, status, head, body

    async def exchange(self, index: int, steps: int = 3) -> None:
        """One guest: a connection, /auth, /attest, GET resource, decrypt; `steps` < 3 stops early."""
        auth_req, attest_head, resource_head = self.requests[index % len(self.requests)]
        key = index % len(self.keys)
        conn: HttpConn | None = None
        try:
            conn, status, head, body = await self._call(None, index, AUTH, auth_req)
            if status != 200:
                raise ExchangeFailed(f"auth {status}")
            cookie = header(head, b"set-cookie:")
            if cookie is None:
                raise ExchangeFailed("auth: no cookie")
            cookie_line = b"Cookie: " + cookie.split(b";", 1)[0] + b"\r\n"
            if steps < 2:
                return
            nonce = json.loads(body)["nonce"]
            evidence = self.body.build(nonce, self.jwk_json[key], self.tails[key])
            request = (attest_head + cookie_line + b"Content-Length: " + str(len(evidence)).encode() + b"\r\n\r\n"
                       + evidence)
            conn, status, head, body = await self._call(conn, index, ATTEST, request)
            if status != 200:
                raise ExchangeFailed(f"attest {status}: {body[:120]!r}")
            if steps < 3:
                return
            conn, status, head, body = await self._call(conn, index, RESOURCE, resource_head + cookie_line + b"\r\n")
            if status != 200:
                raise ExchangeFailed(f"resource {status}: {body[:120]!r}")
            secret = decrypt(json.loads(body), self.decrypt_keys[key % len(self.decrypt_keys)])
            if secret != self.setup.secret:
                raise ExchangeFailed("resource: wrong secret")
        finally:
            if conn is not None:
                conn.close()

    async def timed(self, index: int, since: float, steps: int) -> None:
        result = self.result
        self.in_flight += 1
        result.peak_in_flight = max(result.peak_in_flight, self.in_flight)
        try:
            async with asyncio.timeout(self.timeout):
                await self.exchange(index, steps)
        except (ExchangeFailed, TimeoutError, OSError, ValueError, KeyError) as exc:
            result.failed += 1
            result.errors[str(exc) or type(exc).__name__] += 1
        else:
            result.completed += 1
            result.exchanges.append(asyncio.get_running_loop().time() - since)
        finally:
            self.in_flight -= 1

    # -- jobs --

    async def open_loop(self, rate: float, seconds: float, poisson: bool, cap: int, offset: int) -> None:
        """Arrivals at `rate`/s for `seconds` whatever the answers (latency counted from the scheduled arrival)."""
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        count = int(rate * seconds)
        start = loop.time() + 0.05
        at = 0.0
        for i in range(count):
            at += self.rng.expovariate(rate) if poisson else 1.0 / rate
            due = start + at
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.result.lag.append(max(0.0, loop.time() - due))
            if self.in_flight >= cap:
                self.result.dropped += 1
                continue
            self.result.started += 1
            task = loop.create_task(self.timed(offset + i, due, 3))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)

    async def closed_loop(self, concurrency: int, seconds: float, steps: int, offset: int) -> None:
        """`concurrency` guests back to back for `seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        counter = itertools.count(offset)

        async def lane() -> None:
            while loop.time() < deadline:
                self.result.started += 1
                await self.timed(next(counter), loop.time(), steps)

        await asyncio.gather(*(lane() for _ in range(concurrency)))

    async def storm(self, guests: int, cap: int, offset: int) -> None:
        """`guests` arrive at once (at most `cap` at a time from this generator), retrying as told."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(cap)
        start = loop.time()

        async def one(i: int) -> None:
            async with gate:
                self.result.started += 1
                await self.timed(offset + i, start, 3)

        await asyncio.gather(*(one(i) for i in range(guests)))


def run_job(guests: Guests, job: dict[str, Any]) -> Result:
    guests.result = Result()
    guests.rng.seed(job.get("seed", 0))
    guests.max_attempts = job.get("max_attempts", 40)
    guests.timeout = job.get("timeout", 120.0)
    cpu0 = _cpu()
    gc.collect()
    gc.freeze()  # the pools above are long-lived: keep the collector off them
    kind = job["kind"]

    async def go() -> None:
        start = asyncio.get_running_loop().time()
        if kind == "open":
            await guests.open_loop(job["rate"], job["seconds"], job.get("poisson", True), job["cap"], job["offset"])
        elif kind == "closed":
            await guests.closed_loop(job["concurrency"], job["seconds"], job.get("steps", 3), job["offset"])
        elif kind == "storm":
            await guests.storm(job["guests"], job["cap"], job["offset"])
        else:
            raise ValueError(kind)
        guests.result.wall = asyncio.get_running_loop().time() - start

    run_loop(go())  # uvloop, as the broker: the generator shares the machine's cores with it
    guests.result.cpu = _cpu() - cpu0
    return guests.result


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def generator_main(pipe: Connection, setup: Setup) -> None:
    """A generator process: build the guests, say ready, then run jobs until told to stop."""
    guests = Guests(setup)
    guests.self_check()
    pipe.send("ready")
    while True:
        job = pipe.recv()
        if job is None:
            return
        pipe.send(run_job(guests, job))


async def capture(setup: Setup) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """One real exchange: each response's (head, body), and the TEE key the resource was sealed for (PEM)."""
    guests = Guests(Setup(**{**setup.__dict__, "keys": 1}))
    host, port = setup.targets[0]
    auth_req, attest_head, resource_head = guests.requests[0]
    _, conn = await asyncio.get_running_loop().create_connection(HttpConn, host, port)
    try:
        status, head1, body1 = await conn.request(auth_req)
        assert status == 200, body1
        cookie = header(head1, b"set-cookie:")
        assert cookie is not None
        cookie_line = b"Cookie: " + cookie.split(b";", 1)[0] + b"\r\n"
        evidence = guests.body.build(json.loads(body1)["nonce"], guests.jwk_json[0], guests.tails[0])
        status, head2, body2 = await conn.request(attest_head + cookie_line + b"Content-Length: "
                                                  + str(len(evidence)).encode() + b"\r\n\r\n" + evidence)
        assert status == 200, body2
        status, head3, body3 = await conn.request(resource_head + cookie_line + b"\r\n")
        assert status == 200, body3
        assert decrypt(json.loads(body3), guests.keys[0].private_key) == setup.secret
    finally:
        conn.close()
    pem = guests.keys[0].private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption())
    return [(head1, body1), (head2, body2), (head3, body3)], pem
