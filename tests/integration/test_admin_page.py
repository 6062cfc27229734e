"""The admin page over HTTP: login, cookie, CSRF, the Confirm button, and what the page shows."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.store import DecisionRow
from serving.api.ui import CSP, LOGIN_COOKIE, SESSION_COOKIE
from serving.security import KeyRing, hash_key
from tests.integration.conftest import ADMIN_KEY, CLIENT_KEY, bearer
from tests.integration.proxy_fixtures import write_proxy_tiers

A, C = bearer(ADMIN_KEY), bearer(CLIENT_KEY)
LONG = "please explain in detail " * 30


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "the form carries no CSRF token"
    return m.group(1)


def log_in(client: TestClient, key: str = ADMIN_KEY) -> TestClient:
    r = client.post("/ui/login", data={"key": key, "csrf": csrf_of(client.get("/ui/login").text)})
    assert r.status_code == 303 and r.headers["location"] == "/ui", r.text
    return client


def freeze(client: TestClient, session: str = "frozen-1") -> str:
    """A session whose tiny cap froze it at its first /route."""
    assert client.put(f"/sessions/{session}", json={"cap_usd": 1e-9}, headers=C).status_code == 200
    r = client.post("/route", json={"prompt": LONG, "session_id": session}, headers=C)
    assert r.status_code == 402 and r.json()["status"] == "frozen"
    return session


def confirm(client: TestClient, session: str, cap: str, csrf: str | None = None) -> object:
    csrf = csrf if csrf is not None else csrf_of(client.get("/ui").text)
    return client.post(f"/ui/sessions/{session}/confirm", data={"new_cap_usd": cap, "csrf": csrf})


@pytest.fixture
def client(client_factory: Callable[..., TestClient]) -> TestClient:
    c = client_factory()
    c.follow_redirects = False
    return c


def status_of(client: TestClient, session: str) -> tuple[str, float | None]:
    body = client.get(f"/sessions/{session}", headers=A).json()
    return body["status"], body["cap_usd"]


def test_without_a_login_the_page_redirects_and_posts_are_refused(client: TestClient) -> None:
    session = freeze(client)
    r = client.get("/ui")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    r = client.post(f"/ui/sessions/{session}/confirm", data={"new_cap_usd": "5", "csrf": "x"})
    assert r.status_code == 401 and "log in" in r.text.lower()
    client.headers.update(A)  # a bearer key is no login: the page wants its cookie
    assert client.get("/ui").status_code == 303
    assert status_of(client, session) == ("frozen", 1e-9)


def test_the_login_cookie_is_signed_httponly_strict_and_never_the_key(client: TestClient) -> None:
    r = client.post("/ui/login", data={"key": ADMIN_KEY, "csrf": csrf_of(client.get("/ui/login").text)})
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(f"{SESSION_COOKIE}="))
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "max-age"} <= attrs
    assert "samesite=strict" in cookie.lower() and "path=/ui" in cookie.lower()
    assert ADMIN_KEY not in cookie
    page = client.get("/ui")
    assert page.status_code == 200 and "tierwise admin" in page.text
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script runs
    assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text


@pytest.mark.parametrize(("key", "status"), [("not-a-key", 401), (CLIENT_KEY, 403), ("", 401)])
def test_login_refuses_unknown_and_client_keys(client: TestClient, key: str, status: int) -> None:
    r = client.post("/ui/login", data={"key": key, "csrf": csrf_of(client.get("/ui/login").text)})
    assert r.status_code == status
    assert SESSION_COOKIE not in r.cookies
    assert client.get("/ui").status_code == 303


def test_login_without_its_csrf_token_is_refused(client: TestClient) -> None:
    client.get("/ui/login")
    r = client.post("/ui/login", data={"key": ADMIN_KEY, "csrf": "forged"})
    assert r.status_code == 403 and SESSION_COOKIE not in r.cookies
    client.cookies.delete(LOGIN_COOKIE, path="/ui")
    fresh = TestClient(client.app, follow_redirects=False)  # a form posted from elsewhere: no login cookie
    r = fresh.post("/ui/login", data={"key": ADMIN_KEY, "csrf": csrf_of(client.get("/ui/login").text)})
    assert r.status_code == 403


def test_confirm_without_the_csrf_token_is_refused(client: TestClient) -> None:
    session = freeze(client)
    log_in(client)
    other = TestClient(client.app, follow_redirects=False)
    other_csrf = csrf_of(log_in(other).get("/ui").text)  # another login's token
    for csrf in ("", "0" * 64, other_csrf):
        r = confirm(client, session, "5", csrf=csrf)
        assert r.status_code == 403, csrf  # type: ignore[attr-defined]
    assert status_of(client, session) == ("frozen", 1e-9)


def test_confirm_reopens_a_frozen_session_with_the_new_cap(client: TestClient) -> None:
    session = freeze(client)
    log_in(client)
    page = client.get("/ui").text
    assert f'action="/ui/sessions/{session}/confirm"' in page
    r = confirm(client, session, "5")
    assert r.status_code == 303 and r.headers["location"].startswith("/ui?")  # type: ignore[attr-defined]
    assert status_of(client, session) == ("open", 5.0)
    page = client.get(r.headers["location"]).text  # type: ignore[attr-defined]
    assert f"Session {session} confirmed" in page
    assert f'action="/ui/sessions/{session}/confirm"' not in page  # no longer among the frozen
    assert client.post("/route", json={"prompt": LONG, "session_id": session}, headers=C).status_code == 200


@pytest.mark.parametrize("cap", ["abc", "-1", "nan", "inf", "", "1e400"])
def test_a_bad_cap_is_a_400_with_a_reason(client: TestClient, cap: str) -> None:
    session = freeze(client)
    log_in(client)
    r = confirm(client, session, cap)
    assert r.status_code == 400 and "cap" in r.text  # type: ignore[attr-defined]
    assert status_of(client, session) == ("frozen", 1e-9)


def test_an_unknown_session_is_a_404(client: TestClient) -> None:
    log_in(client)
    r = confirm(client, "nobody", "5")
    assert r.status_code == 404 and "nobody" in r.text  # type: ignore[attr-defined]


def test_logout_ends_the_login(client: TestClient) -> None:
    log_in(client)
    csrf = csrf_of(client.get("/ui").text)
    assert client.post("/ui/logout", data={"csrf": "forged"}).status_code == 403
    assert client.get("/ui").status_code == 200
    r = client.post("/ui/logout", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert client.get("/ui").status_code == 303


def test_a_key_removed_from_the_ring_ends_its_logins(client: TestClient) -> None:
    log_in(client)
    assert client.get("/ui").status_code == 200
    client.app.state.keys = KeyRing({hash_key(CLIENT_KEY): "client", hash_key("new-admin"): "admin"})  # type: ignore[attr-defined]
    assert client.get("/ui").status_code == 303


def test_with_keys_off_any_key_logs_in_on_loopback(client_factory: Callable[..., TestClient]) -> None:
    c = client_factory(api_keys={})
    c.follow_redirects = False
    assert "No API keys are configured" in c.get("/ui/login").text
    log_in(c, key="")
    assert c.get("/ui").status_code == 200


def test_the_page_shows_champion_tiers_shares_savings_sessions_and_reasons(client: TestClient) -> None:
    session = freeze(client)
    client.put("/sessions/open-1", json={"cap_usd": 100.0}, headers=C)
    routed = [
        client.post("/route", json={"prompt": p, "session_id": "open-1"}, headers=C).json()
        for p in ("what is 2+2", LONG, "hard " * 50)
    ]
    log_in(client)
    page = client.get("/ui").text
    assert client.get("/healthz").status_code == 200
    version = routed[0]["router_version"]
    assert version in page
    for tier in ("main", "mid", "brain"):
        assert f"<td>{tier}" in page
    for r in routed:
        assert r["reason"] in page.replace("&#39;", "'")
    assert page.count('data-session="open-1"') == 1 and page.count(f'data-session="{session}"') == 2
    assert "Savings against always-top" in page and "over 3 decisions" in page
    assert re.search(r"Frozen sessions \(1\)", page) and re.search(r"Sessions \(2\)", page)
    frozen_only = client.get("/ui", params={"sessions": "frozen"}).text
    assert 'data-session="open-1"' not in frozen_only


def test_savings_are_na_where_prompts_are_not_stored_and_text_is_escaped(client: TestClient) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]
    store.record_decisions(
        [DecisionRow(id="nop", prompt="", tier="main", model="small", expected_cost_usd=0.1, router_version="v",
                     reason="<script>alert(1)</script>")]
    )  # fmt: skip
    log_in(client)
    page = client.get("/ui").text
    assert "<strong>n/a</strong>" in page and "prompts are not stored" in page  # nor expected costs recorded
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"sessions": "nope"}, "sessions must be one of all, open, frozen"),
        ({"offset": "-1"}, "offset must be a whole number"),
        ({"offset": "x"}, "offset must be a whole number"),
        ({"offset": "\u00b2"}, "offset must be a whole number"),  # a digit to str.isdigit that int() refuses
        ({"offset": "9" * 40}, "offset must be a whole number"),
        ({"confirmed": "y" * 500}, "confirmed names a session id"),
    ],
)
def test_bad_query_parameters_are_a_400_page_naming_them(
    client: TestClient, params: dict[str, str], named: str
) -> None:
    log_in(client)
    r = client.get("/ui", params=params)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    assert named in r.text and r.headers["Content-Security-Policy"] == CSP


def test_the_stylesheet_is_served_and_the_page_is_not_in_the_api_spec(client: TestClient) -> None:
    r = client.get("/ui/static/ui.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css") and "body" in r.text
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/ui")]


def test_sessions_are_listed_a_page_at_a_time(client: TestClient) -> None:
    for i in range(55):
        client.put(f"/sessions/s{i:02d}", json={"cap_usd": 1.0}, headers=C)
    log_in(client)
    first = client.get("/ui").text
    assert "1–50 of 55" in first and "offset=50" in first and first.count('data-session="s') == 50
    last = client.get("/ui", params={"offset": 50}).text
    assert "51–55 of 55" in last and "offset=0" in last and last.count('data-session="s') == 5


class Unregistered:
    """A registry with no champion yet: the service starts unready."""

    def resolve(self) -> str:
        raise LookupError("no version of tierwise-router has the alias champion")

    def load(self) -> object:
        self.resolve()
        return None


def test_the_page_works_while_no_model_is_loaded(client_factory: Callable[..., TestClient]) -> None:
    c = client_factory(source=Unregistered())
    c.follow_redirects = False
    c.app.state.store.record_decisions(  # type: ignore[attr-defined]
        [DecisionRow(id="old", prompt="p", tier="main", model="small", expected_cost_usd=0.1, router_version="v",
                     reason="an earlier decision")]
    )  # fmt: skip
    log_in(c)
    page = c.get("/ui")
    assert page.status_code == 200
    assert "No model loaded" in page.text and "no version of tierwise-router has the alias champion" in page.text
    assert "an earlier decision" in page.text  # the store's side of the page still shows
    assert "<strong>n/a</strong> — no model loaded." in page.text  # savings need the top tier's prices
    assert "Drift unavailable: no model loaded" in page.text


def test_without_prompt_text_savings_come_from_the_recorded_expected_costs(
    client_factory: Callable[..., TestClient],
) -> None:
    c = client_factory(prompt_storage="none")
    c.follow_redirects = False
    for p in ("what is 2+2", LONG, "hard " * 50):
        assert c.post("/route", json={"prompt": p}, headers=C).status_code == 200
    log_in(c)
    page = c.get("/ui").text
    assert "over 3 decisions; 3 without a stored prompt priced by the expected costs recorded" in page
    assert "<strong>n/a</strong>" not in page


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    session=st.text(min_size=1, max_size=40),
    cap=st.text(max_size=30) | st.floats(allow_nan=True, allow_infinity=True).map(repr),
    csrf=st.text(max_size=70),
    key=st.text(max_size=40),
)
def test_no_form_input_is_a_5xx(client: TestClient, session: str, cap: str, csrf: str, key: str) -> None:
    """Whatever a form posts, logged in or not, the answer is a page or a 4xx, never a 500."""
    from urllib.parse import quote

    path = f"/ui/sessions/{quote(session, safe='')}/confirm"
    for c in (client, log_in(TestClient(client.app, follow_redirects=False))):
        assert c.post(path, data={"new_cap_usd": cap, "csrf": csrf}).status_code < 500
        assert c.post("/ui/logout", data={"csrf": csrf}).status_code < 500
    assert client.post("/ui/login", data={"key": key, "csrf": csrf}).status_code < 500


def test_a_form_field_over_its_limit_is_not_called_a_content_type_error(client: TestClient) -> None:
    # A form's body error went through the JSON endpoints' rule and was a 415 "must be application/json".
    c = TestClient(client.app, follow_redirects=False)
    csrf = csrf_of(c.get("/ui/login").text)  # the same token the logged-in page's forms carry
    log_in(c)
    r = c.post("/ui/sessions/s/confirm", data={"new_cap_usd": "1" * 100, "csrf": csrf})
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html"), r.text  # not a 415
    assert "body new_cap_usd: String should have at most 64 characters" in r.text


@pytest.mark.parametrize(
    ("method", "path", "named"),
    [
        ("get", "/ui?sessions=all&sessions=frozen", "query sessions: given more than once"),
        ("get", "/ui?offset=1&offset=2", "query offset: given more than once"),
        ("post", "/ui/sessions/a%20b/confirm", "path session_id: String should match pattern"),
    ],
)
def test_a_request_fastapi_refuses_is_a_400_page_naming_it(
    client: TestClient, method: str, path: str, named: str
) -> None:
    """A browser shows a page, not JSON: a repeated query parameter or a session id no session may have."""
    c = TestClient(client.app, follow_redirects=False)
    csrf = csrf_of(c.get("/ui/login").text)
    log_in(c)
    r = c.request(method, path, data={"new_cap_usd": "1", "csrf": csrf} if method == "post" else None)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html"), r.text
    assert named in r.text and r.headers["Content-Security-Policy"] == CSP


def test_two_login_tabs_both_work(client: TestClient) -> None:
    first, second = (csrf_of(client.get("/ui/login").text) for _ in range(2))
    assert first == second
    r = client.post("/ui/login", data={"key": ADMIN_KEY, "csrf": first})
    assert r.status_code == 303


def test_a_fusion_tier_shows_its_members_judge_and_summed_price(
    client_factory: Callable[..., TestClient], tmp_path: Path
) -> None:
    tiers = write_proxy_tiers(tmp_path / "fusion.toml", "http://127.0.0.1:9/v1", fusion=True)
    c = client_factory(tiers_path=tiers)
    c.follow_redirects = False
    log_in(c)
    page = c.get("/ui").text
    row = re.search(r"<td>brain.*?</tr>", page, re.S)
    assert row, page
    assert "fusion" in row.group(0) and "small, medium; judge large" in row.group(0)
    assert ">11.2<" in row.group(0)  # input price: 0.2 + 1 + 10 per 1M tokens


def test_the_drift_panel_shows_the_checks_of_admin_drift(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client.post("/route", json={"prompt": "what is 2+2"}, headers=C)
    api = client.get("/admin/drift", headers=A).json()
    log_in(client)
    page = client.get("/ui").text
    for check in api["checks"]:
        assert f'data-check="{check["name"]}"' in page
    assert api["advice"] in page

    def broken(*_: object) -> None:
        raise RuntimeError("window query failed")

    monkeypatch.setattr("serving.ui.view.drift_report", broken)
    page = client.get("/ui")
    assert page.status_code == 200 and "Drift unavailable: RuntimeError: window query failed" in page.text


def test_an_unusable_signing_secret_is_a_503_naming_it(
    client_factory: Callable[..., TestClient], tmp_path: Path
) -> None:
    secret = tmp_path / "ui-secret"
    secret.write_bytes(b"too short")
    c = client_factory(ui_secret_path=secret)
    r = c.get("/ui/login")
    assert r.status_code == 503 and str(secret) in r.json()["detail"]


def test_the_confirm_form_offers_a_cap_it_accepts(client: TestClient) -> None:
    """It offered twice the cap, past the 1e9 USD a cap may be for a session capped above 5e8 (refused: 422)."""
    session = freeze(client)
    assert client.put(f"/sessions/{session}", json={"cap_usd": 8e8}, headers=C).status_code == 200
    html = log_in(client).get("/ui").text
    offered = re.search(rf'/ui/sessions/{session}/confirm".*?name="new_cap_usd"[^>]*value="([^"]+)"', html, re.S)
    assert offered is not None and float(offered.group(1)) == 1e9, html
    r = confirm(client, session, offered.group(1))
    assert r.status_code == 303, r.text  # type: ignore[attr-defined]
    assert status_of(client, session) == ("open", 1e9)
