"""`kbs key contribute PATH --owner NAME --owner-key PEM [--share-file F] [--policy FILE]` (issue 15, item 3).

An owner's side of a contributed key: a share (from a file, or 32 random bytes made here and kept nowhere) is
encrypted to the broker's share key (GET /kbs/v0/owners/share-key), so neither the transport nor the operator
sees it, and the owner signs the statement kbs.keys.shares.contribution_statement names (the key, the sealed
share, its own policy) with its Ed25519 key; no admin token is used.  The share is never printed.
"""

from __future__ import annotations

import argparse
import base64
import secrets

from kbs import owners as rules
from kbs.admin_cli import _emit, _text, _verb
from kbs.admin_client import SubParsers, UsageProblem, resource_path
from kbs.files import read_input
from kbs.keys.shares import MAX_SHARE, MIN_SHARE, ShareInvalid, contribution_statement, seal_share
from kbs.owner_cli import load_owner_key, public_request


def add_contribute_parser(verbs: SubParsers) -> None:
    contribute = _verb(verbs, "contribute", "contribute an owner's share (and optionally its own release policy) to "
                       "a contributed key, once; no admin key needed", _run_contribute)
    contribute.add_argument("resource", metavar="REPO/TYPE/TAG")
    contribute.add_argument("--owner", required=True, metavar="NAME", help="the owner's registered name")
    contribute.add_argument("--owner-key", required=True, metavar="PEM", help="the owner's Ed25519 private key")
    contribute.add_argument("--share-file", metavar="FILE", help=f"the share's bytes ({MIN_SHARE}..{MAX_SHARE}; "
                            "default: 32 random bytes made here and kept nowhere)")
    contribute.add_argument("--policy", metavar="FILE", help="this owner's own release policy (JSON or Rego): the "
                            "key leaves only to a TEE it admits too")


def _run_contribute(args: argparse.Namespace) -> int:
    path = resource_path(args.resource)
    try:
        rules.check_name(args.owner)
    except rules.OwnerError as exc:
        raise UsageProblem(str(exc)) from exc
    key = load_owner_key(args.owner_key)
    share = read_input(args.share_file, "share file") if args.share_file else secrets.token_bytes(32)
    policy = _text(args.policy, "policy") if args.policy else None
    share_key = public_request(args, "GET", "/kbs/v0/owners/share-key")
    try:
        sealed = seal_share(share, share_key)
    except ShareInvalid as exc:
        raise UsageProblem(f"--share-file: {exc}") from exc
    del share
    signature = base64.b64encode(key.sign(contribution_statement(path, sealed, policy))).decode()
    body = {"owner": args.owner, "share": sealed, "signature": signature, **({"policy": policy} if policy else {})}
    answer = public_request(args, "POST", f"/kbs/v0/owners/keys/{path}/contributions", body)
    state = "complete" if answer["complete"] else "waiting for the other owners"
    return _emit(args, answer, f"{path}: {args.owner} contributed ({answer['contributed']} of {answer['owners']} "
                 f"owners: {state})")
