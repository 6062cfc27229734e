"""The service's pure pieces without a model or a store: keys and scopes, ownership, and the error mapping."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from router.features import EmbedderMismatch
from router.policy import NoTierFits
from router.schema import TiersConfigError
from serving.errors import Forbidden, Invalid, NotFound, OverBudget, ServiceError, Unauthorized, install_handlers
from serving.security import ANONYMOUS, KeyRing, Principal, check_owner, hash_key, require_admin

CLIENT, ADMIN = "client-key", "admin-key"


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing({hash_key(CLIENT): "client", hash_key(ADMIN).upper(): "admin"})


def test_keys_authenticate_to_their_scope(ring: KeyRing) -> None:
    assert ring.authenticate(CLIENT) == Principal(hash_key(CLIENT), "client")
    assert ring.authenticate(f"  {ADMIN} ").is_admin  # configured hashes are case-insensitive, tokens stripped


@pytest.mark.parametrize(("token", "message"), [(None, "missing"), ("  ", "missing"), ("nope", "unknown")])
def test_bad_tokens_are_401(ring: KeyRing, token: str | None, message: str) -> None:
    with pytest.raises(Unauthorized, match=message):
        ring.authenticate(token)


def test_without_keys_everyone_is_admin_but_only_on_loopback() -> None:
    ring = KeyRing({})
    assert ring.authenticate(None) is ANONYMOUS
    ring.check_bind("127.0.0.1")
    with pytest.raises(ValueError, match="keys are required"):
        ring.check_bind("0.0.0.0")
    KeyRing({hash_key(CLIENT): "client"}).check_bind("0.0.0.0")


def test_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        KeyRing({hash_key(CLIENT): "root"})


def test_owner_and_admin_checks(ring: KeyRing) -> None:
    client, admin = ring.authenticate(CLIENT), ring.authenticate(ADMIN)
    check_owner(client, hash_key(CLIENT))
    check_owner(admin, hash_key(CLIENT))
    check_owner(admin, None)
    with pytest.raises(Forbidden, match="needs an admin key"):  # made while keys were off (review finding)
        check_owner(client, None)
    with pytest.raises(Forbidden):
        check_owner(client, hash_key("someone else"))
    assert require_admin(admin) is admin
    with pytest.raises(Forbidden):
        require_admin(client)


class Body(BaseModel):
    n: int


@pytest.fixture
def app_client() -> TestClient:
    app = FastAPI()
    install_handlers(app)
    raising = {
        "not-found": NotFound("no such session"),
        "over-budget": OverBudget("spent", body={"session_id": "s", "cap_usd": 1.0}),
        "unauthorized": Unauthorized("missing bearer token"),
        "invalid": Invalid("no tier 'x'", ("body", "min_tier")),
        "no-tier": NoTierFits("no tier fits max_cost_usd 0"),
        "tiers": TiersConfigError("the model was trained for other tiers"),
        "embedder": EmbedderMismatch("other embedder"),
    }

    @app.get("/raise/{name}")
    def raise_(name: str) -> None:
        raise raising[name]

    @app.post("/body")
    def body(b: Body) -> int:
        return b.n

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("name", "status", "detail"),
    [
        ("not-found", 404, "no such session"),
        ("over-budget", 402, "spent"),
        ("unauthorized", 401, "missing bearer token"),
        ("tiers", 409, "the model was trained for other tiers"),
        ("embedder", 409, "other embedder"),
    ],
)
def test_domain_errors_map_to_their_status(app_client: TestClient, name: str, status: int, detail: str) -> None:
    r = app_client.get(f"/raise/{name}")
    assert r.status_code == status and r.json()["detail"] == detail
    assert ("www-authenticate" in r.headers) == (status == 401)


def test_a_refusal_body_travels_with_the_detail(app_client: TestClient) -> None:
    assert app_client.get("/raise/over-budget").json() == {"detail": "spent", "session_id": "s", "cap_usd": 1.0}


@pytest.mark.parametrize(
    ("name", "loc", "msg"), [("invalid", ["body", "min_tier"], "no tier 'x'"), ("no-tier", ["body"], "no tier fits")]
)
def test_invalid_and_no_tier_fits_are_422_in_the_validation_shape(
    app_client: TestClient, name: str, loc: list[str], msg: str
) -> None:
    r = app_client.get(f"/raise/{name}")
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == loc and error["msg"].startswith(msg) and error["type"] == "value_error"


def test_request_validation_answers_only_loc_msg_type(app_client: TestClient) -> None:
    r = app_client.post("/body", json={"n": "not a number"})
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert set(error) == {"loc", "msg", "type"} and error["loc"] == ["body", "n"]


def test_every_service_error_has_a_4xx_or_503_status() -> None:
    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    statuses = {c.__name__: c.status for c in subclasses(ServiceError)}
    assert statuses and all(400 <= s < 500 or s == 503 for s in statuses.values()), statuses


@pytest.mark.parametrize("field", ["task", "min_tier"])
def test_a_long_text_option_is_refused_in_characters(field: str) -> None:
    """Their length was checked after the storable-text check, and pydantic then says "items" (review finding)."""
    from pydantic import ValidationError

    from serving.schemas import RouteOptions

    with pytest.raises(ValidationError) as err:
        RouteOptions(**{field: "x" * 200})
    assert "at most 128 characters" in str(err.value) and "items" not in str(err.value)
    with pytest.raises(ValidationError, match="NUL"):
        RouteOptions(**{field: "a\x00"})


def test_exploration_opt_out_keys_match_as_the_key_ring_does() -> None:
    """The key ring lowercases key hashes; the opt-out list compared them raw, so an uppercase digest (which
    TIERWISE_API_KEYS accepts) silently opted nobody out (review finding). A value that is no sha256 is refused."""
    from pydantic import ValidationError

    from infra.settings import Settings

    digest = hash_key("secret-key")
    assert Settings(exploration_opt_out_keys=[f" {digest.upper()} "]).exploration_opt_out_keys == [digest]
    with pytest.raises(ValidationError, match="exploration_opt_out_keys"):
        Settings(exploration_opt_out_keys=["secret-key"])


@pytest.mark.parametrize(
    ("client", "host", "answered"),
    [(None, b"localhost", 200), (("127.0.0.1", 5), b"localhost", 200), (("10.0.0.9", 5), b"localhost", 403)],
)
def test_keyless_callers_are_this_machines_a_unix_socket_included(client, host: bytes, answered: int) -> None:
    """A Unix socket has no peer address (scope client None): it is this machine's by nature."""
    import asyncio

    from serving.middleware import LoopbackOnly

    sent: list[dict] = []

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message) -> None:
        sent.append(message)

    scope = {"type": "http", "client": client, "headers": [(b"host", host)], "path": "/route", "method": "POST"}
    asyncio.run(LoopbackOnly(app)(scope, None, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == answered
