"""Health and readiness per worker and for the whole broker.

`/healthz` and `/readyz` answer for the worker process that received the request, as before ("ok",
"ready"), and name it in the headers `Kbs-Worker` (its index) and `Kbs-Worker-Pid`.  With `?all` they
answer JSON that adds every worker as the supervisor sees it (kbs.server.workers writes that view to a
status file on each change); the status is then 503 unless every worker is running as well.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

WORKER_HEADER, PID_HEADER = "Kbs-Worker", "Kbs-Worker-Pid"
RUNNING = "running"


@dataclass(frozen=True)
class WorkerIdentity:
    index: int
    count: int = 1  # workers in all
    status_file: Path | None = None  # the supervisor's view of all workers; None: the only process


WORKER: web.AppKey[WorkerIdentity] = web.AppKey("worker", WorkerIdentity)


def this_worker(app: web.Application) -> WorkerIdentity:
    return app.get(WORKER) or WorkerIdentity(0)


def all_workers(worker: WorkerIdentity) -> list[dict[str, Any]]:
    """Every worker's index, pid, state and restarts; one running entry for a single process."""
    if worker.status_file is None:
        return [{"index": worker.index, "pid": os.getpid(), "state": RUNNING, "restarts": 0}]
    try:
        view = json.loads(worker.status_file.read_text())
        return list(view["workers"])
    except (OSError, ValueError, KeyError, TypeError):
        return []  # unreadable: nothing is known to be running


def answer(request: web.Request, status: int, text: str) -> web.Response:
    """The probe's answer for this worker; with `?all`, JSON with every worker too."""
    worker = this_worker(request.app)
    headers = {WORKER_HEADER: str(worker.index), PID_HEADER: str(os.getpid())}
    if "all" not in request.query:
        return web.Response(status=status, text=text, headers=headers)
    workers = all_workers(worker)
    everyone = bool(workers) and all(w.get("state") == RUNNING for w in workers)
    body = {"status": text, "worker": {"index": worker.index, "pid": os.getpid()}, "workers": workers}
    return web.json_response(body, status=status if everyone else 503, headers=headers)
