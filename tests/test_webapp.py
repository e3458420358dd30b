"""The web client at /app/ (issue 26, docs/webapp.md).

The first tests read the static route over HTTP: content-hashed names, cache headers,
HEAD, ETags, gzip, and a clear 404 when the client was not built. The others open the
app in Debian's headless chromium, driven by ``playwright-core`` from npm through
``tests/browser/driver.mjs`` (JSON commands on stdin, as tests/interop does), against a
real ``modi-sync serve``: two devices of one user edit, one offline and across a reload,
and converge; a logout signs the other device out. Screenshots are kept under
``tests/artifacts/webapp/`` (gitignored). Install the packages with
``npm ci --prefix tests/browser``; the browser is ``/usr/bin/chromium`` (Debian's
``chromium`` package) or ``MODI_TEST_CHROMIUM``, and without one these tests are skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import queue
import re
import runpy
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from modi_sync.api import webapp

from .conftest import JWT_SECRET, ServerProcess, ServiceUrls

ROOT = Path(__file__).resolve().parents[1]
BROWSER_DIR = Path(__file__).parent / "browser"
ARTIFACTS = Path(__file__).parent / "artifacts" / "webapp"
CHROMIUM = os.environ.get("MODI_TEST_CHROMIUM") or shutil.which("chromium")


def _built() -> dict[str, bytes]:
    if not (webapp.DIST / "index.html").is_file():
        pytest.fail("the web client is not built: `pip install -e .` builds it "
                    "(or `npm ci --prefix web && node web/build.mjs`)")
    return {p.name: p.read_bytes() for p in webapp.DIST.iterdir()}


# -- the static route ------------------------------------------------------------------


def _assets(index: str) -> list[str]:
    return re.findall(r'(?:src|href)="\./(app\.[0-9a-f]{16}\.(?:js|css))"', index)


async def test_the_page_names_content_hashed_files_cached_for_a_year(client):
    built = _built()
    page = await client.get("/app/")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-cache"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    index = await page.text()
    assets = _assets(index)
    assert sorted(a.rsplit(".", 1)[1] for a in assets) == ["css", "js"]
    for name in assets:
        resp = await client.get(f"/app/{name}", headers={"Accept-Encoding": "identity"})
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        body = await resp.read()
        assert body == built[name]
        # the name is the content's: a changed file gets a new name
        assert name.split(".")[1] == hashlib.sha256(body).hexdigest()[:16]
    worker = await client.get("/app/sw.js")
    assert worker.headers["Cache-Control"] == "no-cache"
    assert worker.headers["Content-Type"] == "text/javascript; charset=utf-8"
    worker_source = await worker.text()
    assert all(f"./{name}" in worker_source for name in assets)


async def test_every_file_answers_head_etags_and_gzip(client):
    built = _built()
    for name in built:
        path = "/app/" if name == "index.html" else f"/app/{name}"
        got = await client.get(path, headers={"Accept-Encoding": "identity"})
        head = await client.head(path, headers={"Accept-Encoding": "identity"})
        assert head.status == 200, name
        assert await head.read() == b""
        assert head.headers["Content-Length"] == str(len(built[name]))
        for header in ("Content-Type", "Cache-Control", "ETag"):
            assert head.headers[header] == got.headers[header]
        again = await client.get(path, headers={"If-None-Match": got.headers["ETag"],
                                                "Accept-Encoding": "identity"})
        assert again.status == 304
        assert await again.read() == b""
    name = next(n for n in built if n.endswith(".js") and n != "sw.js")
    packed = await client.get(f"/app/{name}", headers={"Accept-Encoding": "gzip"},
                              auto_decompress=False)
    assert packed.headers["Content-Encoding"] == "gzip"
    assert packed.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(await packed.read()) == built[name]


async def test_unknown_files_and_the_bare_prefix(client):
    missing = await client.get("/app/app.0000000000000000.js")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "NOT_FOUND"
    for path in ("/app/../setup.cfg", "/app/%2e%2e%2fsetup.cfg", "/app/.gitignore"):
        assert (await client.get(path)).status == 404, path
    bare = await client.get("/app", allow_redirects=False)
    assert bare.status == 308
    assert bare.headers["Location"] == "/app/"
    page = await client.get("/app/index.html", allow_redirects=False)
    assert page.headers["Location"] == "/app/"


async def test_a_client_not_built_is_a_404_saying_so(aiohttp_client: AiohttpClient,
                                                     tmp_path: Path):
    from modi_sync.api.middleware import error_middleware

    app = web.Application(middlewares=[error_middleware])
    webapp.WebApp(tmp_path / "not-built").add_routes(app)
    client = await aiohttp_client(app)
    resp = await client.get("/app/")
    assert resp.status == 404
    assert "not built" in (await resp.json())["error"]["message"]


def test_the_installed_package_finds_the_built_files():
    import modi_sync

    assert Path(modi_sync.__file__).parent / "webapp_dist" == webapp.DIST
    assert "index.html" in _built()


def test_the_build_without_node_fails_saying_what_is_missing(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    """setup.py's hook, with no node or npm on PATH."""
    hook = runpy.run_path(str(ROOT / "setup.py"), run_name="setup_hook")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MODI_SKIP_WEB_BUILD", raising=False)
    with pytest.raises(SystemExit) as stopped:
        hook["build_web_client"]()
    assert "Node" in str(stopped.value) and "npm" in str(stopped.value)


# -- in the browser ---------------------------------------------------------------------


class Browser:
    """One ``node tests/browser/driver.mjs``: ``call`` sends a command, returns its reply."""

    def __init__(self, log_path: Path) -> None:
        self._log = log_path.open("wb")
        self.log_path = log_path
        env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
        self.proc = subprocess.Popen(
            ["node", str(BROWSER_DIR / "driver.mjs")], cwd=BROWSER_DIR, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, bufsize=1)
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._seq = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                self._lines.put({"event": "stdout", "line": line})
        self._lines.put(None)
        self.proc.stdout.close()

    def call(self, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        self._seq += 1
        seq = self._seq
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"seq": seq, "cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"browser: no reply to {cmd} in time{self._stderr()}") \
                    from None
            if message is None:
                self._lines.put(None)
                raise AssertionError(f"browser driver exited during {cmd}{self._stderr()}")
            if message.get("seq") == seq:
                assert message["ok"], (f"browser {cmd} failed: {message['error']}\n"
                                       f"page events: {self.events[-10:]}")
                return message
            self.events.append(message)

    def _stderr(self) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")[-3000:]
        return f"\n--- node stderr ---\n{text}" if text else ""

    # -- what a user does

    def open(self, cid: str, server: ServerProcess) -> None:
        self.call("context", id=cid, baseURL=server.http_url)
        assert self.call("goto", id=cid, path="/app/")["status"] == 200

    def wait(self, cid: str, until: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.call("wait", timeout=timeout + 5, id=cid, until=until,
                         ms=int(timeout * 1000))["app"]

    def sign_in(self, cid: str, email: str, password: str, action: str = "login") -> None:
        self.call("fill", id=cid, fields={"#auth-email": email, "#auth-password": password})
        self.call("click", id=cid, selector=f"#auth-form button[value={action}]")
        self.wait(cid, "app.signedIn && app.connection === 'online'")

    def add_workout(self, cid: str, name: str, weight: float, sets: int = 3,
                    reps: int = 5) -> None:
        self.call("fill", id=cid, fields={"#w-name": name, "#w-weight": weight,
                                          "#w-sets": sets, "#w-reps": reps})
        self.call("press", id=cid, selector="#w-name", key="Enter")  # the keyboard works
        self.wait(cid, f"app.workouts.some(w => w.includes({json.dumps(name)}))")

    def add_weight(self, cid: str, kg: float) -> None:
        self.call("fill", id=cid, fields={"#bw-weight": kg})
        self.call("click", id=cid, selector="#weight-form button")
        self.wait(cid, f"app.weights.some(w => w.startsWith('{kg} kg'))")

    def app(self, cid: str) -> dict[str, Any]:
        return self.call("read", id=cid)["app"]

    def screenshot(self, cid: str, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.call("screenshot", id=cid, path=str(path))
        return path

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
            self.proc.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def page_errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "pageerror"]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("no chromium (apt-get install chromium, or set MODI_TEST_CHROMIUM)")
    if shutil.which("node") is None:
        pytest.fail("the browser tests need Node.js 20+ on PATH")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.fail("the browser tests' npm packages are not installed: "
                    "run `npm ci --prefix tests/browser`")
    _built()
    driver = Browser(tmp_path / "browser.log")
    driver.call("launch", executablePath=CHROMIUM, timeout=60)
    yield driver
    driver.close()


@pytest.fixture
def server(services: ServiceUrls, tmp_path: Path,
           request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """conftest's server, with its access log on: the tests see which requests reached it.
    Parametrized indirectly, the parameter is more environment."""
    env = dict(os.environ, DATABASE_URL=services.database_url, REDIS_URL=services.redis_url,
               JWT_SECRET=JWT_SECRET, MODI_ACCESS_LOG="on", MODI_METRICS_LISTEN="off",
               MODI_RATE_LIMIT_AUTH="100000/60", MODI_RATE_LIMIT_REFRESH="100000/60",
               MODI_RATE_LIMIT_USER="100000/60", **getattr(request, "param", {}))
    proc = ServerProcess(tmp_path, env)
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


def _page_requests(server: ServerProcess) -> int:
    """How many requests for the page the server has answered."""
    return len(re.findall(r"GET /app/ ", server.log_path.read_text(errors="replace")))


def _rest(server: ServerProcess, method: str, path: str, body: Any = None,
          token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.http_url + path, data=data, method=method,
                                 headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
        raw = resp.read()
    return json.loads(raw)["data"] if raw else None


def _account(server: ServerProcess) -> tuple[str, str, str]:
    email, password = f"web-{uuid.uuid4().hex[:10]}@example.com", "a long password"
    pair = _rest(server, "POST", "/api/v1/auth/register", {"email": email, "password": password})
    return email, password, pair["access_token"]


@pytest.mark.interop
@pytest.mark.timeout(120)
def test_offline_edits_survive_a_reload_and_merge(server: ServerProcess, browser: Browser):
    email, password, token = _account(server)
    word = f"oats{uuid.uuid4().hex[:8]}"
    food = _rest(server, "POST", "/api/v1/foods", {
        "name": f"Rolled {word}", "calories": 380, "protein": 13, "carbs": 60, "fat": 7},
        token)
    laptop, phone = "laptop", "phone"
    for cid in (laptop, phone):
        browser.open(cid, server)
        browser.sign_in(cid, email, password)
    # each sees the other through awareness
    browser.wait(laptop, "app.devices === 1")
    browser.wait(phone, "app.devices === 1")

    # online: an edit on one shows on the other; food from the search, macros from the summary
    browser.add_workout(laptop, "Squat", 100)
    browser.wait(phone, "app.workouts.some(w => w.includes('Squat'))")
    browser.call("fill", id=laptop, fields={"#f-query": word})
    browser.call("click", id=laptop, selector="#food-search button")
    browser.wait(laptop, "app.foodMessage === '1 found.'")
    browser.call("fill", id=laptop, fields={"#f-quantity": 150, "#f-meal": "lunch"})
    browser.call("click", id=laptop, selector="#food-form button[type=submit]")
    browser.wait(laptop, f"app.foodLogs.some(f => f.includes('150 g of Rolled {word}'))")
    browser.wait(laptop, "app.pending === 0 && app.calories === '570 kcal'")

    # the laptop goes offline and edits; the phone edits meanwhile
    browser.call("offline", id=laptop, offline=True)
    browser.wait(laptop, "app.connection === 'offline'")
    browser.add_workout(laptop, "Bench press offline", 80)
    browser.add_weight(laptop, 81.4)
    browser.wait(laptop, "app.pending === 2")
    browser.call("fill", id=laptop, fields={"#f-query": word})
    browser.call("click", id=laptop, selector="#food-search button")
    offline = browser.wait(laptop, "app.foodMessage.includes('needs a network')")
    assert "offline" in offline["foodMessage"]
    browser.add_workout(phone, "Rows from the phone", 60)
    browser.wait(phone, "app.pending === 0")

    # the laptop reloads, still offline: the service worker serves the page, IndexedDB the edits
    asked = _page_requests(server)
    assert asked >= 2  # one for each device
    reloaded = browser.call("reload", id=laptop)
    assert reloaded["fromServiceWorker"] is True
    assert _page_requests(server) == asked, "the page came from the network"
    kept = browser.wait(laptop, "app.signedIn && app.workouts.length === 2 && app.pending === 2")
    assert any("Bench press offline" in w for w in kept["workouts"])
    assert any(w.startswith("81.4 kg") for w in kept["weights"])
    assert not any("Rows from the phone" in w for w in kept["workouts"])
    assert kept["connection"] == "offline"
    assert kept["calories"] == "570 kcal"  # the last summary the server gave, said to be so
    assert kept["macrosNote"].startswith("Offline: as the server had them")
    browser.screenshot(laptop, "offline-after-reload")

    # back online: both converge, nothing waits
    browser.call("offline", id=laptop, offline=False)
    both = "app.connection === 'online' && app.pending === 0 && app.workouts.length === 3 " \
           "&& app.weights.length === 1 && app.devices === 1"
    seen = {cid: browser.wait(cid, both) for cid in (laptop, phone)}
    for key in ("workouts", "weights", "foodLogs"):
        assert seen[laptop][key] == seen[phone][key], key
    browser.screenshot(laptop, "laptop-merged")
    browser.screenshot(phone, "phone-merged")

    # and the server stored it all: the document as the REST API reads it
    stored = _rest(server, "GET", "/api/v1/docs/default", token=token)
    assert sorted(w["name"] for w in stored["workouts"].values()) == [
        "Bench press offline", "Rows from the phone", "Squat"]
    assert [w["weight"] for w in stored["weights"].values()] == [81.4]
    (entry,) = stored["food_logs"].values()
    assert entry["food_id"] == food["id"] and entry["quantity_g"] == 150
    assert entry["meal_type"] == "lunch"
    for workout in stored["workouts"].values():
        assert set(workout) == {"name", "weight", "sets", "reps", "notes", "day", "day_order"}
    assert browser.page_errors() == []


@pytest.mark.interop
@pytest.mark.timeout(90)
def test_logging_out_signs_the_other_device_out(server: ServerProcess, browser: Browser):
    email, password = f"web-{uuid.uuid4().hex[:10]}@example.com", "a long password"
    browser.open("a", server)
    browser.sign_in("a", email, password, action="register")  # sign up in the app
    browser.open("b", server)
    browser.sign_in("b", email, password)
    browser.add_workout("b", "Deadlift", 140)
    browser.wait("a", "app.workouts.length === 1 && app.devices === 1")
    browser.screenshot("a", "signed-in")

    browser.call("click", id="a", selector="#logout")
    signed_out = browser.wait("a", "app.authShown && !app.signedIn")
    assert signed_out["authMessage"] == "You are signed out."
    # b's socket was closed with 4401: b shows the login screen
    other = browser.wait("b", "app.authShown && !app.signedIn", timeout=10)
    assert "signed out" in other["authMessage"]
    assert other["connection"] == "signed-out"
    assert browser.call("evaluate", id="b",
                        expression="localStorage.getItem('magni.session')")["value"] is None
    browser.screenshot("b", "signed-out-by-another-device")
    assert browser.page_errors() == []


@pytest.mark.interop
@pytest.mark.timeout(90)
@pytest.mark.parametrize("server", [{"MODI_ACCESS_TOKEN_TTL": "8"}], indirect=True,
                         ids=["ttl-8s"])
def test_tokens_are_refreshed_before_they_expire(server: ServerProcess, browser: Browser):
    email, password, _ = _account(server)
    browser.open("a", server)
    browser.sign_in("a", email, password)
    token = "JSON.parse(localStorage.getItem('magni.session')).access"
    first = browser.call("evaluate", id="a", expression=token)["value"]
    signed_in = time.monotonic()
    seen = {first}
    while time.monotonic() - signed_in < 10:  # past the first token's 8 s
        seen.add(browser.call("evaluate", id="a", expression=token)["value"])
        time.sleep(0.5)
    assert len(seen) >= 3, "the access token was not refreshed before it expired"
    # REST with the current token works, and so does the socket, reopened with it
    browser.call("fill", id="a", fields={"#f-query": f"nothing{uuid.uuid4().hex}"})
    browser.call("click", id="a", selector="#food-search button")
    browser.wait("a", "app.foodMessage === 'No food found.'")
    browser.call("reload", id="a")
    browser.wait("a", "app.signedIn && app.connection === 'online'")
    browser.add_workout("a", "Lunges", 20)
    browser.wait("a", "app.pending === 0")
    assert browser.page_errors() == []
