"""The guest side: what a confidential VM runs at boot to fetch a key from a KBS (protocol 0.4.0).

`evidence` produces TEE evidence (configfs-tsm for SEV-SNP, or the sample TEE), `client` runs
the /auth -> /attest -> resource exchange, `cli` is the `kbs-guest` command.
"""

from __future__ import annotations

from kbs.errors import KbsError


class GuestError(KbsError):
    """Fetching a key failed.  `check` is a stable "guest.*" label; `status` and `detail` are the
    broker's HTTP status and error detail when the broker answered."""

    check = "guest"

    def __init__(self, message: str, *, check: str | None = None, status: int | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message, check=check)
        self.status = status
        self.detail = detail
