"""Run a check on several threads at once (the C core releases the GIL) and re-raise the first failure."""

from __future__ import annotations

import threading
from collections.abc import Callable


def on_threads(check: Callable[[], None], count: int = 4) -> None:
    """`check` on `count` threads concurrently; the first exception any of them raised, raised here."""
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            check()
        except BaseException as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
