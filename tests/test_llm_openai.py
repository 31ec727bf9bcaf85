"""OpenAI-compatible HTTP client (openai SDK transport) against a local test server on 127.0.0.1."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

openai = pytest.importorskip("openai",
                             reason="the openai backend needs the openai SDK (pip install 'hicur-monai[vlm]')")

from hicur_monai.llm import ChatModelError, GenerationConfig, load_chat_model  # noqa: E402
from hicur_monai.llm.openai_http import RateLimiter, request_key  # noqa: E402

MSG = [{"role": "user", "content": "Describe the roof."}]


class _Server:
    """A chat-completions server whose replies are scripted per test."""

    def __init__(self):
        self.script: list = []  # items: (status, body-str), (status, body-str, headers) or "ok"
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers

            def log_message(self, *a):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization"),
                                        "port": self.client_address[1]})
                headers = {}
                item = server.script.pop(0) if server.script else "ok"
                if item == "teacher":  # answer a teacher prompt the way a good teacher model would
                    from hicur_monai.llm.rule import RuleChatModel

                    content = RuleChatModel().chat(body["messages"])
                    status, text = 200, json.dumps({"choices": [{"message": {"content": content}}]})
                elif item == "ok":
                    message = {"role": "assistant", "content": f"echo {len(server.requests)}"}
                    status, text = 200, json.dumps({"choices": [{"message": message}]})
                else:
                    status, text, *more = item
                    headers = more[0] if more else {}
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(text.encode())))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(text.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = _Server()
    yield s
    s.close()


class _SdkClock:
    """The SDK's ``time`` module with ``sleep`` recorded instead of slept."""

    def __init__(self):
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture(autouse=True)
def sdk_sleeps(monkeypatch):
    """What the SDK would sleep between its HTTP retries (no test waits for real)."""
    import openai._base_client as base

    clock = _SdkClock()
    monkeypatch.setattr(base, "time", clock)
    return clock.slept


def _model(server, **kw):
    sleeps: list[float] = []
    kw.setdefault("max_retries", 2)
    m = load_chat_model("openai", base_url=server.url, model="tiny", api_key_env="HICUR_TEST_KEY",
                        backoff=0.5, sleep=sleeps.append, **kw)
    return m, sleeps


def test_reply_payload_and_api_key(server, monkeypatch):
    monkeypatch.setenv("HICUR_TEST_KEY", "sekret")
    m, _ = _model(server, extra_body={"response_format": {"type": "json_object"}})
    assert m(MSG, GenerationConfig(max_new_tokens=7, temperature=0.0, seed=3)) == "echo 1"
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sekret"
    assert req["body"] == m.payload(MSG, GenerationConfig(max_new_tokens=7, temperature=0.0, seed=3))
    assert req["body"]["max_tokens"] == 7 and req["body"]["seed"] == 3
    assert req["body"]["response_format"] == {"type": "json_object"}
    monkeypatch.delenv("HICUR_TEST_KEY")
    m, _ = _model(server)
    m(MSG)
    assert server.requests[-1]["auth"] is None  # no key: no Authorization header


def test_connections_are_kept_alive(server):
    m, _ = _model(server)
    for k in range(3):
        m(MSG, GenerationConfig(max_new_tokens=5 + k))
    assert len(server.requests) == 3 and len({r["port"] for r in server.requests}) == 1  # one TCP connection


def test_500_then_success_is_retried_with_backoff(server, sdk_sleeps):
    server.script = [(500, "boom"), (503, "busy"), "ok"]
    m, sleeps = _model(server)
    assert m(MSG) == "echo 3"
    assert sleeps == [] and len(sdk_sleeps) == 2  # the SDK retried: exponential backoff with jitter
    assert 0.375 <= sdk_sleeps[0] <= 0.5 and 0.75 <= sdk_sleeps[1] <= 1.0
    assert m.stats["retries"] == 2 and m.stats["requests"] == 3 and m.stats["failures"] == 0


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_in_seconds_or_as_http_date(server, sdk_sleeps, form):
    value = "30" if form == "seconds" else email.utils.formatdate(time.time() + 30, usegmt=True)
    server.script = [(429, "slow down", {"Retry-After": value}), "ok"]
    m, _ = _model(server)
    assert m(MSG) == "echo 2"
    assert len(sdk_sleeps) == 1 and 28 <= sdk_sleeps[0] <= 31, sdk_sleeps


def test_malformed_json_is_retried_then_fails(server):
    server.script = [(200, "{not json"), (200, json.dumps({"choices": []})), (200, "<html>")]
    m, sleeps = _model(server)
    with pytest.raises(ChatModelError, match="3 attempts.*malformed reply"):
        m(MSG)
    assert len(server.requests) == 3 and len(sleeps) == 2 and m.stats["failures"] == 1


def test_client_error_is_not_retried(server):
    server.script = [(400, json.dumps({"error": "bad request"}))]
    m, sleeps = _model(server)
    with pytest.raises(ChatModelError, match="HTTP 400"):
        m(MSG)
    assert len(server.requests) == 1 and sleeps == []


def test_retries_used_up_is_an_error(server):
    server.script = [(503, "busy")] * 3
    m, _ = _model(server)
    with pytest.raises(ChatModelError, match="HTTP 503"):
        m(MSG)
    assert len(server.requests) == 3 and m.stats["failures"] == 1


def test_cache_on_disk_keyed_by_request(server, tmp_path):
    m, _ = _model(server, cache_dir=tmp_path / "cache")
    first = m(MSG)
    again = m(MSG)
    other = m(MSG, GenerationConfig(max_new_tokens=9))
    assert first == again == "echo 1" and other == "echo 2"
    assert len(server.requests) == 2 and m.stats["cache_hits"] == 1
    # a new client (a resumed run) reads the same cache
    m2, _ = _model(server, cache_dir=tmp_path / "cache")
    assert m2(MSG) == "echo 1" and len(server.requests) == 2
    key = request_key(m.url, m.payload(MSG))
    assert (tmp_path / "cache" / key[:2] / f"{key}.json").is_file()


def test_unreachable_server_fails_after_retries():
    m = load_chat_model("openai", base_url="http://127.0.0.1:9/v1", model="x", max_retries=1, timeout=2,
                        sleep=lambda s: None)
    with pytest.raises(ChatModelError, match="connection failed"):
        m(MSG)


def test_rate_limiter_spaces_calls():
    t = [0.0]
    slept: list[float] = []

    def sleep(s):
        slept.append(s)
        t[0] += s

    lim = RateLimiter(per_minute=120, clock=lambda: t[0], sleep=sleep)
    for _ in range(3):
        lim.wait()
    assert slept == [0.5, 0.5]
    with pytest.raises(ValueError):
        RateLimiter(per_minute=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="http"):
        load_chat_model("openai", base_url="ftp://x", model="m")


def test_openai_teacher_end_to_end(server, tmp_path):
    """The build pipeline over HTTP: good replies become conversations, bad ones recorded failures."""
    from hicur_monai.data.demo.endoscopy import generate_endoscopy
    from hicur_monai.data.instructions import build_instruction_data, collect_pairs
    from hicur_monai.llm.teacher import make_teacher

    generate_endoscopy(tmp_path, 3, seed=5, image_size=32)
    pairs, _ = collect_pairs(tmp_path / "reports", tmp_path / "endoscopy")
    # pair 1: a valid reply; pair 2: HTTP 500 then a valid reply; pair 3: non-JSON content twice
    bad = (200, json.dumps({"choices": [{"message": {"content": "Sure! Here is a nice conversation."}}]}))
    server.script = ["teacher", (500, "boom"), "teacher", bad, bad]
    teacher = make_teacher("openai", base_url=server.url, model="tiny", max_attempts=2, backoff=0.0,
                           max_retries=1, cache_dir=str(tmp_path / "cache"))
    s = build_instruction_data(pairs, teacher, tmp_path / "out", eval_fraction=0.0, progress=False)
    assert s["qa_pairs"] == 2 and s["failures"] == 1 and s["failures_by_reason"] == {"json": 1}
    fail = json.loads((tmp_path / "out" / "qa_failures.jsonl").read_text())
    assert [a["raw"] for a in fail["attempts"]] == ["Sure! Here is a nice conversation."] * 2
    assert all("<<<SOURCE" in r["body"]["messages"][1]["content"] for r in server.requests)
    assert s["teacher"] == "openai:tiny"


def test_sdk_client_is_configured_explicitly(server):
    m, _ = _model(server, timeout=30, max_retries=3)
    client = m._client
    assert isinstance(client, openai.OpenAI) and client.max_retries == 3
    assert client.timeout.read == 30 and client.timeout.connect == 10
    assert str(client.base_url).rstrip("/") == server.url
