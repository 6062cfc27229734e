"""The admin page in a real browser (Debian's Chromium driven by Playwright): log in, see a frozen session, confirm
it, see it open. Skips with a reason where no browser can be had; leaves a screenshot in the test's directory
(or in $TIERWISE_SCREENSHOT_DIR)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from infra.settings import Settings
from serving.app import create_app
from serving.model_source import LocalSource
from tests.conftest import HashingEmbedder
from tests.integration.conftest import ADMIN_KEY, CLIENT_KEY, bearer
from tests.integration.live_server import live_server

# Where the page's screenshot goes: the test's own directory, or TIERWISE_SCREENSHOT_DIR (e.g. bench/results, to
# refresh the committed bench/results/admin_ui.png) — a plain `make test` leaves the checkout clean.
SCREENSHOT_DIR_ENV = "TIERWISE_SCREENSHOT_DIR"
PROMPTS = ["what is 2+2", "name a colour", "hard " * 60, "please explain in detail " * 30, "translate 'cat'"]


def traffic(url: str) -> str:
    """Some routed prompts, an open session and one frozen at its cap; returns the frozen session's id."""
    with httpx.Client(base_url=url, headers=bearer(CLIENT_KEY), timeout=30) as http:
        http.put("/sessions/team-a", json={"cap_usd": 50.0}).raise_for_status()
        for i, p in enumerate(PROMPTS):
            http.post("/route", json={"prompt": p}).raise_for_status()
            routed = http.post("/route", json={"prompt": p, "session_id": "team-a"}).json()
            outcome = {"outcome_id": f"o-{i}", "decision_id": routed["decision_id"], "score": 1.0}
            http.post("/outcomes", json={**outcome, "cost_usd": routed["expected_cost_usd"] * 0.8}).raise_for_status()
        http.put("/sessions/batch-7", json={"cap_usd": 1e-6}).raise_for_status()
        frozen = http.post("/route", json={"prompt": PROMPTS[3], "session_id": "batch-7"})
        assert frozen.status_code == 402 and frozen.json()["status"] == "frozen"
    return "batch-7"


def test_log_in_confirm_a_frozen_session_and_see_it_open(live_url: str, browser: Any, tmp_path: Path) -> None:
    session = traffic(live_url)
    elsewhere: list[str] = []

    def only_local(route: Any) -> None:
        if urlsplit(route.request.url).netloc != urlsplit(live_url).netloc:
            elsewhere.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.route("**/*", only_local)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))

    tab.goto(live_url + "/ui")
    assert urlsplit(tab.url).path == "/ui/login"  # not logged in: sent to the login form
    tab.fill("input[name=key]", ADMIN_KEY)
    tab.click("button:has-text('Log in')")
    tab.wait_for_selector("#frozen")
    assert urlsplit(tab.url).path == "/ui"

    (cookie,) = [c for c in context.cookies() if c["name"] == "tierwise_ui"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and ADMIN_KEY not in cookie["value"]

    row = tab.locator(f"#frozen tr[data-session='{session}']")
    assert row.locator(".status").inner_text() == "frozen"
    assert tab.locator("#traffic .window").count() == 2
    assert "Savings against always-top" in tab.locator("#traffic").inner_text()
    screenshot = Path(os.environ.get(SCREENSHOT_DIR_ENV) or tmp_path) / "admin_ui.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000, "the screenshot is empty"

    row.locator("input[name=new_cap_usd]").fill("5")
    row.locator("button:has-text('Confirm')").click()
    tab.wait_for_selector(".flash")
    assert f"Session {session} confirmed" in tab.locator(".flash").inner_text()
    assert tab.locator(f"#frozen tr[data-session='{session}']").count() == 0
    assert tab.locator(f"#sessions tr[data-session='{session}'] .status").inner_text() == "open"

    with httpx.Client(base_url=live_url, timeout=30) as http:
        body = http.get(f"/sessions/{session}", headers=bearer(ADMIN_KEY)).json()
        assert (body["status"], body["cap_usd"]) == ("open", 5.0)
        routed = http.post("/route", json={"prompt": PROMPTS[0], "session_id": session}, headers=bearer(CLIENT_KEY))
        assert routed.status_code == 200

    tab.click("button:has-text('Log out')")
    tab.wait_for_selector("input[name=key]")
    tab.goto(live_url + "/ui")
    assert urlsplit(tab.url).path == "/ui/login"
    assert not elsewhere, elsewhere
    assert not errors, errors
    context.close()


def test_with_keys_off_the_page_logs_in_and_out_on_loopback(
    settings_factory: Callable[..., Settings], artifact_dir: Path, browser: Any
) -> None:
    """Keyless, the service refuses requests a page of another origin sent; the page's own forms send `Origin:
    null` (its Referrer-Policy is no-referrer), and its login was refused (review finding)."""

    def keyless() -> Any:
        settings = settings_factory(api_keys={})
        return create_app(settings=settings, model_source=LocalSource(artifact_dir), embedder=HashingEmbedder())

    with live_server(keyless) as url:
        context = browser.new_context()
        tab = context.new_page()
        tab.goto(url + "/ui")
        assert urlsplit(tab.url).path == "/ui/login"
        tab.fill("input[name=key]", "anything")
        tab.click("button:has-text('Log in')")
        tab.wait_for_selector("#frozen")
        assert urlsplit(tab.url).path == "/ui"
        tab.click("button:has-text('Log out')")
        tab.wait_for_selector("input[name=key]")
        context.close()
