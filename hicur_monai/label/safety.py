"""Request checks of the MONAI Label app: ids, tags, upload suffixes, paths, params and the access policy.

Pure functions (no web framework), used by :mod:`hicur_monai.label.guard`, which installs
them into the MONAI Label server. Every refusal is a :class:`RequestRefused` carrying the
HTTP status and a reason that names the offending value but never reveals whether some
other file exists on the server.

Access policy (:func:`check_access`), by path (after MONAI Label's API prefix):

=====================================  ========================================================
``/session``, ``/proxy``, ``/wsi_infer``, ``/infer/wsi*``  refused (client uploads, DICOMweb proxy, pathology)
``/model``, ``/logs``, ``/reload``, ``/batch``, ``/scoring``,  admin token only; off when no admin token is set
``POST/DELETE /train``, ``DELETE /datastore/*``
``PUT /datastore/*``                   annotator token (or admin) when an annotator token is set, else open
everything else listed in ``OPEN``     open (bind to 127.0.0.1; a reverse proxy adds TLS and login)
anything not listed                    refused (404)
=====================================  ========================================================
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_SUFFIXES",
    "RequestRefused",
    "check_access",
    "check_id",
    "check_inside",
    "check_query",
    "check_suffix",
    "check_tag",
    "parse_params",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

REFUSED = ("/session", "/proxy", "/wsi_infer", "/infer/wsi")
ADMIN = ("/model", "/logs", "/reload", "/batch", "/scoring")
OPEN = ("/", "/docs", "/openapi.json", "/favicon.ico", "/static/", "/info", "/infer/", "/datastore",
        "/activelearning/", "/train", "/ohif/")


class RequestRefused(ValueError):
    """A refused request: ``status`` (HTTP code) and a reason (the exception message)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_id(value: Any, what: str = "image id") -> str:
    """An image/label id: letters, digits, ``_ . -``, at most 128 characters, no ``..``, no separator."""
    if not isinstance(value, str) or not _ID.fullmatch(value) or ".." in value:
        raise RequestRefused(400, f"invalid {what} {str(value)[:80]!r}: use letters, digits, '_', '.', '-' "
                                  "(no path separators, no '..', at most 128 characters)")
    return value


def check_tag(value: Any) -> str:
    """A label tag: letters, digits, ``_ -``, at most 64 characters."""
    if not isinstance(value, str) or not _TAG.fullmatch(value):
        raise RequestRefused(400, f"invalid label tag {str(value)[:80]!r}: use letters, digits, '_', '-'")
    return value


def check_suffix(filename: str | None, allowed: Iterable[str] = IMAGE_SUFFIXES) -> str:
    """The suffix of an uploaded file name, which must be one of ``allowed`` (the client's folders are ignored)."""
    name = os.path.basename(str(filename or "")).lower()
    for suffix in sorted(allowed, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise RequestRefused(400, f"upload {os.path.basename(str(filename or ''))[:80]!r}: only "
                              f"{', '.join(allowed)} files are accepted")


def check_inside(path: str | os.PathLike, root: str | os.PathLike, what: str = "path") -> Path:
    """``path`` resolved (links followed); it must lie inside ``root`` (resolved too)."""
    resolved = Path(os.path.realpath(path))
    base = Path(os.path.realpath(root))
    if resolved != base and not resolved.is_relative_to(base):
        raise RequestRefused(403, f"{what} leaves its folder")
    return resolved


def parse_params(text: str | bytes | None, field: str = "params",
                 allowed: Mapping[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    """A JSON object from a form field; ``allowed`` (name -> type) restricts its keys.

    Raises:
        RequestRefused: 400 when the text is not JSON, not an object, or has an unknown key or a wrong type.
    """
    if text in (None, b"", ""):
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestRefused(400, f"{field}: malformed JSON ({err})") from None
    if not isinstance(value, dict):
        raise RequestRefused(400, f"{field}: expected a JSON object, got {type(value).__name__}")
    if allowed is not None:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise RequestRefused(400, f"{field}: unsupported key(s) {unknown}; accepted: {sorted(allowed)}")
        for key, typ in allowed.items():
            if key in value and not isinstance(value[key], typ):
                raise RequestRefused(400, f"{field}: {key!r} has the wrong type ({type(value[key]).__name__})")
    return value


def _starts(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def _token_ok(given: str | None, expected: str | None) -> bool:
    return bool(expected) and given is not None and hmac.compare_digest(given.encode(), str(expected).encode())


def check_access(method: str, path: str, token: str | None, admin_token: str | None = None,
                 annotator_token: str | None = None) -> None:
    """Raise :class:`RequestRefused` unless the policy (module docstring) lets ``method path`` through.

    Args:
        method: HTTP method.
        path: request path without MONAI Label's API prefix.
        token: the bearer token of the request (``Authorization: Bearer ...``), if any.
        admin_token: the configured admin token (``None``: admin routes are off).
        annotator_token: the configured annotator token (``None``: datastore writes are open).
    """
    method = method.upper()
    path = "/" + path.lstrip("/")
    is_admin = _token_ok(token, admin_token)
    if _starts(path, REFUSED) or path.startswith("/infer/wsi"):
        raise RequestRefused(403, f"{path}: disabled in this app")
    admin_only = (_starts(path, ADMIN) or (_starts(path, ("/train",)) and method in ("POST", "DELETE", "PUT"))
                  or (_starts(path, ("/datastore",)) and method == "DELETE"))
    if admin_only:
        if not admin_token:
            raise RequestRefused(403, f"{method} {path}: off (no admin token configured: set HICUR_LABEL_ADMIN_TOKEN)")
        if not is_admin:
            raise RequestRefused(401, f"{method} {path}: needs the admin token (Authorization: Bearer ...)")
        return
    if _starts(path, ("/datastore",)) and method in ("PUT", "POST") and annotator_token:
        if not (is_admin or _token_ok(token, annotator_token)):
            raise RequestRefused(401, f"{method} {path}: needs the annotator token (Authorization: Bearer ...)")
    if path == "/" or _starts(path, [p for p in OPEN if p != "/"]):
        return
    raise RequestRefused(404, f"{path}: not found")


def check_query(path: str, query: Mapping[str, str]) -> None:
    """Ids and tags given in the query string of datastore and infer requests (before MONAI Label reads them)."""
    path = "/" + path.lstrip("/")
    if not _starts(path, ("/datastore", "/infer")):
        return
    for key in ("image", "id", "label"):
        if key in query and query[key] != "":
            check_id(query[key], f"{key} id")
    if "tag" in query:
        check_tag(query["tag"])
    if "session_id" in query and query["session_id"]:
        raise RequestRefused(403, "sessions are disabled in this app")
