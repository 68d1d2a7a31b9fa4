"""CPU and memory of a process tree from /proc: the broker's supervisor, its workers and their children.

CPU is utime+stime (+ cutime+cstime: children already reaped) summed over the tree, so a phase's CPU is
the difference of two snapshots.  Memory: a sampler thread sums VmRSS (statm) of the tree every 50 ms and
PSS (smaps_rollup, shared pages split between the processes mapping them) every 0.5 s, keeping the
peaks; VmHWM per process is reset at the start of a phase (clear_refs 5) and read at its end.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree(roots: list[int]) -> list[int]:
    """The roots and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU of the trees so far, reaped children included."""
    total = 0
    for pid in tree(roots):
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / TICK


def label(pid: int, roots: list[int]) -> str:
    if pid in roots:
        return "supervisor"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "resource_tracker" in cmd:
        return "resource-tracker"
    if _parent(pid) not in roots:
        return "helper"  # a worker's child: the Rego pool
    if "kbs.server.workers" in cmd:
        return "worker"
    return Path(cmd.split(" ", 1)[0]).name or "process"


def _parent(pid: int) -> int:
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, ValueError):
        return -1


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peaks(roots: list[int]) -> None:
    """Reset VmHWM of every process in the trees (Linux: clear_refs 5)."""
    for pid in tree(roots):
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def peaks_mib(roots: list[int]) -> list[tuple[int, str, float]]:
    """(pid, role, VmHWM MiB) for each process in the trees."""
    return [(pid, label(pid, roots), _status_kib(pid, "VmHWM:") / 1024) for pid in tree(roots)]


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class MemorySampler:
    """Peak summed RSS and PSS of the trees while running (a thread; start() / stop())."""

    roots: list[int]
    interval: float = 0.05
    peak_rss: int = 0
    peak_pss: int = 0
    peak_procs: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> MemorySampler:
        reset_peaks(self.roots)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MemorySampler:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(pss=True)
        return self

    def _sample(self, pss: bool, pids: list[int] | None = None) -> None:
        pids = pids if pids is not None else tree(self.roots)
        self.peak_procs = max(self.peak_procs, len(pids))
        self.peak_rss = max(self.peak_rss, sum(_rss(p) for p in pids))
        if pss:
            self.peak_pss = max(self.peak_pss, sum(_pss(p) for p in pids))

    def _run(self) -> None:
        n, pids = 0, tree(self.roots)
        while not self._stop.wait(self.interval):
            if n % 20 == 19:  # a /proc scan costs milliseconds: the tree is refreshed once a second
                pids = tree(self.roots)
            self._sample(pss=n % 10 == 0, pids=pids)
            n += 1
