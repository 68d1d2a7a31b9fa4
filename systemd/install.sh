#!/bin/sh
# Install the broker as a systemd service on this host (Debian 12 and alike), from this source tree:
#
#   sudo apt-get install python3-venv python3-dev build-essential libssl-dev
#   sudo systemd/install.sh
#   sudoedit /etc/kbs/kbs.toml            # listen address, [tls], verifiers; then:
#   sudo systemctl enable --now kbs
#
# Each step is skipped when already done, so running it again (to upgrade the code) keeps the
# configuration, the keys and the credential:
#   1. a virtualenv (/opt/kbs/.venv) with kbs installed from this tree;
#   2. the system user kbs;
#   3. /etc/kbs from `kbs init`: kbs.toml (readable by kbs: it names files, holds no secret), the admin
#      key pair, and the KEK encrypted as the systemd credential kbs-kek.cred (the plain KEK file stays
#      root-only for you to move to offline storage: backups are useless without it);
#   4. /etc/systemd/system/kbs.service from systemd/kbs.service (without the TLS key credential line
#      until /etc/kbs/kbs-tls-key.cred exists), then `systemctl daemon-reload`.
#
# Environment: KBS_VENV=DIR uses an environment that already has kbs installed instead of step 1;
# ROOT=DIR writes everything under DIR and skips the user and systemctl (images, tests).
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
root=${ROOT:-}
venv=${KBS_VENV:-/opt/kbs/.venv}
etc=$root/etc/kbs
units=$root/etc/systemd/system

say() { echo "install: $*"; }

if [ -z "${KBS_VENV:-}" ]; then
  if [ ! -x "$root$venv/bin/python" ]; then
    python3 -m venv "$root$venv" || { echo "install: need python3-venv" >&2; exit 1; }
  fi
  say "installing kbs from $src into $root$venv"
  "$root$venv/bin/python" -m pip install -q --upgrade pip
  "$root$venv/bin/python" -m pip install -q "$src"
fi
kbs="${KBS_VENV:-$root$venv}/bin/kbs"  # an existing KBS_VENV is used where it is
[ -x "$kbs" ] || { echo "install: no $kbs" >&2; exit 1; }

if [ -z "$root" ] && ! id kbs >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/kbs --no-create-home --shell /usr/sbin/nologin kbs
  say "created the system user kbs"
fi

if [ ! -e "$etc/kbs.toml" ]; then
  "$kbs" init --dir "$etc" >/dev/null
  # The daemon reads the KEK only as the kbs-kek credential: no KEK file it could read.
  sed -i 's|^kek_file = |# kek_file = |' "$etc/kbs.toml"
  chmod 0755 "$etc"
  chmod 0644 "$etc/kbs.toml" "$etc/admin-key.pub.pem"
  say "wrote $etc/kbs.toml and an admin key pair ($etc/admin-key.pem: move it to the operators' machine)"
fi
if [ ! -e "$etc/kbs-kek.cred" ]; then
  [ -e "$etc/kek" ] || { echo "install: no $etc/kek to encrypt as kbs-kek.cred" >&2; exit 1; }
  systemd-creds encrypt --name=kbs-kek "$etc/kek" "$etc/kbs-kek.cred"
  say "encrypted the KEK as $etc/kbs-kek.cred; copy $etc/kek to offline storage, then delete it"
fi

mkdir -p "$units"
unit=$(sed "s|/opt/kbs/.venv|$venv|g" "$src/systemd/kbs.service")
if [ ! -e "$etc/kbs-tls-key.cred" ]; then  # systemd refuses to start a unit whose credential file is missing
  unit=$(printf '%s\n' "$unit" | sed 's|^LoadCredentialEncrypted=kbs-tls-key:|# (no TLS key yet) &|')
fi
printf '%s\n' "$unit" >"$units/kbs.service.new"
chmod 0644 "$units/kbs.service.new"
mv "$units/kbs.service.new" "$units/kbs.service"
say "installed $units/kbs.service"
if [ -z "$root" ]; then
  systemctl daemon-reload
  say "next: edit $etc/kbs.toml, then: systemctl enable --now kbs"
fi
