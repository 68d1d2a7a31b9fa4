"""`kbs` command line.

Exit codes: 0 verified / valid / allowed; 1 rejected / invalid / denied (one line on stderr
naming the check that failed); 2 usage error (bad arguments, unreadable files).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from kbs import __version__
from kbs.errors import EvidenceError, KbsError, UsageError
from kbs.evidence.base import VerifyCommand
from kbs.evidence.registry import KNOWN, verifier_types
from kbs.files import read_input
from kbs.policy.model import PolicyInvalid, ResourceRequest
from kbs.policy.refvalues import ReferenceValues, ReferenceValuesInvalid
from kbs.timearg import rfc3339

if TYPE_CHECKING:
    from kbs.policy.rego_pool import RegoWorkerPool
    from kbs.server.config import Config

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a command that SIGPIPE ended


class Usage(Exception):
    """A usage error: exit 2."""


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The commands' parsers; only the one asked for is built (all of them for help or a wrong command), so
    each command imports only what it uses: `kbs serve` runs the broker in this process (one worker) and must
    not import every verifier, the collateral tooling or sevsnpmeasure."""
    parser = argparse.ArgumentParser(prog="kbs", description="Key broker for confidential computing.")
    parser.add_argument("--version", action="version", version=f"kbs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    wanted = _first_word(argv)
    built = [add for names, add in _COMMANDS if wanted in names] or [add for _, add in _COMMANDS]
    for add in built:
        add(commands, argv)
    if _add_admin_parsers in built or _add_policy_parser in built or _add_owner_parsers in built:
        from kbs.admin_cli import add_connection_arguments

        add_connection_arguments(parser, after_verb=False)  # `kbs --url U key list` as well as after the verb
    return parser


def _add_verify_parser(commands: SubParsers, argv: Sequence[str]) -> None:
    """`kbs verify <tee>` comes from the registry."""
    verify = commands.add_parser("verify", help="verify evidence offline or against the vendor's service")
    kinds = verify.add_subparsers(dest="kind", required=True)
    tee = _first_word(argv[argv.index("verify") + 1:]) if "verify" in argv else None
    for name, command in _verify_commands(tee).items():
        parser = kinds.add_parser(name, help=command.help)
        command.add_arguments(parser)
        parser.add_argument("--json", action="store_true", help="machine output: compact JSON, errors as JSON")
        parser.set_defaults(func=functools.partial(_run_verify, command))


def _verify_commands(tee: str | None) -> dict[str, VerifyCommand]:
    """The named TEE's command alone, importing its verifier only; else every verifier's (for the listing)."""
    if tee is not None and tee in KNOWN:
        command = KNOWN[tee].load().verify_command()
        if command is not None:
            return {tee: command}
    return {kind.name: command for kind in verifier_types() if (command := kind.verify_command()) is not None}


def _first_word(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _add_admin_parsers(commands: SubParsers, argv: Sequence[str]) -> None:
    from kbs.admin_cli import add_admin_parsers

    add_admin_parsers(commands)


def _add_owner_parsers(commands: SubParsers, argv: Sequence[str]) -> None:
    from kbs.owner_cli import add_owner_parsers

    add_owner_parsers(commands)


def _add_measure_parser(commands: SubParsers, argv: Sequence[str]) -> None:
    from kbs.evidence.snp.measure import add_measure_parser, run_measure

    add_measure_parser(commands)
    commands.choices["measure"].set_defaults(func=run_measure)


def _add_collateral_parser(commands: SubParsers, argv: Sequence[str]) -> None:
    from kbs.collateral_cli import add_collateral_parser

    add_collateral_parser(commands)


def _add_serve_parser(commands: SubParsers, argv: Sequence[str]) -> None:
    serve = commands.add_parser("serve", help="run the key broker daemon")
    serve.add_argument("--config", type=Path, help="TOML configuration (default: dev mode on loopback)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="override `listen`")
    serve.add_argument("--state-dir", type=Path, help="override `state_dir`")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="override [server] workers: worker processes on one port (0: one per core)")
    serve.add_argument("--check-config", action="store_true",
                       help="load everything the configuration names (TLS files, KEK, admin keys, store, verifiers' "
                            "trust roots), probe the port, print a summary and exit")
    serve.set_defaults(func=_run_serve)


def _add_policy_parser(commands: SubParsers, argv: Sequence[str]) -> None:
    from kbs.admin_cli import STRICT_HELP, add_connection_arguments, add_remote_policy_verbs

    policy = commands.add_parser("policy", help="check and evaluate policies on files; manage them on a broker")
    verbs = policy.add_subparsers(dest="verb", required=True)
    check = verbs.add_parser("check", help="validate a policy (JSON or Rego, recognised from the file)")
    check.add_argument("policy", help="policy file")
    check.add_argument("--refs", metavar="FILE", help="reference values (JSON) the policy may name (default: with "
                       "--url, the broker's sets)")
    check.add_argument("--strict", action="store_true", help=STRICT_HELP)
    add_connection_arguments(check, after_verb=True)
    check.set_defaults(func=_run_policy_check)
    ev = verbs.add_parser("eval", help="evaluate a policy on a claims document and explain the decision")
    ev.add_argument("policy", help="policy file")
    ev.add_argument("claims", help="claims JSON: an EAR document or 'kbs verify snp --json' output")
    ev.add_argument("--refs", metavar="FILE", help="reference values (JSON)")
    ev.add_argument("--resource", metavar="REPO/TYPE/TAG", default="default/key/0",
                    help="resource path the policy sees (plugin 'resource')")
    ev.add_argument("--at", type=rfc3339, metavar="RFC3339", help="evaluation time (reference-set expiry)")
    ev.add_argument("--json", action="store_true", help="decision and explanation as JSON")
    ev.set_defaults(func=_run_policy_eval)
    add_remote_policy_verbs(verbs)


def _load_refs(path: str | None) -> ReferenceValues:
    return ReferenceValues.load(read_input(path, "reference values")) if path else ReferenceValues()


def _rego_pool(text: str) -> contextlib.AbstractContextManager[RegoWorkerPool | None]:
    """One Rego worker for this run when the policy is Rego (JSON policies need none)."""
    from kbs.policy.loader import dialect_of
    from kbs.policy.rego_pool import RegoWorkerPool

    return RegoWorkerPool(workers=1) if dialect_of(text) == "rego" else contextlib.nullcontext()


def _run_policy_check(args: argparse.Namespace) -> int:
    from kbs.admin_cli import broker_client
    from kbs.policy.claimcheck import check_policy_claims, enforce
    from kbs.policy.loader import validate_policy

    text = _text(args.policy, "policy")
    enabled = None  # offline: every verifier this version knows
    if getattr(args, "url", None):  # the sets and the verifiers the policy would meet on that broker
        client = broker_client(args)
        enabled = client.status()["verifiers"]
        refs = _load_refs(args.refs) if args.refs else ReferenceValues.from_json(client.list_refs())
    else:
        refs = _load_refs(args.refs)
    with _rego_pool(text) as rego:
        try:
            policy = validate_policy(text, refs, rego)
        except PolicyInvalid as exc:
            if "unknown reference-value set" in str(exc) and args.refs is None and not getattr(args, "url", None):
                raise PolicyInvalid(f"{exc} (give --refs FILE, or --url to check against a broker's sets)") from None
            raise
    warnings = check_policy_claims(text, enabled)
    for warning in warnings:
        print(f"kbs: warning: {warning.render()}", file=sys.stderr)
    enforce(warnings, args.strict)
    names = ", ".join(sorted(policy.referenced_sets())) or "none"
    print(f"kbs: policy {args.policy} is valid ({policy.dialect}; reference sets used: {names})")
    return EXIT_OK


def _run_policy_eval(args: argparse.Namespace) -> int:
    from kbs.policy.loader import claims_document, validate_policy

    refs = _load_refs(args.refs)
    text = _text(args.policy, "policy")
    with _rego_pool(text) as rego:
        try:
            policy = validate_policy(text, refs, rego)
        except PolicyInvalid as exc:
            raise Usage(f"invalid: {exc.check}: {exc}") from exc  # an unusable policy is an error here
        try:
            request = ResourceRequest.parse(args.resource)
            claims = claims_document(json.loads(_text(args.claims, "claims")))
        except (ValueError, TypeError) as exc:
            raise Usage(str(exc)) from exc
        decision = policy.evaluate(claims, refs, request, args.at or dt.datetime.now(dt.UTC))
    if args.json:
        print(json.dumps(decision.to_json(), indent=2))
    else:
        print(decision.explanation.render())
    print(f"kbs: {'allow' if decision.allow else 'deny'}", file=sys.stderr)
    return EXIT_OK if decision.allow else EXIT_REJECTED


def _text(path: str, what: str) -> str:
    try:
        return read_input(path, what).decode()
    except UnicodeDecodeError as exc:
        raise Usage(f"{what} {path} is not UTF-8 text") from exc


def _add_init_parser(commands: SubParsers, argv: Sequence[str]) -> None:
    from kbs.init_cli import add_init_parser

    add_init_parser(commands)


def _add_completion_parser(commands: SubParsers, argv: Sequence[str]) -> None:
    completion = commands.add_parser(
        "completion", help="print a shell completion script",
        description="Print a completion script for every kbs command, verb and flag.  bash: "
                    "kbs completion bash > /etc/bash_completion.d/kbs (or ~/.local/share/bash-completion/completions/"
                    "kbs); zsh: kbs completion zsh > \"${fpath[1]}/_kbs\"")
    completion.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    completion.set_defaults(func=_run_completion)


def _run_completion(args: argparse.Namespace) -> int:
    """A static script (shtab) from the full parser: a TAB costs the shell nothing, no Python starts."""
    import shtab

    print(shtab.complete(_parser([]), shell=args.shell))
    return EXIT_OK


def _add_backup_parsers(commands: SubParsers, argv: Sequence[str]) -> None:
    for name, what, arg in (("backup", "copy the broker's SQLite database while it serves (not the KEK)", "OUT"),
                            ("restore", "restore a backup into a fresh state directory, checked against the KEK",
                             "IN")):
        parser = commands.add_parser(name, help=what, description=what)
        parser.add_argument("file", metavar=arg, type=Path)
        parser.add_argument("--config", type=Path, help="the broker's TOML configuration (default: dev mode)")
        parser.add_argument("--state-dir", type=Path, help="override `state_dir`")
        parser.set_defaults(func=_run_backup if name == "backup" else _run_restore)


def _add_kek_parser(commands: SubParsers, argv: Sequence[str]) -> None:
    from kbs.kek_cli import add_kek_parser

    add_kek_parser(commands)


def _store_config(args: argparse.Namespace) -> Config:
    from dataclasses import replace

    from kbs.server.config import load_config

    config = load_config(args.config)
    return replace(config, state_dir=args.state_dir) if args.state_dir else config


def _run_backup(args: argparse.Namespace) -> int:
    from kbs.store.backup import backup_sqlite

    config = _store_config(args)
    pages = backup_sqlite(config.database_path, args.file)
    print(f"kbs: {config.database_path} copied to {args.file} ({pages} pages); the KEK is not in it: keep "
          f"{config.kek_file or 'the KEK'} safe separately")
    return EXIT_OK


def _run_restore(args: argparse.Namespace) -> int:
    from kbs.keys.kek import load_kek
    from kbs.store import open_store
    from kbs.store.backup import restore_sqlite
    from kbs.store.integrity import ROW_MAC_PURPOSE

    config = _store_config(args)
    kek = load_kek(config.kek_file or (config.kek_path if config.dev_mode else None), config.kek_credential)
    restore_sqlite(args.file, config.database_path)
    try:  # the restored rows must authenticate under the KEK this broker will use
        store = open_store(config.database_path, kek.derive(ROW_MAC_PURPOSE))
        heads = store.verify_logs()
        store.close()
    except KbsError as exc:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{config.database_path}{suffix}").unlink(missing_ok=True)
        raise KbsError(f"the backup does not verify under this broker's KEK (made under another?): {exc}") from exc
    entries = ", ".join(f"{h.chain} log {h.head_seq - h.first_seq + 1} entries" for h in heads)
    print(f"kbs: {args.file} restored to {config.database_path}; {entries} verify under the KEK")
    return EXIT_OK


def _run_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from kbs.server.app import check_config, serve
    from kbs.server.config import load_config

    config = load_config(args.config)
    if args.listen:
        config = replace(config, listen=args.listen)
        config.host_port  # noqa: B018 - validate now: a usage error, not a crash at bind time
    if args.state_dir:
        config = replace(config, state_dir=args.state_dir)
    if args.workers is not None:
        if args.workers < 0:
            raise Usage("--workers must be 0 (one per core) or more")
        config = replace(config, workers=args.workers)
    if args.check_config:
        print(f"kbs: {check_config(config)}")
        return EXIT_OK
    return serve(config)


def _run_verify(command: VerifyCommand, args: argparse.Namespace) -> int:
    claims = asyncio.run(command.run(args))
    if args.json:
        print(json.dumps(claims, separators=(",", ":")))
    else:
        print(json.dumps(claims, indent=2))
        print(f"kbs: verified: {command.summary(claims)}", file=sys.stderr)
    return EXIT_OK


# Each top-level command: its names, and what adds its parser (in `kbs --help` order).
_COMMANDS: tuple[tuple[tuple[str, ...], Callable[[SubParsers, Sequence[str]], None]], ...] = (
    (("verify",), _add_verify_parser),
    (("policy",), _add_policy_parser),
    (("key", "refs", "log", "status", "attestation"), _add_admin_parsers),
    (("owner", "proposal"), _add_owner_parsers),
    (("measure",), _add_measure_parser),
    (("collateral",), _add_collateral_parser),
    (("serve",), _add_serve_parser),
    (("backup", "restore"), _add_backup_parsers),
    (("kek",), _add_kek_parser),
    (("init",), _add_init_parser),
    (("completion",), _add_completion_parser),
)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # here, not at interpreter exit, so that a reader that left is handled below
    except BrokenPipeError:  # `kbs ... | head`: the reader left; no traceback, and no second error at exit
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
    machine = getattr(args, "json", False)
    try:
        code: int = args.func(args)
        return code
    except (Usage, UsageError) as exc:
        print(f"kbs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KbsError as exc:
        kind = "rejected" if isinstance(exc, EvidenceError) else "invalid" if isinstance(
            exc, PolicyInvalid | ReferenceValuesInvalid) else "error"
        print(f"kbs: {kind}: {exc.check}: {exc}", file=sys.stderr)
        if machine:
            print(json.dumps({"error": {"check": exc.check, "message": str(exc)}}))
        return EXIT_USAGE if isinstance(exc, ReferenceValuesInvalid) else EXIT_REJECTED


if __name__ == "__main__":
    sys.exit(main())
