"""A scripted HTTP service on loopback for collateral-fetching tests (KDS, PCS, RIM, OCSP)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager

from aiohttp import web

Reply = tuple[int, bytes, dict[str, str]]


def scripted(replies: list[Reply] | None) -> web.Response:
    """The next scripted reply (the last one repeats); 404 when nothing is scripted."""
    if not replies:
        return web.Response(status=404, text="not found")
    status, body, headers = replies.pop(0) if len(replies) > 1 else replies[0]
    return web.Response(status=status, body=body, headers=headers)


@contextlib.asynccontextmanager
async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                method: str = "*") -> AsyncIterator[str]:
    """Serve every path with `handler` on 127.0.0.1; yields the base URL."""
    app = web.Application()
    app.router.add_route(method, "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def in_thread(serving: Callable[[], AbstractAsyncContextManager[str]]) -> Iterator[str]:
    """An async server (`serving()` yields its base URL) run on a thread and event loop of its own, for code
    that runs its own event loop (the CLIs); yields the base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    urls: list[str] = []
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        async with serving() as url:
            urls.append(url)
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield urls[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()
