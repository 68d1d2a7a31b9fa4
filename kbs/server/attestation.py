"""/attest's work, through the verifier registry: the server never names a TEE.

Cold or large work runs on the verification pool: a large message is parsed there (bounded JSON,
strict JWK, init-data), and each verifier pushes its cold work there (the C core releases the GIL,
so reports verify on every core while the loop keeps serving).  What is short and bounded (a typical
message, a report whose certificates and key table are cached) runs on the loop: in a boot storm
that is nearly every request, and a thread hop per step cost more than the step.

The session's primary verifier may decode the whole message itself (`composite.MessageDecoder`: SNP's
one-pass C scanner); when it has none or it declines, the JSON path runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime
from typing import Any, TypeVar

from kbs.evidence import composite
from kbs.evidence.base import CPU, Appraisal
from kbs.evidence.composite import AttestationMessage, MessageDecoder
from kbs.evidence.registry import TeeNotEnabled, VerifierRegistry

T = TypeVar("T")
# Messages up to this size are parsed on the loop (a typical SNP or TDX message is 10-20 KB: tens of
# microseconds with orjson); larger ones (GPU evidence lists, init-data) on the pool.
INLINE_MESSAGE_BYTES = 64 * 1024


class Attestor:
    def __init__(self, registry: VerifierRegistry, executor: Executor) -> None:
        self.registry = registry
        self._executor = executor

    @property
    def tees(self) -> tuple[str, ...]:
        """The TEEs a guest may name at /auth: the enabled CPU verifiers."""
        return self.registry.names_of_class(CPU)

    async def _offload(self, fn: Callable[..., T], /, *args: Any, inline: bool = False) -> T:
        if inline:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _decoder(self, tee: str) -> MessageDecoder | None:
        """The primary verifier's whole-message decoder, if it has one (an unknown TEE is refused later, as ever)."""
        try:
            verifier = self.registry.get(tee, CPU)
        except TeeNotEnabled:
            return None
        decoder: MessageDecoder | None = getattr(verifier, "decode_message", None)
        return decoder

    async def verify(self, tee: str, raw: bytes, session_nonce: str,
                     at: datetime) -> tuple[AttestationMessage, list[Appraisal]]:
        """The attestation message as the guest sent it -> its appraisals (primary first), or a KbsError."""
        message = await self._offload(AttestationMessage.from_bytes, raw, self._decoder(tee),
                                      inline=len(raw) <= INLINE_MESSAGE_BYTES)
        return message, await composite.appraise(self.registry, tee, message, session_nonce, at, self._offload)

    async def close(self) -> None:
        await self.registry.close()
