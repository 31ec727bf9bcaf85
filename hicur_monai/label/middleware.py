"""ASGI middleware of the MONAI Label app: the access policy and query checks of :mod:`hicur_monai.label.safety`.

Plain ASGI (no web framework needed), installed by :func:`hicur_monai.label.guard.install_guard`.
The token of a request is ``X-HiCur-Token`` or ``Authorization: Bearer <token>`` (the first
where MONAI Label's own Keycloak login holds ``Authorization`` for its JWT).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from hicur_monai.label.safety import RequestRefused, check_access, check_query

__all__ = ["GuardMiddleware"]


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class GuardMiddleware:
    """ASGI middleware: the access policy and the query-string checks before MONAI Label sees a request."""

    def __init__(self, app: Any, prefix: str = "", admin_token: str | None = None,
                 annotator_token: str | None = None) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")
        self.admin_token = admin_token or None
        self.annotator_token = annotator_token or None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "/")
        if self.prefix and path.startswith(self.prefix):
            path = path[len(self.prefix):] or "/"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        # X-HiCur-Token where MONAI Label's own login (MONAI_LABEL_AUTH_ENABLE) uses Authorization for its JWT
        token = headers.get("x-hicur-token") or (auth[7:].strip() if auth.lower().startswith("bearer ") else None)
        try:
            check_access(scope["method"], path, token, self.admin_token, self.annotator_token)
            query = scope.get("query_string", b"").decode("utf-8", "replace")
            for key, value in parse_qsl(query, keep_blank_values=True):
                check_query(path, {key: value})  # every value of a repeated key
        except RequestRefused as err:
            await _send_json(send, err.status, {"detail": err.reason})
            return
        await self.app(scope, receive, send)
