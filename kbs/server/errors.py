"""Protocol errors: Trustee's body `{"type": ".../errors/<Variant>", "detail": "..."}`.

Almost everything is 401, as Trustee does (its guests retry on 401 and treat other codes as
fatal); a malformed or oversized body is 400/413, an invalid path or unknown plugin 404.
Details name what was wrong and never carry key material.  Where the full story would tell
an unauthenticated caller something about the broker's resources or policies, the guest gets
`public` (a generic sentence) and the operator gets `detail` in the log, joined by `reference`.
"""

from __future__ import annotations

import json

from aiohttp import web

from kbs.errors import KbsError

ERROR_TYPE = "https://github.com/confidential-containers/kbs/errors/"


class ProtocolError(Exception):
    def __init__(self, variant: str, detail: str, status: int = 401, reason: str = "error", *,
                 public: str | None = None, decision: str = "deny") -> None:
        super().__init__(detail)
        self.variant = variant
        self.detail = detail  # for the log and the operator
        self.public = public  # for the guest, when it must say less than `detail`
        self.status = status
        self.reason = reason  # low-cardinality label for metrics and the log
        self.decision = decision  # deny, or error when the broker (not the request) failed
        self.reference: str | None = None
        self.logged = False  # already written to a log: do not write it twice

    def response(self) -> web.Response:
        detail = self.public or self.detail
        body: dict[str, str] = {"type": ERROR_TYPE + self.variant, "detail": detail}
        if self.reference:
            body["detail"] = f"{detail} (reference {self.reference})"
            body["reference"] = self.reference
        return web.Response(status=self.status, text=json.dumps(body), content_type="application/json")


def http_error(exc: web.HTTPException) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, a method the path does not take, a body past the app's limit)
    in the same JSON error body as every other; `Allow` is kept.  Redirects and successes pass unchanged."""
    if exc.status < 400:
        return exc
    variant = "".join(word.capitalize() for word in exc.reason.split()) or "HttpError"
    detail = exc.text if exc.status == 413 and exc.text else f"{exc.reason.lower()}: GET /openapi.json lists the routes"
    response = ProtocolError(variant, detail, status=exc.status).response()
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


class ServeError(KbsError):
    """The daemon cannot serve at all (the port is taken, workers keep failing at start): `kbs: error: serve: …`."""

    check = "serve"
