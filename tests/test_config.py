"""`kbs serve` configuration: defaults, every section, and refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbs.server.config import Config, ConfigError, load_config, parse_config


def test_defaults_are_dev_mode_on_loopback() -> None:
    config = Config()
    assert config.host_port == ("127.0.0.1", 8080) and config.dev_mode
    assert config.database_path == Path(".kbs-state/kbs.sqlite3") and config.kek_path == Path(".kbs-state/kek")


def test_every_section_parses(tmp_path: Path) -> None:
    path = tmp_path / "kbs.toml"
    path.write_text('''
listen = "[::1]:9443"
state_dir = "/var/lib/kbs"
database_url = "sqlite:///srv/kbs.db"
kek_file = "/etc/kbs/kek"
[session]
lifetime_seconds = 120
[token]
lifetime_seconds = 60
[limits]
max_body_bytes = 1024
request_timeout_seconds = 5
verify_threads = 2
key_tables = 8
attestation_retention_days = 7
[trust]
snp_roots = ["/etc/kbs/ark.pem"]
[kds]
url = "http://kds.internal"
offline = true
[[admin.keys]]
name = "ops"
public_key = "/etc/kbs/ops.pub"
role = "auditor"
''')
    config = load_config(path)
    assert not config.dev_mode  # a config file means production unless it says otherwise
    assert config.host_port == ("::1", 9443) and config.database_path == Path("/srv/kbs.db")
    assert (config.session_lifetime, config.token_lifetime, config.request_timeout) == (120, 60, 5.0)
    assert (config.verify_threads, config.key_tables, config.attestation_retention_days) == (2, 8, 7)
    assert config.snp_roots == (Path("/etc/kbs/ark.pem"),) and config.kds_offline
    assert config.admin_keys[0].role == "auditor" and config.kek_path == Path("/etc/kbs/kek")


@pytest.mark.parametrize(("document", "message"), [
    ({"lisen": "x"}, "unknown configuration key lisen"),
    ({"session": {"lifetime": 5}}, "unknown configuration key [session] lifetime"),
    ({"session": {"lifetime_seconds": "5"}}, "[session] lifetime_seconds must be int"),
    ({"session": {"lifetime_seconds": True}}, "must be int"),
    ({"limits": {"verify_threads": 1.5}}, "must be an integer"),
    ({"listen": "localhost"}, "listen must be HOST:PORT"),
    ({"listen": "127.0.0.1:99999"}, "listen must be HOST:PORT"),
    ({"trust": {"snp_roots": "a.pem"}}, "must be a list of paths"),
    ({"admin": {"keys": [{"name": "x", "public_key": "k", "role": "root"}]}}, "is not one of"),
    ({"admin": {"keys": [{"name": "x"}]}}, "must have exactly name, public_key and role"),
    ({"database_url": "postgresql://db/kbs"}, None),
])
def test_bad_configuration_named(document: dict[str, object], message: str | None) -> None:
    if message is None:  # accepted at load, refused where it is used
        with pytest.raises(ConfigError, match="only sqlite"):
            _ = parse_config(document).database_path
        return
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    assert message in str(info.value)


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("listen = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
