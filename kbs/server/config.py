"""`kbs serve` configuration: a TOML file, every key optional, flags override.

    listen = "127.0.0.1:8080"           # HOST:PORT
    state_dir = ".kbs-state"            # SQLite database (kbs.sqlite3) and dev-mode keys live here
    database_url = ""                   # sqlite:///path/to/kbs.sqlite3 (default: <state_dir>/kbs.sqlite3), or
                                        # postgresql://user@host:5432/kbs for replicas on several hosts
    kek_file = ""                       # 32 raw bytes or 64 hex chars; default <state_dir>/kek in dev mode
    kek_credential = "kbs-kek"          # systemd credential name, preferred when $CREDENTIALS_DIRECTORY has it
    dev_mode = true                     # generate the KEK and an admin key on first start (never in production)
    insecure_http = false               # allow plain HTTP on a non-loopback `listen` (TLS terminated in front)

    [server]   workers = 0              # worker processes sharing `listen` (one accept queue); 0: one per core
               pin_workers = true       # each worker on a CPU of its own, when there are as many CPUs as workers

    [session]  lifetime_seconds = 300   # /auth -> /attest window (the nonce's life)
    [token]    lifetime_seconds = 300   # the EAR attestation token's life
    [limits]   max_body_bytes = 2097152, request_timeout_seconds = 30, verify_threads = 0 (0: one per core),
               attestation_retention_days = 30, refusal_retention_days = 30, max_attest_body_bytes,
               max_claims_bytes, token_cache_bytes, session_cache_bytes, max_connections, max_connections_per_client,
               header_timeout_seconds, auth_per_second, attest_per_second, resource_per_second, rate_burst,
               max_in_flight = 64 (requests in flight per worker; beyond it 503 with Retry-After)
    [policy]   rego_workers = 2, rego_timeout_seconds = 2, rego_memory_mb = 512
    [metrics]  listen = ""              # HOST:PORT (or a bare PORT: loopback) of a listener serving /metrics alone;
                                        # the main listener then has no /metrics.  Same TLS as the main one.
               token_file = ""          # a file holding a bearer token (16-4096 printable characters, mode 0600):
                                        # /metrics answers 401 without `Authorization: Bearer <token>`
               public = <dev_mode>      # /metrics without a token on the main listener (default only in dev mode;
                                        # in production it answers 403 until listen or token_file is set)

    [log]      origin = ""              # the checkpoints' origin line and the log key's name (default: derived from
                                        # the log key, the same on every replica); e.g. kbs.example.com/kbs/v0/log
               read = "public"          # the log under /kbs/v0/log/: "public", or "auditor" (an admin token)
               checkpoint_seconds = 5   # a new signed checkpoint at most this often while entries arrive
               witness_hook = ""        # an executable (the note on stdin) or an http(s) URL (POSTed the note),
                                        # called with each new checkpoint: publish it elsewhere

    [[admin.keys]]                      # who may use the admin API
    name = "ops"; public_key = "/etc/kbs/ops.pub.pem"; role = "admin"   # role: admin or auditor
    [admin]    max_token_lifetime_seconds = 900, audience = "KBS", require_jti = true   # admin JWT rules

    [tls]      certificate = PATH, private_key = PATH (or the systemd credential private_key_credential =
               "kbs-tls-key"), client_ca = PATH (optional: admin API needs a client certificate); see tls.py

    [verifiers]      enabled = ["snp", "tdx"]  # default; dev mode adds "sample"; GPU verifiers ("nvgpu") too
    [verifiers.snp]  trust_roots = [], kds_url, cache_dir = "<state_dir>/kds", offline = false,
                     rate_per_second, burst, negative_ttl_seconds, key_tables = 256, allowed_vmpls = [0]
                     (each enabled verifier checks its own table, kbs.evidence.<tee>; a disabled one's table
                     is checked by name only, so a worker imports only the verifiers it enables:
                     kbs.evidence.registry)
    [trust] snp_roots, [kds] *, [limits] key_tables: moved into [verifiers.snp]; still read, with a warning

Unknown keys are refused with their name, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kbs.errors import KbsError
from kbs.evidence.registry import DEFAULT_ENABLED, DEV_ENABLED, MOVED_KEYS_TEE

ROLES = ("admin", "auditor")


class ConfigError(KbsError):
    check = "config"


@dataclass(frozen=True)
class AdminKey:
    name: str
    public_key: Path
    role: str


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:8080"
    state_dir: Path = Path(".kbs-state")
    database_url: str = ""
    kek_file: Path | None = None
    kek_credential: str = "kbs-kek"
    dev_mode: bool = True
    session_lifetime: int = 300
    token_lifetime: int = 300
    max_body_bytes: int = 2 * 1024 * 1024
    request_timeout: float = 30.0
    verify_threads: int = 0
    attestation_retention_days: int = 30
    max_attest_body_bytes: int = 1024 * 1024
    max_claims_bytes: int = 128 * 1024
    token_cache_bytes: int = 2 * 1024 * 1024
    session_cache_bytes: int = 512 * 1024
    refusal_retention_days: int = 30
    max_connections: int = 256  # per worker process: with max_in_flight, what bounds a worker's memory
    max_connections_per_client: int = 32
    header_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    auth_rate: float = 10.0
    attest_rate: float = 10.0
    resource_rate: float = 50.0
    rate_burst: int = 20
    max_in_flight: int = 64  # per worker process (kbs.server.admission); see the README on a storm's memory
    workers: int = 0  # 0: one per core (kbs.server.workers)
    pin_workers: bool = True  # each worker on a CPU of its own when there are as many CPUs as workers (kbs.cpus)
    admin_keys: tuple[AdminKey, ...] = ()
    verifiers_enabled: tuple[str, ...] | None = None  # None: snp, plus sample in dev mode
    # [verifiers.<tee>] tables as written: each verifier validates its own (kbs.evidence.registry)
    verifier_tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    rego_workers: int = 2
    rego_timeout: float = 2.0
    rego_memory_mb: int = 512
    insecure_http: bool = False  # plain HTTP on a non-loopback address (kbs.server.tls.check_listen)
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_private_key_credential: str = "kbs-tls-key"
    tls_client_ca: Path | None = None
    admin_max_token_lifetime: int = 900
    admin_audience: str = "KBS"
    admin_require_jti: bool = True
    metrics_listen: str = ""  # [metrics]: kbs.server.metrics_access
    metrics_token_file: Path | None = None
    metrics_public: bool | None = None  # None: as dev_mode
    log_origin: str = ""  # [log]: kbs.server.tlog
    log_read: str = "public"
    log_checkpoint_seconds: float = 5.0
    log_witness_hook: str = ""
    warnings: tuple[str, ...] = ()  # deprecated keys seen; logged at start

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"listen must be HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        """[metrics] listen as (host, port); a bare port is loopback.  None: no separate listener."""
        if not self.metrics_listen:
            return None
        if self.metrics_listen.isdigit():
            host, port = "127.0.0.1", self.metrics_listen
        else:
            host, _, port = self.metrics_listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"[metrics] listen must be HOST:PORT or PORT, got {self.metrics_listen!r}")
        return host.strip("[]"), int(port)

    @property
    def metrics_open(self) -> bool:
        """/metrics answers without a token on the main listener ([metrics] public; by default in dev mode only)."""
        return self.dev_mode if self.metrics_public is None else self.metrics_public

    @property
    def database_kind(self) -> str:
        """"sqlite" or "postgresql", from database_url's scheme (SQLite when it is empty)."""
        url = self.database_url
        if not url or url.startswith("sqlite:///"):
            return "sqlite"
        if url.startswith(("postgresql://", "postgres://")):
            return "postgresql"
        scheme = url.partition(":")[0]  # not the whole URL: it may hold a password
        raise ConfigError(f"database_url with scheme {scheme!r}: use sqlite:///PATH or "
                          "postgresql://USER@HOST[:PORT]/DATABASE")

    @property
    def database(self) -> Path | str:
        """What kbs.store.open_store opens: the SQLite file's path, or the PostgreSQL URL as written."""
        return self.database_path if self.database_kind == "sqlite" else self.database_url

    @property
    def database_path(self) -> Path:
        if self.database_kind != "sqlite":
            raise ConfigError("database_url names a PostgreSQL database, not a file: only sqlite:///PATH has a path")
        if self.database_url:
            return Path(self.database_url.removeprefix("sqlite://"))
        return self.state_dir / "kbs.sqlite3"

    @property
    def kek_path(self) -> Path:
        return self.kek_file or self.state_dir / "kek"

    @property
    def dev_admin_key(self) -> Path:
        return self.state_dir / "admin-key.pem"

    @property
    def enabled_tees(self) -> tuple[str, ...]:
        """`sample` has no hardware behind it: only in dev mode, or when enabled explicitly."""
        if self.verifiers_enabled is not None:
            return self.verifiers_enabled
        return DEV_ENABLED if self.dev_mode else DEFAULT_ENABLED


_SECTIONS: dict[str, dict[str, str]] = {
    "": {"listen": "listen", "state_dir": "state_dir", "database_url": "database_url", "kek_file": "kek_file",
         "kek_credential": "kek_credential", "dev_mode": "dev_mode", "insecure_http": "insecure_http"},
    "session": {"lifetime_seconds": "session_lifetime"},
    "token": {"lifetime_seconds": "token_lifetime"},
    "limits": {"max_body_bytes": "max_body_bytes", "request_timeout_seconds": "request_timeout",
               "verify_threads": "verify_threads",
               "attestation_retention_days": "attestation_retention_days",
               "max_attest_body_bytes": "max_attest_body_bytes", "max_claims_bytes": "max_claims_bytes",
               "token_cache_bytes": "token_cache_bytes", "session_cache_bytes": "session_cache_bytes",
               "refusal_retention_days": "refusal_retention_days",
               "max_connections": "max_connections", "max_connections_per_client": "max_connections_per_client",
               "header_timeout_seconds": "header_timeout", "keepalive_timeout_seconds": "keepalive_timeout",
               "auth_per_second": "auth_rate", "attest_per_second": "attest_rate",
               "resource_per_second": "resource_rate", "rate_burst": "rate_burst",
               "max_in_flight": "max_in_flight"},
    "server": {"workers": "workers", "pin_workers": "pin_workers"},
    "verifiers": {"enabled": "verifiers_enabled"},
    "policy": {"rego_workers": "rego_workers", "rego_timeout_seconds": "rego_timeout",
               "rego_memory_mb": "rego_memory_mb"},
    "metrics": {"listen": "metrics_listen", "token_file": "metrics_token_file", "public": "metrics_public"},
    "log": {"origin": "log_origin", "read": "log_read", "checkpoint_seconds": "log_checkpoint_seconds",
            "witness_hook": "log_witness_hook"},
    "tls": {"certificate": "tls_certificate", "private_key": "tls_private_key",
            "private_key_credential": "tls_private_key_credential", "client_ca": "tls_client_ca"},
}
_ADMIN_OPTIONS = {"max_token_lifetime_seconds": "admin_max_token_lifetime", "audience": "admin_audience",
                  "require_jti": "admin_require_jti"}
_TYPES = {f.name: f.type for f in fields(Config)}


def _convert(name: str, value: Any, where: str) -> Any:
    kind = str(_TYPES[name])
    if name == "verifiers_enabled":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of TEE names")  # checked against the verifiers at start
        return tuple(dict.fromkeys(value))
    if name == "metrics_public" and isinstance(value, bool):
        return value
    if "Path" in kind and "tuple" in kind:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of paths")
        return tuple(Path(v) for v in value)
    if "Path" in kind:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a path string")
        return Path(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str):
        return value
    if kind in ("int", "float") and isinstance(value, int | float) and not isinstance(value, bool):
        if kind == "int" and not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return float(value) if kind == "float" else value
    raise ConfigError(f"{where} must be {kind}, got {type(value).__name__}")


# Keys that moved into [verifiers.snp] (issue 9): still read, with a warning naming the new key.
MOVED = {("trust", "snp_roots"): "trust_roots", ("kds", "url"): "kds_url", ("kds", "cache_dir"): "cache_dir",
         ("kds", "offline"): "offline", ("kds", "rate_per_second"): "rate_per_second", ("kds", "burst"): "burst",
         ("kds", "negative_ttl_seconds"): "negative_ttl_seconds", ("limits", "key_tables"): "key_tables"}
MOVED_TO = MOVED_KEYS_TEE
MOVED_SECTIONS = {section for section, _ in MOVED}


def _section_values(section: str, table: dict[str, Any], values: dict[str, Any]) -> None:
    """One table's keys into `values`; nested tables of [verifiers] are kept for their verifier."""
    known = _SECTIONS.get(section, {})
    for key, value in table.items():
        dotted = f"{section}.{key}" if section else key
        if section == "verifiers" and isinstance(value, dict):
            values.setdefault("verifier_tables", {})[key] = dict(value)
        elif isinstance(value, dict) and (dotted in _SECTIONS or dotted in MOVED_SECTIONS):
            _section_values(dotted, value, values)
        elif (section, key) in MOVED:
            values.setdefault("moved", []).append((section, key, value))
        elif dotted == "admin":
            values.update(_admin_section(value))
        elif key in known:
            values[known[key]] = _convert(known[key], value, f"[{section}] {key}" if section else key)
        else:
            raise ConfigError(f"unknown configuration key [{section}] {key}" if section
                              else f"unknown configuration key {key}")


def parse_config(document: dict[str, Any], base: Config | None = None) -> Config:
    values: dict[str, Any] = {}
    _section_values("", document, values)
    tables = {name: dict(table) for name, table in values.get("verifier_tables", {}).items()}
    warnings = []
    for section, key, value in values.pop("moved", []):
        new = MOVED[(section, key)]
        target = tables.setdefault(MOVED_TO, {})
        if new in target:
            raise ConfigError(f"[{section}] {key} and [verifiers.{MOVED_TO}] {new} are both set; keep the latter")
        target[new] = [str(v) for v in value] if isinstance(value, list) else value
        warnings.append(f"[{section}] {key} is deprecated: write [verifiers.{MOVED_TO}] {new}")
    values["verifier_tables"] = tables
    values["warnings"] = tuple(warnings)
    config = replace(base or Config(), **values)
    config.host_port  # noqa: B018 - validates listen now, not at bind time
    config.database_kind  # noqa: B018 - an unknown database_url scheme is refused at load
    _check_tls_and_admin(config)
    _check_serving(config)
    return _check_metrics(config)


def _check_serving(config: Config) -> None:
    if config.log_read not in ("public", "auditor"):
        raise ConfigError(f'[log] read must be "public" or "auditor", got {config.log_read!r}')
    if not 0.5 <= config.log_checkpoint_seconds <= 3600:
        raise ConfigError("[log] checkpoint_seconds must be between 0.5 and 3600")
    if config.log_origin and not re.fullmatch(r"[^\s+]{1,200}", config.log_origin):
        raise ConfigError("[log] origin: 1 to 200 characters, no spaces and no '+' (e.g. kbs.example.com/kbs/v0/log)")
    hook = config.log_witness_hook
    if hook and not hook.startswith(("https://", "http://")) and not Path(hook).is_absolute():
        raise ConfigError("[log] witness_hook: an absolute path to an executable, or an http(s):// URL")
    if config.workers < 0:
        raise ConfigError("[server] workers must be 0 (one per core) or more")
    if config.max_in_flight < 1:
        raise ConfigError("[limits] max_in_flight must be 1 or more")


def _check_metrics(config: Config) -> Config:
    """[metrics]: a listener apart from the main one, and not both a token and `public`; a warning when metrics
    (or their token) would cross the network in clear or unauthenticated."""
    where = config.metrics_host_port
    if config.metrics_token_file is not None and config.metrics_public:
        raise ConfigError("[metrics] public = true and [metrics] token_file are both set: with a token, /metrics "
                          "is not public; remove one")
    if where is None:
        return config
    if where[1] != 0 and where == config.host_port:
        raise ConfigError(f"[metrics] listen {config.metrics_listen!r} is the main listen address; give another "
                          "port, or leave it empty to serve /metrics on the main listener")
    from kbs.server.tls import is_loopback  # tls imports this module

    if is_loopback(where[0]) or (config.metrics_token_file is not None and config.tls_certificate is not None):
        return config
    return replace(config, warnings=(*config.warnings, f"[metrics] listen {config.metrics_listen!r} is not loopback "
                                     "and has no token or no TLS: anyone who reaches it reads the metrics (set "
                                     "[metrics] token_file and [tls], or firewall the port)"))


def _check_tls_and_admin(config: Config) -> None:
    """What can be judged without the files (those are read at start, kbs.server.tls)."""
    if config.tls_certificate is None:
        for name, value in (("private_key", config.tls_private_key), ("client_ca", config.tls_client_ca)):
            if value is not None:
                raise ConfigError(f"[tls] {name} is set but [tls] certificate is not")
    if config.admin_max_token_lifetime < 1:
        raise ConfigError("[admin] max_token_lifetime_seconds must be 1 or more")
    if not config.admin_audience:
        raise ConfigError("[admin] audience must not be empty")


def _admin_section(section: Any) -> dict[str, Any]:
    """[admin]: the `keys` list and the admin token rules."""
    if not isinstance(section, dict):
        raise ConfigError("[admin] must be a table (keys, max_token_lifetime_seconds, audience, require_jti)")
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key == "keys":
            values["admin_keys"] = _admin_keys(value)
        elif key in _ADMIN_OPTIONS:
            values[_ADMIN_OPTIONS[key]] = _convert(_ADMIN_OPTIONS[key], value, f"[admin] {key}")
        else:
            raise ConfigError(f"unknown configuration key [admin] {key}")
    return values


def _admin_keys(entries: Any) -> tuple[AdminKey, ...]:
    if not isinstance(entries, list):
        raise ConfigError("[admin] keys must be a list of {name, public_key, role} ([[admin.keys]])")
    keys = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"name", "public_key", "role"}:
            raise ConfigError(f"[[admin.keys]] entry {i} must have exactly name, public_key and role")
        if entry["role"] not in ROLES:
            raise ConfigError(f"[[admin.keys]] {entry['name']}: role {entry['role']!r} is not one of {ROLES}")
        keys.append(AdminKey(str(entry["name"]), Path(entry["public_key"]), entry["role"]))
    return tuple(keys)


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration {path} is not valid TOML: {exc}") from exc
    # A config file means production unless it says otherwise.
    return parse_config(document, Config(dev_mode=False))
