"""The framework ceiling: a minimal aiohttp app shaped like the broker, on the same number of processes.

N worker processes (spawned, like the broker's) share one port with SO_REUSEPORT; three handlers read the
request body and answer canned bytes captured from a real broker exchange, so every body is the size the
broker's is and the generator does the same work against it (it signs evidence, parses the nonce, and
decrypts the canned JWE).  No verification, no store, no policy: the difference to the broker is the
broker's own work.

Run by bench_load.py: `python bench/ceiling.py --port P --workers N --canned FILE` (FILE: JSON with the
three response bodies and the Set-Cookie value).  Prints "listening" once every worker listens; stops on
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kbs.server.app import run_loop

LISTEN_BACKLOG = 4096


def make_app(canned: dict[str, str]) -> web.Application:
    auth_body, attest_body, resource_body = (canned[k].encode() for k in ("auth", "attest", "resource"))
    cookie = canned["cookie"]

    async def auth(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=auth_body, content_type="application/json", headers={"Set-Cookie": cookie})

    async def attest(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=attest_body, content_type="application/json", headers={"Set-Cookie": cookie})

    async def resource(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=resource_body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/kbs/v0/auth", auth)
    app.router.add_post("/kbs/v0/attest", attest)
    app.router.add_get("/kbs/v0/resource/{repo}/{type}/{tag}", resource)
    return app


async def _serve(port: int, canned: dict[str, str], pipe: Connection) -> None:
    runner = web.AppRunner(make_app(canned), access_log=None, handle_signals=False, keepalive_timeout=10)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=True, backlog=LISTEN_BACKLOG)
    await site.start()
    pipe.send("listening")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(pipe.fileno(), stop.set)  # the parent went away
    await stop.wait()
    await runner.cleanup()


def worker(port: int, canned: dict[str, str], pipe: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_loop(_serve(port, canned, pipe))  # the broker's event loop (uvloop when installed), for a fair ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--canned", type=Path, required=True)
    args = parser.parse_args()
    canned = json.loads(args.canned.read_text())
    context = multiprocessing.get_context("spawn")
    procs, pipes = [], []
    for _ in range(args.workers):
        mine, theirs = context.Pipe()
        proc = context.Process(target=worker, args=(args.port, canned, theirs), daemon=True)
        proc.start()
        procs.append(proc)
        pipes.append(mine)
    for pipe in pipes:
        assert pipe.recv() == "listening"
    print("listening", flush=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(p.is_alive() for p in procs):
        time.sleep(0.2)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(10)
    sys.exit(0)


if __name__ == "__main__":
    main()
