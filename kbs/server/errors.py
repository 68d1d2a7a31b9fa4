"""Protocol errors: Trustee's body `{"type": ".../errors/<Variant>", "detail": "..."}`.

Almost everything is 401, as Trustee does (its guests retry on 401 and treat other codes as
fatal); an invalid path or unknown plugin is 404.  Details name what was wrong and never
carry key material.
"""

from __future__ import annotations

import json

from aiohttp import web

ERROR_TYPE = "https://github.com/confidential-containers/kbs/errors/"


class ProtocolError(Exception):
    def __init__(self, variant: str, detail: str, status: int = 401, reason: str = "error") -> None:
        super().__init__(detail)
        self.variant = variant
        self.detail = detail
        self.status = status
        self.reason = reason  # low-cardinality label for metrics and the release log

    def response(self) -> web.Response:
        body = json.dumps({"type": ERROR_TYPE + self.variant, "detail": self.detail})
        return web.Response(status=self.status, text=body, content_type="application/json")
