"""haproxy in front of `kbs serve` replicas, for the tests: deploy/haproxy.cfg as documented, with only its
site-specific lines replaced (tests/test_replicas_lb.py).

`render` keeps the example's defaults, frontend and backend (timeouts, health checks on /readyz, retry-on,
redispatch, which requests may be replayed) and replaces: `global` by its `maxconn` and `tune.*` lines plus a
log to stderr; the `bind` lines by one loopback port, plain HTTP; the `server` lines by the given replicas,
plain HTTP on loopback; the `default-server` line's check timings by short ones.  It also names the replica
that answered in a response header (`Kbs-Replica`), so a test can see where each step went.

`run_haproxy` starts `haproxy -f CFG -db` (foreground, logs to a file) and yields once every replica has
answered /readyz through it; haproxy missing fails the test saying what to install (.ci/run installs it).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.broker import REPO, free_port

EXAMPLE = REPO / "deploy" / "haproxy.cfg"
REPLICA_HEADER = "Kbs-Replica"
INSTALL_HINT = "haproxy is not on PATH: install it (apt-get install haproxy; .ci/run does when it is missing)"
GLOBAL_KEPT = re.compile(r"(maxconn|tune\.\S+)$")


@dataclass
class Haproxy:
    url: str
    process: subprocess.Popen[bytes]
    config: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def render(example: str, port: int, replicas: Mapping[str, str], check_interval_ms: int = 250) -> str:
    """deploy/haproxy.cfg for loopback: `replicas` maps server names to http://127.0.0.1:PORT URLs."""
    out: list[str] = []
    section = ""
    servers_added = False
    for line in example.splitlines():
        words = line.split()
        keyword = words[0] if words else ""
        if line and not line[0].isspace() and not line.startswith("#"):
            section = keyword
            out.append(line)
            if section == "global":
                out.append("    log stderr format raw local0")
            continue
        if section == "global":
            if keyword.startswith("#") or not keyword or GLOBAL_KEPT.fullmatch(keyword):
                out.append(line)
        elif keyword == "bind":
            out.append(f"    bind 127.0.0.1:{port}")
        elif keyword == "default-server":
            out.append(f"    default-server check inter {check_interval_ms}ms fastinter {check_interval_ms}ms "
                       f"downinter {check_interval_ms}ms fall 2 rise 1 maxconn 64")
        elif keyword == "server":
            if not servers_added:
                out.append(f"    http-response set-header {REPLICA_HEADER} %[srv_name]")
                for name, url in replicas.items():
                    parts = urlsplit(url)
                    out.append(f"    server {name} {parts.hostname}:{parts.port}")
                servers_added = True
        else:
            out.append(line)
    if not servers_added:
        raise ValueError("the example has no `server` lines to replace")
    return "\n".join(out) + "\n"


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
                                             if Path(p).is_file()), None)
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


def check_config(path: Path) -> None:
    """`haproxy -c`: the rendered file parses (and says why not)."""
    done = subprocess.run([haproxy_binary(), "-c", "-f", str(path)], capture_output=True, text=True, check=False,
                          timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"haproxy -c {path} failed:\n{done.stdout}{done.stderr}")


@contextmanager
def run_haproxy(tmp: Path, replicas: Mapping[str, str], check_interval_ms: int = 250,
                ready_timeout: float = 30) -> Iterator[Haproxy]:
    """haproxy on a free loopback port in front of `replicas` (name -> URL), every replica seen answering."""
    binary = haproxy_binary()
    port = free_port()
    config = tmp / f"haproxy-{port}.cfg"
    config.write_text(render(EXAMPLE.read_text(), port, replicas, check_interval_ms))
    check_config(config)
    log_path = tmp / f"haproxy-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT)
    lb = Haproxy(f"http://127.0.0.1:{port}", proc, config, log_path)
    try:
        wait_all_up(lb, set(replicas), ready_timeout)
        yield lb
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_all_up(lb: Haproxy, names: set[str], timeout: float) -> None:
    """Until /readyz through haproxy has been answered by each of `names` (it rotates over the live ones)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lb.process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {lb.process.returncode}:\n{lb.log()}")
        try:
            with urllib.request.urlopen(f"{lb.url}/readyz", timeout=2) as r:
                if r.status == 200:
                    seen.add(r.headers.get(REPLICA_HEADER, ""))
        except (OSError, urllib.error.URLError):
            pass
        if names <= seen:
            return
        time.sleep(0.05)
    raise RuntimeError(f"through haproxy only {sorted(seen)} of {sorted(names)} answered /readyz within "
                       f"{timeout}s:\n{lb.log()}")
