"""The admin page: GET /ui, its login and logout, and the Confirm button of frozen sessions.

Server-rendered (Jinja2, plain forms, no script). The admin key is typed once into the login form; the browser
then holds an HttpOnly, SameSite=Strict cookie with a signed session token (never the key), and every POST
carries a CSRF token derived from that session.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError

from serving.api.sessions import SessionPath, confirm_session
from serving.deps import SettingsDep, StoreDep
from serving.errors import NotReady, ServiceError, Unauthorized
from serving.schemas import ConfirmRequest
from serving.security import ANONYMOUS, Principal
from serving.ui.auth import ANON, Signer, load_secret
from serving.ui.render import UI_DIR, templates
from serving.ui.view import build_dashboard

SESSION_COOKIE = "tierwise_ui"
LOGIN_COOKIE = "tierwise_ui_login"
# No script at all; styles and forms only from this service; never framed.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class PageRoute(APIRoute):
    """A route of the page: a request FastAPI's checks refuse (a query parameter given twice, a session id no
    session may have, a form field over its limit) is answered with a refusal page a browser shows, not JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_or_refusal(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                first: dict[str, Any] = next(iter(exc.errors()), {})
                where = " ".join(str(part) for part in first.get("loc", ())) or "the request"
                return refusal(request, 400, f"{where}: {first.get('msg', 'refused')}")

        return page_or_refusal


router = APIRouter(prefix="/ui", include_in_schema=False, route_class=PageRoute)

SESSION_FILTERS = ("all", "open", "frozen")
MAX_OFFSET = 10**9


def signer(request: Request) -> Signer:
    """The app's cookie signer, its secret read (or made) on first use rather than at start-up."""
    state = request.app.state
    if getattr(state, "ui_signer", None) is None:
        settings = state.settings
        try:
            secret = load_secret(settings.ui_secret_path)
        except (OSError, ValueError) as exc:
            raise NotReady(f"the admin page cannot read or make its signing secret: {exc}") from None
        state.ui_signer = Signer(secret, settings.ui_session_ttl_s)
    return state.ui_signer  # type: ignore[no-any-return]


def logged_in(request: Request) -> tuple[str, Principal] | None:
    """The session token and admin behind the request's cookie, if it is valid and its key still an admin key."""
    token = request.cookies.get(SESSION_COOKIE)
    key_hash = signer(request).verify(token)
    if token is None or key_hash is None:
        return None
    keys = request.app.state.keys
    if not keys.enabled:
        return token, ANONYMOUS
    principal = None if key_hash == ANON else keys.principal_of(key_hash)
    if principal is None or not principal.is_admin:
        return None
    return token, principal


def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    response = templates().TemplateResponse(request, name, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def login_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    """The login form, with the pre-login nonce cookie its CSRF token is bound to (kept while valid, so two open
    login tabs both work)."""
    nonce = request.cookies.get(LOGIN_COOKIE) or ""
    if signer(request).verify(nonce, purpose="nonce") != ANON:
        nonce = signer(request).issue(None, purpose="nonce")
    response = page(
        request,
        "login.html",
        {"error": error, "csrf": signer(request).login_csrf(nonce), "keys_on": request.app.state.keys.enabled},
        status,
    )
    set_cookie(request, response, LOGIN_COOKIE, nonce, max_age=3600)
    return response


def refusal(request: Request, status: int, message: str) -> Response:
    return page(request, "refusal.html", {"status": status, "message": message}, status)


def see(url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("")
def dashboard(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    sessions: Annotated[str, Query()] = "all",
    offset: Annotated[str, Query()] = "0",
    confirmed: Annotated[str | None, Query()] = None,
) -> Response:
    """The page; without a valid login, a redirect to the login form. A hand-edited query is refused as a page."""
    login = logged_in(request)
    if login is None:
        return see("/ui/login")
    token, _ = login
    if sessions not in SESSION_FILTERS:
        return refusal(request, 400, f"sessions must be one of {', '.join(SESSION_FILTERS)} (got {sessions[:32]!r}).")
    if not (offset.isascii() and offset.isdigit()) or len(offset) > 10 or int(offset) > MAX_OFFSET:
        return refusal(request, 400, f"offset must be a whole number from 0 to {MAX_OFFSET} (got {offset[:32]!r}).")
    if confirmed is not None and len(confirmed) > 128:
        return refusal(request, 400, "confirmed names a session id: at most 128 characters.")
    view = build_dashboard(
        store,
        request.app.state.runtime,
        settings,
        session_filter=sessions,
        offset=int(offset),
        load_error=request.app.state.load_error,
    )
    return page(request, "dashboard.html", {"d": view, "csrf": signer(request).csrf(token), "confirmed": confirmed})


@router.get("/login")
def login_form(request: Request) -> Response:
    if logged_in(request) is not None:
        return see("/ui")
    return login_page(request)


@router.post("/login")
def login(request: Request, key: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    """Check the admin key once; answer with the session cookie and a redirect to the page."""
    s = signer(request)
    if not s.check_login_csrf(request.cookies.get(LOGIN_COOKIE), csrf):
        return login_page(request, "The login form expired or came from elsewhere; try again.", 403)
    try:
        principal = request.app.state.keys.authenticate(key)
    except Unauthorized:
        return login_page(request, "Unknown key.", 401)
    if not principal.is_admin:
        return login_page(request, "This is a client key; the admin page needs an admin key.", 403)
    response = see("/ui")
    set_cookie(request, response, SESSION_COOKIE, s.issue(principal.key_hash), max_age=int(s.ttl_s))
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    login = logged_in(request)
    if login is not None and not signer(request).check_csrf(login[0], csrf):
        return refusal(request, 403, "The form came without a valid CSRF token; reload the page and try again.")
    response = see("/ui/login")
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response


@router.post("/sessions/{session_id}/confirm")
def confirm(
    request: Request,
    session_id: SessionPath,
    store: StoreDep,
    new_cap_usd: Annotated[str, Form(max_length=64)] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Reopen a frozen session with a new cap, through the same code as POST /sessions/{id}/confirm."""
    login = logged_in(request)
    if login is None:
        return refusal(request, 401, "Not logged in (or the login expired): log in again.")
    token, principal = login
    if not signer(request).check_csrf(token, csrf):
        return refusal(request, 403, "The form came without a valid CSRF token; reload the page and try again.")
    try:
        cap = float(new_cap_usd)
        if not math.isfinite(cap):
            raise ValueError
        req = ConfirmRequest(new_cap_usd=cap)
    except (ValueError, ValidationError):
        return refusal(request, 400, f"The new cap must be a finite number of USD, at least 0 (got {new_cap_usd!r}).")
    try:
        confirm_session(session_id, req, store, principal)
    except ServiceError as exc:
        return refusal(request, exc.status, exc.detail)
    return see(f"/ui?sessions=all&confirmed={session_id}#frozen")


@router.get("/static/ui.css")
def stylesheet() -> FileResponse:
    return FileResponse(UI_DIR / "static" / "ui.css", media_type="text/css", headers={"Cache-Control": "max-age=3600"})
