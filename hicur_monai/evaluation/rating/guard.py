"""Login throttling, the password check off the event loop, and request limits of the rating site.

* :class:`LoginThrottle` counts failed logins per account and per client address in a
  sliding window; at the limit further attempts are refused with HTTP 429, a
  ``Retry-After`` header and a message saying when to try again, without running the
  password hash. An attempt counts as failed from the moment it starts (and is taken back
  when it succeeds), so a burst of parallel guesses cannot overrun the limit. Unknown
  accounts are throttled like real ones (no account discovery through the lockout).
* :func:`make_auth` is the coroutine Gradio's ``POST /login`` awaits: it checks the
  throttle, runs the scrypt check in a small thread pool (at most ``workers`` hashes of
  128 MiB at once) and never on the event loop; the pool's threads run at the lowest CPU
  priority (Linux: per-thread nice 19), so that hashes, a guesser's included, take the CPU
  only when the raters' requests leave it free.
* :class:`RequestGuard` (ASGI middleware) records each request's client address for the
  throttle, refuses bodies over ``max_body`` bytes with 413 before anything is read or
  written (chunked bodies are buffered up to the limit), and refuses file uploads with 403:
  the site has no upload field.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["LoginLocked", "LoginThrottle", "RequestGuard", "make_auth", "client_address"]

#: the client address of the request being served (set by :class:`RequestGuard`)
client_address: contextvars.ContextVar[str] = contextvars.ContextVar("client_address", default="unknown")

_UPLOAD_PATHS = ("/upload", "/gradio_api/upload", "/process_recording", "/gradio_api/process_recording")


class LoginLocked(Exception):
    """Too many failed logins for an account or an address."""

    def __init__(self, what: str, retry_after: float) -> None:
        self.what = what
        self.retry_after = max(1, math.ceil(retry_after))
        minutes = math.ceil(self.retry_after / 60)
        super().__init__(f"Too many failed logins for this {what}; try again in {minutes} minute"
                         f"{'s' if minutes != 1 else ''}.")


class LoginThrottle:
    """Failed-login counter per account and per address, over a sliding window.

    Args:
        max_per_account: failed attempts on one account within ``window`` seconds that
            lock it until the oldest of them leaves the window.
        max_per_address: the same for one client address (any accounts).
        window: the window in seconds (also the longest lockout).
        clock: time source (tests).
    """

    def __init__(self, max_per_account: int = 5, max_per_address: int = 20, window: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = {"account": max_per_account, "address": max_per_address}
        self.window = window
        self.clock = clock
        self._fails: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()
        self._calls = 0

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._fails.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._fails[key]
        return q

    def _prune(self, now: float) -> None:
        for key in list(self._fails):
            self._recent(key, now)

    def begin(self, account: str, address: str) -> float:
        """Start an attempt (counted as failed until :meth:`succeeded`); returns its token.

        Raises:
            LoginLocked: when the account or the address is at its limit.
        """
        with self._lock:
            now = self.clock()
            self._calls += 1
            if self._calls % 1000 == 0:
                self._prune(now)
            keys = (("account", account), ("address", address))
            for key in keys:
                q = self._recent(key, now)
                if len(q) >= self.limits[key[0]]:
                    raise LoginLocked(key[0], q[0] + self.window - now)
            for key in keys:
                self._fails.setdefault(key, deque()).append(now)
            return now

    def succeeded(self, account: str, address: str, token: float) -> None:
        """A correct password: take the attempt back and clear the account's failures."""
        with self._lock:
            self._fails.pop(("account", account), None)
            q = self._fails.get(("address", address))
            if q is not None:
                try:
                    q.remove(token)
                except ValueError:
                    pass

    def locked(self, kind: str, name: str) -> bool:
        """Whether ``kind`` (``"account"`` or ``"address"``) ``name`` is at its limit now."""
        with self._lock:
            return len(self._recent((kind, name), self.clock())) >= self.limits[kind]


def _lowest_priority() -> None:
    """Thread-pool initializer: this thread at nice 19 (Linux; elsewhere a no-op)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not permitted
        pass


def make_auth(verify: Callable[[str, str], bool], throttle: LoginThrottle,
              workers: int = 2) -> Callable[[str, str], Awaitable[bool]]:
    """The ``auth`` coroutine for :meth:`gradio.Blocks.launch`.

    Args:
        verify: the (slow, blocking) password check, e.g. :meth:`RatingStore.verify`.
        throttle: the login throttle.
        workers: hashes computed at once (each scrypt hash takes 128 MiB).

    Returns:
        ``async auth(username, password) -> bool``; raises FastAPI's ``HTTPException`` 429
        with ``Retry-After`` while locked.
    """
    from fastapi import HTTPException

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="password-check",
                              initializer=_lowest_priority)

    async def auth(username: str, password: str) -> bool:
        address = client_address.get()
        try:
            token = throttle.begin(username, address)
        except LoginLocked as err:
            raise HTTPException(status_code=429, detail=str(err),
                                headers={"Retry-After": str(err.retry_after)}) from None
        ok = await asyncio.get_running_loop().run_in_executor(pool, verify, username, password)
        if ok:
            throttle.succeeded(username, address, token)
        return bool(ok)

    auth.pool = pool  # type: ignore[attr-defined]  # shut down by the caller
    return auth


class RequestGuard:
    """ASGI middleware: client address for the throttle, body size limit, no uploads.

    Args:
        app: the wrapped ASGI app.
        max_body: largest request body in bytes (413 above it).
    """

    def __init__(self, app: Any, max_body: int = 1 << 20) -> None:
        self.app = app
        self.max_body = max_body

    @staticmethod
    async def _reply(send: Any, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        client_address.set(client[0] if client else "unknown")
        path = scope.get("path", "")
        if path.rstrip("/") in _UPLOAD_PATHS:
            await self._reply(send, 403, "this site accepts no file uploads")
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body:
                await self._reply(send, 413, f"request body larger than {self.max_body} bytes")
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        await self._buffered(scope, receive, send)

    async def _buffered(self, scope: dict, receive: Any, send: Any) -> None:
        """A body without Content-Length: read it up to the limit, then replay it."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                await self._reply(send, 413, f"request body larger than {self.max_body} bytes")
                return
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
