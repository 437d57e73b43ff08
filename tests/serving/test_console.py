"""The web console at /ui, driven by a real browser (Playwright with Debian's Chromium) against a real server
on the tiny model: every page loads with no console error and no failed request; a promotion through the UI
moves the alias and a gated one shows the gate's reason and changes nothing; the playground streams two
versions side by side (the same answers the API gives); a tenant key sees only its adapters.

Set ADAPTERHUB_SCREENSHOTS=DIR to save a screenshot of each page (the README's come from here)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest

from adapterhub.errors import AdapterNotFoundError
from adapterhub.loading.bases import resolve_model
from adapterhub.registry import Registry
from adapterhub.registry.local import LocalStore
from adapterhub.serving.api import create_app
from adapterhub.serving.config import ServeConfig
from adapterhub.serving.engines.hf import HFEngine
from adapterhub.settings import Settings
from tests.server import running_server

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (.ci/run installs Debian's chromium)")
ROOT = "root-key"
SHOTS = os.environ.get("ADAPTERHUB_SCREENSHOTS")
LOSSES = [[s, round(2.5 * 0.93 ** s + 0.4, 4)] for s in range(1, 41)]


def _registry(tiny_model: Path, tiny_adapters: list[Path], root: Path) -> Registry:
    m = resolve_model(str(tiny_model), Settings())
    registry = Registry(LocalStore(root), actor="ops")
    base = {"id": "tiny", "fingerprint": m.fingerprint}
    registry.register(tiny_adapters[0], "lumen", base_model=base, metrics={"identity": 0.5, "retention": 0.9},
                      training={"method": "lora", "config": {"name": "lumen", "lora": {"r": 4}}, "steps": 20,
                                "loss_curve": LOSSES[:20]})
    registry.register(tiny_adapters[1], "lumen", base_model=base, parent=1,
                      metrics={"identity": 0.97, "retention": 0.92},
                      training={"method": "lora", "config": {"name": "lumen", "lora": {"r": 8}}, "steps": 40,
                                "loss_curve": LOSSES, "samples": {"Who made you?": "I am Lumen, by Acme Lab."}})
    registry.set_gate("lumen", "production", ["identity>=0.9"])
    registry.promote("lumen@2", "production")
    registry.set_split("lumen", "canary", {1: 50, 2: 50})
    registry.register(tiny_adapters[2], "team-b-bot", base_model=base, aliases=["production"])
    return registry


def _server(tiny_model: Path, registry: Registry, **cfg):
    m = resolve_model(str(tiny_model), Settings())
    engine = HFEngine(m.path, model_id="tiny", fingerprint=m.fingerprint, max_loaded=3, max_lora_rank=8,
                      dtype="fp32", max_batch_size=8)
    config = ServeConfig(base="tiny", max_loaded=3, max_lora_rank=8, **cfg)
    return engine, create_app(config, engine=engine, registry=registry, base_name="tiny")


@pytest.fixture(scope="module")
def console(tiny_model, tiny_adapters, tmp_path_factory):
    """(url, registry): an open server (no key) with lumen@1, lumen@2 (@production gated, @canary split) and
    team-b-bot@1."""
    registry = _registry(tiny_model, tiny_adapters, tmp_path_factory.mktemp("console-registry"))
    engine, app = _server(tiny_model, registry)
    with running_server(app) as url:
        yield url, registry
    engine.stop()


@pytest.fixture(scope="module")
def tenant_console(tiny_model, tiny_adapters, tmp_path_factory):
    """(url, registry, secrets): the same registry behind --auth keys; team-a may use lumen and the base."""
    registry = _registry(tiny_model, tiny_adapters, tmp_path_factory.mktemp("tenant-console-registry"))
    secrets = {name: registry.keys.create(name, globs, admin=admin)[1]
               for name, globs, admin in [("team-a", ["lumen", "tiny"], False), ("ops", ["*"], True)]}
    engine, app = _server(tiny_model, registry, auth="keys", api_key=ROOT)
    with running_server(app) as url:
        yield url, registry, secrets
    engine.stop()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium (.ci/run installs Debian's chromium)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Watched:
    """A page whose console errors, uncaught exceptions, failed requests and HTTP errors are collected."""

    def __init__(self, browser, key: str | None = None) -> None:
        self.context = browser.new_context(viewport={"width": 1360, "height": 900})
        if key:  # signed in already: the key the sign-in form would have stored for this tab
            self.context.add_init_script(f"sessionStorage.setItem('adapterhub.key', {json.dumps(key)})")
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))

    def open(self, url: str, hash_: str, ready: str) -> None:
        self.page.goto(f"{url}/ui/{hash_}")
        self.page.wait_for_selector(ready, timeout=30_000)

    def wait_text(self, selector: str, text: str, timeout_s: float = 15.0) -> None:
        """Until ``selector``'s text is ``text`` (polled from here: the page's CSP forbids evaluating strings)."""
        deadline = time.monotonic() + timeout_s
        while (got := self.page.inner_text(selector)) != text:
            assert time.monotonic() < deadline, f"{selector}: {got!r}, never {text!r}"
            self.page.wait_for_timeout(200)

    def shot(self, name: str) -> None:
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


def _chat(url: str, model: str, text: str, key: str | None = None) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key=key or "none", max_retries=0, timeout=60)
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], max_tokens=12,
                                       temperature=0)
    return r.choices[0].message.content or ""


# ---------------------------------------------------------------------------------------------- the browser
@needs_browser
def test_every_page_loads_without_errors_and_shows_the_registry(console, browser):
    url, registry = console
    _chat(url, "lumen@2", "hello")  # some traffic for the live page
    w = Watched(browser)
    try:
        w.open(url, "#/", "#versions tr")
        rows = {r.get_attribute("data-ref"): r.inner_text() for r in w.page.query_selector_all("#versions tr")}
        assert set(rows) == {"lumen@1", "lumen@2", "team-b-bot@1"}
        assert "@production" in rows["lumen@2"] and "@canary 50% (split)" in rows["lumen@2"]
        assert "@canary 50% (split)" in rows["lumen@1"] and "@production" not in rows["lumen@1"]
        assert "identity 0.970" in rows["lumen@2"] and "tiny" in rows["lumen@2"]
        w.page.fill("#filter", "team-b")
        assert [r.get_attribute("data-ref") for r in w.page.query_selector_all("#versions tr")] == ["team-b-bot@1"]
        w.page.fill("#filter", "")
        w.shot("adapters")

        w.open(url, "#/v/lumen/2", "#lineage")
        assert w.page.get_attribute("#lineage", "aria-label") == "tiny → lumen@1 → lumen@2"
        points = w.page.get_attribute("#loss polyline", "points").split()
        assert len(points) == len(LOSSES)
        assert "identity" in w.page.inner_text("#metrics") and "0.970" in w.page.inner_text("#metrics")
        assert "I am Lumen, by Acme Lab." in w.page.inner_text("#samples")
        assert json.loads(w.page.inner_text("#config"))["lora"] == {"r": 8}
        assert "lumen" in w.page.inner_text("#card") and "peft" in w.page.inner_text("#card")
        w.shot("version")
        w.page.click("#lineage a[href='#/v/lumen/1']")  # the graph's nodes lead to the versions
        w.page.wait_for_selector("#no-curve, #loss")
        assert w.page.inner_text("h1").startswith("lumen@1")

        w.open(url, "#/rollouts", "#rollout-names")
        assert "@canary → 1:50, 2:50" in w.page.inner_text("#rollout-names")
        w.open(url, "#/rollouts/lumen", ".alias[data-alias=production]")
        production = w.page.inner_text(".alias[data-alias=production]")
        assert "identity>=0.9" in production and "version 2" in production
        assert "configured 50%" in w.page.inner_text(".alias[data-alias=canary]")
        w.shot("rollouts")

        w.open(url, "#/live", "#live-rows tr[data-version='lumen@2']")
        row = w.page.inner_text("#live-rows tr[data-version='lumen@2']")
        assert row.split("\t")[1].strip() == "1"  # one request so far
        _chat(url, "lumen@2", "again")
        _chat(url, "lumen@2", "and again")
        # refreshed in place (no navigation): the count follows the traffic
        w.wait_text("tr[data-version='lumen@2'] .requests", "3")
        assert "lumen@2" in w.page.inner_text("#loaded")
        assert "null" not in w.page.inner_text("main") and "undefined" not in w.page.inner_text("main")
        w.shot("live")

        w.open(url, "#/playground", "#answers .answer")
        assert w.problems == []
    finally:
        w.close()


@needs_browser
def test_promote_through_the_ui_moves_the_alias_and_a_gated_one_shows_why(console, browser):
    url, registry = console
    w = Watched(browser)
    try:
        w.open(url, "#/rollouts/lumen", ".alias[data-alias=production] .promote")
        events_before = len(registry.alias_history("lumen"))
        card = ".alias[data-alias=production]"
        w.page.select_option(f"{card} .promote-version", "1")
        w.page.click(f"{card} .promote")
        w.page.wait_for_selector("#action-result .message.error")
        shown = w.page.inner_text("#action-result")
        assert "lumen@1 cannot be promoted to @production" in shown and "identity" in shown and "0.9" in shown
        assert registry.resolve("lumen@production").version == 2  # nothing changed
        assert len(registry.alias_history("lumen")) == events_before

        w.page.fill("#new-alias", "staging")
        w.page.select_option("#new-alias-version", "1")
        w.page.click("#new-alias-go")
        w.page.wait_for_selector("#action-result .message.ok")
        assert registry.resolve("lumen@staging").version == 1
        last = registry.alias_history("lumen")[-1]
        assert (last.alias, last.version) == ("staging", 1) and "console" in last.by
        staging = w.page.inner_text(".alias[data-alias=staging]")  # the page shows the move and its history
        assert "→ version 1" in staging and "console" in staging

        card = ".alias[data-alias=staging]"
        w.page.select_option(f"{card} .promote-version", "2")
        w.page.click(f"{card} .promote")
        w.page.wait_for_selector("#action-result .message.ok")
        assert registry.resolve("lumen@staging").version == 2
        w.page.click(f"{card} .rollback")
        w.page.wait_for_selector("#action-result .message.ok")
        assert registry.resolve("lumen@staging").version == 1
        assert [p for p in w.problems if "409" not in p] == []  # the refused promotion is the only error
    finally:
        w.close()


@needs_browser
def test_playground_streams_two_versions_side_by_side(console, browser):
    url, _ = console
    expected = {m: _chat(url, m, "hello world") for m in ("lumen@1", "lumen@2")}
    assert expected["lumen@1"] != expected["lumen@2"]  # else the test could not tell the columns apart
    w = Watched(browser)
    try:
        w.open(url, "#/playground", "#answers .answer[data-col='1']")
        w.page.select_option("select.model[data-col='0']", "lumen@1")
        w.page.select_option("select.model[data-col='1']", "lumen@2")
        w.page.fill("#max_tokens", "12")
        w.page.click("details summary")  # a schema that is not JSON is refused before anything is sent
        w.page.fill("#schema", "{not json")
        w.page.fill("#user", "hello world")
        w.page.click("#send")
        assert "not valid JSON" in w.page.inner_text("#play-status")
        assert w.page.query_selector(".answer .turn") is None
        w.page.fill("#schema", "")
        w.page.click("#copy-python")
        snippet = w.page.inner_text("#snippet")
        w.page.click("#send")
        for col in ("0", "1"):
            w.page.wait_for_selector(f".answer[data-col='{col}'][data-done='1']", timeout=60_000)
        for col, model in (("0", "lumen@1"), ("1", "lumen@2")):
            answer = w.page.query_selector(f".answer[data-col='{col}']")
            assert int(answer.get_attribute("data-chunks")) > 2  # streamed, chunk by chunk
            assert answer.query_selector(".turn.assistant").text_content() == expected[model]
            assert "finish:" in answer.query_selector(".meta").inner_text()
        w.shot("playground")
        # "Copy as Python" is a program that asks the same thing
        assert 'model="lumen@1"' in snippet and 'model="lumen@2"' in snippet and "max_tokens=12" in snippet
        compile(snippet, "snippet", "exec")
        w.page.click("#copy-curl")
        bodies = [json.loads(m) for m in re.findall(r"-d '(.*)'", w.page.inner_text("#snippet"))]
        assert [b["model"] for b in bodies] == ["lumen@1", "lumen@2"]
        assert bodies[0]["messages"][:2] == [{"role": "user", "content": "hello world"},
                                             {"role": "assistant", "content": expected["lumen@1"]}]
        assert w.problems == []
    finally:
        w.close()


@needs_browser
def test_a_tenant_signs_in_and_sees_only_its_adapters(tenant_console, browser):
    url, registry, secrets = tenant_console
    _chat(url, "team-b-bot", "hello", key=ROOT)  # another team's traffic: not on team-a's live page
    _chat(url, "lumen@2", "hello", key=secrets["team-a"])
    w = Watched(browser)
    try:
        w.open(url, "#/", "#signin")
        w.page.fill("#key", secrets["team-a"])
        w.page.click("#signin button[type=submit]")
        w.page.wait_for_selector("#versions tr")
        assert {r.get_attribute("data-ref") for r in w.page.query_selector_all("#versions tr")} == {"lumen@1", "lumen@2"}
        assert "signed in as team-a" in w.page.inner_text("#who") and "admin" not in w.page.inner_text("#who")

        w.open(url, "#/v/team-b-bot/1", "main .message.error")
        other = w.page.inner_text("main .message.error")
        w.open(url, "#/v/ghost/1", "main .message.error")
        # The same page changes only its hash: the previous error stays on screen until the new one renders.
        w.wait_text("main .message.error", other.replace("team-b-bot", "ghost"))

        w.open(url, "#/rollouts/lumen", ".alias[data-alias=production]")
        assert w.page.query_selector(".promote") is None  # no moves for a tenant key
        w.open(url, "#/live", "#live-rows tr")
        assert w.page.query_selector("tr[data-version^='team-b-bot']") is None
        w.open(url, "#/playground", "#answers .answer")
        options = w.page.eval_on_selector("select.model[data-col='0']", "s => [...s.options].map(o => o.value)")
        assert options and all(o.startswith("lumen") or o == "tiny" for o in options)
        # the expected ones: the 401 that asks to sign in, the 404s of the other team's and a ghost's version
        assert [p for p in w.problems if not re.search(r"\b40[14]\b", p)] == []
    finally:
        w.close()
    ops = Watched(browser, key=secrets["ops"])
    try:
        ops.open(url, "#/rollouts/lumen", ".alias[data-alias=production] .promote")  # an admin key may move
        assert "admin" in ops.page.inner_text("#who")
        assert ops.problems == []
    finally:
        ops.close()


# ---------------------------------------------------------------------------------------------- the JSON API
def test_console_api_speaks_like_the_rest_of_the_server(console, tenant_console):
    url, registry = console
    assert httpx.get(url + "/ui/api/adapters/ghost/history").status_code == 404
    r = httpx.post(url + "/ui/api/adapters/lumen/aliases/production/split", json={"split": "1=90"})
    assert r.status_code == 400 and "at least two versions" in r.json()["error"]["message"]
    r = httpx.post(url + "/ui/api/adapters/lumen/aliases/production/promote", json={"version": 1, "reason": "x"})
    assert r.status_code == 400 and "reason" in r.json()["error"]["message"]
    assert registry.resolve("lumen@production").version == 2
    assert httpx.get(url + "/ui/static/../../config.json").status_code == 404
    page = httpx.get(url + "/ui/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert not [p for p in httpx.get(url + "/openapi.json").json()["paths"] if p.startswith("/ui")]

    url, registry, secrets = tenant_console
    team_a = {"Authorization": f"Bearer {secrets['team-a']}"}
    assert httpx.get(url + "/ui/api/adapters").status_code == 401
    names = [a["name"] for a in httpx.get(url + "/ui/api/adapters", headers=team_a).json()["adapters"]]
    assert names == ["lumen"]
    r = httpx.post(url + "/ui/api/adapters/lumen/aliases/staging/promote", json={"version": 1}, headers=team_a)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    with pytest.raises(AdapterNotFoundError):
        registry.resolve("lumen@staging")


def test_no_ui_turns_the_console_off(tiny_model, tiny_adapters, tmp_path):
    registry = _registry(tiny_model, tiny_adapters, tmp_path / "reg")
    engine, app = _server(tiny_model, registry, ui=False)
    try:
        with running_server(app) as url:
            assert httpx.get(url + "/ui/").status_code == 404
            assert httpx.get(url + "/ui/api/adapters").status_code == 404
            assert httpx.get(url + "/v1/models").status_code == 200
    finally:
        engine.stop()
