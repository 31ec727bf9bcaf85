"""Safe defaults for the MONAI Label server (runs in ``.venv-label``; imported by the exported app's ``main.py``).

MONAI Label 0.8.5 takes image ids, label tags and upload file names from the client and
joins them into paths; with its authentication off (the default: its own auth needs a
Keycloak realm) every route is open. The app installs three layers:

* :class:`SafeLocalDatastore`: the datastore checks every id, tag and upload suffix
  (:mod:`hicur_monai.label.safety`) and that every path it writes, reads or deletes
  resolves inside the studies folder; an upload never replaces an existing image;
* :class:`~hicur_monai.label.middleware.GuardMiddleware`: the access policy of
  :func:`~hicur_monai.label.safety.check_access` (sessions and proxies refused; model, logs, training and
  deletions only with the admin token ``HICUR_LABEL_ADMIN_TOKEN``; datastore uploads with
  ``HICUR_LABEL_ANNOTATOR_TOKEN`` when it is set; the token goes in ``Authorization: Bearer ...``
  or, where MONAI Label's own Keycloak login is on and holds that header, in ``X-HiCur-Token``) and the ids and tags of
  the query string. MONAI Label's login, when enabled, still applies on top: its roles check
  each route, but in 0.8.5 its annotator role may replace or delete the model, so the admin
  token is required in every case;
* route overrides (put first in the router) for the routes that read form fields:
  malformed or unexpected ``params`` / ``info`` are a 400 with the reason, inference runs
  on datastore ids only (no uploaded files, no sessions).

:func:`install_guard` installs the middleware and routes into ``monailabel.app.app``; it
raises when it cannot, so the server never starts unguarded.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from fastapi import APIRouter, BackgroundTasks, File, Form, UploadFile
from fastapi.responses import JSONResponse
from monailabel.datastore.local import LocalDatastore
from starlette.concurrency import run_in_threadpool

from hicur_monai.label.middleware import GuardMiddleware
from hicur_monai.label.safety import (
    RequestRefused,
    check_id,
    check_inside,
    check_suffix,
    check_tag,
    parse_params,
)

__all__ = ["ADMIN_TOKEN_ENV", "ANNOTATOR_TOKEN_ENV", "SafeLocalDatastore", "install_guard"]

logger = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "HICUR_LABEL_ADMIN_TOKEN"
ANNOTATOR_TOKEN_ENV = "HICUR_LABEL_ANNOTATOR_TOKEN"
INFER_PARAMS: dict[str, Any] = {"save_label": bool, "label_tag": str, "client_id": str}


def _info(info: Any) -> dict[str, Any]:
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise RequestRefused(400, f"info must be a JSON object, got {type(info).__name__}")
    return info


class SafeLocalDatastore(LocalDatastore):
    """MONAI Label's local datastore with every client-chosen name checked and every path kept inside the
    studies folder."""

    def _root(self) -> str:
        return self._datastore_path

    def _known(self, image_id: str) -> str:
        check_id(image_id)
        if image_id not in self._datastore.objects:
            raise RequestRefused(404, f"image {image_id!r} is not in the datastore")
        return image_id

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        suffix = check_suffix(image_filename)
        image_id = check_id(image_id)
        if image_id in self._datastore.objects:
            raise RequestRefused(409, f"image {image_id!r} exists; uploads do not replace images")
        check_inside(os.path.join(self._datastore.image_path(), image_id + suffix), self._root(), "image path")
        return super().add_image(image_id, image_filename, _info(image_info))

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        suffix = check_suffix(label_filename)
        self._known(image_id)
        check_tag(label_tag)
        check_inside(os.path.join(self._datastore.label_path(label_tag), image_id + suffix), self._root(), "label path")
        return super().save_label(image_id, label_filename, label_tag, _info(label_info))

    def remove_image(self, image_id: str) -> None:
        check_inside(self.get_image_uri(self._known(image_id)), self._root(), "image path")
        super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        self._known(label_id)
        check_tag(label_tag)
        uri = self.get_label_uri(label_id, label_tag)
        if not uri:
            raise RequestRefused(404, f"label {label_id!r} has no {label_tag!r} label")
        super().remove_label(label_id, label_tag)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        super().update_image_info(self._known(image_id), _info(info))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        self._known(label_id)
        super().update_label_info(label_id, check_tag(label_tag), _info(info))

    def get_image_uri(self, image_id: str) -> str:
        """The image's path, or ``""`` for an invalid or unknown id, or a file that resolves outside the
        studies folder."""
        try:
            uri = super().get_image_uri(check_id(image_id))
            return str(check_inside(uri, self._root())) if uri else ""
        except RequestRefused:
            return ""

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The label's path, or ``""`` (as :meth:`get_image_uri`)."""
        try:
            uri = super().get_label_uri(check_id(label_id), check_tag(label_tag))
            return str(check_inside(uri, self._root())) if uri else ""
        except RequestRefused:
            return ""


def _refusal(err: RequestRefused) -> JSONResponse:
    return JSONResponse({"detail": err.reason}, status_code=err.status)


def _overrides() -> APIRouter:
    """Routes that replace MONAI Label's form-reading routes: parse and check, then call MONAI Label's own handler."""
    from monailabel.config import settings
    from monailabel.endpoints import datastore as ep_ds
    from monailabel.endpoints import infer as ep_infer

    router = APIRouter(prefix=settings.MONAI_LABEL_API_STR)

    @router.put("/datastore/")
    @router.put("/datastore/image")
    async def add_image(background_tasks: BackgroundTasks, image: str | None = None, params: str = Form("{}"),
                        file: UploadFile = File(...)) -> Any:
        check_suffix(file.filename)
        image_id = check_id(image) if image else check_id(_stem(file.filename))
        p = parse_params(params)
        return await run_in_threadpool(ep_ds.add_image, background_tasks, image_id, json.dumps(p), file, None)

    @router.put("/datastore/label")
    async def save_label(background_tasks: BackgroundTasks, image: str, params: str = Form("{}"), tag: str = "final",
                         label: UploadFile = File(...)) -> Any:
        check_suffix(label.filename)
        p = parse_params(params)
        return await run_in_threadpool(ep_ds.save_label, background_tasks, check_id(image), json.dumps(p),
                                       check_tag(tag), label, None)

    @router.put("/datastore/image/info")
    async def image_info(image: str, info: str = Form("{}")) -> Any:
        return await run_in_threadpool(ep_ds.update_image_info, check_id(image), json.dumps(parse_params(info, "info")))

    @router.put("/datastore/label/info")
    async def label_info(label: str, tag: str, info: str = Form("{}")) -> Any:
        return await run_in_threadpool(ep_ds.update_label_info, check_id(label), check_tag(tag),
                                       json.dumps(parse_params(info, "info")))

    @router.put("/datastore/updatelabelinfo")
    async def label_info_old(label: str, tag: str, params: str = Form("{}")) -> Any:
        return await run_in_threadpool(ep_ds.update_label_info, check_id(label), check_tag(tag),
                                       json.dumps(parse_params(params)))

    @router.post("/infer/{model}")
    async def infer(background_tasks: BackgroundTasks, model: str, image: str = "", session_id: str = "",
                    params: str = Form("{}"), file: UploadFile = File(None), label: UploadFile = File(None),
                    output: str | None = None) -> Any:
        if file is not None or label is not None:
            raise RequestRefused(400,
                                 "uploaded files are not accepted: inference runs on datastore images (?image=<id>)")
        if session_id:
            raise RequestRefused(403, "sessions are disabled in this app")
        if not image:
            raise RequestRefused(400, "give the datastore image id: ?image=<id>")
        p = parse_params(params, allowed=INFER_PARAMS)
        if "label_tag" in p:
            check_tag(p["label_tag"])
        if output not in (None, *(r.value for r in ep_infer.ResultType)):
            raise RequestRefused(400, f"output must be one of {[r.value for r in ep_infer.ResultType]}")
        if output == "dicom_seg":
            raise RequestRefused(400, "output=dicom_seg needs a DICOM datastore; this app's studies are NIfTI/NRRD "
                                      "volumes (DICOM SEG is written by the bundle's inference on DICOM series)")
        return await run_in_threadpool(ep_infer.run_inference, background_tasks, model, check_id(image), "",
                                       json.dumps(p), None, None, output)

    return router


def _stem(filename: str | None) -> str:
    name = os.path.basename(str(filename or ""))
    return name[: -len(check_suffix(name))]


async def _refused_handler(request: Any, err: Exception) -> JSONResponse:
    return _refusal(err) if isinstance(err, RequestRefused) else JSONResponse({"detail": str(err)}, status_code=400)


def install_guard(fastapi_app: Any | None = None) -> bool:
    """Install the middleware, the route overrides and the refusal handler into the MONAI Label server app.

    Args:
        fastapi_app: the server's FastAPI app (default: ``monailabel.app.app`` when the server runs;
            nothing is installed outside the server).

    Returns:
        True when installed (False outside the server).

    Raises:
        RuntimeError: the app's middleware or routes cannot be replaced (the server must not start unguarded).
    """
    if fastapi_app is None:
        module = sys.modules.get("monailabel.app")
        if module is None:
            return False
        fastapi_app = module.app
    if getattr(fastapi_app.state, "hicur_guard", False):
        return True
    from monailabel.config import settings

    try:
        fastapi_app.router.routes[:0] = _overrides().routes
        fastapi_app.add_exception_handler(RequestRefused, _refused_handler)
        fastapi_app.add_exception_handler(json.JSONDecodeError, _refused_handler)
        fastapi_app.middleware_stack = None  # rebuilt with the guard on the next request
        fastapi_app.add_middleware(GuardMiddleware, prefix=settings.MONAI_LABEL_API_STR,
                                   admin_token=os.environ.get(ADMIN_TOKEN_ENV),
                                   annotator_token=os.environ.get(ANNOTATOR_TOKEN_ENV))
    except Exception as err:  # noqa: BLE001 - any failure here must stop the server
        raise RuntimeError(f"cannot install the request guard into the MONAI Label server: {err}") from err
    fastapi_app.state.hicur_guard = True
    logger.info("request guard installed (admin routes %s)", "on" if os.environ.get(ADMIN_TOKEN_ENV) else "off")
    return True
