"""The aiohttp application: routes, middlewares for errors and metrics, and the broker's
resources (store, keys, KDS client, thread pools) opened and closed in a cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pythonjsonlogger.json import JsonFormatter

from kbs.errors import KbsError
from kbs.evidence.snp import configure_key_tables
from kbs.keys.kek import create_kek_file, load_kek
from kbs.policy.lifecycle import PolicyConflict, PolicyRegistry
from kbs.server import admin, protocol
from kbs.server.attestation import EvidenceVerifier
from kbs.server.config import AdminKey, Config, ConfigError
from kbs.server.errors import ProtocolError
from kbs.server.metrics import Metrics
from kbs.server.protocol import DEFAULT_POLICY, STATE
from kbs.server.state import AdminIdentity, BrokerState
from kbs.server.tokens import TokenSigner
from kbs.store.sqlite import SqliteStore
from kbs.trust.kds import KdsClient
from kbs.trust.x509 import load_certificates

log = logging.getLogger("kbs.server")
CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)

# Installed on first start: release only to non-sample TEEs whose every submod is affirming.
DEFAULT_POLICY_TEXT = json.dumps({"version": "1.0.0", "anyOf": [
    {"authority": "local:snp", "allOf": [{"claim": "submod.ear\\.status", "equals": "affirming"}]},
    {"authority": "local:tdx", "allOf": [{"claim": "submod.ear\\.status", "equals": "affirming"}]}]}, indent=1)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ProtocolError as exc:
        response = exc.response()
    except web.HTTPException as exc:
        response = exc  # 404/405/413 from aiohttp itself
    except (json.JSONDecodeError, ValueError) as exc:
        response = ProtocolError("SerdeError", f"bad request: {exc}", status=400).response()
    except Exception:
        log.exception("unexpected error", extra={"path": request.path})
        response = ProtocolError("PluginInternalError", "internal error; see the broker's log", status=500).response()
    metrics.requests.labels(route=route, method=request.method, status=str(response.status)).inc()
    metrics.request_seconds.labels(route=route).observe(time.perf_counter() - started)
    return response


async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), content_type="text/plain", charset="utf-8")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    """Ready only when the store answers and the signing key and KEK work."""
    st = request.app.get(STATE)
    if st is None:
        return web.Response(status=503, text="starting")
    try:
        await st.run(st.store.ping)
        st.kek.unseal(st.kek.seal(b"ready", "readyz"), "readyz")
        st.signer.probe()
    except Exception as exc:  # readiness reports any failure; it never raises
        return web.Response(status=503, text=f"not ready: {type(exc).__name__}")
    return web.Response(text="ready")


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
    """Dev mode: create the KEK and an admin key on first start; register the key as admin."""
    if not config.dev_mode:
        return config
    config.state_dir.mkdir(parents=True, exist_ok=True)
    if not config.kek_path.exists():
        create_kek_file(config.kek_path)
    if config.admin_keys:
        return config
    if not config.dev_admin_key.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption())
        fd = os.open(config.dev_admin_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    private = serialization.load_pem_private_key(config.dev_admin_key.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    public_path = config.state_dir / "admin-key.pub.pem"
    public_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    from dataclasses import replace

    return replace(config, admin_keys=(AdminKey("dev-admin", public_path, "admin"),))


def _install_default_policy(registry: PolicyRegistry) -> None:
    if registry.history(DEFAULT_POLICY):
        return
    with contextlib.suppress(PolicyConflict):  # another replica installed it first
        registry.put(DEFAULT_POLICY, DEFAULT_POLICY_TEXT, created_by="kbs (first start)", at=datetime.now(UTC))


async def _broker(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kbs-io")
    verify_pool = ThreadPoolExecutor(max_workers=config.verify_threads or os.cpu_count() or 2,
                                     thread_name_prefix="kbs-verify")
    configure_key_tables(config.key_tables)
    store = SqliteStore(config.database_path)
    kek = load_kek(config.kek_file or (config.kek_path if config.dev_mode else None), config.kek_credential)
    signer = TokenSigner.from_store(store.get_or_create_secret, kek)
    registry = PolicyRegistry(store)
    await asyncio.get_running_loop().run_in_executor(io, _install_default_policy, registry)
    roots = [c for p in config.snp_roots for c in load_certificates(p.read_bytes())] or None
    kds = KdsClient(config.kds_url, cache_dir=config.kds_cache, offline=config.kds_offline)
    state = BrokerState(config=config, store=store, kek=kek, signer=signer, registry=registry,
                        verifier=EvidenceVerifier(kds, verify_pool, roots), metrics=app[METRICS],
                        admins=_admin_identities(config), io=io)
    app[STATE] = state
    purger = asyncio.create_task(_purge_sessions(state))
    try:
        yield
    finally:
        purger.cancel()
        await kds.close()
        verify_pool.shutdown(wait=True)
        io.shutdown(wait=True)
        store.close()


async def _purge_sessions(state: BrokerState) -> None:
    """Every minute: drop expired sessions and attestation records past their retention."""
    retention = timedelta(days=state.config.attestation_retention_days)
    while True:
        await asyncio.sleep(60)
        try:
            now = state.clock()
            await state.run(state.store.purge_expired_sessions, now)
            await state.run(state.store.purge_attestations, now - retention)
        except KbsError as exc:
            log.warning("purge failed", extra={"error": str(exc)})


def make_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[errors_and_metrics])
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_broker)
    app.add_routes(protocol.routes)
    app.add_routes(admin.routes)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def setup_logging(level: str = "INFO") -> None:
    """One JSON object per line (python-json-logger); `extra` fields included.  Never key material."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s", timestamp="time",
                                       rename_fields={"levelname": "level", "name": "logger"}))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def serve(config: Config) -> None:
    setup_logging(os.environ.get("KBS_LOG_LEVEL", "INFO"))
    config = bootstrap_dev(config)
    if config.dev_mode:
        log.warning("dev mode: keys generated under the state directory; do not use in production",
                    extra={"state_dir": str(config.state_dir.resolve()),
                           "admin_key": str(config.dev_admin_key.resolve())})
    asyncio.run(_serve(make_app(config), *config.host_port))


async def _serve(app: web.Application, host: str, port: int) -> None:
    """Bind, say where, serve until SIGTERM/SIGINT, then drain in-flight requests."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    for address in runner.addresses:
        bound_host, bound_port = address[0], address[1]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"kbs: listening on http://{shown}:{bound_port}", file=sys.stderr, flush=True)
        log.info("listening", extra={"url": f"http://{shown}:{bound_port}"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining requests")
    await runner.cleanup()
