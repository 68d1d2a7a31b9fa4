"""`kbs owner add|list|remove|keygen` (the operator registers owners) and `kbs proposal create|show|sign|submit|list`
(owners and the operator propose changes to owned keys; owners approve by signing a proposal's id, offline if
they like: `kbs proposal sign ID --owner-key PEM` needs no broker and prints the signature).

Owners hold no admin token: their routes are open and their signature authenticates them.  `show` checks the
document against the id before printing it, so an owner signs what they read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kbs import owners as rules
from kbs.admin_cli import _emit, _guarded, _text, _verb, broker_client
from kbs.admin_client import (
    DEFAULT_URL,
    AdminError,
    SubParsers,
    UsageProblem,
    _refusal,
    ed25519_private_key,
    resource_path,
    tls_context,
)
from kbs.files import read_input
from kbs.keys.kek import create_exclusive

DURATION_UNITS = {"m": 60, "h": 3600, "d": 86400}


def add_owner_parsers(commands: SubParsers) -> None:
    owner = commands.add_parser("owner", help="owners of multi-party keys (identities with their own Ed25519 keys)")
    verbs = owner.add_subparsers(dest="verb", required=True)
    add = _verb(verbs, "add", "register an owner (its key is never replaced)", _run_owner_add)
    add.add_argument("name", metavar="NAME")
    add.add_argument("--public-key", required=True, metavar="PEM", help="the owner's Ed25519 public key")
    _verb(verbs, "list", "list registered owners", _run_owner_list)
    remove = _verb(verbs, "remove", "remove an owner no owned key names", _run_owner_remove)
    remove.add_argument("name", metavar="NAME")
    keygen = verbs.add_parser("keygen", help="make an owner key pair (offline): OUT (private, 0600) and OUT.pub")
    keygen.add_argument("out", metavar="OUT")
    keygen.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    keygen.set_defaults(func=_guarded(_run_keygen))

    proposal = commands.add_parser("proposal", help="propose, show, sign and submit changes to owned keys")
    verbs = proposal.add_subparsers(dest="verb", required=True)
    create = _verb(verbs, "create", "propose a change to an owned key (with the admin key, or as an owner: "
                   "--owner and --owner-key, which also approves it)", _run_create)
    create.add_argument("resource", metavar="REPO/TYPE/TAG")
    change = create.add_mutually_exclusive_group(required=True)
    change.add_argument("--policy-file", metavar="FILE", help="a new version of the key's policy")
    change.add_argument("--bind", metavar="POLICY_ID", help="bind the key to another policy")
    change.add_argument("--refs", nargs="+", metavar=("NAME", "VALUE"), help="replace a reference set its policy uses")
    change.add_argument("--generate", type=int, metavar="SIZE", help="a new value the broker generates")
    change.add_argument("--set-owners", metavar="A,B,C", help="a new owner set (with --threshold)")
    change.add_argument("--delete", action="store_true", help="delete the key")
    create.add_argument("--threshold", type=int, metavar="K", help="with --set-owners")
    create.add_argument("--expires", default="7d", metavar="DURATION", help="e.g. 30m, 12h, 7d (at most 30d)")
    _owner_flags(create)
    show = _verb(verbs, "show", "show a proposal (its document checked against its id)", _run_show)
    show.add_argument("id", metavar="ID")
    sign = _verb(verbs, "sign", "sign a proposal's id with an owner key; prints the signature (offline unless "
                 "--submit)", _run_sign)
    sign.add_argument("id", metavar="ID")
    sign.add_argument("--submit", action="store_true", help="send the approval to the broker (needs --owner)")
    _owner_flags(sign)
    submit = _verb(verbs, "submit", "submit a signature made with `kbs proposal sign`", _run_submit)
    submit.add_argument("id", metavar="ID")
    submit.add_argument("--owner", required=True, metavar="NAME")
    submit.add_argument("--signature", required=True, metavar="B64")
    listing = _verb(verbs, "list", "list proposals (admin or auditor key)", _run_list)
    listing.add_argument("--resource", metavar="REPO/TYPE/TAG")
    listing.add_argument("--status", choices=rules.STATUSES)


def _owner_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--owner", metavar="NAME", help="the owner's registered name")
    parser.add_argument("--owner-key", metavar="PEM", help="the owner's Ed25519 private key")


# -- HTTP without a token (the owners' routes) -----------------------------------------------------------------

def _url(args: argparse.Namespace) -> str:
    url: str = getattr(args, "url", None) or os.environ.get("KBS_URL") or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        raise UsageProblem(f"{url!r} is not a broker URL (want http(s)://HOST:PORT)")
    return url.rstrip("/")


def public_request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    return asyncio.run(_public(args, method, path, body))


async def _public(args: argparse.Namespace, method: str, path: str, body: Any) -> Any:
    url = _url(args)
    context = tls_context(url, getattr(args, "ca_cert", None) or os.environ.get("KBS_CA_CERT"))
    try:
        connector = aiohttp.TCPConnector(ssl=context) if context is not None else None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), connector=connector) as http, \
                http.request(method, url + path, json=body) as r:
            text, status = await r.text(errors="replace"), r.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise AdminError(f"cannot reach the broker at {url}: {str(exc) or type(exc).__name__}") from exc
    if not 200 <= status < 300:
        raise _refusal(status, text)
    return json.loads(text)


# -- owners ----------------------------------------------------------------------------------------------------

def _run_owner_add(args: argparse.Namespace) -> int:
    pem = _text(args.public_key, "public key")
    answer = broker_client(args).request("POST", "/kbs/v0/admin/owners", body={"name": args.name, "public_key": pem})
    return _emit(args, answer, f"owner {args.name!r} registered")


def _run_owner_list(args: argparse.Namespace) -> int:
    answer = broker_client(args).request("GET", "/kbs/v0/admin/owners")
    lines = [f"{o['name']}  since {o['created_at']} (by {o['created_by']})" for o in answer]
    return _emit(args, answer, "\n".join(lines) or "no owners")


def _run_owner_remove(args: argparse.Namespace) -> int:
    answer = broker_client(args).request("DELETE", f"/kbs/v0/admin/owners/{args.name}")
    return _emit(args, answer, f"owner {args.name!r} removed")


def _run_keygen(args: argparse.Namespace) -> int:
    key = Ed25519PrivateKey.generate()
    out = Path(args.out)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    if not create_exclusive(out, private):
        raise UsageProblem(f"{out} exists: not overwriting a key")
    public = Path(f"{out}.pub")
    public.write_text(rules.public_pem(key.public_key()))
    print(f"owner key: {out} (keep it; only its owner signs with it); public key: {public} (for kbs owner add)")
    return 0


def load_owner_key(path: str | None) -> Ed25519PrivateKey:
    if not path:
        raise UsageProblem("--owner-key PEM is needed to sign")
    return ed25519_private_key(read_input(path, "owner key"), f"owner key {path}")


# -- proposals -------------------------------------------------------------------------------------------------

def _duration(text: str) -> timedelta:
    unit = DURATION_UNITS.get(text[-1:])
    if unit is None or not text[:-1].isdigit():
        raise UsageProblem(f"--expires {text!r}: a number and m, h or d (e.g. 7d)")
    return timedelta(seconds=int(text[:-1]) * unit)


def _change(args: argparse.Namespace) -> dict[str, Any]:
    if args.policy_file:
        return {"kind": "policy", "text": _text(args.policy_file, "policy")}
    if args.bind:
        return {"kind": "bind", "policy_id": args.bind}
    if args.refs:
        if len(args.refs) < 2:
            raise UsageProblem("--refs NAME VALUE...: a set's name and its values")
        return {"kind": "refs", "name": args.refs[0], "values": args.refs[1:]}
    if args.generate is not None:
        return {"kind": "value", "generate": args.generate}
    if args.set_owners:
        if args.threshold is None:
            raise UsageProblem("--set-owners goes with --threshold K")
        return {"kind": "owners", "owners": args.set_owners.split(","), "threshold": args.threshold}
    return {"kind": "delete"}


def _run_create(args: argparse.Namespace) -> int:
    path = resource_path(args.resource)
    change = _change(args)
    as_owner = bool(args.owner or args.owner_key)
    if as_owner and not (args.owner and args.owner_key):
        raise UsageProblem("as an owner, give both --owner and --owner-key")
    expires = datetime.now(UTC) + _duration(args.expires)
    key = public_request(args, "GET", f"/kbs/v0/owners/keys/{path}")
    document = rules.new_proposal(key["path"], key["state_hash"], change, expires,
                                  args.owner if as_owner else rules.OPERATOR)
    pid = rules.proposal_id(document)
    body: dict[str, Any] = {"proposal": document}
    if as_owner:
        body["approval"] = {"owner": args.owner, "signature": rules.sign_approval(load_owner_key(args.owner_key), pid)}
        answer = public_request(args, "POST", "/kbs/v0/owners/proposals", body)
    else:
        answer = broker_client(args).request("POST", "/kbs/v0/owners/proposals", body=body)
    return _emit(args, answer, f"proposal {answer['id']} ({change['kind']} on {key['path']}): {answer['status']}, "
                 f"{len(answer['approvals'])} of {answer['threshold']} approvals; expires {document['expires']}")


def _run_show(args: argparse.Namespace) -> int:
    if not rules.ID.fullmatch(args.id):
        raise UsageProblem("a proposal id is 64 lowercase hex digits")
    answer = public_request(args, "GET", f"/kbs/v0/owners/proposals/{args.id}")
    if rules.proposal_id(answer["proposal"]) != args.id:
        raise AdminError(f"the broker's document for {args.id} does not hash to it: do not sign", status=409)
    approvals = ", ".join(f"{a['owner']} ({a['at']})" for a in answer["approvals"]) or "none"
    human = [f"proposal {args.id}: {answer['status']}, approvals {approvals} (threshold {answer['threshold']})",
             json.dumps(answer["proposal"], indent=2, sort_keys=True)]
    return _emit(args, answer, "\n".join(human))


def _run_sign(args: argparse.Namespace) -> int:
    if args.submit and not args.owner:
        raise UsageProblem("--submit needs --owner NAME")
    try:
        signature = rules.sign_approval(load_owner_key(args.owner_key), args.id)
    except rules.OwnerError as exc:
        raise UsageProblem(str(exc)) from exc
    if not args.submit:
        print(json.dumps({"id": args.id, "signature": signature}) if args.json else signature)
        return 0
    return _submit(args, args.owner, signature)


def _run_submit(args: argparse.Namespace) -> int:
    if not rules.ID.fullmatch(args.id):
        raise UsageProblem("a proposal id is 64 lowercase hex digits")
    return _submit(args, args.owner, args.signature)


def _submit(args: argparse.Namespace, owner: str, signature: str) -> int:
    answer = public_request(args, "POST", f"/kbs/v0/owners/proposals/{args.id}/approvals",
                            {"owner": owner, "signature": signature})
    what = {"applied": "applied", "again": "already approved by this owner (counted once)",
            "counted": "approval counted"}[answer["result"]]
    return _emit(args, answer, f"proposal {args.id}: {what}; {answer['counted']} of {answer['threshold']}")


def _run_list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("resource", args.resource), ("status", args.status)) if v}
    answer = broker_client(args).request("GET", "/kbs/v0/admin/proposals", params=params or None)
    lines = [f"{p['id']}  {p['status']:<8} {p['change']:<7} {p['resource']}  by {p['created_by']}  "
             f"expires {p['expires_at']}" for p in answer]
    if not lines:
        print("no proposals", file=sys.stderr)
    return _emit(args, answer, "\n".join(lines))
