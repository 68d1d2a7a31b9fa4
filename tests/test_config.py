"""`kbs serve` configuration: defaults, every section, and refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbs.server.config import Config, ConfigError, load_config, parse_config
from kbs.server.tls import check_listen, is_loopback


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
attestation_retention_days = 7
[verifiers]
enabled = ["snp", "sample"]
[verifiers.snp]
trust_roots = ["/etc/kbs/ark.pem"]
kds_url = "http://kds.internal"
offline = true
key_tables = 8
[[admin.keys]]
name = "ops"
public_key = "/etc/kbs/ops.pub"
role = "auditor"
''')
    config = load_config(path)
    assert not config.dev_mode  # a config file means production unless it says otherwise
    assert config.host_port == ("::1", 9443) and config.database_path == Path("/srv/kbs.db")
    assert (config.session_lifetime, config.token_lifetime, config.request_timeout) == (120, 60, 5.0)
    assert (config.verify_threads, config.attestation_retention_days) == (2, 7)
    assert config.enabled_tees == ("snp", "sample") and not config.warnings
    assert config.verifier_tables == {"snp": {"trust_roots": ["/etc/kbs/ark.pem"], "kds_url": "http://kds.internal",
                                              "offline": True, "key_tables": 8}}
    assert config.admin_keys[0].role == "auditor" and config.kek_path == Path("/etc/kbs/kek")


@pytest.mark.parametrize(("document", "message"), [
    ({"lisen": "x"}, "unknown configuration key lisen"),
    ({"session": {"lifetime": 5}}, "unknown configuration key [session] lifetime"),
    ({"session": {"lifetime_seconds": "5"}}, "[session] lifetime_seconds must be int"),
    ({"session": {"lifetime_seconds": True}}, "must be int"),
    ({"limits": {"verify_threads": 1.5}}, "must be an integer"),
    ({"listen": "localhost"}, "listen must be HOST:PORT"),
    ({"listen": "127.0.0.1:99999"}, "listen must be HOST:PORT"),
    ({"trust": {"arks": ["a.pem"]}}, "unknown configuration key [trust] arks"),
    ({"verifiers": {"enabled": "snp"}}, "must be a list of TEE names"),
    ({"trust": {"snp_roots": ["a"]}, "verifiers": {"snp": {"trust_roots": ["b"]}}},
     "[trust] snp_roots and [verifiers.snp] trust_roots are both set"),
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


def test_tls_and_admin_token_keys(tmp_path: Path) -> None:
    path = tmp_path / "kbs.toml"
    path.write_text('''
listen = "0.0.0.0:8443"
insecure_http = false
[tls]
certificate = "/etc/kbs/tls/cert.pem"
private_key = "/etc/kbs/tls/key.pem"
private_key_credential = "tls-key"
client_ca = "/etc/kbs/tls/admin-ca.pem"
[admin]
max_token_lifetime_seconds = 300
audience = "kbs-eu"
require_jti = false
[[admin.keys]]
name = "ops"
public_key = "/etc/kbs/ops.pub"
role = "admin"
''')
    config = load_config(path)
    assert config.tls_certificate == Path("/etc/kbs/tls/cert.pem") and config.tls_private_key_credential == "tls-key"
    assert config.tls_private_key == Path("/etc/kbs/tls/key.pem")
    assert config.tls_client_ca == Path("/etc/kbs/tls/admin-ca.pem") and not config.insecure_http
    assert (config.admin_max_token_lifetime, config.admin_audience, config.admin_require_jti) == (300, "kbs-eu", False)
    assert [k.name for k in config.admin_keys] == ["ops"]
    defaults = Config()
    assert defaults.tls_certificate is None and not defaults.insecure_http
    assert defaults.admin_max_token_lifetime == 900 and defaults.admin_audience == "KBS" and defaults.admin_require_jti


@pytest.mark.parametrize(("document", "message"), [
    ({"tls": {"private_key": "k.pem"}}, "[tls] private_key is set but [tls] certificate is not"),
    ({"tls": {"client_ca": "ca.pem"}}, "[tls] client_ca is set but [tls] certificate is not"),
    ({"tls": {"cert": "c.pem"}}, "unknown configuration key [tls] cert"),
    ({"tls": {"certificate": 5}}, "[tls] certificate must be a path string"),
    ({"insecure_http": "yes"}, "insecure_http must be bool"),
    ({"admin": {"max_token_lifetime_seconds": 0}}, "max_token_lifetime_seconds must be 1 or more"),
    ({"admin": {"max_token_lifetime_seconds": "900"}}, "[admin] max_token_lifetime_seconds must be int"),
    ({"admin": {"audience": ""}}, "[admin] audience must not be empty"),
    ({"admin": {"require_jti": 1}}, "[admin] require_jti must be bool"),
    ({"admin": {"token_ttl": 5}}, "unknown configuration key [admin] token_ttl"),
    ({"admin": {"keys": {"name": "x"}}}, "[admin] keys must be a list"),
])
def test_bad_tls_and_admin_keys_named(document: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    assert message in str(info.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST",
                                  "::ffff:127.0.0.1"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.1", "192.168.1.10", "fe80::1", "kbs.example.com",
                                  "localhost.example.com"])
def test_non_loopback_hosts(host: str) -> None:
    assert not is_loopback(host)


def test_plain_http_only_on_loopback() -> None:
    check_listen(Config())  # `make serve`: dev mode on 127.0.0.1:8080, no configuration, as before
    check_listen(Config(listen="localhost:8080"))
    check_listen(Config(listen="[::1]:8080"))
    with pytest.raises(ConfigError) as info:
        check_listen(Config(listen="0.0.0.0:8080"))
    assert "refusing to serve plain HTTP on 0.0.0.0:8080" in str(info.value)
    assert "insecure_http = true" in str(info.value) and "[tls] certificate" in str(info.value)
    check_listen(Config(listen="0.0.0.0:8080", insecure_http=True))
    check_listen(Config(listen="0.0.0.0:8443", tls_certificate=Path("cert.pem")))


def test_keys_moved_into_verifiers_snp_still_work_with_a_warning() -> None:
    """[trust] snp_roots, [kds] * and [limits] key_tables moved into [verifiers.snp] (issue 9)."""
    config = parse_config({"trust": {"snp_roots": ["/a.pem"]}, "limits": {"key_tables": 4},
                           "kds": {"url": "http://k", "offline": True, "cache_dir": "/c", "rate_per_second": 2,
                                   "burst": 3, "negative_ttl_seconds": 9}})
    assert config.verifier_tables == {"snp": {"trust_roots": ["/a.pem"], "key_tables": 4, "kds_url": "http://k",
                                              "offline": True, "cache_dir": "/c", "rate_per_second": 2, "burst": 3,
                                              "negative_ttl_seconds": 9}}
    assert "[kds] url is deprecated: write [verifiers.snp] kds_url" in config.warnings
    assert len(config.warnings) == 8


def test_verifier_tables_are_checked_by_their_verifier() -> None:
    """The server does not know a verifier's keys: the registry hands each enabled verifier its table (a
    disabled one's is checked by name only, so as not to import it: tests/test_verifier_imports.py)."""
    from kbs.evidence.base import VerifierConfigError, VerifierContext
    from kbs.evidence.registry import KNOWN, VerifierRegistry

    context = VerifierContext()
    for tables, message in (({"snp": {"allowed_vmpl": [0]}}, "unknown configuration key [verifiers.snp] allowed_vmpl"),
                            ({"snp": {"allowed_vmpls": []}}, "allowed_vmpls must be a non-empty list of 0..3"),
                            ({"snp": {"offline": "yes"}}, "[verifiers.snp] offline must be like False"),
                            ({"tdx-typo": {}}, "unknown TEE(s) 'tdx-typo'"),
                            ({"snp": {"key_tables": 0}}, "[verifiers.snp] key_tables must be at least 1, got 0"),
                            ({"tdx": {"key_tables": 0}}, "[verifiers.tdx] key_tables must be at least 1, got 0"),
                            ({"tdx": {"rate_per_second": -1}}, "[verifiers.tdx] rate_per_second must be at least 0"),
                            ({"snp": {"negative_ttl_seconds": -5}}, "negative_ttl_seconds must be at least 0"),
                            ({"tdx": {"trust_roots": ["/nonexistent.pem"]}},
                             "[verifiers.tdx] trust_roots: cannot read /nonexistent.pem"),
                            ({"tdx": {"collateral_dir": "/nonexistent"}}, "[verifiers.tdx] collateral_dir"),
                            ({"sample": {"x": 1}}, "unknown configuration key [verifiers.sample] x")):
        with pytest.raises(VerifierConfigError) as info:
            VerifierRegistry.from_config(sorted({"snp", *tables} & set(KNOWN)), tables, context)
        assert message in str(info.value)
