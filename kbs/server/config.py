"""`kbs serve` configuration: a TOML file, every key optional, flags override.

    listen = "127.0.0.1:8080"           # HOST:PORT
    state_dir = ".kbs-state"            # SQLite database (kbs.sqlite3) and dev-mode keys live here
    database_url = ""                   # sqlite:///path/to/kbs.sqlite3; default: <state_dir>/kbs.sqlite3
    kek_file = ""                       # 32 raw bytes or 64 hex chars; default <state_dir>/kek in dev mode
    kek_credential = "kbs-kek"          # systemd credential name, preferred when $CREDENTIALS_DIRECTORY has it
    dev_mode = true                     # generate the KEK and an admin key on first start (never in production)

    [session]  lifetime_seconds = 300   # /auth -> /attest window (the nonce's life)
    [token]    lifetime_seconds = 300   # the EAR attestation token's life
    [limits]   max_body_bytes = 2097152, request_timeout_seconds = 30, verify_threads = 0 (0: one per core),
               key_tables = 256 (cached per-key P-384 tables, 24 KB each),
               attestation_retention_days = 30 (stored claims kept for dry-runs)

    [[admin.keys]]                      # who may use the admin API
    name = "ops"; public_key = "/etc/kbs/ops.pub.pem"; role = "admin"   # role: admin or auditor

    [trust]    snp_roots = []           # PEM ARKs replacing the pinned AMD roots (labs, tests only)
    [kds]      url = "https://kdsintf.amd.com", cache_dir = "<state_dir>/kds", offline = false

Unknown keys are refused with their name, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from kbs.errors import KbsError

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
    key_tables: int = 256
    attestation_retention_days: int = 30
    admin_keys: tuple[AdminKey, ...] = ()
    snp_roots: tuple[Path, ...] = ()
    kds_url: str = "https://kdsintf.amd.com"
    kds_cache_dir: Path | None = None
    kds_offline: bool = False

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"listen must be HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)

    @property
    def database_path(self) -> Path:
        if self.database_url:
            if not self.database_url.startswith("sqlite:///"):
                raise ConfigError(f"database_url {self.database_url!r}: only sqlite:///PATH is supported so far")
            return Path(self.database_url.removeprefix("sqlite://"))
        return self.state_dir / "kbs.sqlite3"

    @property
    def kek_path(self) -> Path:
        return self.kek_file or self.state_dir / "kek"

    @property
    def dev_admin_key(self) -> Path:
        return self.state_dir / "admin-key.pem"

    @property
    def kds_cache(self) -> Path:
        return self.kds_cache_dir or self.state_dir / "kds"


_SECTIONS: dict[str, dict[str, str]] = {
    "": {"listen": "listen", "state_dir": "state_dir", "database_url": "database_url", "kek_file": "kek_file",
         "kek_credential": "kek_credential", "dev_mode": "dev_mode"},
    "session": {"lifetime_seconds": "session_lifetime"},
    "token": {"lifetime_seconds": "token_lifetime"},
    "limits": {"max_body_bytes": "max_body_bytes", "request_timeout_seconds": "request_timeout",
               "verify_threads": "verify_threads", "key_tables": "key_tables",
               "attestation_retention_days": "attestation_retention_days"},
    "trust": {"snp_roots": "snp_roots"},
    "kds": {"url": "kds_url", "cache_dir": "kds_cache_dir", "offline": "kds_offline"},
}
_TYPES = {f.name: f.type for f in fields(Config)}


def _convert(name: str, value: Any, where: str) -> Any:
    kind = str(_TYPES[name])
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


def parse_config(document: dict[str, Any], base: Config | None = None) -> Config:
    values: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict) and key in _SECTIONS and key:
            for sub, sub_value in value.items():
                if sub not in _SECTIONS[key]:
                    raise ConfigError(f"unknown configuration key [{key}] {sub}")
                name = _SECTIONS[key][sub]
                values[name] = _convert(name, sub_value, f"[{key}] {sub}")
        elif key == "admin":
            values["admin_keys"] = _admin_keys(value)
        elif key in _SECTIONS[""]:
            values[_SECTIONS[""][key]] = _convert(_SECTIONS[""][key], value, key)
        else:
            raise ConfigError(f"unknown configuration key {key}")
    config = replace(base or Config(), **values)
    config.host_port  # noqa: B018 - validates listen now, not at bind time
    return config


def _admin_keys(section: Any) -> tuple[AdminKey, ...]:
    if not isinstance(section, dict) or set(section) - {"keys"}:
        raise ConfigError("[admin] holds only a `keys` list of {name, public_key, role}")
    keys = []
    for i, entry in enumerate(section.get("keys", [])):
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
