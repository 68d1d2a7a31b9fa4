"""/attest's work, through the verifier registry: the server never names a TEE.

Nothing runs on the event loop: the message is parsed (bounded JSON, strict JWK, init-data) on
the verification pool, and each verifier pushes its own CPU work there (the C core releases the
GIL, so reports verify on every core while the loop keeps serving).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime
from typing import Any, TypeVar

from kbs.evidence import composite
from kbs.evidence.base import CPU, Appraisal
from kbs.evidence.composite import AttestationMessage
from kbs.evidence.registry import VerifierRegistry

T = TypeVar("T")


class Attestor:
    def __init__(self, registry: VerifierRegistry, executor: Executor) -> None:
        self.registry = registry
        self._executor = executor

    @property
    def tees(self) -> tuple[str, ...]:
        """The TEEs a guest may name at /auth: the enabled CPU verifiers."""
        return self.registry.names_of_class(CPU)

    async def _offload(self, fn: Callable[..., T], /, *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def verify(self, tee: str, raw: bytes, session_nonce: str,
                     at: datetime) -> tuple[AttestationMessage, list[Appraisal]]:
        """The attestation message as the guest sent it -> its appraisals (primary first), or a KbsError."""
        message = await self._offload(AttestationMessage.from_bytes, raw)
        return message, await composite.appraise(self.registry, tee, message, session_nonce, at, self._offload)

    async def close(self) -> None:
        await self.registry.close()
