"""`kbs init`: what a production broker needs before its first start, generated in one directory.

A commented kbs.toml (production: no dev mode, the KEK from a file or a systemd credential, one admin
key), a fresh KEK (32 random bytes, 0600) and an Ed25519 admin key pair (the private half 0600, for the
operator's `--admin-key`; the public half named in kbs.toml).  Nothing is overwritten.  The config
passes `kbs serve --check-config` as written; TLS and the listen address are the operator's next edit.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kbs.errors import UsageError
from kbs.keys.kek import create_kek_file

CONFIG = """\
# kbs.toml, written by `kbs init`: a production broker on one host.  Every key is optional; see
# `kbs serve --help` and the README.  Check it with `kbs serve --config {config} --check-config`.

listen = "127.0.0.1:8080"        # HOST:PORT; a public address needs [tls] below (or insecure_http behind a proxy)
state_dir = "{state}"            # the SQLite database and the collateral caches
dev_mode = false                 # never generate keys in production
kek_file = "{kek}"               # or, under systemd, the kbs-kek credential (then delete this file; see below)
# database_url = "postgresql://kbs@db.example:5432/kbs"   # replicas on several hosts share one database

[server]
workers = 0                      # one worker process per core

[verifiers]
enabled = ["snp", "tdx"]         # add "nvgpu" for NVIDIA confidential GPUs

[[admin.keys]]
name = "ops"
public_key = "{public}"
role = "admin"                   # or "auditor" (read-only)

# [tls]
# certificate = "/etc/kbs/tls.crt"
# private_key = "/etc/kbs/tls.key"  # or private_key_credential = "kbs-tls-key"

# /metrics answers 403 until one of these says who may scrape it:
# [metrics]
# token_file = "/etc/kbs/metrics.token"   # Prometheus sends "Authorization: Bearer <token>" (a 0600 file)
# listen = "127.0.0.1:9464"               # a listener of its own, off the guests' port
"""


def add_init_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = commands.add_parser("init", help="write a production configuration, a KEK and an admin key pair",
                               description=__doc__.split("\n\n")[0] if __doc__ else None)
    init.add_argument("--dir", type=Path, default=Path("kbs-config"), metavar="DIR",
                      help="where to write kbs.toml, kek, admin-key.pem and admin-key.pub.pem (default ./kbs-config)")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    out: Path = args.dir.resolve()
    files = {name: out / name for name in ("kbs.toml", "kek", "admin-key.pem", "admin-key.pub.pem")}
    existing = [str(p) for p in files.values() if p.exists()]
    if existing:
        raise UsageError(f"{', '.join(existing)} exist: kbs init never overwrites; give another --dir")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    create_kek_file(files["kek"])
    admin = Ed25519PrivateKey.generate()
    _write(files["admin-key.pem"], admin.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()), 0o600)
    _write(files["admin-key.pub.pem"], admin.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    _write(files["kbs.toml"], CONFIG.format(config=files["kbs.toml"], state=out / "state", kek=files["kek"],
                                            public=files["admin-key.pub.pem"]).encode(), 0o600)
    print(f"kbs: wrote {', '.join(str(p) for p in files.values())}\n"
          f"  check:    kbs serve --config {files['kbs.toml']} --check-config\n"
          f"  operate:  kbs --admin-key {files['admin-key.pem']} key list\n"
          f"  systemd:  systemd-creds encrypt --name=kbs-kek {files['kek']} /etc/kbs/kbs-kek.cred "
          "(LoadCredentialEncrypted=kbs-kek:/etc/kbs/kbs-kek.cred in kbs.service), then remove kek_file and the file")
    return 0


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
