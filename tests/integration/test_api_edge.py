"""The HTTP edge: client mistakes are 422s (never a 503), strict numbers, one error shape per status,
UTC timestamps, the body limit, and a batch that doesn't fit a session's budget (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa_exc

from infra.store import Store
from serving.schemas import MAX_METADATA_BYTES
from tests.integration.conftest import ADMIN_KEY, CLIENT_KEY, bearer

C, A = bearer(CLIENT_KEY), bearer(ADMIN_KEY)
HARD = "hard question 1: omega sigma alpha beta gamma"
EASY = "easy question 2: alpha beta gamma delta omega"
JSON = {"content-type": "application/json"}


@pytest.fixture
def edge(client_factory: Callable[..., TestClient], store: Store) -> TestClient:
    return client_factory(store=store)


def store_errors(client: TestClient) -> float:
    [line] = [
        x for x in client.get("/metrics").text.splitlines() if x.startswith("tierwise_outcome_store_errors_total ")
    ]
    return float(line.split()[-1])


def post_raw(client: TestClient, path: str, text: str) -> object:
    return client.post(path, content=text, headers={**C, **JSON})


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/route", '{"prompt": "a\\u0000b"}'),
        ("/route/batch", '{"prompts": ["fine", "a\\u0000b"]}'),
        ("/route", '{"prompt": "x", "metadata": {"x": NaN}}'),
        ("/route", '{"prompt": "x", "metadata": {"x": [1, Infinity]}}'),
        ("/route", '{"prompt": "x", "metadata": {"x": "a\\u0000b"}}'),
        ("/route", '{"prompt": "x", "metadata": {"a\\u0000b": 1}}'),
        ("/route", '{"prompt": "x", "metadata": {"deep": ' + "[" * 40 + "]" * 40 + "}}"),
        ("/route", '{"prompt": "x", "min_tier": "a\\u0000b"}'),
        ("/route", '{"prompt": "x", "session_id": "s", "metadata": {"x": NaN}}'),
    ],
)
def test_client_mistakes_are_422_not_store_errors(
    edge: TestClient, path: str, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = post_raw(edge, path, body)
    assert r.status_code == 422, r.text
    [err] = r.json()["detail"][:1]
    assert {"loc", "msg", "type"} <= set(err)
    assert store_errors(edge) == 0
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"]
    assert edge.app.state.store.recent_decisions("s") == []


@pytest.mark.parametrize("path", ["/route", "/route/batch", "/outcomes", "/v1/chat/completions"])
def test_a_body_that_is_not_utf8_is_a_400_saying_so(client: TestClient, path: str) -> None:
    r = client.post(path, content=b'{"prompt": "caf\xe9"}', headers={**C, **JSON})
    assert r.status_code == 400
    body = r.json()
    message = body["error"]["message"] if path.startswith("/v1") else body["detail"]
    assert message == "the body is not valid UTF-8 (byte 15): send JSON encoded as UTF-8"


@pytest.mark.parametrize("path", ["/route", "/route/batch", "/outcomes"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/json"])
def test_a_json_body_sent_as_another_content_type_is_a_415_saying_so(
    client: TestClient, path: str, content_type: str
) -> None:
    # It was a 422 "Input should be a valid dictionary", which sends the client looking at its JSON.
    r = client.post(path, content=b'{"prompt": "x"}', headers={**C, "content-type": content_type})
    assert r.status_code == 415, r.text
    assert r.json()["detail"] == f"the body must be sent as Content-Type: application/json, not '{content_type}'"


@pytest.mark.parametrize("path", ["/route", "/outcomes"])
def test_a_json_body_sent_without_a_content_type_is_a_415_saying_so(client: TestClient, path: str) -> None:
    # It was a 422 "Input should be a valid dictionary or object"; with no body at all it stays a 422.
    r = client.post(path, content=b'{"prompt": "x"}', headers=C)
    assert "content-type" not in r.request.headers
    assert r.status_code == 415, r.text
    assert r.json()["detail"] == "the body must be sent as Content-Type: application/json, and none was given"
    empty = client.post(path, headers=C)
    assert empty.status_code == 422, empty.text


def test_metadata_size_cap(edge: TestClient) -> None:
    fits = {"k": "v" * (MAX_METADATA_BYTES - 20)}
    too_big = {"k": "v" * MAX_METADATA_BYTES}
    assert edge.post("/route", json={"prompt": EASY, "metadata": fits}, headers=C).status_code == 200
    r = edge.post("/route", json={"prompt": EASY, "metadata": too_big}, headers=C)
    assert r.status_code == 422 and "over the limit" in r.json()["detail"][0]["msg"]


def test_metadata_round_trips(edge: TestClient) -> None:
    meta = {"user": "ü", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
    d = edge.post("/route", json={"prompt": EASY, "metadata": meta}, headers=C).json()
    stored = edge.app.state.store.get_decisions([d["decision_id"]])[d["decision_id"]]
    assert stored.metadata == meta


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/sessions/s", {"cap_usd": False}),
        ("/sessions/s", {"cap_usd": True}),
        ("/sessions/s", {"cap_usd": "1"}),
        ("/route", {"prompt": "x", "min_tier": True}),
        ("/route", {"prompt": "x", "quality_target": True}),
        ("/route", {"prompt": "x", "max_cost_usd": True}),
        ("/route", {"prompt": "x", "cost_weight_per_usd": True}),
    ],
)
def test_bools_are_not_numbers(client: TestClient, path: str, body: dict) -> None:
    method = client.put if path.startswith("/sessions") else client.post
    r = method(path, json=body, headers=C)
    assert r.status_code == 422, r.text
    assert client.get("/sessions/s", headers=C).status_code == 404


def test_json_ints_are_still_floats(client: TestClient) -> None:
    r = client.put("/sessions/s", json={"cap_usd": 1}, headers=C)
    assert r.status_code == 200 and r.json()["cap_usd"] == 1.0
    assert client.post("/route", json={"prompt": EASY, "min_tier": 1, "max_cost_usd": 1}, headers=C).status_code == 200


def test_input_tokens_price_what_the_call_sends(client: TestClient, edge: TestClient, store: Store) -> None:
    """A caller who counted its call's input (a conversation beyond the prompt) gets every tier priced at it, and a
    session reserves that; a batch has no single count, and a count must be a whole number of tokens."""
    plain = client.post("/route", json={"prompt": EASY, "min_tier": 2}, headers=C).json()
    counted = client.post("/route", json={"prompt": EASY, "min_tier": 2, "input_tokens": 10**6}, headers=C).json()
    assert counted["tier"] == plain["tier"] and counted["expected_cost_usd"] > plain["expected_cost_usd"] + 1.0
    r = edge.post("/route", json={"prompt": EASY, "min_tier": 2, "input_tokens": 10**6, "session_id": "t"}, headers=C)
    assert r.status_code == 200, r.text
    assert edge.get("/sessions/t", headers=C).json()["reserved_usd"] == pytest.approx(r.json()["expected_cost_usd"])
    assert store.get_decisions([r.json()["decision_id"]])[r.json()["decision_id"]].input_tokens == 10**6  # for OPE
    batch = client.post("/route/batch", json={"prompts": [EASY, HARD], "input_tokens": 50}, headers=C)
    assert batch.status_code == 422 and batch.json()["detail"][0]["loc"] == ["body", "input_tokens"], batch.text
    for bad in (0, 1.5, "100", True):
        r = client.post("/route", json={"prompt": EASY, "input_tokens": bad}, headers=C)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input_tokens"], (bad, r.text)


def test_an_input_too_large_for_the_cap_waits_and_never_freezes_the_session(edge: TestClient) -> None:
    """A counted input no tier can afford within what is left is refused (402, session open): the session is not
    spent, a request with a smaller input still routes. Only a prompt that does not fit on its own freezes it."""
    assert edge.put("/sessions/big", json={"cap_usd": 1.0}, headers=C).status_code == 200
    r = edge.post("/route", json={"prompt": EASY, "session_id": "big", "input_tokens": 10_000_000}, headers=C)
    assert r.status_code == 402, r.text
    body = r.json()
    assert body["status"] == "open" and body["needed_usd"] > 1.0 and body["reserved_usd"] == 0, body
    assert "an input of 10000000 tokens as counted" in body["detail"] and "stays open" in body["detail"]
    assert edge.get("/sessions/big", headers=C).json()["status"] == "open"
    assert edge.post("/route", json={"prompt": EASY, "session_id": "big"}, headers=C).status_code == 200


def test_a_min_tier_the_cap_cannot_afford_waits_and_never_freezes_the_session(edge: TestClient) -> None:
    """A session that can still pay for the cheapest tier is not spent: a request whose min_tier it cannot afford
    is a 402 that leaves it open (a review's find: it froze the session), and a request without it routes."""
    main, _, brain = costs(edge, EASY)
    assert edge.put("/sessions/mt", json={"cap_usd": (main + brain) / 2}, headers=C).status_code == 200
    r = edge.post("/route", json={"prompt": EASY, "session_id": "mt", "min_tier": 2}, headers=C)
    assert r.status_code == 402 and r.json()["status"] == "open", r.text
    assert "min_tier brain" in r.json()["detail"]
    assert edge.post("/route", json={"prompt": EASY, "session_id": "mt"}, headers=C).status_code == 200


@pytest.mark.parametrize(
    "body", [{"prompt": "x", "min_tier": "nope"}, {"prompt": "x", "min_tier": 9}, {"prompt": HARD, "max_cost_usd": 0}]
)
def test_domain_422s_have_the_validation_shape(client: TestClient, body: dict) -> None:
    """Every 422 answers `detail` as the list the OpenAPI schema (HTTPValidationError) declares."""
    r = client.post("/route", json=body, headers=C)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"][0] == "body" and detail[0]["msg"]


def test_created_at_is_utc_aware(edge: TestClient) -> None:
    edge.put("/sessions/t", json={"cap_usd": 1.0}, headers=C)
    edge.post("/route", json={"prompt": EASY, "session_id": "t"}, headers=C)
    [d] = edge.get("/sessions/t", headers=C).json()["recent_decisions"]
    created = datetime.fromisoformat(d["created_at"])
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0


def test_body_limit_by_content_length(client_factory: Callable[..., TestClient]) -> None:
    client = client_factory(max_body_bytes=2048)
    big = json.dumps({"prompt": "x", "metadata": {"k": "v" * 4000}})
    r = client.post("/route", content=big, headers={**C, **JSON})
    assert r.status_code == 413 and "2048 bytes" in r.json()["detail"]
    assert r.headers["content-type"] == "application/json"
    assert client.post("/route", json={"prompt": EASY}, headers=C).status_code == 200


def test_body_limit_counts_a_streamed_body(client_factory: Callable[..., TestClient]) -> None:
    """Without Content-Length (chunked), the limit counts the bytes as they arrive."""
    client = client_factory(max_body_bytes=2048)

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "x", "metadata": {"k": "'
        for _ in range(10):
            yield b"v" * 500
        yield b'"}}'

    r = client.post("/route", content=chunks(), headers={**C, **JSON})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413

    def small() -> Iterator[bytes]:
        yield b'{"prompt": '
        yield json.dumps(EASY).encode() + b"}"

    assert client.post("/route", content=small(), headers={**C, **JSON}).status_code == 200


def costs(client: TestClient, prompt: str) -> list[float]:
    """Expected cost per tier (cheapest first) of `prompt` on the client's live model."""
    rt = client.app.state.runtime
    return [float(c) for c in rt.score([prompt])[1][0]]


def test_a_batch_that_fits_after_downgrading_is_routed_whole(edge: TestClient) -> None:
    main, mid, brain = costs(edge, HARD)
    assert main < mid < brain
    # In order, brain for the first prompt would leave too little for the fifth; downgraded, all five fit.
    cap = brain + 3.5 * main
    edge.put("/sessions/b", json={"cap_usd": cap}, headers=C)
    r = edge.post("/route/batch", json={"prompts": [HARD] * 5, "session_id": "b"}, headers=C)
    assert r.status_code == 200, r.text
    decisions = r.json()["decisions"]
    assert len(decisions) == 5 and decisions[0]["tier"] == "mid" and "session budget" in decisions[0]["reason"]
    assert sum(d["expected_cost_usd"] for d in decisions) <= cap + 1e-12
    session = edge.get("/sessions/b", headers=C).json()
    assert session["status"] == "open" and session["reserved_usd"] == pytest.approx(
        sum(d["expected_cost_usd"] for d in decisions)
    )


def test_a_batch_over_budget_is_refused_without_freezing(edge: TestClient) -> None:
    main, _, brain = costs(edge, HARD)
    cap = 3.5 * main  # one prompt fits, five don't
    edge.put("/sessions/b", json={"cap_usd": cap}, headers=C)
    r = edge.post("/route/batch", json={"prompts": [HARD] * 5, "session_id": "b"}, headers=C)
    assert r.status_code == 402
    body = r.json()
    assert body["status"] == "open" and body["needed_usd"] == pytest.approx(5 * main)
    assert body["reserved_usd"] == 0 and "send fewer prompts" in body["detail"]
    session = edge.get("/sessions/b", headers=C).json()
    assert session["status"] == "open" and session["reserved_usd"] == 0 and session["recent_decisions"] == []
    # What fits still routes: a single /route, then a batch of what is left.
    assert edge.post("/route", json={"prompt": HARD, "session_id": "b"}, headers=C).status_code == 200
    r = edge.post("/route/batch", json={"prompts": [HARD] * 2, "session_id": "b"}, headers=C)
    assert r.status_code == 200 and edge.get("/sessions/b", headers=C).json()["status"] == "open"


def test_a_batch_when_not_even_one_prompt_fits_freezes(edge: TestClient) -> None:
    main, _, _ = costs(edge, HARD)
    edge.put("/sessions/b", json={"cap_usd": main / 2}, headers=C)
    r = edge.post("/route/batch", json={"prompts": [HARD] * 3, "session_id": "b"}, headers=C)
    assert r.status_code == 402 and r.json()["status"] == "frozen"
    assert edge.get("/sessions/b", headers=C).json()["status"] == "frozen"


def test_a_single_route_that_does_not_fit_still_freezes(edge: TestClient) -> None:
    main, _, _ = costs(edge, HARD)
    edge.put("/sessions/one", json={"cap_usd": main / 2}, headers=C)
    r = edge.post("/route", json={"prompt": HARD, "session_id": "one"}, headers=C)
    assert r.status_code == 402 and r.json()["status"] == "frozen"
    assert edge.post("/route", json={"prompt": EASY, "session_id": "one"}, headers=C).status_code == 402


@pytest.mark.parametrize(
    ("error", "status", "counted"),
    [
        (sa_exc.DataError("INSERT ...", {}, Exception("value refused")), 422, 0),
        (sa_exc.IntegrityError("INSERT ...", {}, Exception("duplicate")), 409, 0),
        (sa_exc.OperationalError("INSERT ...", {}, Exception("connection refused")), 503, 1),
    ],
)
def test_store_errors_split_client_data_from_outages(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    status: int,
    counted: int,
) -> None:
    """Only an unreachable store is a 503 "store unavailable", an ERROR line and a store error."""

    def refuse(*_: object) -> None:
        raise error

    monkeypatch.setattr(client.app.state.store, "record_decisions", refuse)
    r = client.post("/route", json={"prompt": EASY}, headers=C)
    assert r.status_code == status, r.text
    assert store_errors(client) == counted
    assert bool([x for x in caplog.records if x.levelname == "ERROR"]) == bool(counted)
    assert "value refused" not in r.text and "duplicate" not in r.text


def test_401_messages(client: TestClient) -> None:
    r = client.get("/tiers")
    assert r.status_code == 401 and r.json() == {"detail": "missing bearer token"}
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/tiers", headers={"Authorization": "Basic eDp5"}).json() == {"detail": "missing bearer token"}
    assert client.get("/tiers", headers=bearer("nope")).json() == {"detail": "unknown API key"}


def test_every_refusal_is_documented(client: TestClient) -> None:
    """Each operation documents the statuses it can answer, each with its body's schema."""
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            documented = set(op["responses"])
            if "security" in op:
                assert {"401", "503"} <= documented, (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= documented, (method, path)
            # The OpenAI-compatible door answers in OpenAI's error shape; everything else in tierwise's.
            shape = "OpenAIError" if path.startswith("/v1/") else "ErrorResponse"
            for code in documented & {"400", "401", "403", "404", "409"}:
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": f"#/components/schemas/{shape}"}, (method, path, code)
            if "413" in documented and not path.startswith("/v1/"):
                schema = op["responses"]["413"]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, "413")


def test_a_repeated_query_parameter_is_refused(edge: TestClient) -> None:
    # Starlette keeps the last of repeated values, which would let an unchecked first value through
    once = edge.get("/admin/drift?mean_cost_usd=0.001", headers=A)
    assert once.status_code == 200, once.text
    twice = edge.get("/admin/drift?mean_cost_usd=oops&mean_cost_usd=0.001", headers=A)
    assert twice.status_code == 422, twice.text
    assert twice.json()["detail"][0]["loc"] == ["query", "mean_cost_usd"]
    v1 = edge.get("/v1/models?x=1&x=2", headers=C)
    assert v1.status_code == 400 and v1.json()["error"]["param"] == "x", v1.text


@pytest.mark.parametrize(
    ("method", "path", "body", "takes"),
    [
        ("post", "/route?session_id=s&min_tier=brain", {"prompt": "hi"}, "takes none"),  # was routed sessionless: 200
        ("post", "/outcomes?score=1", {"prompt": "p", "model": "small", "score": 1, "cost_usd": 0}, "takes none"),
        ("get", "/admin/drift?window=5", None, "takes only mean_cost_usd"),
    ],
)
def test_an_unknown_query_parameter_is_refused_where_a_knob_could_be_meant(
    edge: TestClient, method: str, path: str, body: dict | None, takes: str
) -> None:
    r = edge.request(method.upper(), path, json=body, headers=A)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"][0] == "query" and takes in error["msg"] and error["type"] == "query_unknown"


def test_query_parameters_clients_and_probes_add_pass(edge: TestClient) -> None:
    assert edge.get("/metrics?name[]=tierwise_decisions_total").status_code == 200  # a scraper's filter
    assert edge.get("/healthz?probe=1").status_code == 200
    assert edge.get("/v1/models?api-version=2024-10-21", headers=C).status_code == 200  # Azure's OpenAI clients
    body = {"model": "tierwise", "messages": [{"role": "user", "content": "hi"}]}
    r = edge.post("/v1/chat/completions?api-version=2024-10-21", json=body, headers=C)
    assert r.status_code != 422 and "query" not in r.text, r.text


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e309", "nan"])
def test_admin_drift_refuses_a_mean_cost_that_is_no_finite_number(edge: TestClient, value: str) -> None:
    r = edge.get(f"/admin/drift?mean_cost_usd={value}", headers=A)  # was 200, promising "$inf per request"
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("sid", [".", "..", "..."])
def test_a_session_id_of_dots_only_is_refused(edge: TestClient, sid: str) -> None:
    """`/route` made such a session, which clients and browsers could not reach: they rewrite `/sessions/..`."""
    r = edge.post("/route", json={"prompt": "hi", "session_id": sid}, headers=C)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "session_id"], r.text
    assert edge.post("/route", json={"prompt": "hi", "session_id": "a.b..c"}, headers=C).status_code == 200
    assert edge.put("/sessions/%2E%2E", json={"cap_usd": 1.0}, headers=C).status_code == 422


def test_a_cap_past_any_bill_is_refused(edge: TestClient) -> None:
    """1e100 was taken, and broke the admin page's confirm form (a 101-character prefilled value; 1e308: inf)."""
    assert edge.put("/sessions/s", json={"cap_usd": 1e100}, headers=C).status_code == 422
    assert edge.put("/sessions/s", json={"cap_usd": 1e9}, headers=C).status_code == 200


@pytest.mark.parametrize("sid", ["%00", "x" * 5000, "bad%20id"])
def test_deleting_a_session_checks_its_id(edge: TestClient, sid: str) -> None:
    """A plain str: 404 on SQLite and, on PostgreSQL, a 422 blaming a body the request does not have (NUL)."""
    r = edge.delete(f"/admin/sessions/{sid}", headers=A)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "session_id"], r.text
    assert len(r.text) < 2000  # the id is not echoed back whole
