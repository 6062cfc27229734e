"""/docs works offline: it references only this service, its assets are served, the spec declares the
bearer scheme (the Authorize button), and Swagger UI renders in a real headless browser that may reach no
other host. /redoc is not served (ReDoc loads its logo from its vendor's CDN)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from fastapi.testclient import TestClient


def referenced_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)["']""", html)


def test_docs_reference_only_this_service(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "http://" not in r.text and "https://" not in r.text, "the page loads something from another host"
    urls = referenced_urls(r.text)
    assert "/openapi.json" in urls and any(u.endswith(".js") for u in urls), urls
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content, url
    assert client.get("/redoc").status_code == 404


def test_the_spec_declares_the_bearer_scheme(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key: `Authorization: Bearer <key>`",
    }
    route = spec["paths"]["/route"]["post"]
    assert route["security"] == [{"HTTPBearer": []}]
    assert {"400", "401", "402", "403", "413", "422", "503"} <= set(route["responses"])
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_docs_render_offline_in_a_browser(live_url: str, browser: Any) -> None:
    """Every request to another host is refused (as offline); the page must still render the API."""
    elsewhere: list[str] = []

    def only_local(route: Any) -> None:
        if urlsplit(route.request.url).netloc != urlsplit(live_url).netloc:
            elsewhere.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    tab = browser.new_page()
    tab.route("**/*", only_local)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(live_url + "/docs")
    tab.wait_for_selector(".swagger-ui .opblock-summary-path[data-path='/route']", timeout=30_000)
    assert tab.locator(".swagger-ui .opblock").count() >= 10  # every operation
    assert tab.locator("button.authorize").count() == 1  # the bearer scheme is in the spec
    assert not elsewhere, elsewhere
    assert not errors, errors
