"""A chat model behind any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Standard library only (``urllib``). What a long teacher or judge run needs:

- the API key comes from an environment variable (never from a file or the command line);
- retries with exponential backoff (and ``Retry-After``) on connection errors, timeouts,
  HTTP 429 / 5xx and replies that are not the expected JSON; other 4xx fail at once;
- a client-side rate limit (requests per minute);
- an on-disk response cache keyed by the request (URL, model, messages, sampling), so a
  rerun or a resumed run never pays twice for the same answer.

Example:
    >>> from hicur_monai.llm import load_chat_model
    >>> model = load_chat_model("openai", base_url="http://127.0.0.1:8000/v1", model="llama3")  # doctest: +SKIP
    >>> model([{"role": "user", "content": "Hello"}])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hicur_monai.llm.base import ChatModel, ChatModelError, GenerationConfig, Message
from hicur_monai.registry import LLM_BACKENDS
from hicur_monai.utils.io import atomic_write_json

__all__ = ["OpenAIChatModel", "RateLimiter", "request_key"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class RateLimiter:
    """At most ``per_minute`` calls per minute, spaced evenly (thread-safe). ``None``: unlimited."""

    def __init__(self, per_minute: float | None = None, clock=time.monotonic, sleep=time.sleep):
        if per_minute is not None and per_minute <= 0:
            raise ValueError(f"requests per minute must be > 0, got {per_minute}")
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def wait(self) -> float:
        """Block until the next call may start; return the seconds waited."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = self._clock()
            delay = max(0.0, self._next - now)
            self._next = max(now, self._next) + self.interval
        if delay:
            self._sleep(delay)
        return delay


def request_key(url: str, payload: dict[str, Any]) -> str:
    """Cache key of a request: SHA-256 of the URL and the canonical JSON payload."""
    blob = json.dumps({"url": url, "payload": payload}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@LLM_BACKENDS.add_def("openai", "OpenAI-compatible HTTP chat endpoint (/v1/chat/completions), stdlib client")
class OpenAIChatModel(ChatModel):
    """Chat model served by an OpenAI-compatible HTTP endpoint.

    Args:
        base_url: endpoint root including ``/v1`` (default: ``$OPENAI_BASE_URL`` or the OpenAI API).
        model: model name sent in the request.
        api_key_env: name of the environment variable holding the API key (may be unset for
            local servers that need none).
        timeout: seconds per HTTP request.
        max_retries: retries after the first attempt.
        backoff: first retry delay in seconds (doubles each retry, capped at ``max_backoff``).
        max_backoff: longest delay between retries.
        requests_per_minute: client-side rate limit (``None``: none).
        cache_dir: folder of cached replies (``None``: no cache).
        extra_body: extra fields merged into every request (e.g. ``{"response_format": ...}``).
    """

    def __init__(self, base_url: str | None = None, model: str = "gpt-4-turbo", api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 60.0,
                 requests_per_minute: float | None = None, cache_dir: str | Path | None = None,
                 extra_body: dict[str, Any] | None = None, sleep=time.sleep):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("max_retries must be >= 0, timeout > 0 and backoff >= 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.name = f"openai:{model}"
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.limiter = RateLimiter(requests_per_minute, sleep=sleep)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.extra_body = dict(extra_body or {})
        self._sleep = sleep
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "failures": 0}

    # -- request --------------------------------------------------------------------------
    def payload(self, messages: Sequence[Message], config: GenerationConfig | None = None) -> dict[str, Any]:
        """The JSON body sent for ``messages`` (also the cache key's content)."""
        cfg = config or GenerationConfig()
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "max_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
        }
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if cfg.stop:
            body["stop"] = list(cfg.stop)
        body.update(self.extra_body)
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def chat(self, messages: Sequence[Message], config: GenerationConfig | None = None) -> str:
        body = self.payload(messages, config)
        key = request_key(self.url, body)
        cached = self._cache_path(key)
        if cached is not None and cached.is_file():
            try:
                reply = json.loads(cached.read_text(encoding="utf-8"))["reply"]
                self.stats["cache_hits"] += 1
                return reply
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring unreadable cache entry %s", cached)
        reply = self._post_with_retries(body)
        if cached is not None:
            atomic_write_json(cached, {"key": key, "url": self.url, "request": body, "reply": reply,
                                       "config": asdict(config or GenerationConfig())})
        return reply

    def _post_with_retries(self, body: dict[str, Any]) -> str:
        data = json.dumps(body).encode("utf-8")
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                if isinstance(last, _RetryAfter):
                    delay = max(delay, min(self.max_backoff, last.seconds))
                logger.info("retrying %s in %.1fs (attempt %d/%d): %s", self.url, delay, attempt + 1,
                            self.max_retries + 1, last)
                self._sleep(delay)
            self.limiter.wait()
            self.stats["requests"] += 1
            req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", errors="replace")[:500] if err.fp else ""
                if err.code not in _RETRY_STATUS:
                    self.stats["failures"] += 1
                    raise ChatModelError(f"{self.url}: HTTP {err.code} {err.reason}: {detail}") from None
                last = f"HTTP {err.code} {err.reason}: {detail}"
                retry_after = err.headers.get("Retry-After") if err.headers else None
                if retry_after:
                    try:
                        last = _RetryAfter(last, float(retry_after))
                    except ValueError:
                        pass
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                last = f"connection failed: {getattr(err, 'reason', err)}"
                continue
            try:
                return _extract_reply(raw)
            except ValueError as err:
                last = f"malformed reply: {err}"
                continue
        self.stats["failures"] += 1
        raise ChatModelError(f"{self.url}: no valid reply after {self.max_retries + 1} attempts; last error: {last}")


class _RetryAfter(str):
    """An error message carrying the server's Retry-After seconds."""

    def __new__(cls, text: str, seconds: float):
        obj = super().__new__(cls, text)
        obj.seconds = seconds
        return obj


def _extract_reply(raw: str) -> str:
    """The assistant text of a chat-completions response body.

    Raises:
        ValueError: the body is not JSON or lacks ``choices[0].message.content``.
    """
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"body is not JSON ({err.msg} at char {err.pos}): {raw[:200]!r}") from None
    if isinstance(doc, dict) and "error" in doc and "choices" not in doc:
        raise ValueError(f"server returned an error object: {str(doc['error'])[:300]}")
    try:
        content = doc["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"no choices[0].message.content in reply: {raw[:200]!r}") from None
    if not isinstance(content, str):
        raise ValueError(f"choices[0].message.content is {type(content).__name__}, expected str")
    return content
