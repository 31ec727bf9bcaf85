"""A chat model behind any OpenAI-compatible ``/v1/chat/completions`` endpoint.

The transport is the ``openai`` SDK (``pip install 'hicur-monai[vlm]'``): one client per
model, whose connection pool keeps connections alive across requests and threads. Around
it, what a long teacher or judge run needs:

- the API key comes from an environment variable (never from a file or the command line);
  without one, no ``Authorization`` header is sent (local servers);
- HTTP retries are the SDK's, configured explicitly (``max_retries``, ``timeout``): connection
  errors, timeouts, HTTP 408 / 409 / 429 / 5xx, with exponential backoff (0.5 s doubling to
  8 s, jittered) or the server's ``Retry-After`` (seconds or an HTTP-date, up to 2 minutes;
  ``retry-after-ms`` too); other 4xx fail at once;
- strict parsing of our own: the raw body must be JSON with a string
  ``choices[0].message.content``; a reply that is not is retried (``max_retries`` times,
  our ``backoff`` doubling to ``max_backoff``) and then an error, never a silent empty answer;
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
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hicur_monai.llm.base import ChatModel, ChatModelError, GenerationConfig, Message
from hicur_monai.registry import LLM_BACKENDS
from hicur_monai.utils.io import atomic_write_json

__all__ = ["OpenAIChatModel", "RateLimiter", "request_key"]

logger = logging.getLogger(__name__)

_NO_KEY = "no-key"  # the SDK wants a key; with this one the Authorization header is left out


class RateLimiter:
    """At most ``per_minute`` calls per minute, spaced evenly (thread-safe). ``None``: unlimited."""

    def __init__(self, per_minute: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
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


@LLM_BACKENDS.add_def("openai", "OpenAI-compatible HTTP chat endpoint (/v1/chat/completions), openai SDK client")
class OpenAIChatModel(ChatModel):
    """Chat model served by an OpenAI-compatible HTTP endpoint.

    Args:
        base_url: endpoint root including ``/v1`` (default: ``$OPENAI_BASE_URL`` or the OpenAI API).
        model: model name sent in the request.
        api_key_env: name of the environment variable holding the API key (may be unset for
            local servers that need none).
        timeout: seconds per HTTP request (the SDK's ``timeout``; connecting: at most 10 s).
        max_retries: retries after the first attempt: the SDK's HTTP retries, and ours of
            replies that are not the expected JSON.
        backoff: first delay before retrying a malformed reply (doubles each retry, capped at
            ``max_backoff``); HTTP retries follow the SDK's backoff or ``Retry-After``.
        max_backoff: longest delay between malformed-reply retries.
        requests_per_minute: client-side rate limit (``None``: none).
        cache_dir: folder of cached replies (``None``: no cache).
        extra_body: extra fields merged into every request (e.g. ``{"response_format": ...}``).
    """

    def __init__(self, base_url: str | None = None, model: str = "gpt-4-turbo", api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 60.0,
                 requests_per_minute: float | None = None, cache_dir: str | Path | None = None,
                 extra_body: dict[str, Any] | None = None, sleep: Callable[[float], None] = time.sleep):
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
        self._stats_lock = threading.Lock()
        self._client = self._make_client()

    def _make_client(self) -> Any:
        try:
            import openai
        except ImportError:
            raise ImportError("the 'openai' backend needs the openai SDK: pip install 'hicur-monai[vlm]'") from None
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        self._omit_auth = not key
        timeout = type(openai.DEFAULT_TIMEOUT)(self.timeout, connect=min(self.timeout, 10.0))  # the SDK's httpx
        return openai.OpenAI(base_url=self.url.rsplit("/chat/completions", 1)[0], api_key=key or _NO_KEY,
                             max_retries=self.max_retries, timeout=timeout)

    def _count(self, **inc: int) -> None:
        with self._stats_lock:
            for k, v in inc.items():
                self.stats[k] += v

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

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def chat(self, messages: Sequence[Message], config: GenerationConfig | None = None) -> str:
        body = self.payload(messages, config)
        key = request_key(self.url, body)
        cached = self._cache_path(key)
        if cached is not None and cached.is_file():
            try:
                reply = json.loads(cached.read_text(encoding="utf-8"))["reply"]
                self._count(cache_hits=1)
                return reply
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring unreadable cache entry %s", cached)
        reply = self._post_with_retries(body)
        if cached is not None:
            atomic_write_json(cached, {"key": key, "url": self.url, "request": body, "reply": reply,
                                       "config": asdict(config or GenerationConfig())})
        return reply

    def _post(self, body: dict[str, Any]) -> str:
        """One SDK call (with the SDK's HTTP retries); the raw response body.

        Raises:
            ChatModelError: a status the SDK does not retry, or retries used up.
            ConnectionError: the server could not be reached (after the SDK's retries).
        """
        import openai

        fields = {k: v for k, v in body.items() if k in ("model", "messages", "max_tokens", "temperature", "top_p",
                                                          "seed", "stop")}
        extra = {k: v for k, v in body.items() if k not in fields}
        headers = {"Authorization": openai.Omit()} if self._omit_auth else None
        try:
            raw = self._client.chat.completions.with_raw_response.create(**fields, extra_body=extra or None,
                                                                         extra_headers=headers)
        except openai.APIStatusError as err:
            self._count(requests=1, failures=1)
            detail = err.response.text[:500] if err.response is not None else ""
            raise ChatModelError(f"{self.url}: HTTP {err.status_code}: {detail}") from None
        except openai.APIConnectionError as err:  # includes timeouts
            self._count(requests=1)
            raise ConnectionError(f"connection failed: {err.__cause__ or err}") from None
        self._count(requests=1 + raw.retries_taken, retries=raw.retries_taken)
        return raw.http_response.text

    def _post_with_retries(self, body: dict[str, Any]) -> str:
        """:meth:`_post` until the reply parses (``max_retries`` more attempts)."""
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count(retries=1)
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                logger.info("retrying %s in %.1fs (attempt %d/%d): %s", self.url, delay, attempt + 1,
                            self.max_retries + 1, last)
                self._sleep(delay)
            self.limiter.wait()
            try:
                raw = self._post(body)
            except ConnectionError as err:
                self._count(failures=1)
                raise ChatModelError(f"{self.url}: {err} (after {self.max_retries} retries)") from None
            try:
                return _extract_reply(raw)
            except ValueError as err:
                last = f"malformed reply: {err}"
        self._count(failures=1)
        raise ChatModelError(f"{self.url}: no valid reply after {self.max_retries + 1} attempts; last error: {last}")


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
