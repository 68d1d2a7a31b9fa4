"""Each worker on a CPU of its own (`[server] pin_workers`), and the processes it starts back on all of them.

With as many workers as CPUs, a worker pinned to one keeps its caches warm; unpinned, the scheduler moves its
threads between the CPUs as they wake.  At 450 guests/s on the 2-core machine, unpinned workers had the higher
p99 in 10 of 15 alternating pairs and the higher CPU per release in 8 (by up to 13%; README).  Pinning applies to the
calling thread and to every thread it starts later (Linux), so a worker pins itself before it starts any.
A process the worker starts (a Rego worker) inherits the mask and is given back the whole set.
"""

from __future__ import annotations

import contextlib
import os

_everywhere: set[int] | None = None  # the CPUs this process could run on before it pinned itself


def pin(index: int, count: int) -> int | None:
    """Pin the calling thread (and the threads it starts) to CPU `index` of those this process may use, when
    there are at least `count` of them and `count` > 1; the CPU, or None when left to the scheduler."""
    global _everywhere
    if count < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < count or not 0 <= index < count:
        return None
    _everywhere = set(allowed)
    os.sched_setaffinity(0, {allowed[index]})
    return allowed[index]


def unpin(pid: int) -> None:
    """Give process `pid`, started by a pinned worker, every CPU the worker had before it pinned itself."""
    if _everywhere is not None:
        with contextlib.suppress(ProcessLookupError):  # gone already: its exit is handled where it is read
            os.sched_setaffinity(pid, _everywhere)
