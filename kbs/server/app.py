"""The aiohttp application: routes, middlewares for errors and metrics, and the broker's
resources (store, keys, KDS client, thread pools) opened and closed in a cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pythonjsonlogger.json import JsonFormatter

from kbs.errors import KbsError
from kbs.evidence.base import VerifierConfigError, VerifierContext, VerifierType
from kbs.evidence.registry import VerifierRegistry
from kbs.keys.kek import create_exclusive, create_kek_file, load_kek
from kbs.keys.shares import ShareKey
from kbs.policy.lifecycle import PolicyConflict, PolicyRegistry
from kbs.policy.rego_pool import RegoWorkerPool
from kbs.server import admin, contributions, health, openapi, owners, protocol, tlog
from kbs.server.admission import Admission
from kbs.server.attestation import Attestor
from kbs.server.config import AdminKey, Config, ConfigError
from kbs.server.decisions import DEFAULT_POLICY, DecisionInputs
from kbs.server.errors import ProtocolError, ServeError, http_error
from kbs.server.limits import ConnectionLimiter, RateLimiter, client_key, connection_guard
from kbs.server.metrics import LIVE_SECONDS, REFRESH_SECONDS, Metrics
from kbs.server.metrics_access import MetricsAccess
from kbs.server.protocol import STATE
from kbs.server.sessions import AttestedSessions, SessionCookies
from kbs.server.state import AdminIdentity, BrokerState
from kbs.server.tls import check_listen, server_ssl_context
from kbs.server.tokens import TokenSigner
from kbs.store import open_store
from kbs.store.base import StoreError
from kbs.store.group_commit import GroupCommitWriter, can_batch
from kbs.store.integrity import ROW_MAC_PURPOSE
from kbs.trust import observe

log = logging.getLogger("kbs.server")
T = TypeVar("T")
CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
METRICS_ACCESS: web.AppKey[MetricsAccess] = web.AppKey("metrics_access", MetricsAccess)
LIMITS: web.AppKey[dict[str, RateLimiter]] = web.AppKey("limits", dict)
VERIFIER_TYPES: web.AppKey[tuple[VerifierType, ...]] = web.AppKey("verifier_types", tuple)

# Installed on first start: release only to non-sample TEEs whose every submod is affirming
# (`kbs.status`: the CPU and each GPU sent with it; a GPU without OCSP or RIMs is not affirming).
_EVERY_SUBMOD_AFFIRMING = [{"claim": "submod.ear\\.status", "equals": "affirming"},
                           {"claim": "kbs\\.status", "equals": "affirming"}]
DEFAULT_POLICY_TEXT = json.dumps({"version": "1.0.0", "anyOf": [
    {"authority": "local:snp", "allOf": _EVERY_SUBMOD_AFFIRMING},
    {"authority": "local:tdx", "allOf": _EVERY_SUBMOD_AFFIRMING}]}, indent=1)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _rate_limiters(config: Config) -> dict[str, RateLimiter]:
    """Per-client limits on the routes anyone can call (admin routes need a signed token)."""
    return {"/kbs/v0/auth": RateLimiter(config.auth_rate, config.rate_burst),
            "/kbs/v0/attest": RateLimiter(config.attest_rate, config.rate_burst),
            "/kbs/v0/resource/{repo}/{type}/{tag}": RateLimiter(config.resource_rate, config.rate_burst),
            # the owners' routes (kbs.server.owners): open like the guests', signatures checked
            **{route: RateLimiter(config.resource_rate, config.rate_burst)
               for route in (*owners.OPEN_ROUTES, *contributions.OPEN_ROUTES)}}


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    config = request.app[CONFIG]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    wait = 0.0
    try:
        limiter = request.app[LIMITS].get(route)
        if limiter is not None:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            wait = limiter.allow(client_key(peer))
            if wait:
                metrics.rate_limited.labels(route=route).inc()
                raise ProtocolError("TooManyRequests", f"too many requests from this client; retry in {wait:.1f} s "
                                    f"(at most {limiter.rate:g}/s, bursts of {limiter.burst})", status=429,
                                    reason="rate_limited")
        # Everything a request does, a slow upload included, ends within a bound.
        guard = connection_guard(request)
        if guard is not None:
            guard.request_started()
        try:
            async with asyncio.timeout(config.request_timeout + config.header_timeout):
                response = await handler(request)
        finally:
            if guard is not None:
                guard.request_finished()
    except TimeoutError:
        response = ProtocolError("RequestTimeout", "the request took too long (slow upload?)", status=408).response()
    except ProtocolError as exc:
        response = exc.response()
    except web.HTTPException as exc:
        response = http_error(exc)  # 404/405/413 from aiohttp itself, as JSON like every other error
    except (json.JSONDecodeError, ValueError) as exc:
        response = ProtocolError("SerdeError", f"bad request: {exc}", status=400).response()
    except RecursionError:
        response = ProtocolError("SerdeError", "bad request: JSON nested too deeply", status=400).response()
    except Exception:
        log.exception("unexpected error", extra={"path": request.path})
        response = ProtocolError("PluginInternalError", "internal error; see the broker's log", status=500).response()
    if wait:
        response.headers["Retry-After"] = str(max(1, round(wait)))
    metrics.requests.labels(route=route, method=request.method, status=str(response.status)).inc()
    metrics.request_seconds.labels(route=route).observe(time.perf_counter() - started)
    return response


async def healthz(request: web.Request) -> web.Response:
    return health.answer(request, 200, "ok")


async def readyz(request: web.Request) -> web.Response:
    """Ready only when the store answers and the signing key and KEK work."""
    st = request.app.get(STATE)
    if st is None:
        return health.answer(request, 503, "starting")
    try:
        await st.run(st.store.probe_write, st.clock())  # a write: a full disk or read-only file shows here
        st.kek.unseal(st.kek.seal(b"ready", "readyz"), "readyz")
        st.signer.probe()
    except Exception as exc:  # readiness reports any failure; it never raises
        return health.answer(request, 503, f"not ready: {type(exc).__name__}")
    return health.answer(request, 200, "ready")


def _admin_identities(config: Config) -> list[AdminIdentity]:
    out = []
    for entry in config.admin_keys:
        try:
            key = serialization.load_pem_public_key(entry.public_key.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"admin key {entry.name}: cannot load {entry.public_key}: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"admin key {entry.name}: {entry.public_key} is not an Ed25519 public key")
        out.append(AdminIdentity(entry.name, entry.role, key))
    return out


def bootstrap_dev(config: Config) -> Config:
    """Dev mode: create the KEK and an admin key on first start; register the key as admin.

    Replicas starting together agree: each file is created atomically and only once.
    """
    if not config.dev_mode:
        return config
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not config.kek_path.exists():
        create_kek_file(config.kek_path)
    if config.admin_keys:
        return config
    if not config.dev_admin_key.exists():
        create_exclusive(config.dev_admin_key, Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    private = serialization.load_pem_private_key(config.dev_admin_key.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    public_path = config.state_dir / "admin-key.pub.pem"
    create_exclusive(public_path, private.public_key().public_bytes(serialization.Encoding.PEM,
                                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    return replace(config, admin_keys=(AdminKey("dev-admin", public_path, "admin"),))


def _install_default_policy(registry: PolicyRegistry) -> None:
    if registry.history(DEFAULT_POLICY):
        return
    with contextlib.suppress(PolicyConflict):  # another replica installed it first
        registry.put(DEFAULT_POLICY, DEFAULT_POLICY_TEXT, created_by="kbs (first start)", at=datetime.now(UTC))


async def _broker(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kbs-io")
    policy_pool = ThreadPoolExecutor(max_workers=max(config.rego_workers, 1) + 2, thread_name_prefix="kbs-policy")
    verify_pool = ThreadPoolExecutor(max_workers=config.verify_threads or os.cpu_count() or 2,
                                     thread_name_prefix="kbs-verify")
    kek = load_kek(config.kek_file or (config.kek_path if config.dev_mode else None), config.kek_credential)
    store = open_store(config.database, kek.derive(ROW_MAC_PURPOSE))
    signer = TokenSigner.from_store(store.get_or_create_secret, kek, config.token_cache_bytes)
    metrics = app[METRICS]
    # Rego runs only in worker processes with time and memory limits: a policy that crashes or
    # spins the engine costs one worker and is a deny, never the broker (kbs.policy.rego_pool).
    # Started lazily: a broker whose policies are all JSON never runs a Rego process (26 MB each).
    rego = RegoWorkerPool(workers=max(config.rego_workers, 1), timeout=config.rego_timeout,
                          memory_bytes=config.rego_memory_mb << 20, lazy=True,
                          on_event=lambda event: metrics.rego_events.labels(event=event).inc())
    registry = PolicyRegistry(store, rego=rego)
    await asyncio.get_running_loop().run_in_executor(io, _install_default_policy, registry)
    context = VerifierContext(state_dir=config.state_dir, dev_mode=config.dev_mode,
                              verify_threads=config.verify_threads)
    extra_types: tuple[VerifierType, ...] = app[VERIFIER_TYPES]
    try:
        verifiers = VerifierRegistry.from_config(config.enabled_tees, config.verifier_tables, context,
                                                 extra_types=extra_types)
    except VerifierConfigError as exc:
        raise ConfigError(str(exc)) from exc
    attestor = Attestor(verifiers, verify_pool)
    # The guest protocol's writes are group-committed (kbs.store.group_commit): on SQLite one writer at a time
    # anyway; on PostgreSQL one transaction, and one wait for the logs' heads, per batch instead of per write.
    writer = GroupCommitWriter(store, observe=metrics.store_batch) if can_batch(store) else None
    state = BrokerState(config=config, store=store, kek=kek, signer=signer, registry=registry, attestor=attestor,
                        metrics=metrics, admins=_admin_identities(config), io=io, policy=policy_pool, writer=writer,
                        sessions=SessionCookies.from_kek(kek, config.session_lifetime),
                        attested=AttestedSessions(config.session_cache_bytes),
                        decisions=DecisionInputs(store, registry))
    state.log = tlog.Checkpointer(store, tlog.log_signer(store.get_or_create_secret, kek, config.log_origin),
                                  state.run, config.log_witness_hook)
    state.shares = ShareKey.from_store(store.get_or_create_secret, kek)
    app[STATE] = state
    for warning in config.warnings:
        log.warning(warning)
    log.info("verifiers enabled", extra={"tees": list(verifiers.names)})
    purger = asyncio.create_task(_purge(state))
    checkpoints = asyncio.create_task(state.log.loop(config.log_checkpoint_seconds))
    try:
        yield
    finally:
        checkpoints.cancel()
        purger.cancel()
        await attestor.close()
        verify_pool.shutdown(wait=True)
        policy_pool.shutdown(wait=True)
        rego.close()
        io.shutdown(wait=True)
        if writer is not None:
            await writer.close()
        aclose = getattr(store, "aclose", None)  # a connection of the event loop's own (PostgreSQL)
        if aclose is not None:
            await aclose()
        store.close()


async def _purge(state: BrokerState) -> None:
    """Every minute: drop expired sessions, and attestation records and refusals past their retention."""
    attestations = timedelta(days=state.config.attestation_retention_days)
    refusals = timedelta(days=state.config.refusal_retention_days)
    while True:
        await asyncio.sleep(60)
        try:
            now = state.clock()
            await state.run(state.store.purge_expired_sessions, now)
            await state.run(state.store.purge_attestations, now - attestations)
            if state.config.refusal_retention_days > 0:
                await state.run(state.store.purge_refusals, now - refusals)
        except KbsError as exc:
            log.warning("purge failed", extra={"error": str(exc)})


async def _metrics_upkeep(app: web.Application) -> AsyncIterator[None]:
    """Collateral events into this app's metrics (kbs.trust.observe), and every REFRESH_SECONDS this process's
    readings and the collateral expiries (kbs.server.metrics); the session count just before each scrape."""
    metrics = app[METRICS]
    unwatch = observe.watch(metrics)

    async def count_sessions() -> None:
        st = app.get(STATE)
        if st is None:
            return
        with contextlib.suppress(StoreError):  # counted as a store error; the scrape still answers
            metrics.sessions.set(await st.run(st.store.count_live_sessions, st.clock()))

    async def before_scrape() -> None:
        metrics.publish_live()  # this worker's own counts, as they are now
        await count_sessions()

    async def refresh() -> None:
        while True:
            metrics.refresh()
            await asyncio.sleep(REFRESH_SECONDS)

    async def publish() -> None:
        while True:
            metrics.publish_live()
            await asyncio.sleep(LIVE_SECONDS)

    app[METRICS_ACCESS].before_render = before_scrape
    tasks = [asyncio.create_task(refresh()), asyncio.create_task(publish())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        unwatch()


def make_app(config: Config, verifier_types: Sequence[VerifierType] = ()) -> web.Application:
    """The broker's application; `verifier_types` adds TEEs beyond kbs.evidence.registry.KNOWN."""
    metrics = Metrics()
    # Admission first: a request over the in-flight bound costs no routing, metrics or body read.
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[Admission(config.max_in_flight, metrics), errors_and_metrics])
    app[CONFIG] = config
    app[VERIFIER_TYPES] = tuple(verifier_types)
    app[METRICS] = metrics
    app[LIMITS] = _rate_limiters(config)
    app[METRICS_ACCESS] = MetricsAccess(config, metrics)  # [metrics]: open, behind a token, or elsewhere
    app.cleanup_ctx.append(_broker)
    app.cleanup_ctx.append(_metrics_upkeep)
    app.add_routes(protocol.routes)
    app.add_routes(tlog.routes)
    app.add_routes(admin.routes)  # after kbs.server.tlog and kbs.server.owners are imported: they add admin routes
    app.add_routes(owners.routes)
    app.add_routes(contributions.routes)
    app[METRICS_ACCESS].add_main_route(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    openapi.add_route(app, config)  # GET /openapi.json
    return app


def setup_logging(level: str = "INFO") -> None:
    """One JSON object per line (python-json-logger); `extra` fields included.  Never key material."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s", timestamp="time",
                                       rename_fields={"levelname": "level", "name": "logger"}))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def serve(config: Config) -> int:
    """`kbs serve`: one process, or a supervisor and `[server] workers` processes (kbs.server.workers)."""
    from kbs.server import workers  # imports this module for the worker side

    setup_logging(os.environ.get("KBS_LOG_LEVEL", "INFO"))
    check_listen(config)  # plain HTTP only on loopback unless insecure_http
    ssl_context = server_ssl_context(config)  # None without [tls]; a bad file is named here, before anything else
    config = bootstrap_dev(config)
    if config.dev_mode:
        log.warning("dev mode: keys generated under the state directory; do not use in production",
                    extra={"state_dir": str(config.state_dir.resolve()),
                           "admin_key": str(config.dev_admin_key.resolve())})
    count = workers.worker_count(config.workers)
    if count > 1:
        return workers.supervise(config, count)
    run_loop(serve_app(make_app(config), *config.host_port, ssl_context=ssl_context))
    return 0


def check_config(config: Config) -> str:
    """`kbs serve --check-config`: what `serve` loads before serving, loaded (TLS files, the KEK, admin keys,
    the store, reachable and at this schema, the enabled verifiers and their trust roots) and the port
    probed, then stop.  A one-line summary, or the error `serve` would stop with."""
    from kbs.server import workers

    check_listen(config)
    tls = server_ssl_context(config)
    config = bootstrap_dev(config)
    workers.probe_port(*config.host_port, config.listen)
    if config.metrics_host_port is not None:
        workers.probe_port(*config.metrics_host_port, f"[metrics] listen {config.metrics_listen}")
    asyncio.run(workers.first_start(config))
    scheme = "https" if tls else "http"
    return (f"configuration OK: {scheme}://{config.listen}, store {config.database_kind}, "
            f"verifiers {', '.join(config.enabled_tees)}, "
            f"{workers.worker_count(config.workers)} worker(s), {len(config.admin_keys)} admin key(s)"
            f"{', dev mode' if config.dev_mode else ''}")


# Young-generation collections at this many net allocations instead of CPython's 700: a request allocates
# hundreds of objects, nearly all freed by reference counting; collecting every few requests cost ~14% of
# a worker's CPU in a storm (measured with py-spy --native).  Cycles are still collected, a little later.
GC_THRESHOLDS = (20_000, 20, 20)
SWITCH_INTERVAL = 0.0005  # seconds (see run_loop)


def _settle_garbage_collector() -> None:
    """Once the broker is set up: move what startup built (modules, trust roots, tables, the app) out of
    the collector's sight (gc.freeze: never traversed again), and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the broker's event loop: uvloop (libuv's loop: a quarter less CPU per request here than asyncio's
    own) when it is installed, else asyncio's."""
    # A busy loop holds the GIL; a thread that finished a COMMIT (or other offloaded call) must take it back
    # to deliver its result, and waits up to the holder's switch interval for it (CPython's default 5 ms):
    # under load, up to 5 ms added to every durable step.  Asked for less often than it is idle, the
    # shorter interval costs nothing when no thread is waiting.
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency; kept optional for unusual platforms
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def serve_app(app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None, *,
                    worker: health.WorkerIdentity | None = None,
                    listeners: Sequence[socket.socket] = (),
                    on_listening: Callable[[list[str]], None] | None = None,
                    stop_when_readable: int | None = None) -> None:
    """Bind (with TLS when given a context), say where, serve until SIGTERM/SIGINT, then drain requests.

    As one of several workers (`worker` given): accept on `listeners`, the listening sockets every worker
    shares (kbs.server.workers), instead of binding HOST:PORT; say which worker listens (before serving, so the
    line precedes any answer), report the URLs to `on_listening`, and stop too when `stop_when_readable` (the
    pipe from the supervisor, which never writes to it) becomes readable: the supervisor is gone.
    """
    config, metrics = app[CONFIG], app[METRICS]
    if worker is not None:
        app[health.WORKER] = worker
    # The keep-alive timer also runs on new connections and is not reset by partial data, so it is
    # the header-read timeout too; a connection's unparsed head is bounded as a whole by the limiter
    # (kbs.server.limits), so header fields can fit a Bearer token of the largest claims allowed.
    field_size = max(8190, config.max_claims_bytes * 3 // 2 + 4096)  # a Bearer token of the largest claims
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10,
                           keepalive_timeout=config.header_timeout, max_headers=MAX_HEADERS,
                           max_field_size=field_size)
    await runner.setup()
    _settle_garbage_collector()
    metrics.worker_starts.inc()
    limiter = ConnectionLimiter(_connection_cap(config.max_connections), config.max_connections_per_client,
                                head_bytes=field_size + 32 * 1024,
                                on_refused=lambda why: metrics.connections_refused.labels(limit=why).inc(),
                                on_open=metrics.connections_open)
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    protocols = limiter.wrap(runner.server)
    try:
        if listeners:
            servers = [await loop.create_server(protocols, sock=sock, ssl=ssl_context, backlog=LISTEN_BACKLOG)
                       for sock in listeners]
        else:
            servers = [await loop.create_server(protocols, host, port, ssl=ssl_context, reuse_address=True,
                                                backlog=LISTEN_BACKLOG)]
    except OSError as exc:
        await runner.cleanup()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio rewrites strerror
        raise ServeError(f"cannot listen on {config.listen}: {reason}") from exc
    scheme = "https" if ssl_context is not None else "http"
    urls = []
    for sock in (sock for server in servers for sock in server.sockets):
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        urls.append(f"{scheme}://{shown}:{bound_port}")
        log.info("listening", extra={"url": urls[-1], "max_connections": limiter.total,
                                     "worker": worker.index if worker else 0})
    which = f" (worker {worker.index + 1} of {worker.count})" if worker is not None else ""
    for url in urls:
        print(f"kbs: listening on {url}{which}", file=sys.stderr, flush=True)
    metrics_runner = await _metrics_listener(app, ssl_context, worker)
    if on_listening is not None:
        on_listening(urls)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if stop_when_readable is not None:
        def supervisor_gone() -> None:
            loop.remove_reader(stop_when_readable)  # readable until closed: once is enough
            stop.set()
        loop.add_reader(stop_when_readable, supervisor_gone)
    await stop.wait()
    log.info("shutting down: draining requests")
    for server in servers:
        server.close()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    await runner.cleanup()


async def _metrics_listener(app: web.Application, ssl_context: ssl.SSLContext | None,
                            worker: health.WorkerIdentity | None) -> web.AppRunner | None:
    """[metrics] listen: /metrics on a socket of its own, each worker binding it with SO_REUSEPORT (unlike the main
    listener, one socket inherited by all: a scrape needs no balancing)."""
    where = app[CONFIG].metrics_host_port
    if where is None:
        return None
    runner = web.AppRunner(app[METRICS_ACCESS].listener_app(), access_log=None, handle_signals=False,
                           shutdown_timeout=2)
    await runner.setup()
    assert runner.server is not None
    try:
        server = await asyncio.get_running_loop().create_server(
            runner.server, *where, ssl=ssl_context, reuse_address=True, reuse_port=worker is not None)
    except OSError as exc:
        await runner.cleanup()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ServeError(f"cannot listen on [metrics] listen {app[CONFIG].metrics_listen}: {reason}") from exc
    scheme = "https" if ssl_context is not None else "http"
    for sock in server.sockets:
        bound_host, bound_port = sock.getsockname()[:2]
        url = f"{scheme}://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/metrics"
        log.info("metrics listening", extra={"url": url, "worker": worker.index if worker else 0})
        if worker is None or worker.index == 0:
            print(f"kbs: metrics on {url}", file=sys.stderr, flush=True)
    return runner


MAX_HEADERS = 24
LISTEN_BACKLOG = 4096  # a boot storm's connections wait in the kernel (clamped to net.core.somaxconn)
FD_RESERVE = 64  # descriptors kept for the database, collateral fetches, worker pipes and logs


def _connection_cap(wanted: int) -> int:
    """Raise the descriptor limit as far as allowed and keep the cap below it, so accept never fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + FD_RESERVE)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    cap = min(wanted, soft - FD_RESERVE)
    if cap < wanted:
        log.warning("connection cap lowered to fit the descriptor limit",
                    extra={"max_connections": cap, "wanted": wanted, "nofile": soft})
    return max(cap, 16)
