"""The rating site's scripted API: three FastAPI routes with 4xx answers for bad input.

``POST /gradio_api/run/units`` (``{"data": []}``), ``/gradio_api/run/view``
(``{"data": [item_id, label]}``) and ``/gradio_api/run/submit``
(``{"data": [item_id, label, accuracy, completeness, reliability, safety]}``) answer
``{"data": [result]}`` like Gradio's ``/run`` routes, which they stand in front of. The
rater is the one of the login cookie (Gradio's session tokens); without one: 401.
Errors are ``{"error": reason}`` with 400 (malformed request), 404 (no such answer for this
rater) or 422 (a score outside 0-10 or not a number); database errors are never shown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from hicur_monai.evaluation.judge import CRITERIA

from .store import RatingError, RatingStore, UnknownUnitError

__all__ = ["api_routes", "API_PREFIX"]

logger = logging.getLogger(__name__)

API_PREFIX = "/gradio_api/run"


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _rater(request: Request) -> str:
    """The logged-in rater of ``request`` (Gradio's login cookie), or a 401."""
    app = request.app
    cookie_id = getattr(app, "cookie_id", None)
    token = request.cookies.get(f"access-token-{cookie_id}") or request.cookies.get(
        f"access-token-unsecure-{cookie_id}")
    user = getattr(app, "tokens", {}).get(token) if token else None
    if not user:
        raise _ApiError(401, "not logged in: POST /login first")
    return user


def _args(body: Any, n: int, names: str) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise _ApiError(400, 'the body must be a JSON object {"data": [...]}')
    if len(body["data"]) != n:
        raise _ApiError(400, f"'data' must hold {n} value(s): {names}")
    return body["data"]


def _units(store: RatingStore, rater: str, body: Any) -> dict[str, Any]:
    _args(body, 0, "nothing")
    units = store.units(rater)
    return {"scored": sum(u.scored for u in units), "total": len(units),
            "units": [{"item_id": u.item_id, "label": u.label, "scored": u.scored} for u in units]}


def _view(store: RatingStore, rater: str, body: Any) -> dict[str, Any]:
    item_id, label = _args(body, 2, "item_id, label")
    return store.view(rater, item_id, label)


def _submit(store: RatingStore, rater: str, body: Any) -> dict[str, Any]:
    item_id, label, *scores = _args(body, 2 + len(CRITERIA), f"item_id, label, {', '.join(CRITERIA)}")
    at = store.submit(rater, item_id, label, dict(zip(CRITERIA, scores)))
    scored, total = store.progress(rater)
    return {"saved_at": at, "scored": scored, "total": total}


def _endpoint(store: RatingStore, fn: Callable[[RatingStore, str, Any], dict[str, Any]]) -> Callable[..., Any]:
    async def endpoint(request: Request) -> JSONResponse:
        try:
            rater = _rater(request)
            try:
                body = await request.json()
            except ValueError:
                raise _ApiError(400, "the body is not valid JSON") from None
            result = await run_in_threadpool(fn, store, rater, body)
        except _ApiError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        except UnknownUnitError as err:
            return JSONResponse({"error": str(err)}, status_code=404)
        except RatingError as err:
            return JSONResponse({"error": str(err)}, status_code=422)
        except Exception:  # noqa: BLE001 - logged here; the client gets no internal text
            logger.exception("rating API %s failed", request.url.path)
            return JSONResponse({"error": "internal error (logged on the server)"}, status_code=500)
        return JSONResponse({"data": [result]})

    return endpoint


def api_routes(store: RatingStore) -> list[APIRoute]:
    """The three API routes for ``store``, to be placed before Gradio's own routes."""
    routes = []
    for name, fn in (("units", _units), ("view", _view), ("submit", _submit)):
        endpoint = _endpoint(store, fn)
        for path in (f"{API_PREFIX}/{name}", f"{API_PREFIX}/{name}/"):
            routes.append(APIRoute(path, endpoint, methods=["POST"], include_in_schema=False))
    return routes
