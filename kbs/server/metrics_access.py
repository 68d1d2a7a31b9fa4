"""Who may read /metrics ([metrics] in the configuration): metrics tell anyone who reads them how busy the
broker is, which TEEs attest and which checks fail, so guests should not read them.

- `token_file`: /metrics wants `Authorization: Bearer <token>`; the file is read once at start (16 to
  4096 printable ASCII characters without spaces, surrounding whitespace ignored, not readable by group or
  others, like the KEK).  The token is compared in constant time (HMAC's compare over SHA-256 digests, so
  not even its length shows); a missing or wrong one is 401 with `WWW-Authenticate: Bearer`.
- `listen`: /metrics is served on a listener of its own (one more socket in every worker, with SO_REUSEPORT:
  scrapes need no balancing; the same TLS), and the main listener no longer routes it (404).
- neither: the main listener serves /metrics openly when `public` (the default in dev mode only), else
  answers 403 saying which setting to add.
"""

from __future__ import annotations

import hashlib
import hmac
import string
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from kbs.server.config import Config, ConfigError
from kbs.server.metrics import Metrics

MIN_TOKEN = 16
MAX_TOKEN = 4096
_TOKEN_CHARS = frozenset(string.printable) - frozenset(string.whitespace)
REALM = 'Bearer realm="kbs-metrics"'


def load_token(path: Path) -> bytes:
    """SHA-256 of the token in `path`; ConfigError naming [metrics] token_file for anything wrong."""
    try:
        mode = path.stat().st_mode
        raw = path.read_bytes()[: MAX_TOKEN + 64]
    except OSError as exc:
        raise ConfigError(f"[metrics] token_file {path}: cannot read it: {exc.strerror or exc}") from exc
    if mode & 0o077:
        raise ConfigError(f"[metrics] token_file {path} is readable or writable by others (mode {mode & 0o777:04o}); "
                          "chmod 600 it")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        token = "\0"
    if not MIN_TOKEN <= len(token) <= MAX_TOKEN or not set(token) <= _TOKEN_CHARS:
        raise ConfigError(f"[metrics] token_file {path} must hold one token of {MIN_TOKEN} to {MAX_TOKEN} printable "
                          "ASCII characters without spaces (for example: openssl rand -hex 32)")
    return hashlib.sha256(token.encode()).digest()


def _bearer_matches(request: web.Request, digest: bytes) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or len(given) > MAX_TOKEN:
        return False
    return hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(), digest)


class MetricsAccess:
    """The /metrics handler with the configured rule; `main` says which listener it is mounted on."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.metrics = metrics
        self.token = load_token(config.metrics_token_file) if config.metrics_token_file is not None else None
        self.separate = config.metrics_host_port is not None
        self.open = config.metrics_open
        self.before_render: Callable[[], Awaitable[None]] | None = None  # values read at scrape time (app.py)

    async def handle(self, request: web.Request) -> web.Response:
        if self.token is not None:
            if not _bearer_matches(request, self.token):
                return web.Response(status=401, text="/metrics needs the bearer token of [metrics] token_file\n",
                                    headers={"WWW-Authenticate": REALM})
        elif not self.separate and not self.open:
            return web.Response(status=403, text="/metrics is not public on this broker: set [metrics] token_file "
                                "(a bearer token) or [metrics] listen (a listener of its own), or [metrics] public = "
                                "true\n")
        if self.before_render is not None:
            await self.before_render()
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    def add_main_route(self, app: web.Application) -> None:
        """/metrics on the main listener, unless it has a listener of its own."""
        if not self.separate:
            app.router.add_get("/metrics", self.handle)

    def listener_app(self) -> web.Application:
        """The separate listener's application: /metrics only."""
        app = web.Application(client_max_size=1024)
        app.router.add_get("/metrics", self.handle)
        return app
