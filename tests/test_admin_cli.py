"""The operator verbs (kbs.admin_cli over kbs.admin_client) against a real `kbs serve`: each verb's effect is checked
through the admin API, refusals exit 1 with the broker's detail, local problems exit 2, and key
material never reaches the terminal."""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import importlib.metadata
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kbs.admin_cli import add_admin_parsers, add_remote_policy_verbs
from kbs.admin_client import AdminClient, AdminError
from kbs.cli import _parser as cli_parser
from kbs.cli import main
from kbs.evidence.snp.measure import REFERENCE_SET
from kbs.keys.jwe import generate_tee_key
from kbs.server.protocol import ATTESTATION_ID_CLAIM
from kbs.trust.amd.certs import PINNED_ARKS
from kbs.trust.intel.certs import ROOT_CA_SHA256
from tests.broker import Broker, attest, attestation, auth, free_port, full_flow, jar, run_broker
from tests.test_server_e2e import admin

SECRET = b"operator-secret:" + bytes(range(40))
SAMPLE_POLICY = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
    {"claim": "sample.svn", "equals": "1"}]}]})
BAD_POLICY = '{"version": "1.0.0",\n "anyOf": [{"authority": "local:sample", "allOf": [{"claim": "x", "bogus": 1}]}]}'


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def parser() -> argparse.ArgumentParser:
    """kbs.cli's own parser with the admin verbs hooked in as kbs/cli.py will (unless it already does)."""
    parser = cli_parser()
    commands = _subparsers(parser)
    if "key" not in commands.choices:
        add_admin_parsers(commands)
    policy_verbs = _subparsers(commands.choices["policy"])
    if "put" not in policy_verbs.choices:
        add_remote_policy_verbs(policy_verbs)
    return parser


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with run_broker(tmp_path_factory.mktemp("admin-cli")) as b:
        yield b


class Kbs:
    """Runs `kbs ARGS --url ... --admin-key ...` in-process; returns (exit code, stdout, stderr)."""

    def __init__(self, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
        self.broker, self.capsys = broker, capsys
        self.outputs: list[str] = []

    def __call__(self, *argv: str, key: Path | None = None, url: str | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        args = parser().parse_args([*argv, "--url", url or self.broker.url,
                                    "--admin-key", str(key or self.broker.state_dir / "admin-key.pem")])
        code: int = args.func(args)
        out, err = self.capsys.readouterr()
        self.outputs.append(out + err)
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def kbs(broker: Broker, capsys: pytest.CaptureFixture[str]) -> Kbs:
    return Kbs(broker, capsys)


def versions(kbs: Kbs, path: str) -> list[tuple[int, str, str]]:
    keys = kbs.json("key", "list")
    return [(v["version"], v["state"], v["policy_id"]) for k in keys if k["path"] == path for v in k["versions"]]


def write(tmp_path: Path, name: str, data: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def test_key_verbs_change_the_key_list(kbs: Kbs, tmp_path: Path) -> None:
    secret = write(tmp_path, "secret.bin", SECRET)
    code, out, _ = kbs("key", "create", "ops/key/disk", "--from-file", secret)
    assert code == 0 and "ops/key/disk: version 1 stored, bound to policy 'default'" in out
    assert versions(kbs, "ops/key/disk") == [(1, "active", "default")]
    assert kbs("key", "import", "ops/key/imported", "--from-file", secret)[0] == 0
    assert versions(kbs, "ops/key/imported") == [(1, "active", "default")]

    assert kbs("key", "create", "ops/key/gen", "--generate", "--size", "48")[0] == 0
    assert kbs("key", "rotate", "ops/key/gen")[0] == 0
    assert versions(kbs, "ops/key/gen") == [(1, "disabled", "default"), (2, "active", "default")]
    code, _, err = kbs("key", "rotate", "ops/key/typo")  # a typo never creates a key
    assert code == 1 and "no key ops/key/typo to rotate" in err, err
    assert versions(kbs, "ops/key/typo") == []
    assert kbs("key", "rotate", "kbs:///ops/key/gen")[0] == 0  # the form kbs-guest and CoCo's CDH take
    assert [v for v, _, _ in versions(kbs, "ops/key/gen")] == [1, 2, 3]
    code, _, err = kbs("key", "rotate", "https://ops/key/gen")
    assert code == 2 and "kbs:///<repo>/<type>/<tag>" in err, err
    assert kbs("key", "rotate", "ops/key/gen", "--size", "32")[0] == 0
    code, out, _ = kbs("key", "disable", "ops/key/gen")
    assert code == 0 and "latest version disabled" in out
    assert {s for _, s, _ in versions(kbs, "ops/key/gen")} == {"disabled"}
    assert kbs("key", "enable", "ops/key/gen", "--version", "1")[0] == 0
    assert [s for _, s, _ in versions(kbs, "ops/key/gen")] == ["active", "disabled", "disabled", "disabled"]

    assert kbs("policy", "put", "ops-sample", write(tmp_path, "p.json", SAMPLE_POLICY))[0] == 0
    assert kbs("key", "bind", "ops/key/gen", "--policy", "ops-sample")[0] == 0
    assert {p for _, _, p in versions(kbs, "ops/key/gen")} == {"ops-sample"}
    code, _, err = kbs("key", "bind", "ops/key/gen", "--policy", "nosuch")
    assert code == 1 and err.startswith("kbs: refused: ") and "no policy 'nosuch'" in err

    code, _, err = kbs("key", "delete", "ops/key/gen")
    assert code == 2 and "--yes" in err and versions(kbs, "ops/key/gen")
    code, out, _ = kbs("key", "delete", "ops/key/gen", "--yes")
    assert code == 0 and "deleted (4 versions)" in out and versions(kbs, "ops/key/gen") == []
    code, _, err = kbs("key", "delete", "ops/key/gen", "--yes")
    assert code == 1 and "resource not found" in err

    code, out, _ = kbs("key", "list")
    assert code == 0 and "ops/key/disk" in out and "v1   active" in out
    printed = "".join(kbs.outputs)
    for form in (SECRET, SECRET.hex().encode(), base64.b64encode(SECRET), base64.urlsafe_b64encode(SECRET)):
        assert form.decode(errors="replace") not in printed
    assert "operator-secret" not in printed


def test_key_usage_errors(kbs: Kbs, tmp_path: Path) -> None:
    assert kbs("key", "create", "not-a-path", "--generate")[0] == 2
    code, _, err = kbs("key", "create", "ops/key/x", "--from-file", str(tmp_path / "absent"))
    assert code == 2 and "cannot read key file" in err
    with pytest.raises(SystemExit) as exit_info:  # --from-file and --generate exclude each other
        kbs("key", "create", "ops/key/x", "--generate", "--from-file", "f")
    assert exit_info.value.code == 2


def test_policy_put_show_immutable(kbs: Kbs, tmp_path: Path) -> None:
    text = write(tmp_path, "p.json", SAMPLE_POLICY)
    code, out, _ = kbs("policy", "put", "lifecycle", text)
    assert code == 0 and "stored v1 (json)" in out
    assert kbs("policy", "put", "lifecycle", text)[0] == 0
    code, out, _ = kbs("policy", "show", "lifecycle")
    assert code == 0 and '"local:sample"' in out and out.count("  v") == 2
    code, out, _ = kbs("policy", "immutable", "lifecycle")
    assert code == 0 and "immutable from version 3" in out
    shown = kbs.json("policy", "show", "lifecycle")
    assert shown["current"]["immutable"] and [v["version"] for v in shown["history"]] == [1, 2, 3]
    code, _, err = kbs("policy", "put", "lifecycle", text)
    assert code == 1 and err.strip().splitlines() == [err.strip()]
    assert err.startswith("kbs: refused: ") and "immutable since version 3" in err
    assert kbs("policy", "put", "frozen", text, "--immutable")[0] == 0
    assert kbs("policy", "put", "frozen", text)[0] == 1
    assert {"lifecycle", "frozen", "default"} <= set(kbs.json("policy", "list"))
    code, _, err = kbs("policy", "show", "nosuch")
    assert code == 1 and "no such policy" in err


def test_invalid_policy_refused_with_line_and_reason(kbs: Kbs, tmp_path: Path) -> None:
    code, _, err = kbs("policy", "put", "broken", write(tmp_path, "bad.json", BAD_POLICY))
    assert code == 1 and err.startswith("kbs: refused: line 2: ") and "unknown operator 'bogus'" in err
    code, out, err = kbs("policy", "put", "broken", write(tmp_path, "bad.json", BAD_POLICY), "--json")
    assert code == 1 and json.loads(out)["error"]["check"] == "admin.400"
    assert kbs("policy", "show", "broken")[0] == 1  # nothing stored


def test_set_resource_policy_replaces_default(kbs: Kbs, tmp_path: Path) -> None:
    before = kbs.json("policy", "show", "default")["current"]
    code, out, _ = kbs("policy", "set-resource-policy", write(tmp_path, "d.json", before["text"]))
    assert code == 0 and f"stored v{before['version'] + 1}" in out
    after = kbs.json("policy", "show", "default")["current"]
    assert after["text"] == before["text"] and after["version"] == before["version"] + 1


def test_refs_put_list_delete(kbs: Kbs, tmp_path: Path) -> None:
    code, out, _ = kbs("refs", "put", "mrtds", "aa", "bb", "--expires", "2999-01-01T00:00:00Z")
    assert code == 0 and "2 values stored" in out
    body = write(tmp_path, "refs.json", json.dumps({"values": ["1", "2", "3"], "description": "svns"}))
    assert kbs("refs", "put", "svns", "--from-file", body)[0] == 0
    refs = kbs.json("refs", "list")
    assert refs["mrtds"]["values"] == ["aa", "bb"] and refs["mrtds"]["expires"].startswith("2999-01-01")
    assert refs["svns"] == {"values": ["1", "2", "3"], "description": "svns"}
    code, out, _ = kbs("refs", "list")
    assert "mrtds (expires 2999-01-01T00:00:00+00:00): aa, bb" in out

    uses = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
        {"claim": "sample.svn", "in": {"ref": "svns"}}]}]})
    assert kbs("policy", "put", "uses-svns", write(tmp_path, "u.json", uses))[0] == 0
    code, _, err = kbs("refs", "delete", "svns")
    assert code == 1 and "used by policy 'uses-svns'" in err and "svns" in kbs.json("refs", "list")
    # A policy in the way goes (with its history), unless a key is bound to it; then the set can go.
    assert kbs("key", "create", "ops/key/svn", "--generate", "--policy", "uses-svns")[0] == 0
    code, _, err = kbs("policy", "delete", "uses-svns")
    assert code == 1 and "bound to 1 key(s) (ops/key/svn)" in err, err
    assert kbs("key", "bind", "ops/key/svn", "--policy", "default")[0] == 0
    code, out, _ = kbs("policy", "delete", "uses-svns")
    assert code == 0 and "deleted (1 versions)" in out
    assert "uses-svns" not in kbs.json("policy", "list")
    assert kbs("refs", "delete", "svns")[0] == 0
    code, _, err = kbs("policy", "delete", "uses-svns")
    assert code == 1 and "no policy 'uses-svns'" in err
    code, _, err = kbs("policy", "delete", "default")
    assert code == 1 and "replace it" in err
    assert kbs("policy", "put", "frozen-del", write(tmp_path, "f.json", SAMPLE_POLICY), "--immutable")[0] == 0
    code, _, err = kbs("policy", "delete", "frozen-del")
    assert code == 1 and "immutable" in err and "frozen-del" in kbs.json("policy", "list")
    assert kbs("refs", "delete", "mrtds")[0] == 0
    assert "mrtds" not in kbs.json("refs", "list")

    # What `kbs measure snp --json` prints (a reference-values document) goes in as it is.
    measured = write(tmp_path, "measured.json", json.dumps({REFERENCE_SET: {"values": ["ab" * 48]}}))
    assert kbs("refs", "put", "launch", "--from-file", measured)[0] == 0
    assert kbs.json("refs", "list")["launch"]["values"] == ["ab" * 48]
    two = write(tmp_path, "two.json", json.dumps({"a": {"values": ["1"]}, "b": {"values": ["2"]}}))
    assert kbs("refs", "put", "b", "--from-file", two)[0] == 0 and kbs.json("refs", "list")["b"]["values"] == ["2"]
    code, _, err = kbs("refs", "put", "c", "--from-file", two)
    assert code == 2 and "holds the reference sets a, b" in err
    # add/remove change a set in one step on the broker: no lost update, no typo passing for a removal.
    code, out, _ = kbs("refs", "add", "tags", "aa", "bb")
    assert code == 0 and "'tags': 2 values" in out
    assert kbs("refs", "add", "tags", "bb", "cc")[0] == 0
    assert kbs.json("refs", "list")["tags"]["values"] == ["aa", "bb", "cc"]
    assert kbs("refs", "remove", "tags", "aa")[0] == 0
    assert kbs.json("refs", "list")["tags"]["values"] == ["bb", "cc"]
    code, _, err = kbs("refs", "remove", "tags", "zz")
    assert code == 1 and "does not hold 'zz'" in err
    code, _, err = kbs("refs", "remove", "tags", "bb", "cc")
    assert code == 1 and "delete the set instead" in err
    code, _, err = kbs("refs", "remove", "nosuch", "aa")
    assert code == 1 and "no reference set 'nosuch'" in err
    assert kbs("refs", "put", "x")[0] == 2  # no values
    assert kbs("refs", "put", "x", "--from-file", write(tmp_path, "nj", "{nope"))[0] == 2
    code, _, err = kbs("refs", "put", "x", "--from-file", write(tmp_path, "bad", '{"values": [{}]}'))
    assert code == 1 and "list of strings, numbers or booleans" in err


async def sample_attestation(url: str) -> str:
    """Run the sample-TEE /auth + /attest and return the token's attestation id (payload read unverified)."""
    key = generate_tee_key("EC-P256")
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        nonce = await auth(http, url, "sample")
        status, body = await attest(http, url, attestation(nonce, key, "sample"))
    assert status == 200, body
    attestation_id: str = jwt.decode(body["token"], options={"verify_signature": False})[ATTESTATION_ID_CLAIM]
    return attestation_id


def test_dry_run_and_attestation_show(kbs: Kbs, broker: Broker, tmp_path: Path) -> None:
    att = asyncio.run(sample_attestation(broker.url))
    code, out, err = kbs("policy", "dry-run", "default", "--attestation", att)
    assert code == 1 and out.startswith("✗") and err.strip() == "kbs: deny"
    assert kbs("policy", "put", "sample-ok", write(tmp_path, "s.json", SAMPLE_POLICY))[0] == 0
    code, out, err = kbs("policy", "dry-run", "sample-ok", "--attestation", att, "--resource", "lab/key/one")
    assert code == 0 and out.startswith("✓") and "✓" in out.splitlines()[-1] and err.strip() == "kbs: allow"
    code, out, _ = kbs("policy", "dry-run", "sample-ok", "--attestation", att, "--json")
    assert code == 0 and json.loads(out)["allow"] is True
    code, _, err = kbs("policy", "dry-run", "sample-ok", "--attestation", "0" * 32)
    assert code == 1 and "no such attestation" in err

    code, out, _ = kbs("attestation", "show", att)
    assert code == 0 and out.startswith(f"attestation {att}: tee sample")
    assert kbs.json("attestation", "show", att)["claims"][ATTESTATION_ID_CLAIM] == att


def test_release_log(kbs: Kbs, broker: Broker, tmp_path: Path) -> None:
    assert kbs("key", "create", "lab/key/logged", "--generate")[0] == 0
    status, _, _ = asyncio.run(full_flow(broker.url, "sample", "lab/key/logged"))  # default policy: deny
    assert status == 401
    entries = kbs.json("log", "--limit", "1000")
    mine = [e for e in entries if e["resource"] == "lab/key/logged"]
    assert mine and mine[-1]["decision"] == "deny" and mine[-1]["policy_id"] == "default"
    code, out, _ = kbs("log", "--after", str(mine[-1]["seq"] - 1), "--limit", "1")
    assert code == 0 and out.strip().splitlines() == [out.strip()]
    assert out.startswith(f"#{mine[-1]['seq']} ") and "deny(policy)  lab/key/logged  policy default" in out
    code, out, _ = kbs("log", "--after", str(entries[-1]["seq"]))
    assert code == 0 and "no entries after" in out
    assert any(e["decision"] == "admin" and e["reason"] == "generate_key" and e["actor"] == "dev-admin"
               and e["resource"].endswith("lab/key/logged/generate") for e in entries)
    refusals = kbs.json("log", "--refusals")
    assert all(e["decision"] in ("deny", "error") for e in refusals)


def test_log_filters(kbs: Kbs, broker: Broker) -> None:
    """`kbs log` answers "why was my VM refused?" by resource, decision, reason, TEE and time, on the broker."""
    started = dt.datetime.now(dt.UTC)
    assert kbs("key", "create", "lab/key/filtered", "--generate")[0] == 0
    for _ in range(2):
        assert asyncio.run(full_flow(broker.url, "sample", "lab/key/filtered"))[0] == 401  # default policy: deny
    mine = kbs.json("log", "--resource", "kbs:///lab/key/filtered", "--decision", "deny", "--limit", "1000")
    assert len(mine) == 2 and {(e["reason"], e["tee"]) for e in mine} == {("policy", "sample")}
    assert kbs.json("log", "--resource", "lab/key/filtered", "--reason", "disabled") == []
    assert kbs.json("log", "--resource", "lab/key/filtered", "--tee", "snp") == []
    since = kbs.json("log", "--resource", "lab/key/filtered", "--since", started.isoformat(), "--limit", "1000")
    assert [e["decision"] for e in since] == ["deny", "deny"]  # the admin change is under its URL path
    assert kbs.json("log", "--resource", "lab/key/filtered", "--until", started.isoformat()) == []
    with pytest.raises(SystemExit):
        kbs("log", "--since", "yesterday")
    status, body = asyncio.run(admin(broker, "GET", "/kbs/v0/admin/release-log?since=yesterday"))
    assert status == 400 and "RFC 3339" in body["detail"]
    status, body = asyncio.run(admin(broker, "GET", "/kbs/v0/admin/release-log?resource=" + "x" * 600))
    assert status == 400 and "at most 512 characters" in body["detail"]


def test_log_verify_reports_heads_and_checks_a_kept_head(kbs: Kbs, broker: Broker) -> None:
    assert kbs("key", "create", "lab/key/verify", "--generate")[0] == 0
    code, out, _ = kbs("log", "verify")
    assert code == 0 and "release log: entries 1.." in out and "refusal log: entries" in out
    heads = {h["chain"]: h for h in kbs.json("log", "verify")["heads"]}
    kept = f"{heads['release']['head_seq']}:{heads['release']['head_hash']}"
    assert kbs("key", "create", "lab/key/verify2", "--generate")[0] == 0  # the log grows; the kept head stays
    code, out, _ = kbs("log", "verify", "--expect", kept)
    assert code == 0 and f"first {heads['release']['head_seq']} entries still give the root you kept" in out
    code, _, err = kbs("log", "verify", "--expect", f"{heads['release']['head_seq']}:{'0' * 64}")
    assert code == 1 and "the log was rewritten or truncated" in err
    with pytest.raises(SystemExit) as usage:
        kbs("log", "verify", "--expect", "x:y")
    assert usage.value.code == 2


def test_wrong_and_missing_admin_key(kbs: Kbs, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    code, out, err = kbs("key", "create", "ops/key/evil", "--generate", key=stranger)
    assert code == 1 and out == "" and err == "kbs: refused: admin token is not signed by a configured admin key\n"
    assert versions(kbs, "ops/key/evil") == []
    code, _, err = kbs("key", "list", key=tmp_path / "absent.pem")
    assert code == 2 and "cannot read admin key" in err and "absent.pem" in err
    code, _, err = kbs("key", "list", key=Path(write(tmp_path, "junk.pem", "not a key")))
    assert code == 2 and "not an unencrypted PEM private key" in err


def test_unreachable_broker_names_the_url(kbs: Kbs) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = kbs("key", "list", url=url)
    assert code == 1 and err.startswith(f"kbs: error: cannot reach the broker at {url}")
    code, _, err = kbs("key", "list", url="127.0.0.1:8080")
    assert code == 2 and "is not a broker URL" in err


def test_defaults_from_environment(broker: Broker, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBS_URL", broker.url)
    monkeypatch.setenv("KBS_ADMIN_KEY", str(broker.state_dir / "admin-key.pem"))
    args = parser().parse_args(["policy", "list"])
    assert args.func(args) == 0 and "default" in capsys.readouterr().out
    monkeypatch.delenv("KBS_ADMIN_KEY")
    monkeypatch.chdir(broker.state_dir.parent)  # no .kbs-state here
    args = parser().parse_args(["policy", "list"])
    assert args.func(args) == 2 and ".kbs-state/admin-key.pem" in capsys.readouterr().err


def test_client_signs_short_lived_tokens(broker: Broker) -> None:
    client = AdminClient(broker.url, broker.state_dir / "admin-key.pem")
    claims = jwt.decode(client.token(), options={"verify_signature": False})
    assert 0 < claims["exp"] - claims["iat"] <= 180
    assert isinstance(client.list_keys(), list)


def test_client_tokens_carry_audience_and_a_fresh_jti(broker: Broker) -> None:
    client = AdminClient(broker.url, broker.state_dir / "admin-key.pem")
    first, second = (jwt.decode(client.token(), options={"verify_signature": False}) for _ in range(2))
    assert first["aud"] == second["aud"] == "KBS"
    assert len(first["jti"]) >= 16 and first["jti"] != second["jti"]
    other = AdminClient(broker.url, broker.state_dir / "admin-key.pem", audience="kbs-eu")
    assert jwt.decode(other.token(), options={"verify_signature": False})["aud"] == "kbs-eu"
    with pytest.raises(AdminError, match="audience 'kbs-eu'") as info:
        other.list_keys()
    assert info.value.status == 401


def test_tls_options_need_https(kbs: Kbs, broker: Broker, tmp_path: Path) -> None:
    ca = write(tmp_path, "ca.pem", "not used")
    code, _, err = kbs("key", "list", "--ca-cert", ca)
    assert code == 2 and "need an https:// broker URL" in err and broker.url in err
    code, _, err = kbs("key", "list", "--client-cert", ca)
    assert code == 2 and "need an https:// broker URL" in err


def test_plain_http_to_a_remote_broker_warns(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    AdminClient(broker.url, broker.state_dir / "admin-key.pem")
    assert capsys.readouterr().err == ""  # loopback: dev mode, no warning
    AdminClient("http://kbs.example.com:8080", broker.state_dir / "admin-key.pem")
    err = capsys.readouterr().err
    assert err.startswith("kbs: warning: http://kbs.example.com:8080 is plain HTTP") and "https://" in err


def test_connection_flags_go_before_or_after_the_verb(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    key = str(broker.state_dir / "admin-key.pem")
    assert main(["--url", broker.url, "--admin-key", key, "key", "list", "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)
    # After the verb wins; an absent flag after the verb leaves the one before it alone.
    assert main(["--url", "http://127.0.0.1:9", "--admin-key", key, "key", "list", "--url", broker.url]) == 0
    assert main(["--url", "http://127.0.0.1:9", "--admin-key", key, "key", "list"]) == 1
    assert "127.0.0.1:9" in capsys.readouterr().err


def test_policy_check_against_the_brokers_sets(kbs: Kbs, broker: Broker, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A policy naming a set: offline, the check says which flag to add; with --url it uses the broker's sets."""
    text = json.dumps({"version": "1.0.0", "anyOf": [{"authority": "local:sample", "allOf": [
        {"claim": "sample.svn", "in": {"ref": "checked-svns"}}]}]})
    path = write(tmp_path, "checked.json", text)
    key = str(broker.state_dir / "admin-key.pem")
    assert main(["policy", "check", path]) == 1
    assert "give --refs FILE, or --url to check against a broker's sets" in capsys.readouterr().err
    assert main(["policy", "check", path, "--url", broker.url, "--admin-key", key]) == 1  # not there yet
    assert "unknown reference-value set 'checked-svns'" in capsys.readouterr().err
    assert kbs("refs", "put", "checked-svns", "1", "2")[0] == 0
    capsys.readouterr()
    assert main(["--url", broker.url, "--admin-key", key, "policy", "check", path]) == 0
    assert "reference sets used: checked-svns" in capsys.readouterr().out


def test_policy_upload_warns_about_claims_and_strict_refuses(kbs: Kbs, broker: Broker, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`sample.svnn` and a block for a verifier this broker does not enable: stored with warnings, or refused."""
    text = json.dumps({"version": "1.0.0", "anyOf": [
        {"authority": "local:sample", "allOf": [{"claim": "sample.svnn", "equals": "1"}]},
        {"authority": "local:nvgpu", "allOf": [{"claim": "nvidia.measres", "equals": "success"}]}]}, indent=1)
    path = write(tmp_path, "typo.json", text)
    code, out, err = kbs("policy", "put", "typo", path)
    assert code == 0 and "stored v1" in out
    assert err.splitlines() == [
        "kbs: warning: line 7: sample.svnn: no such claim in a local:sample block, so this condition never holds "
        "(did you mean sample.svn?)",
        "kbs: warning: line 13: local:nvgpu: this broker does not enable the nvgpu verifier ([verifiers] enabled), "
        "so this block never holds"]
    assert [w["claim"] for w in kbs.json("policy", "put", "typo", path)["warnings"]] == ["sample.svnn", "local:nvgpu"]
    for argv in (("policy", "put", "typo-strict", path, "--strict"),
                 ("policy", "set-resource-policy", path, "--strict")):
        code, out, err = kbs(*argv, "--json")
        assert code == 1 and json.loads(out)["error"]["check"] == "admin.400", argv
        assert "(strict): line 7: sample.svnn" in json.loads(out)["error"]["message"]
    assert kbs("policy", "show", "typo-strict")[0] == 1  # nothing stored
    assert "svnn" not in kbs.json("policy", "show", "default")["current"]["text"]
    key = str(broker.state_dir / "admin-key.pem")
    capsys.readouterr()
    assert main(["policy", "check", path]) == 0  # offline: every verifier this version knows
    assert capsys.readouterr().err.count("kbs: warning:") == 1
    assert main(["policy", "check", path, "--strict", "--url", broker.url, "--admin-key", key]) == 1
    assert "does not enable the nvgpu verifier" in capsys.readouterr().err


def test_status_at_a_glance(kbs: Kbs, broker: Broker) -> None:
    before = kbs.json("status")
    assert before["version"] == importlib.metadata.version("kbs") and before["store"] == "sqlite"
    assert "sample" in before["verifiers"] and before["uptime_seconds"] >= 0
    roots = before["trust_roots"]  # dev mode: the vendors' pinned roots
    assert [(r["name"], r["sha256"], r["source"]) for r in roots["snp"]] == [
        (f"ARK-{product}", PINNED_ARKS[product], "pinned") for product in ("Milan", "Genoa", "Turin")]
    assert [(r["name"], r["sha256"]) for r in roots["tdx"]] == [("Intel SGX Root CA", ROOT_CA_SHA256)]
    assert roots["sample"] == []
    assert kbs("key", "create", "lab/key/status", "--generate")[0] == 0
    assert asyncio.run(full_flow(broker.url, "sample", "lab/key/status"))[0] == 401  # default policy: denied
    after = kbs.json("status")
    assert after["keys"] == before["keys"] + 1
    assert after["last_hour"]["denials"] == before["last_hour"]["denials"] + 1
    assert after["last_hour"]["admin_changes"] == before["last_hour"]["admin_changes"] + 1
    code, out, _ = kbs("status")
    assert code == 0 and out.startswith(f"kbs {after['version']}, up ") and "last hour: " in out
    assert f"  tdx trusts Intel SGX Root CA sha256:{ROOT_CA_SHA256[:16]}… (pinned, evidence)" in out.splitlines()
