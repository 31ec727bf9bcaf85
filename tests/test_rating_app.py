"""The rating website over HTTP: 10 raters at once, blinding, and a real browser session."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import threading
import time

import pandas as pd
import pytest

gr = pytest.importorskip("gradio", reason="the rating site needs gradio (pip install 'hicur-monai[web]')")

from hicur_monai.evaluation.demo import make_demo_study  # noqa: E402
from hicur_monai.evaluation.rating.store import RatingStore  # noqa: E402
from hicur_monai.evaluation.records import Answer, read_items  # noqa: E402

N_RATERS, N_SCORES, N_ITEMS = 10, 50, 17
SYSTEMS = [f"system-{secrets.token_hex(6)}" for _ in range(3)]  # unguessable: any leak is a real leak
CRITERIA = ("accuracy", "completeness", "reliability", "safety")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from hicur_monai.evaluation.rating import store as store_module
    from hicur_monai.evaluation.rating.app import serve
    from hicur_monai.evaluation.rating.guard import LoginThrottle

    mp = pytest.MonkeyPatch()
    mp.setitem(store_module.SCRYPT_PARAMS, "n", 2**10)  # fast accounts; the cost is tested in test_rating_store
    root = tmp_path_factory.mktemp("rating")
    study = make_demo_study(root / "study", n_items=N_ITEMS)
    items = read_items(study["items"])
    answers = [Answer(it.item_id, s, f"Answer number {k} to question {it.item_id}.")
               for it in items for k, s in enumerate(SYSTEMS)]
    store = RatingStore(root / "study.sqlite")
    store.add_study(items, answers, images_dir=study["images"])
    for i in range(N_RATERS):
        store.add_rater(f"rater{i}", f"password-{i}")
    store.add_rater("browser", "browser-password")
    store.add_rater("victim", "victim-password")
    demo = serve(store.path, port=0, block=False, throttle=LoginThrottle(max_per_account=3, max_per_address=1000))
    yield store, demo.local_url
    demo.close()
    mp.undo()


def _expected(i: int, k: int) -> dict[str, float]:
    return {"accuracy": float(i), "completeness": float(k % 11), "reliability": float(10 - i),
            "safety": float((i + 3 * k) % 11)}


def _login(url: str, user: str, password: str):
    import httpx

    client = httpx.Client(base_url=url, timeout=120)
    r = client.post("login", data={"username": user, "password": password})
    if r.status_code != 200:
        client.close()
        raise PermissionError(f"login of {user} failed: HTTP {r.status_code} {r.text}")
    return client


def _call(client, name: str, *data):
    """POST /gradio_api/run/<name>; returns (decoded result, raw response text)."""
    r = client.post(f"gradio_api/run/{name}", json={"data": list(data)})
    assert r.status_code == 200, (name, r.status_code, r.text)
    return r.json()["data"][0], r.text


def test_server_binds_to_localhost_and_requires_login(site):
    import httpx

    _, url = site
    assert url.startswith("http://127.0.0.1:")
    assert httpx.get(url + "config").status_code == 401
    assert httpx.post(url + "gradio_api/run/units", json={"data": []}).status_code == 401
    with pytest.raises(PermissionError, match="HTTP 400"):
        _login(url, "rater0", "wrong-password")
    with contextlib.closing(_login(url, "rater0", "password-0")) as c:
        units, _ = _call(c, "units")
        assert units["total"] == N_ITEMS * len(SYSTEMS)
        r = c.post("gradio_api/run/submit", json={"data": [units["units"][0]["item_id"], "ZZ", 1, 1, 1, 1]})
        assert r.status_code == 404 and "no answer labelled 'ZZ'" in r.text



def test_bad_api_input_is_a_4xx_with_a_reason_and_no_internal_text(site):
    store, url = site
    with contextlib.closing(_login(url, "rater1", "password-1")) as c:
        units, _ = _call(c, "units")
        u = units["units"][0]
        cases = [
            ({"data": [{"a": 1}, u["label"], 1, 1, 1, 1]}, 422, "item_id must be a non-empty string"),
            ({"data": [u["item_id"], u["label"], 11, 1, 1, 1]}, 422, "must be from 0 to 10"),
            ({"data": [u["item_id"], u["label"], "NaN", 1, 1, 1]}, 422, "must be a number"),
            ({"data": [u["item_id"], u["label"], 1, 1]}, 400, "'data' must hold 6 value(s)"),
            ({"items": []}, 400, "must be a JSON object"),
        ]
        for body, status, reason in cases:
            r = c.post("gradio_api/run/submit", json=body)
            assert r.status_code == status and reason in r.json()["error"], (body, r.status_code, r.text)
            assert "sqlite" not in r.text.lower() and "binding" not in r.text.lower()
        r = c.post("gradio_api/run/view", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.text
        assert store.view("rater1", u["item_id"], u["label"])["scores"]["accuracy"] is None  # nothing stored


def test_uploads_and_large_bodies_are_refused_and_nothing_is_left(site):
    import tempfile
    from pathlib import Path

    _, url = site
    name = f"evil-{secrets.token_hex(6)}.bin"
    with contextlib.closing(_login(url, "rater2", "password-2")) as c:
        r = c.post("gradio_api/upload", files={"files": (name, b"x" * (2 << 20))})
        assert r.status_code in (403, 413) and "upload" in r.text
        r = c.post("gradio_api/run/view", json={"data": ["x" * (2 << 20), "A"]})
        assert r.status_code == 413 and "larger than" in r.text
        units, _ = _call(c, "units")  # still serving
        assert units["total"] == N_ITEMS * len(SYSTEMS)
    tmp = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    leftovers = list(tmp.rglob(name)) if tmp.is_dir() else []
    assert not leftovers, leftovers


def test_failed_logins_lock_the_account_with_a_clear_message(site):
    _, url = site
    for _ in range(3):
        with pytest.raises(PermissionError, match="HTTP 400"):
            _login(url, "victim", "guess-password")
    with pytest.raises(PermissionError, match="HTTP 429") as err:
        _login(url, "victim", "victim-password")  # even the right password, while locked
    assert "Too many failed logins for this account; try again in 15 minutes" in str(err.value)
    with contextlib.closing(_login(url, "rater3", "password-3")) as c:  # other accounts unaffected
        assert _call(c, "units")[0]["total"] == N_ITEMS * len(SYSTEMS)


def test_throttle_per_account_and_address_expires_and_counts_attempts_in_flight():
    from hicur_monai.evaluation.rating.guard import LoginLocked, LoginThrottle

    now = [0.0]
    t = LoginThrottle(max_per_account=3, max_per_address=5, window=600, clock=lambda: now[0])
    for _ in range(3):
        t.begin("alice", "10.0.0.1")  # three failures (never marked succeeded)
    with pytest.raises(LoginLocked, match="account; try again in 10 minutes") as err:
        t.begin("alice", "10.0.0.2")
    assert err.value.retry_after == 600
    tok = t.begin("bob", "10.0.0.1")
    t.succeeded("bob", "10.0.0.1", tok)  # a success does not count against the address
    t.begin("carol", "10.0.0.1")
    t.begin("dave", "10.0.0.1")
    with pytest.raises(LoginLocked, match="address"):  # 5 failures from one address, any accounts
        t.begin("erin", "10.0.0.1")
    t.begin("erin", "10.0.0.9")  # another address is fine
    now[0] = 601.0
    assert not t.locked("account", "alice") and not t.locked("address", "10.0.0.1")
    t.begin("alice", "10.0.0.1")


def test_password_check_runs_off_the_event_loop():
    import asyncio

    from hicur_monai.evaluation.rating.guard import LoginThrottle, make_auth

    release = threading.Event()
    threads: list[int] = []

    nice: list[int] = []

    def slow_verify(user: str, password: str) -> bool:  # blocks until the loop releases it
        threads.append(threading.get_ident())
        if hasattr(os, "getpriority"):
            nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return release.wait(timeout=20) and password == "right-password"

    auth = make_auth(slow_verify, LoginThrottle())

    async def scenario() -> tuple[bool, bool]:
        login = asyncio.ensure_future(auth("alice", "right-password"))
        await asyncio.sleep(0.05)  # the loop still runs while the hash is being computed
        release.set()
        return await login, threading.get_ident() not in threads

    ok, off_loop = asyncio.run(scenario())
    auth.pool.shutdown()
    assert ok and off_loop and threads
    assert nice in ([], [19])  # hashes yield the CPU to the raters' requests (Linux)

@pytest.mark.slow
def test_ten_raters_submit_at_once_through_the_api(site):
    store, url = site
    responses: dict[int, list[str]] = {i: [] for i in range(N_RATERS)}
    submitted: dict[int, list[tuple[str, str]]] = {i: [] for i in range(N_RATERS)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(N_RATERS)

    def rater(i: int) -> None:
        try:
            with contextlib.closing(_login(url, f"rater{i}", f"password-{i}")) as client:
                for page in ("", "config"):  # what a browser loads
                    responses[i].append(client.get(page).text)
                units, raw = _call(client, "units")
                responses[i].append(raw)
                barrier.wait(timeout=120)  # everyone submits at the same time
                for k, u in enumerate(units["units"][:N_SCORES]):
                    s = _expected(i, k)
                    _, raw = _call(client, "submit", u["item_id"], u["label"], *(s[c] for c in CRITERIA))
                    responses[i].append(raw)
                    submitted[i].append((u["item_id"], u["label"]))
                # read back: each rater sees only their own scores
                for k in (0, N_SCORES // 2, N_SCORES - 1):
                    item_id, label = submitted[i][k]
                    view, raw = _call(client, "view", item_id, label)
                    responses[i].append(raw)
                    assert view["scores"] == _expected(i, k)
                _, raw = _call(client, "units")
                responses[i].append(raw)
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            errors.append(err)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=rater, args=(i,)) for i in range(N_RATERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    elapsed = time.perf_counter() - t0
    assert not errors, errors[0]
    print(f"{N_RATERS} raters x {N_SCORES} submissions in {elapsed:.1f} s")

    rows = pd.DataFrame(store.export_rows())
    rows = rows[rows["rater"].str.startswith("rater")]
    assert len(rows) == N_RATERS * N_SCORES * len(CRITERIA)
    assert not rows.duplicated(["rater", "item_id", "system", "criterion"]).any()
    audit = pd.DataFrame(store.export_rows(audit=True))
    assert audit["rater"].str.startswith("rater").sum() == N_RATERS * N_SCORES * len(CRITERIA)  # once each
    for i in range(N_RATERS):
        for k, (item_id, label) in enumerate(submitted[i]):
            system = store.reveal(f"rater{i}", item_id, label)
            got = rows[(rows.rater == f"rater{i}") & (rows.item_id == item_id) & (rows.system == system)]
            assert dict(zip(got.criterion, got.score)) == _expected(i, k)
        last = json.loads(responses[i][-1])["data"][0]
        assert (last["scored"], last["total"]) == (N_SCORES, N_ITEMS * len(SYSTEMS))
    everything = "".join(r for rs in responses.values() for r in rs)
    assert len(everything) > 10_000
    for system in SYSTEMS:
        assert system not in everything, "a system identity reached a client"


def _chromium() -> tuple[str, str]:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver "
                    "(make browser-deps, or apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="the browser test needs selenium (pip install 'hicur-monai[dev]')")
    return chrome, driver


@pytest.mark.slow
def test_browser_login_score_next_logout_login_score_kept(site):
    chrome, chromedriver = _chromium()
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    store, url = site
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1280,1600"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    wait = WebDriverWait(driver, 90)
    total = N_ITEMS * len(SYSTEMS)

    def header() -> str:
        return driver.find_element(By.ID, "progress").text

    def login() -> None:
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"))
        driver.find_element(By.CSS_SELECTOR, "input[type=text]").send_keys("browser")
        driver.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys("browser-password")
        driver.find_element(By.XPATH, "//button[normalize-space()='Login']").click()
        wait.until(lambda d: d.find_elements(By.ID, "progress") and " scored" in header())

    def set_score(criterion: str, value: int) -> None:
        box = driver.find_element(By.CSS_SELECTOR, f"#score-{criterion} input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value))
        box.send_keys(Keys.TAB)
        # the page has taken the value when the slider's range input shows it
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"#score-{criterion} input[type=range]")
                   .get_attribute("value") == str(value))

    def submit_until(done) -> None:
        """Click submit until ``done()``: each slider's 'touched' mark makes a round trip to the server,
        and a click that overtakes it is refused as untouched (no score stored), so clicking again is
        safe. Bounded: 5 clicks."""
        for _ in range(5):
            driver.find_element(By.ID, "submit").click()
            try:
                WebDriverWait(driver, 20).until(lambda d: done())
                return
            except TimeoutException:
                continue
        raise AssertionError("submit did not go through in 5 clicks")

    try:
        driver.get(url)
        login()
        assert f"0 of {total} scored" in header()
        first = header().splitlines()[-1]  # "Item demo-000 · conversation · answer A"
        assert "answer A" in first
        # untouched sliders are not scores
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: "untouched slider is not a score" in d.page_source)
        assert store.progress("browser") == (0, total)
        for criterion, value in zip(CRITERIA, (0, 7, 8, 3)):
            set_score(criterion, value)
        submit_until(lambda: f"1 of {total} scored" in header())
        assert header().splitlines()[-1] != first  # moved on to the next answer
        assert "Not scored yet" in driver.find_element(By.ID, "status").text
        item_id, label = first.split(" · ")[0].split()[-1], first.split()[-1]
        assert store.view("browser", item_id, label)["scores"] == dict(zip(CRITERIA, (0.0, 7.0, 8.0, 3.0)))
        for system in SYSTEMS:
            assert system not in driver.page_source
        # log out, log back in
        driver.get(driver.find_element(By.ID, "logout").get_attribute("href"))
        login()
        assert f"1 of {total} scored" in header()
        driver.find_element(By.CSS_SELECTOR, "#browse input[type=checkbox]").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#browse input[type=checkbox]").is_selected())
        driver.find_element(By.ID, "prev").click()
        wait.until(lambda d: header().splitlines()[-1] == first)
        assert "Scored by you" in driver.find_element(By.ID, "status").text
        kept = [driver.find_element(By.CSS_SELECTOR, f"#score-{c} input[type=number]").get_attribute("value")
                for c in CRITERIA]
        assert kept == ["0", "7", "8", "3"]
    finally:
        driver.quit()
