"""Operator verbs (`kbs key|refs|log|attestation`, remote `kbs policy` verbs) over `kbs.admin_client`.

This module only parses arguments and prints answers.  Key material is sent, never printed.
Exit codes as `kbs`: 0 done / allowed, 1 refused by the broker (or unreachable) / denied, 2 usage.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from kbs import log_cli
from kbs.admin_client import (
    DEFAULT_ADMIN_KEY,
    DEFAULT_AUDIENCE,
    DEFAULT_URL,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    AdminClient,
    AdminError,
    SubParsers,
    UsageProblem,
    resource_path,
)
from kbs.audit import merkle
from kbs.errors import UsageError
from kbs.files import read_input
from kbs.policy.model import Explanation
from kbs.resource_uri import ResourceNameError, split_resource
from kbs.timearg import rfc3339

STRICT_HELP = ("refuse the policy if it names a claim no enabled verifier emits, or compares a claim with a value "
               "of another type (default: store it and warn)")

Run = Callable[[argparse.Namespace], int]


def broker_client(args: argparse.Namespace) -> AdminClient:
    """The admin-API client the connection flags (or their environment variables) describe."""
    def flag(name: str, env: str, default: str | None = None) -> str | None:
        value: str | None = getattr(args, name, None)  # absent when given neither before nor after the verb
        return value or os.environ.get(env) or default

    return AdminClient(flag("url", "KBS_URL", DEFAULT_URL) or DEFAULT_URL,
                       flag("admin_key", "KBS_ADMIN_KEY", DEFAULT_ADMIN_KEY) or DEFAULT_ADMIN_KEY,
                       ca_cert=flag("ca_cert", "KBS_CA_CERT"), client_cert=flag("client_cert", "KBS_CLIENT_CERT"),
                       client_key=flag("client_key", "KBS_CLIENT_KEY"),
                       audience=flag("audience", "KBS_ADMIN_AUDIENCE", DEFAULT_AUDIENCE) or DEFAULT_AUDIENCE)


def _guarded(run: Run) -> Run:
    """Every verb returns an exit code: the broker's refusals and local usage problems never escape."""
    def func(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (UsageProblem, UsageError) as exc:
            print(f"kbs: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except AdminError as exc:
            print(f"kbs: {'refused' if exc.status is not None else 'error'}: {exc.detail}", file=sys.stderr)
            if args.json:
                print(json.dumps({"error": {"check": exc.check, "status": exc.status, "type": exc.variant,
                                            "message": exc.detail}}))
            return EXIT_REFUSED
    return func


def add_connection_arguments(parser: argparse.ArgumentParser, *, after_verb: bool) -> None:
    """--url, --admin-key and the TLS and audience flags, before the verb (`kbs --url U key list`) or after
    it.  After the verb an absent flag sets nothing (SUPPRESS), so it does not undo one given before."""
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if after_verb else {}
    parser.add_argument("--url", help=f"broker URL (default: $KBS_URL or {DEFAULT_URL})", **extra)
    parser.add_argument("--admin-key", metavar="PEM",
                        help=f"Ed25519 private key (default: $KBS_ADMIN_KEY or {DEFAULT_ADMIN_KEY})", **extra)
    parser.add_argument("--ca-cert", metavar="PEM", help="verify the https:// broker against these CA certificates "
                        "only (default: $KBS_CA_CERT, else the system trust store)", **extra)
    parser.add_argument("--client-cert", metavar="PEM", help="TLS client certificate, for a broker whose admin API "
                        "needs one ([tls] client_ca; default: $KBS_CLIENT_CERT)", **extra)
    parser.add_argument("--client-key", metavar="PEM", help="its private key, if not in --client-cert's file "
                        "(default: $KBS_CLIENT_KEY)", **extra)
    parser.add_argument("--audience", metavar="AUD", help="the token's aud, the broker's [admin] audience "
                        f"(default: $KBS_ADMIN_AUDIENCE or {DEFAULT_AUDIENCE})", **extra)


def _verb(group: SubParsers, name: str, help_text: str, run: Run) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text)
    add_connection_arguments(parser, after_verb=True)
    parser.add_argument("--json", action="store_true", help="machine output: the broker's JSON answer")
    parser.set_defaults(func=_guarded(run))
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _rfc3339(text: str) -> str:
    return rfc3339(text).isoformat()


def _text(path: str, what: str) -> str:
    try:
        return read_input(path, what).decode()
    except UnicodeDecodeError as exc:
        raise UsageProblem(f"{what} {path} is not UTF-8 text") from exc


def _emit(args: argparse.Namespace, answer: Any, human: str) -> int:
    print(json.dumps(answer) if args.json else human)
    return EXIT_OK


def add_admin_parsers(commands: SubParsers) -> None:
    """Top-level `key`, `refs`, `log` and `attestation` commands."""
    _add_key_parsers(commands)
    _add_refs_parsers(commands)
    log = _verb(commands, "log", "show the release log (every release, deny and admin change), verify it as a "
                "transparency log, prove entries, give key owners receipts", _run_log)
    log.add_argument("action", nargs="?", choices=("show", "verify", *log_cli.ACTIONS), default="show",
                     help="show entries (default); verify: check the signed checkpoint, every entry and the tree "
                          "(and, with an admin key, the broker's hash chains and MACs); key: print the log's "
                          "verifier key; checkpoint: the newest signed checkpoint; prove ENTRY: an inclusion "
                          "proof; receipts: every release of --resource with its proof; verify-receipt FILE...: "
                          "check receipts offline")
    log_cli.add_log_arguments(log)
    log.add_argument("--refusals", action="store_true",
                     help="the refusal log (auth/attest refusals, bad tokens; kept refusal_retention_days)")
    log.add_argument("--after", type=int, default=0, metavar="N", help="entries after sequence number N")
    log.add_argument("--limit", type=_positive, default=100, metavar="N", help="at most N entries (max 1000)")
    for name, what in (("resource", "REPO/TYPE/TAG, or (auth), (attest) in the refusal log; with receipts: the "
                                     "key whose releases to prove"),
                       ("decision", "release, deny, error, admin, attest, owner or deposit"),
                       ("reason", "e.g. policy, disabled, not_found"),
                       ("tee", "e.g. snp, tdx")):
        log.add_argument(f"--{name}", help=f"only entries with this {name} ({what})")
    log.add_argument("--since", type=_rfc3339, metavar="RFC3339", help="only entries at or after this time")
    log.add_argument("--until", type=_rfc3339, metavar="RFC3339", help="only entries at or before this time")
    log.add_argument("--expect", metavar="SEQ:ROOT", type=_head,
                     help="with verify: fail unless the release log's first SEQ entries still give the Merkle ROOT "
                          "(a head you kept elsewhere)")
    _verb(commands, "status", "the broker at a glance: version, uptime, store, verifiers, counts, the last hour",
          _run_status)
    attestation = commands.add_parser("attestation", help="inspect stored attestations on the broker")
    verbs = attestation.add_subparsers(dest="verb", required=True)
    show = _verb(verbs, "show", "show a stored attestation and its claims", _run_attestation_show)
    show.add_argument("attestation_id", metavar="ATT_ID", help="the token's kbs.attestation-id claim")


def _add_key_parsers(commands: SubParsers) -> None:
    key = commands.add_parser("key", help="manage keys (resources) on the broker")
    verbs = key.add_subparsers(dest="verb", required=True)
    _verb(verbs, "list", "list keys and their versions", _run_key_list)
    for name, what, generate_ok in (("create", "store a key from a file or a generated one", True),
                                    ("import", "store a key from a file (create --from-file)", False)):
        create = _verb(verbs, name, what, _run_key_create)
        create.add_argument("resource", metavar="REPO/TYPE/TAG")
        source = create.add_mutually_exclusive_group(required=True)
        source.add_argument("--from-file", metavar="FILE", help="the key's bytes (1..65536)")
        if generate_ok:
            source.add_argument("--generate", action="store_true", help="let the broker generate random bytes")
            source.add_argument("--contributed", action="store_true", help="an owned key derived from every owner's "
                                "share (kbs key contribute); needs --owners")
            source.add_argument("--deposit", action="store_true", help="an owned, empty slot an attested TEE its "
                                "policy admits fills once; needs --owners")
            create.add_argument("--size", type=_positive, metavar="N", help="generated size in bytes (default 32)")
        create.add_argument("--policy", metavar="ID", help="bind to this policy (default: the current binding, "
                            "else 'default')")
        if generate_ok:  # issue 15: a key its owners hold
            create.add_argument("--owners", metavar="A,B,C", help="an owned key: these registered owners approve "
                                "every change to it (the operator no longer can); needs --threshold and --policy")
            create.add_argument("--threshold", type=_positive, metavar="K", help="how many owners must approve")
    rotate = _verb(verbs, "rotate", "generate a new version of an existing key; the previous one is disabled",
                   _run_key_rotate)
    rotate.add_argument("resource", metavar="REPO/TYPE/TAG")
    rotate.add_argument("--size", type=_positive, metavar="N", help="size in bytes (default 32)")
    for name, enabled in (("disable", False), ("enable", True)):
        toggle = _verb(verbs, name, f"{name} a version (default: the latest)"
                       + ("; the other versions are disabled" if enabled else ""), _run_key_state)
        toggle.add_argument("resource", metavar="REPO/TYPE/TAG")
        toggle.add_argument("--version", type=_positive, metavar="N")
        toggle.set_defaults(enabled=enabled)
    delete = _verb(verbs, "delete", "delete a key and all its versions (needs --yes)", _run_key_delete)
    delete.add_argument("resource", metavar="REPO/TYPE/TAG")
    delete.add_argument("--yes", action="store_true", help="really delete: there is no undo")
    bind = _verb(verbs, "bind", "bind a key (all its versions) to a policy", _run_key_bind)
    bind.add_argument("resource", metavar="REPO/TYPE/TAG")
    bind.add_argument("--policy", required=True, metavar="ID")
    from kbs.contrib_cli import add_contribute_parser  # it builds on this module

    add_contribute_parser(verbs)


def _add_refs_parsers(commands: SubParsers) -> None:
    refs = commands.add_parser("refs", help="manage reference-value sets on the broker")
    verbs = refs.add_subparsers(dest="verb", required=True)
    _verb(verbs, "list", "list reference-value sets", _run_refs_list)
    put = _verb(verbs, "put", "create or replace a reference-value set", _run_refs_put)
    put.add_argument("name", metavar="NAME")
    put.add_argument("values", nargs="*", metavar="VALUE", help="the allowed values (strings)")
    put.add_argument("--from-file", metavar="FILE",
                     help='JSON body instead of VALUEs: [values] or {"values": [...], "expires": ..., '
                          '"description": ...}')
    put.add_argument("--expires", type=_rfc3339, metavar="RFC3339", help="the set is absent after this time")
    put.add_argument("--description", help="free text shown in listings")
    for verb, what in (("add", "add values to a set (created if absent)"),
                       ("remove", "remove values from a set (each must be in it; not the last ones)")):
        edit = _verb(verbs, verb, what, _run_refs_edit)
        edit.add_argument("name", metavar="NAME")
        edit.add_argument("values", nargs="+", metavar="VALUE")
    delete = _verb(verbs, "delete", "delete a set (refused while a policy uses it)", _run_refs_delete)
    delete.add_argument("name", metavar="NAME")


def add_remote_policy_verbs(verbs: SubParsers) -> None:
    """Broker-side verbs for the existing `kbs policy` group (beside the offline check and eval)."""
    _verb(verbs, "list", "list the policy ids stored on the broker", _run_policy_list)
    put = _verb(verbs, "put", "store a new version of a policy (JSON or Rego)", _run_policy_put)
    put.add_argument("policy_id", metavar="ID")
    put.add_argument("file", metavar="FILE")
    put.add_argument("--immutable", action="store_true", help="no change after this version (one way)")
    put.add_argument("--strict", action="store_true", help=STRICT_HELP)
    show = _verb(verbs, "show", "show a policy's current text and its history", _run_policy_show)
    show.add_argument("policy_id", metavar="ID")
    delete = _verb(verbs, "delete", "delete a policy and its history (not 'default', not an immutable one, not "
                   "while a key is bound to it)", _run_policy_delete)
    delete.add_argument("policy_id", metavar="ID")
    immutable = _verb(verbs, "immutable", "make a policy immutable (one way)", _run_policy_immutable)
    immutable.add_argument("policy_id", metavar="ID")
    dry = _verb(verbs, "dry-run", "evaluate a stored policy on a stored attestation; nothing is released",
                _run_policy_dry_run)
    dry.add_argument("policy_id", metavar="ID")
    dry.add_argument("--attestation", required=True, metavar="ATT_ID", help="the token's kbs.attestation-id")
    dry.add_argument("--resource", metavar="REPO/TYPE/TAG", help="resource the policy sees (default default/key/0)")
    trustee = _verb(verbs, "set-resource-policy", "Trustee's POST /kbs/v0/resource-policy: replaces policy "
                    "'default'", _run_set_resource_policy)
    trustee.add_argument("file", metavar="FILE")
    trustee.add_argument("--strict", action="store_true", help=STRICT_HELP)


# -- verbs -----------------------------------------------------------------------------------

def _run_key_list(args: argparse.Namespace) -> int:
    keys = broker_client(args).list_keys()
    lines = []
    for key in keys:
        lines.append(key["path"])
        lines += [f"  v{v['version']:<3} {v['state']:<8} policy {v['policy_id']:<16} {v['created_at']}  "
                  f"by {v['created_by']}" for v in key["versions"]]
    return _emit(args, keys, "\n".join(lines) or "no keys")


def _stored(answer: Mapping[str, Any]) -> str:
    return f"{answer['path']}: version {answer['version']} stored, bound to policy {answer['policy_id']!r}"


def _run_key_create(args: argparse.Namespace) -> int:
    path = resource_path(args.resource)  # a usage error before anything else
    if getattr(args, "owners", None) or getattr(args, "threshold", None) or getattr(args, "contributed", False) \
            or getattr(args, "deposit", False):
        return _create_owned(args, path)
    if getattr(args, "generate", False):
        answer = broker_client(args).generate_key(args.resource, args.size, args.policy)
    else:
        if getattr(args, "size", None) is not None:
            raise UsageProblem("--size goes with --generate")
        value = read_input(args.from_file, "key file")
        answer = broker_client(args).put_key(args.resource, value, args.policy)
    return _emit(args, answer, _stored(answer))


def _create_owned(args: argparse.Namespace, path: str) -> int:
    if not (args.owners and args.threshold and args.policy):
        raise UsageProblem("an owned key needs --owners, --threshold and --policy (its own policy)")
    body: dict[str, Any] = {"owners": args.owners.split(","), "threshold": args.threshold, "policy_id": args.policy}
    if args.contributed or args.deposit:
        body["contributed" if args.contributed else "deposit"] = True
    elif args.generate:
        body["generate"] = args.size or 32
    else:
        body["value"] = base64.b64encode(read_input(args.from_file, "key file")).decode()
    answer = broker_client(args).request("POST", f"/kbs/v0/admin/keys/{path}/owned", body=body)
    return _emit(args, answer, f"{answer['path']}: owned by {', '.join(answer['owners'])}, {answer['threshold']} "
                 f"must approve a change; bound to policy {answer['policy_id']!r}; state {answer['state_hash']}")


def _run_key_rotate(args: argparse.Namespace) -> int:
    answer = broker_client(args).rotate_key(args.resource, args.size)
    return _emit(args, answer, _stored(answer))


def _run_key_state(args: argparse.Namespace) -> int:
    answer = broker_client(args).set_key_state(args.resource, args.enabled, args.version)
    which = f"version {args.version}" if args.version else "latest version"
    return _emit(args, answer, f"{args.resource}: {which} {'enabled' if args.enabled else 'disabled'}")


def _run_key_delete(args: argparse.Namespace) -> int:
    resource_path(args.resource)
    if not args.yes:
        raise UsageProblem(f"deleting {args.resource} removes every version for good; add --yes")
    answer = broker_client(args).delete_key(args.resource)
    return _emit(args, answer, f"{args.resource}: deleted ({answer['deleted_versions']} versions)")


def _run_key_bind(args: argparse.Namespace) -> int:
    answer = broker_client(args).bind_key(args.resource, args.policy)
    return _emit(args, answer, f"{args.resource}: bound to policy {args.policy!r}")


def _version_line(v: Mapping[str, Any]) -> str:
    flag = ", immutable" if v.get("immutable") else ""
    return f"v{v['version']} ({v['dialect']}{flag}) {v['created_at']} by {v['created_by']} sha256 {v['content_hash']}"


def _run_policy_list(args: argparse.Namespace) -> int:
    ids = broker_client(args).list_policies()
    return _emit(args, ids, "\n".join(ids) or "no policies")


def _run_policy_put(args: argparse.Namespace) -> int:
    text = _text(args.file, "policy")
    answer = broker_client(args).put_policy(args.policy_id, text, args.immutable, args.strict)
    _warn_claims(answer)
    return _emit(args, answer, f"policy {args.policy_id!r}: stored {_version_line(answer)}")


def _warn_claims(answer: Mapping[str, Any]) -> None:
    """The broker's claim-path warnings (kbs.policy.claimcheck), one line each on stderr."""
    for warning in answer.get("warnings") or ():
        where = f"line {warning['line']}: " if warning.get("line") is not None else ""
        print(f"kbs: warning: {where}{warning['message']}", file=sys.stderr)


def _run_policy_show(args: argparse.Namespace) -> int:
    answer = broker_client(args).policy_history(args.policy_id)
    current = answer["current"]
    human = [f"policy {args.policy_id!r} {_version_line(current)}", current["text"].rstrip(), "history:"]
    human += [f"  {_version_line(v)}" for v in answer["history"]]
    return _emit(args, answer, "\n".join(human))


def _run_policy_delete(args: argparse.Namespace) -> int:
    answer = broker_client(args).delete_policy(args.policy_id)
    return _emit(args, answer, f"policy {args.policy_id!r}: deleted ({answer['versions']} versions)")


def _run_policy_immutable(args: argparse.Namespace) -> int:
    answer = broker_client(args).make_immutable(args.policy_id)
    return _emit(args, answer, f"policy {args.policy_id!r}: immutable from version {answer['version']}")


def explanation_from_json(doc: Mapping[str, Any]) -> Explanation:
    """Rebuild the broker's explanation tree so it renders exactly as `kbs policy eval` does."""
    return Explanation(kind=str(doc.get("kind", "")), ok=bool(doc.get("ok")), detail=str(doc.get("detail", "")),
                       where=str(doc.get("where", "")), line=doc.get("line"), claim=doc.get("claim"),
                       operator=doc.get("operator"), expected=doc.get("expected"), seen=doc.get("seen"),
                       children=tuple(explanation_from_json(c) for c in doc.get("children", ())))


def _run_policy_dry_run(args: argparse.Namespace) -> int:
    if args.resource:
        resource_path(args.resource)
    decision = broker_client(args).dry_run(args.policy_id, args.attestation, args.resource)
    allow = decision.get("allow") is True
    _emit(args, decision, explanation_from_json(decision.get("explanation", {})).render())
    print(f"kbs: {'allow' if allow else 'deny'}", file=sys.stderr)
    return EXIT_OK if allow else EXIT_REFUSED


def _run_set_resource_policy(args: argparse.Namespace) -> int:
    answer = broker_client(args).set_resource_policy(_text(args.file, "policy"), args.strict)
    _warn_claims(answer)
    return _emit(args, answer, f"policy 'default': stored {_version_line(answer)}")


def _run_refs_list(args: argparse.Namespace) -> int:
    refs = broker_client(args).list_refs()
    human = []
    for name, ref in refs.items():
        extra = "".join(f" ({k} {ref[k]})" for k in ("expires", "description") if ref.get(k))
        human.append(f"{name}{extra}: " + ", ".join(str(v) for v in ref["values"]))
    return _emit(args, refs, "\n".join(human) or "no reference sets")


def _run_refs_put(args: argparse.Namespace) -> int:
    if args.from_file:
        if args.values or args.expires or args.description:
            raise UsageProblem("--from-file replaces VALUEs, --expires and --description")
        try:
            body = _set_body(json.loads(read_input(args.from_file, "reference values")), args.name, args.from_file)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageProblem(f"reference values {args.from_file} are not JSON: {exc}") from exc
    elif args.values:
        body = {"values": args.values}
        body.update({k: v for k, v in (("expires", args.expires), ("description", args.description)) if v})
    else:
        raise UsageProblem("give the VALUEs or --from-file")
    answer = broker_client(args).put_refs(args.name, body)
    count = len(answer.get(args.name, {}).get("values", []))
    return _emit(args, answer, f"reference set {args.name!r}: {count} values stored")


def _set_body(document: Any, name: str, path: str) -> Any:
    """A set's body ({"values": [...], ...}) as it is, or from a reference-values document ({set: body, ...},
    what `kbs measure snp --json` prints): its set NAME, else its only set."""
    if not isinstance(document, dict) or "values" in document or not document \
            or not all(isinstance(body, dict) for body in document.values()):
        return document
    if name in document:
        return document[name]
    if len(document) == 1:
        return next(iter(document.values()))
    raise UsageProblem(f"{path} holds the reference sets {', '.join(sorted(document))}; name one of them")


def _run_refs_edit(args: argparse.Namespace) -> int:
    answer = broker_client(args).edit_refs(args.name, args.verb, args.values)
    count = len(answer.get(args.name, {}).get("values", []))
    return _emit(args, answer, f"reference set {args.name!r}: {count} values")


def _run_refs_delete(args: argparse.Namespace) -> int:
    answer = broker_client(args).delete_refs(args.name)
    return _emit(args, answer, f"reference set {args.name!r} deleted")


def _log_line(r: Mapping[str, Any]) -> str:
    version = f" v{r['version']}" if r.get("version") is not None else ""
    parts = [f"#{r['seq']}", r["at"], f"{r['decision']}({r['reason']})", f"{r['resource']}{version}"]
    parts += [f"{label} {r[k]}" for k, label in (("policy_id", "policy"), ("tee", "tee"),
                                                   ("attestation_id", "attestation")) if r.get(k)]
    return "  ".join(parts)


def _head(text: str) -> tuple[int, str]:
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise argparse.ArgumentTypeError(f"{text!r} is not SEQ:HASH (a sequence number and 64 hex digits)")
    return int(seq), digest


def _run_log(args: argparse.Namespace) -> int:
    if args.action == "verify" or args.action in log_cli.ACTIONS:
        # The broker's own chain check needs an admin key; --expect asks for it.
        own = args.expect or log_cli.admin_key_available(args)
        return log_cli.run(args, _log_heads if args.action == "verify" and own else None)
    if args.operands:
        raise UsageProblem(f"unexpected arguments {' '.join(args.operands)!r}")
    chain = "refusal" if args.refusals else "release"
    filters = {name: value for name in ("resource", "decision", "reason", "tee", "since", "until")
               if (value := getattr(args, name)) is not None}
    if filters.get("resource", "").startswith("kbs://"):
        try:
            filters["resource"] = "/".join(split_resource(filters["resource"]))
        except ResourceNameError as exc:
            raise UsageProblem(str(exc)) from None
    records = broker_client(args).release_log(args.after, min(args.limit, 1000), chain=chain, filters=filters)
    human = "\n".join(_log_line(r) for r in records) or f"no entries after #{args.after}"
    return _emit(args, records, human)


def _log_heads(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Both logs verify on the broker; with --expect, an old head of the release log (size and Merkle root) must
    still be what its first entries give."""
    client = broker_client(args)
    answer = client.verify_log()
    lines = [f"{h['chain']} log: entries {h['first_seq']}..{h['head_seq']} verify; head {h['head_seq']}:"
             f"{h['head_hash']}" for h in answer["heads"]]
    if args.expect:
        seq, digest = args.expect
        builder = merkle.RootBuilder()  # the root of the first `seq` entries, from their leaf hashes
        while builder.size < seq:
            page = client.release_log(builder.size, min(1000, seq - builder.size))
            if not page:
                break
            for entry in page:
                builder.push(bytes.fromhex(entry["entry_hash"]))
        seen = builder.root().hex() if builder.size == seq else f"absent (the log has {builder.size} entries)"
        if seen != digest:
            raise AdminError(f"the release log's first {seq} entries give {seen}, not the {digest} you kept: the log "
                             "was rewritten or truncated", status=409)
        lines.append(f"the release log's first {seq} entries still give the root you kept")
    return answer, lines


def _run_status(args: argparse.Namespace) -> int:
    s = broker_client(args).status()
    hour = s["last_hour"]
    lines = [f"kbs {s['version']}, up {s['uptime_seconds']} s, store {s['store']}, "
             f"verifiers {', '.join(s['verifiers'])}",
             *(f"  {tee} trusts {_roots_line(roots)}" for tee, roots in s.get("trust_roots", {}).items()),
             *(f"  collateral from {source}: {'the first expiring artefact held ends ' + at if at else 'none expiring'}"
               for source, at in s.get("collateral_next_expiry", {}).items()),
             f"{s['keys']} keys, {s['policies']} policies, {s['reference_sets']} reference sets",
             f"last hour: {hour['releases']} releases, {hour['denials']} denials, {hour['errors']} errors, "
             f"{hour['refusals']} refusals, {hour['admin_changes']} admin changes"]
    return _emit(args, s, "\n".join(lines))


def _roots_line(roots: list[dict[str, str]]) -> str:
    if not roots:
        return "no root (unsigned evidence)"
    return "; ".join(f"{r['name']} sha256:{r['sha256'][:16]}… ({r['source']}, {r['anchors']})" for r in roots)


def _run_attestation_show(args: argparse.Namespace) -> int:
    record = broker_client(args).attestation(args.attestation_id)
    human = f"attestation {record['attestation_id']}: tee {record['tee']} at {record['at']}\n" + json.dumps(
        record["claims"], indent=2)
    return _emit(args, record, human)
