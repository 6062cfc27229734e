"""The LiteLLM routing strategy against a live tierwise: the real `litellm` Router, deployments that answer with
`mock_response` (no network), tierwise under uvicorn on loopback."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

# LiteLLM fetches its price map from the network on import unless told not to; this machine has no network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm", reason="the litellm extra is not installed (pip install -e '.[litellm]')")

from bench.process import free_port  # noqa: E402
from integrations import litellm_router  # noqa: E402
from integrations.litellm_router import (  # noqa: E402
    DECISION_KEY,
    TIER_FIELD,
    TierwiseOutcomeLogger,
    TierwiseRoutingStrategy,
    TierwiseSettler,
    prompt_view,
)
from integrations.tierwise_http import TierwiseClient, TierwiseRefused  # noqa: E402
from tests.integration.conftest import CLIENT_KEY, OTHER_KEY, bearer  # noqa: E402

HARD = "hard question 1: omega sigma alpha beta gamma"
EASY = "easy question 2: alpha beta gamma delta omega"
TIERS = ("main", "mid", "brain")
IN_USD, OUT_USD = 1e-6, 2e-6  # per token, on every mock deployment: LiteLLM prices its mock usage with them


def deployment(
    dep_id: str, tier: str | None = None, group: str = "tierwise", reply: str | None = None, priced: bool = True
) -> dict[str, Any]:
    info: dict[str, Any] = {"id": dep_id} | ({TIER_FIELD: tier} if tier else {})
    params = {
        "model": f"openai/{dep_id}",
        "api_key": "sk-test-not-used",
        "mock_response": reply or f"answer from {dep_id}",
    } | ({"input_cost_per_token": IN_USD, "output_cost_per_token": OUT_USD} if priced else {})
    return {"model_name": group, "litellm_params": params, "model_info": info}


TAGGED = [deployment(f"dep-{t}", t) for t in TIERS] + [deployment("dep-default", group="default")]


@pytest.fixture
def tierwise(live_url: str) -> str:
    """A live tierwise on the tests' router (tests/integration/conftest.py's live_url)."""
    return live_url


@pytest.fixture
def api(tierwise: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tierwise, headers=bearer(CLIENT_KEY), timeout=10) as c:
        yield c


def make_router(
    url: str, model_list: list[dict[str, Any]] | None = None, **strategy: Any
) -> tuple[Any, TierwiseRoutingStrategy]:
    """A Router with the strategy registered; each call is settled on tierwise unless `settle=False`."""
    router = litellm.Router(model_list=model_list or TAGGED, num_retries=0)
    plugin = TierwiseRoutingStrategy(
        router,
        TierwiseClient(url, api_key=CLIENT_KEY, timeout_s=float(strategy.pop("timeout_s", 10.0))),
        fallback_deployment_id="dep-default",
        seed=0,
        **strategy,
    )
    router.register_plugin(plugin)
    return router, plugin


def complete(router: Any, mode: str, prompt: str, md: dict[str, Any]) -> Any:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    if mode == "sync":
        return router.completion(model="tierwise", messages=messages, metadata=md)
    return asyncio.run(router.acompletion(model="tierwise", messages=messages, metadata=md))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_call_is_served_by_the_deployment_of_the_tier_tierwise_chose(
    tierwise: str, api: httpx.Client, mode: str
) -> None:
    assert api.put("/sessions/lite", json={"cap_usd": 10.0}).status_code == 200
    router, _ = make_router(tierwise)
    served = []
    for prompt in (HARD, EASY, HARD, EASY):
        md: dict[str, Any] = {"tierwise": {"session_id": "lite"}}
        resp = complete(router, mode, prompt, md)
        decision = md[DECISION_KEY]
        assert decision["decision_id"] and decision["session_id"] == "lite"
        assert resp._hidden_params["model_id"] == decision["deployment_id"] == f"dep-{decision['tier']}"
        assert resp.choices[0].message.content == f"answer from dep-{decision['tier']}"
        served.append((decision["decision_id"], decision["tier"]))
    # tierwise recorded exactly these decisions in the session, with these tiers: one /route per call.
    recorded = {d["decision_id"]: d["tier"] for d in api.get("/sessions/lite").json()["recent_decisions"]}
    assert recorded == dict(served)
    assert {t for _, t in served} == {"brain", "main"}, "the hard and easy prompts should land on different tiers"


def test_route_options_travel_in_metadata(tierwise: str) -> None:
    router, _ = make_router(tierwise)
    md: dict[str, Any] = {"tierwise": {"min_tier": "brain"}}
    resp = complete(router, "sync", EASY, md)
    assert md[DECISION_KEY]["tier"] == "brain" and resp._hidden_params["model_id"] == "dep-brain"


def test_tiers_mapped_to_model_groups(tierwise: str) -> None:
    groups = {t: f"group-{t}" for t in TIERS}
    model_list = [deployment(f"g-{t}", group=groups[t]) for t in TIERS] + [deployment("dep-default", group="default")]
    router, _ = make_router(tierwise, model_list, tier_groups=groups)
    for prompt, tier in ((HARD, "brain"), (EASY, "main")):
        md: dict[str, Any] = {}
        resp = complete(router, "async", prompt, md)
        assert md[DECISION_KEY]["tier"] == tier and resp._hidden_params["model_id"] == f"g-{tier}"


def test_other_groups_are_served_as_usual(tierwise: str, api: httpx.Client) -> None:
    router, _ = make_router(tierwise)
    api.put("/sessions/other", json={"cap_usd": 1.0})
    md: dict[str, Any] = {"tierwise": {"session_id": "other"}}
    resp = router.completion(model="default", messages=[{"role": "user", "content": HARD}], metadata=md)
    assert resp._hidden_params["model_id"] == "dep-default" and DECISION_KEY not in md
    assert api.get("/sessions/other").json()["recent_decisions"] == []


class _Answers503(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"detail": "no model loaded"}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=["refused", "timeout", "503"])
def tierwise_down(request: pytest.FixtureRequest) -> Iterator[str]:
    """A tierwise URL that gives no decision: nothing listening, a socket that never answers, or a 503."""
    if request.param == "refused":
        yield f"http://127.0.0.1:{free_port()}"
    elif request.param == "timeout":
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            yield f"http://127.0.0.1:{silent.getsockname()[1]}"
    else:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers503)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_tierwise_down_serves_the_fallback_deployment_and_logs_it(
    tierwise_down: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    router, _ = make_router(tierwise_down, timeout_s=0.5)
    md: dict[str, Any] = {"tierwise": {"session_id": "s"}}
    with caplog.at_level(logging.WARNING, logger="integrations.litellm_router"):
        resp = complete(router, mode, HARD, md)
    assert resp._hidden_params["model_id"] == "dep-default"
    assert resp.choices[0].message.content == "answer from dep-default"
    decision = md[DECISION_KEY]
    assert decision["decision_id"] is None and decision["tier"] is None
    assert decision["reason"].startswith("fallback: ")
    assert any("serving fallback deployment dep-default" in r.getMessage() for r in caplog.records)


def test_a_tier_without_deployment_serves_the_fallback(tierwise: str, caplog: pytest.LogCaptureFixture) -> None:
    router, _ = make_router(tierwise, [deployment("dep-main", "main"), deployment("dep-default", group="default")])
    md: dict[str, Any] = {}
    with caplog.at_level(logging.WARNING, logger="integrations.litellm_router"):
        resp = complete(router, "sync", HARD, md)
    assert md[DECISION_KEY]["tier"] == "brain" and md[DECISION_KEY]["decision_id"]
    assert resp._hidden_params["model_id"] == "dep-default"
    assert md[DECISION_KEY]["reason"] == "fallback: no deployment serves tier 'brain'"
    assert any("no LiteLLM deployment serves tierwise tier 'brain'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_session_over_its_cap_is_refused_not_bypassed(tierwise: str, api: httpx.Client, mode: str) -> None:
    api.put("/sessions/broke", json={"cap_usd": 0.0})
    router, _ = make_router(tierwise)
    md: dict[str, Any] = {"tierwise": {"session_id": "broke"}}
    with pytest.raises(litellm.BudgetExceededError) as refused:
        complete(router, mode, EASY, md)
    assert refused.value.entity_id == "broke" and refused.value.max_budget == 0.0
    assert "tierwise" in refused.value.message and "model_id" not in md.get("hidden_params", {})


def test_bad_options_are_the_callers_error(tierwise: str) -> None:
    router, _ = make_router(tierwise)
    with pytest.raises(litellm.BadRequestError, match="quality_target"):
        complete(router, "sync", EASY, {"tierwise": {"quality_target": 2}})
    with pytest.raises(litellm.BadRequestError, match="min_tier"):
        complete(router, "async", EASY, {"tierwise": {"min_tier": "platinum"}})


def flaky_brain_deployments() -> list[dict[str, Any]]:
    """Two brain deployments, the first rate-limited (brain-a), and a default group."""
    return [
        deployment("brain-a", "brain", reply="litellm.RateLimitError"),
        deployment("brain-b", "brain"),
        deployment("dep-default", group="default"),
    ]


def test_a_retry_keeps_its_decision_and_skips_the_deployment_that_failed(tierwise: str, api: httpx.Client) -> None:
    model_list = flaky_brain_deployments()
    api.put("/sessions/retry", json={"cap_usd": 10.0})
    for seed in range(4):  # whichever of the two the first pick is, the answer comes from brain-b
        router = litellm.Router(model_list=model_list, num_retries=2, retry_after=0)
        router.register_plugin(
            TierwiseRoutingStrategy(
                router, TierwiseClient(tierwise, CLIENT_KEY, 10.0), fallback_deployment_id="dep-default", seed=seed
            )
        )
        md: dict[str, Any] = {"tierwise": {"session_id": "retry", "min_tier": "brain"}}
        resp = complete(router, "async", HARD, md)
        assert resp._hidden_params["model_id"] == "brain-b" == md[DECISION_KEY]["deployment_id"]
    assert len(api.get("/sessions/retry").json()["recent_decisions"]) == 4, "one /route per call, not per try"


def test_post_score_settles_the_session_with_litellms_cost(tierwise: str, api: httpx.Client) -> None:
    api.put("/sessions/paid", json={"cap_usd": 10.0})
    router, plugin = make_router(tierwise, settle=False)  # post_score alone settles it
    md: dict[str, Any] = {"tierwise": {"session_id": "paid"}}
    resp = complete(router, "sync", HARD, md)
    cost = resp.usage.prompt_tokens * IN_USD + resp.usage.completion_tokens * OUT_USD
    assert resp._hidden_params["response_cost"] == pytest.approx(cost)
    before = api.get("/sessions/paid").json()
    assert before["reserved_usd"] > 0 and before["spent_usd"] == 0
    answer = plugin.post_score(md, resp, 0.9)
    assert answer is not None and answer["recorded"] == 1
    after = api.get("/sessions/paid").json()
    assert after["spent_usd"] == pytest.approx(cost) and after["reserved_usd"] == 0
    assert [d["settled"] for d in after["recent_decisions"]] == [True]
    # The call's outcome is one outcome: again, a retry; another score, only under its own id.
    assert plugin.post_score(md, resp, 0.9)["recorded"] == 0  # type: ignore[index]
    with pytest.raises(TierwiseRefused) as refused:
        plugin.post_score(md, resp, 0.2)
    assert "already has an outcome with a different score" in str(refused.value)
    assert plugin.post_score(md, resp, 0.2, outcome_id="second-judge")["recorded"] == 1  # type: ignore[index]
    assert api.get("/sessions/paid").json()["spent_usd"] == pytest.approx(cost)
    # A fallback call (nothing to route on) has no decision: nothing to post.
    fallback_md: dict[str, Any] = {}
    fallback = router.completion(
        model="tierwise", messages=[{"role": "assistant", "content": "only"}], metadata=fallback_md
    )
    assert fallback_md[DECISION_KEY]["decision_id"] is None
    assert plugin.post_score(fallback_md, fallback, 0.9) is None


def test_the_outcome_logger_posts_what_score_fn_scores(
    tierwise: str, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.put("/sessions/auto", json={"cap_usd": 10.0})
    router, plugin = make_router(tierwise, settle=False)
    # LiteLLM's logging worker is process-wide: events of earlier tests' calls may reach this callback too, so it
    # scores only this test's two prompts (and the others' posts are refused by this tierwise as unknown decisions).
    scored_prompt, unscored_prompt = f"{HARD} (scored)", f"{EASY} (unscored)"
    scored: list[str] = []

    def score_fn(messages: list[dict[str, Any]], response: Any) -> float | None:
        text = messages[-1]["content"]
        if text not in (scored_prompt, unscored_prompt):
            return None
        scored.append(text)
        return 1.0 if text == scored_prompt else None

    monkeypatch.setattr(litellm, "callbacks", [TierwiseOutcomeLogger(plugin.client, score_fn)])
    decisions: dict[str, str] = {}

    async def two_calls() -> None:
        for prompt in (scored_prompt, unscored_prompt):
            md: dict[str, Any] = {"tierwise": {"session_id": "auto"}}
            await router.acompletion(model="tierwise", messages=[{"role": "user", "content": prompt}], metadata=md)
            decisions[prompt] = md[DECISION_KEY]["decision_id"]
        for _ in range(200):  # LiteLLM runs success callbacks in the background: wait for the post to land
            view = (await asyncio.to_thread(api.get, "/sessions/auto")).json()
            if len(scored) == 2 and view["spent_usd"] > 0:
                break
            await asyncio.sleep(0.05)

    asyncio.run(two_calls())
    assert sorted(scored) == sorted([scored_prompt, unscored_prompt])
    view = api.get("/sessions/auto").json()
    settled = {d["decision_id"]: d["settled"] for d in view["recent_decisions"]}
    assert settled == {decisions[scored_prompt]: True, decisions[unscored_prompt]: False}
    assert view["spent_usd"] > 0


def settled_view(api: httpx.Client, session: str, n: int) -> dict[str, Any]:
    """The session once its `n` decisions are settled (LiteLLM runs its callbacks in the background)."""
    for _ in range(400):
        view: dict[str, Any] = api.get(f"/sessions/{session}").json()
        if len(view["recent_decisions"]) == n and all(d["settled"] for d in view["recent_decisions"]):
            return view
        threading.Event().wait(0.05)
    raise AssertionError(f"session {session} not settled: {view}")


async def asettled_view(api: httpx.Client, session: str, n: int) -> dict[str, Any]:
    """`settled_view` from the calls' event loop, which must keep running for LiteLLM's async callbacks."""
    for _ in range(400):
        view: dict[str, Any] = (await asyncio.to_thread(api.get, f"/sessions/{session}")).json()
        if len(view["recent_decisions"]) == n and all(d["settled"] for d in view["recent_decisions"]):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {session} not settled: {view}")


async def areleased_view(api: httpx.Client, session: str, n: int, settled: int) -> dict[str, Any]:
    """The session once it holds nothing and `settled` of its `n` decisions are settled (the rest released and
    left open), from the calls' event loop."""
    for _ in range(400):
        view: dict[str, Any] = (await asyncio.to_thread(api.get, f"/sessions/{session}")).json()
        done = sum(bool(d["settled"]) for d in view["recent_decisions"])
        if len(view["recent_decisions"]) == n and done == settled and view["reserved_usd"] == pytest.approx(0):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {session} not released: {view}")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_call_is_settled_with_litellms_cost_without_a_score(tierwise: str, api: httpx.Client, mode: str) -> None:
    api.put(f"/sessions/settle-{mode}", json={"cap_usd": 10.0})
    router, plugin = make_router(tierwise)
    assert isinstance(plugin.settler, TierwiseSettler)
    costs = []

    async def calls() -> dict[str, Any]:
        for prompt in (f"{HARD} ({mode})", f"{EASY} ({mode})"):
            md: dict[str, Any] = {"tierwise": {"session_id": f"settle-{mode}"}}
            messages = [{"role": "user", "content": prompt}]
            resp = await router.acompletion(model="tierwise", messages=messages, metadata=md)
            costs.append(resp._hidden_params["response_cost"])
        return await asettled_view(api, f"settle-{mode}", 2)

    if mode == "async":  # async callbacks run on the call's event loop: wait there
        view = asyncio.run(calls())
    else:
        for prompt in (f"{HARD} ({mode})", f"{EASY} ({mode})"):
            md = {"tierwise": {"session_id": f"settle-{mode}"}}
            resp = complete(router, "sync", prompt, md)
            costs.append(resp._hidden_params["response_cost"])
        view = settled_view(api, f"settle-{mode}", 2)
    assert all(c and c > 0 for c in costs)
    assert view["spent_usd"] == pytest.approx(sum(costs)) and view["reserved_usd"] == pytest.approx(0)
    # A score posted afterwards needs nothing else and charges nothing more.
    decision_id = view["recent_decisions"][0]["decision_id"]
    r = api.post("/outcomes", json={"decision_id": decision_id, "score": 0.7})
    assert r.status_code == 201 and r.json()["recorded"] == 1
    assert api.get(f"/sessions/settle-{mode}").json()["spent_usd"] == pytest.approx(sum(costs))


CATALOGUE_PER_1M = {"small": (0.2, 0.2), "medium": (1.0, 2.0), "large": (10.0, 30.0)}  # tests/conftest.TIERS_TOML


@pytest.mark.parametrize("mode", ["sync", "async", "score"])
def test_a_deployment_litellm_cannot_price_is_settled_at_tierwises_price(
    tierwise: str, api: httpx.Client, mode: str
) -> None:
    """LiteLLM reports a call to a model missing from its price map, on a deployment without prices, as costing 0.0:
    booked as such, a capped session would spend nothing. Its tokens are posted instead, and tierwise prices them
    at its tiers config's prices (by the settler, or by `post_score` with the settler off)."""
    session = f"unpriced-{mode}"
    api.put(f"/sessions/{session}", json={"cap_usd": 10.0})
    # Model names no earlier test priced: LiteLLM keeps a deployment's prices under its model name, process-wide.
    unpriced = [deployment(f"unpriced-{t}", t, priced=False) for t in TIERS]
    unpriced.append(deployment("dep-default", group="default"))
    router, plugin = make_router(tierwise, unpriced, settle=mode != "score")
    md: dict[str, Any] = {"tierwise": {"session_id": session}}
    messages = [{"role": "user", "content": f"{HARD} ({mode})"}]

    async def acall() -> tuple[Any, dict[str, Any]]:
        resp = await router.acompletion(model="tierwise", messages=messages, metadata=md)
        return resp, await asettled_view(api, session, 1)

    if mode == "async":
        resp, view = asyncio.run(acall())
    else:
        resp = router.completion(model="tierwise", messages=messages, metadata=md)
        if mode == "score":
            assert api.get(f"/sessions/{session}").json()["spent_usd"] == 0
            assert plugin.post_score(md, resp, 0.5)["recorded"] == 1  # type: ignore[index]
        view = settled_view(api, session, 1)
    assert resp._hidden_params["response_cost"] in (None, 0.0)  # what LiteLLM makes of it
    p_in, p_out = CATALOGUE_PER_1M[dict(zip(TIERS, CATALOGUE_PER_1M, strict=True))[md[DECISION_KEY]["tier"]]]
    cost = (resp.usage.prompt_tokens * p_in + resp.usage.completion_tokens * p_out) / 1e6
    assert cost > 0 and view["spent_usd"] == pytest.approx(cost) and view["reserved_usd"] == pytest.approx(0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failed_call_releases_its_reservation(tierwise: str, api: httpx.Client, mode: str) -> None:
    api.put(f"/sessions/fail-{mode}", json={"cap_usd": 10.0})
    failing = [deployment(f"x-{t}", t, reply="litellm.RateLimitError") for t in TIERS]
    router, _ = make_router(tierwise, [*failing, deployment("dep-default", group="default")])
    md: dict[str, Any] = {"tierwise": {"session_id": f"fail-{mode}"}}

    async def call() -> dict[str, Any]:
        with pytest.raises(litellm.RateLimitError):
            await router.acompletion(model="tierwise", messages=[{"role": "user", "content": HARD}], metadata=md)
        return await asettled_view(api, f"fail-{mode}", 1)

    if mode == "async":
        view = asyncio.run(call())
    else:
        with pytest.raises(litellm.RateLimitError):
            complete(router, "sync", HARD, md)
        view = settled_view(api, f"fail-{mode}", 1)
    assert md[DECISION_KEY]["decision_id"] == view["recent_decisions"][0]["decision_id"]
    assert view["spent_usd"] == 0 and view["reserved_usd"] == pytest.approx(0)


@pytest.mark.parametrize("how", ["wait_for", "cancel"])
def test_a_cancelled_async_call_releases_its_reservation_and_books_a_late_answer(
    tierwise: str, api: httpx.Client, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiteLLM calls no callback for an async call cancelled before it ends (a timeout, a client gone): its
    reservation stayed held until released by hand. It is now released once its task is cancelled, and the decision
    stays open: an answer LiteLLM reports only after that (its logging late under load) is booked at its cost. The
    release used to settle the decision at nothing, and such an answer's cost was lost."""
    monkeypatch.setattr(litellm_router, "RELEASE_AFTER_CANCEL_S", 0.2)
    session = f"cancel-{how}"
    api.put(f"/sessions/{session}", json={"cap_usd": 10.0})
    slow = [deployment(f"slow-{t}", t) for t in TIERS]
    for d in slow:
        d["litellm_params"]["mock_delay"] = 30
    router, plugin = make_router(tierwise, [*slow, deployment("dep-default", group="default")])
    md: dict[str, Any] = {"tierwise": {"session_id": session}}

    async def call() -> dict[str, Any]:
        messages = [{"role": "user", "content": HARD}]
        if how == "wait_for":
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(router.acompletion(model="tierwise", messages=messages, metadata=md), 1.0)
        else:
            task = asyncio.create_task(router.acompletion(model="tierwise", messages=messages, metadata=md))
            while DECISION_KEY not in md:  # routed: the call is waiting on its deployment
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        held = (await asyncio.to_thread(api.get, f"/sessions/{session}")).json()
        assert held["reserved_usd"] > 0  # released after the grace period, not at once
        return await areleased_view(api, session, 1, settled=0)

    view = asyncio.run(call())
    assert md[DECISION_KEY]["decision_id"] == view["recent_decisions"][0]["decision_id"]
    assert view["spent_usd"] == 0 and view["reserved_usd"] == pytest.approx(0)
    assert plugin.settler is not None and plugin.settler.settled(md[DECISION_KEY])  # a retry is routed anew
    # LiteLLM reports the cancelled call's answer late, as its logging queue does under load
    plugin.settler.log_success_event({"litellm_params": {"metadata": md}, "response_cost": 0.0123}, None, None, None)
    late = settled_view(api, session, 1)
    assert late["spent_usd"] == pytest.approx(0.0123) and late["reserved_usd"] == pytest.approx(0)


def cancel_watched_calls(settler: TierwiseSettler, decisions: list[dict[str, Any]]) -> int:
    """One async call per decision, each watched by `settler`, their tasks cancelled at once once all are watched;
    how many threads were started meanwhile."""

    async def run() -> int:
        async def call(decision: dict[str, Any]) -> None:
            settler.watch(decision)
            await asyncio.sleep(30)

        tasks = [asyncio.create_task(call(d)) for d in decisions]
        await asyncio.sleep(0.05)  # every call is watched
        before = threading.active_count()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return threading.active_count() - before

    return asyncio.run(run())


def cancel_a_burst(monkeypatch: pytest.MonkeyPatch) -> tuple[TierwiseSettler, TierwiseClient, list[Any]]:
    """100 async calls watched by a settler (its client records what it posts), their tasks cancelled at once;
    checks they are released by one thread."""
    monkeypatch.setattr(litellm_router, "RELEASE_AFTER_CANCEL_S", 0.3)
    released: list[tuple[str, Any]] = []

    class Recording(TierwiseClient):
        def settle(self, decision_id: str, usage: Any) -> dict[str, Any]:
            released.append((decision_id, usage))
            return {"booked": True}

        def release(self, decision_id: str) -> dict[str, Any]:
            released.append((decision_id, "release"))
            return {"settled": False}

    client = Recording("http://127.0.0.1:9")
    settler = TierwiseSettler(client)
    n = 100
    started = cancel_watched_calls(
        settler, [{"decision_id": f"d{i}", "tierwise_client": client.identity} for i in range(n)]
    )
    assert started <= 1
    for _ in range(300):
        if len(released) == n:
            break
        threading.Event().wait(0.02)
    assert sorted(released) == sorted((f"d{i}", "release") for i in range(n))
    assert all(settler.settled({"decision_id": f"d{i}"}) for i in range(n))
    return settler, client, released


def test_a_burst_of_cancelled_calls_is_released_by_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each cancelled task's release waited on a thread of its own (a `threading.Timer`): a burst of client
    disconnects at the proxy meant as many sleeping threads (review finding). They now wait on one."""
    settler, _, released = cancel_a_burst(monkeypatch)
    assert len(released) == 100 and settler.settled({"decision_id": "d0"})


def test_an_answer_reported_after_its_release_is_booked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """LiteLLM's logging queue, late under load, may report an answer after the grace period released its
    decision. The release settled the decision at nothing, so that answer's cost was lost (with a warning). The
    release now leaves the decision open, and the answer is settled as any other."""
    settler, client, released = cancel_a_burst(monkeypatch)
    decision = {"decision_id": "d7", "tierwise_client": client.identity}
    kwargs = {"litellm_params": {"metadata": {DECISION_KEY: decision}}, "response_cost": 0.0123}
    with caplog.at_level(logging.INFO, logger="integrations.litellm_router"):
        settler.log_success_event(kwargs, None, None, None)
    assert released[100:] == [("d7", {"cost_usd": 0.0123})]
    assert "decision d7: LiteLLM reported the answer of its cancelled call" in caplog.text and "0.0123" in caplog.text
    settler.log_success_event(kwargs, None, None, None)  # a repeated report posts nothing more
    assert len(released) == 101 and settler.settled(decision)


def test_an_answer_reported_while_its_release_is_posted_is_booked(monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer LiteLLM reports while the release is being posted is posted too, and tierwise books it whichever
    arrives first: the release leaves the decision open (review finding: such an answer used to be lost)."""
    monkeypatch.setattr(litellm_router, "RELEASE_AFTER_CANCEL_S", 0.05)
    posts: list[tuple[str, Any]] = []
    releasing = threading.Event()

    class SlowRelease(TierwiseClient):
        def settle(self, decision_id: str, usage: Any) -> dict[str, Any]:
            posts.append((decision_id, usage))
            return {"booked": True}

        def release(self, decision_id: str) -> dict[str, Any]:
            posts.append((decision_id, "release"))
            releasing.set()
            time.sleep(0.5)  # the release's post, slow
            return {"settled": False}

    client = SlowRelease("http://127.0.0.1:9")
    settler = TierwiseSettler(client)
    decision = {"decision_id": "d1", "tierwise_client": client.identity}

    cancel_watched_calls(settler, [decision])
    assert releasing.wait(5)
    kwargs = {"litellm_params": {"metadata": {DECISION_KEY: decision}}, "response_cost": 0.05}
    settler.log_success_event(kwargs, None, None, None)
    assert posts == [("d1", "release"), ("d1", {"cost_usd": 0.05})]


@pytest.mark.parametrize("reply", [{"settled": False}, {"settled": True}, [], "ok", None])
def test_a_decision_watched_by_two_cancelled_tasks_is_released_once(
    monkeypatch: pytest.MonkeyPatch, reply: Any
) -> None:
    """Two cancelled tasks watching one decision (a call and its retry) posted two releases once releases ran on
    several workers; a reply that is not a JSON object made a posted settlement count as not settled, to be posted
    again (review findings)."""
    monkeypatch.setattr(litellm_router, "RELEASE_AFTER_CANCEL_S", 0.05)
    posts: list[tuple[str, Any]] = []

    class Slow(TierwiseClient):
        def release(self, decision_id: str) -> Any:
            posts.append((decision_id, "release"))
            time.sleep(0.3)
            return reply

    client = Slow("http://127.0.0.1:9")
    settler = TierwiseSettler(client)
    decision = {"decision_id": "d1", "tierwise_client": client.identity}

    cancel_watched_calls(settler, [decision, decision])  # a call and its retry
    for _ in range(100):
        if settler.settled(decision):
            break
        time.sleep(0.02)
    time.sleep(0.4)  # a second release would have been posted by now
    assert posts == [("d1", "release")] and settler.settled(decision)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("", 5.0),
        (" 12.5 ", 12.5),
        ("0", 0.0),
        ("86400", 86400.0),
        ("abc", None),
        ("-1", None),
        ("inf", None),
        ("nan", None),
    ],
)
def test_the_release_grace_period_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, seconds: float | None
) -> None:
    monkeypatch.setenv("TIERWISE_RELEASE_AFTER_CANCEL_S", raw)
    if seconds is None:
        with pytest.raises(ValueError, match="TIERWISE_RELEASE_AFTER_CANCEL_S=.*expected seconds"):
            litellm_router._seconds_from_env("TIERWISE_RELEASE_AFTER_CANCEL_S", 5.0)
    else:
        assert litellm_router._seconds_from_env("TIERWISE_RELEASE_AFTER_CANCEL_S", 5.0) == seconds


def test_a_retry_of_a_released_call_is_routed_and_charged_as_a_new_call(
    tierwise: str, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timed-out call retried with the same metadata and trace id reused its decision, which the cancelled task's
    timer had released: the retry's answer was booked at nothing (review finding)."""
    monkeypatch.setattr(litellm_router, "RELEASE_AFTER_CANCEL_S", 0.2)
    api.put("/sessions/retry-released", json={"cap_usd": 10.0})
    router, _ = make_router(tierwise)
    slow_deployments = [deployment(f"dep-{t}", t) for t in TIERS] + [deployment("dep-default", group="default")]
    for d in slow_deployments:
        d["litellm_params"]["mock_delay"] = 30
    slow_router, _ = make_router(tierwise, slow_deployments)  # the same deployment ids, answering late
    md: dict[str, Any] = {"tierwise": {"session_id": "retry-released"}}
    messages = [{"role": "user", "content": HARD}]

    async def run() -> tuple[float, dict[str, Any]]:
        slow = slow_router.acompletion(model="tierwise", messages=messages, metadata=md, litellm_trace_id="t-1")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow, 1.0)
        assert md[DECISION_KEY]["decision_id"]  # routed before it timed out
        await asyncio.sleep(0.8)  # past the grace period: the first try's decision is released
        resp = await router.acompletion(model="tierwise", messages=messages, metadata=md, litellm_trace_id="t-1")
        return float(resp._hidden_params["response_cost"]), await areleased_view(api, "retry-released", 2, settled=1)

    cost, view = asyncio.run(run())
    assert view["spent_usd"] == pytest.approx(cost) and cost > 0 and view["reserved_usd"] == pytest.approx(0)


@pytest.mark.parametrize("priced", [True, False])
def test_a_call_that_answered_is_not_released_when_its_task_is_cancelled_later(
    tierwise: str, api: httpx.Client, monkeypatch: pytest.MonkeyPatch, priced: bool
) -> None:
    """Only a call that ended without LiteLLM reporting it is released: a task cancelled after its call answered
    keeps the call's charge, or, where LiteLLM could not price the answer, its reservation."""
    monkeypatch.setattr(litellm_router, "RELEASE_AFTER_CANCEL_S", 0.2)
    session = f"answered-then-cancelled-{priced}"
    api.put(f"/sessions/{session}", json={"cap_usd": 10.0})
    if not priced:  # an answer the settler cannot settle (LiteLLM reports neither cost nor tokens): it books nothing
        body = TierwiseSettler._body
        monkeypatch.setattr(TierwiseSettler, "_body", lambda self, d, kw, *a: None if a[-1] else body(self, d, kw, *a))
    router, plugin = make_router(tierwise)
    md: dict[str, Any] = {"tierwise": {"session_id": session}}

    async def call_then_wait() -> None:
        await router.acompletion(model="tierwise", messages=[{"role": "user", "content": HARD}], metadata=md)
        await asyncio.sleep(30)  # cancelled here, after the answer

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        task = asyncio.create_task(call_then_wait())
        for _ in range(400):  # until LiteLLM reported the answer to the settler
            if (
                DECISION_KEY in md
                and plugin.settler is not None
                and md[DECISION_KEY]["decision_id"] in (plugin.settler._ended)
            ):
                break
            await asyncio.sleep(0.05)
        if priced:  # and booked its cost
            before = await asettled_view(api, session, 1)
        else:
            before = (await asyncio.to_thread(api.get, f"/sessions/{session}")).json()
        task.cancel()
        await asyncio.sleep(0.8)  # past the grace period
        return before, (await asyncio.to_thread(api.get, f"/sessions/{session}")).json()

    before, after = asyncio.run(run())
    assert after == before
    if priced:
        assert after["spent_usd"] > 0 and after["reserved_usd"] == pytest.approx(0)
    else:
        assert after["spent_usd"] == 0 and after["reserved_usd"] > 0


def test_a_retried_call_is_charged_for_the_try_that_answered(tierwise: str, api: httpx.Client) -> None:
    """The failed first try must not release the decision: the retry that answers pays for it."""
    model_list = flaky_brain_deployments()
    api.put("/sessions/retry-paid", json={"cap_usd": 10.0})
    costs = []
    for seed in range(4):  # at least one seed tries brain-a first
        router = litellm.Router(model_list=model_list, num_retries=2, retry_after=0)
        router.register_plugin(
            TierwiseRoutingStrategy(
                router, TierwiseClient(tierwise, CLIENT_KEY, 10.0), fallback_deployment_id="dep-default", seed=seed
            )
        )
        md: dict[str, Any] = {"tierwise": {"session_id": "retry-paid", "min_tier": "brain"}}
        resp = complete(router, "sync", HARD, md)
        costs.append(resp._hidden_params["response_cost"])
    view = settled_view(api, "retry-paid", 4)
    assert view["spent_usd"] == pytest.approx(sum(costs)) and sum(costs) > 0
    assert view["reserved_usd"] == pytest.approx(0)


@pytest.mark.parametrize(
    ("messages", "view"),
    [
        ([{"role": "user", "content": "hi"}], "hi"),
        (
            [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ],
            "S\n\nc",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}]}],
            "look",
        ),
        ([{"role": "assistant", "content": "only"}], ""),
        (  # no text: the parts' types, as the proxy's view
            [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "S\n\n[image_url]",
        ),
    ],
)
def test_prompt_view(messages: list[dict[str, Any]], view: str) -> None:
    assert prompt_view(messages) == view


def test_each_call_is_settled_with_the_key_that_routed_it(tierwise: str, api: httpx.Client) -> None:
    """Two tenants' strategies on one tierwise in one process: the settler chose its client by URL, so tenant A's
    call was settled with tenant B's key (403: the decision belongs to another client) and stayed unsettled."""
    api.put("/sessions/tenant-a", json={"cap_usd": 10.0})
    router, _ = make_router(tierwise)  # tenant A: CLIENT_KEY
    other = litellm.Router(model_list=TAGGED, num_retries=0)
    other.register_plugin(
        TierwiseRoutingStrategy(
            other, TierwiseClient(tierwise, api_key=OTHER_KEY, timeout_s=10.0), fallback_deployment_id="dep-default"
        )
    )
    resp = complete(router, "sync", f"{EASY} (tenant a)", {"tierwise": {"session_id": "tenant-a"}})
    view = settled_view(api, "tenant-a", 1)
    assert view["spent_usd"] == pytest.approx(resp._hidden_params["response_cost"]) and view["reserved_usd"] == 0


def test_concurrent_calls_sharing_one_metadata_dict_are_each_settled_and_scored(
    tierwise: str, api: httpx.Client
) -> None:
    """LiteLLM hands the caller's metadata dict along: with one dict shared by concurrent calls, each call's
    decision overwrote the others' in it, so the settler settled the last decision again and again and the other
    calls' reservations stayed held. Each call is settled, and scored, as its own decision."""
    api.put("/sessions/shared-md", json={"cap_usd": 10.0})
    router, plugin = make_router(tierwise)
    md: dict[str, Any] = {"tierwise": {"session_id": "shared-md"}}
    prompts = [f"{p} (shared {i})" for i, p in enumerate((HARD, EASY, HARD, EASY))]

    async def calls() -> tuple[list[Any], dict[str, Any]]:
        responses = await asyncio.gather(
            *(
                router.acompletion(model="tierwise", messages=[{"role": "user", "content": p}], metadata=md)
                for p in prompts
            )
        )
        return list(responses), await asettled_view(api, "shared-md", 4)

    responses, view = asyncio.run(calls())
    costs = [r._hidden_params["response_cost"] for r in responses]
    assert view["spent_usd"] == pytest.approx(sum(costs)) and view["reserved_usd"] == pytest.approx(0)
    # Each response's score lands on its own decision: four new outcomes, one per decision (a score posted
    # twice to one decision is a retry, recorded 0; directly re-posting each decision's score is one too).
    for resp in responses:
        answer = plugin.post_score(md, resp, 0.5)
        assert answer is not None and answer["recorded"] == 1
    for d in view["recent_decisions"]:
        again = api.post("/outcomes", json={"decision_id": d["decision_id"], "score": 0.5})
        assert again.status_code == 201 and again.json()["recorded"] == 0


def test_without_the_settler_a_shared_metadata_dict_names_its_call_by_deployment_or_refuses(
    tierwise: str, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """settle=False: no callback saw which call answered; the deployment that served a response names its call
    among those sharing the dict, and where two share a deployment post_score refuses rather than guess."""
    # The process's settler (an earlier test's strategy made it) sees every call: here it sees none.
    monkeypatch.setattr(TierwiseSettler, "_answered", lambda *_: None)
    monkeypatch.setattr(litellm_router, "_SETTLER", None)
    api.put("/sessions/shared-nosettle", json={"cap_usd": 10.0})
    router, plugin = make_router(tierwise, settle=False)
    md: dict[str, Any] = {"tierwise": {"session_id": "shared-nosettle"}}

    async def calls(*prompts: str) -> list[Any]:
        messages = [[{"role": "user", "content": p}] for p in prompts]
        return list(
            await asyncio.gather(*(router.acompletion(model="tierwise", messages=m, metadata=md) for m in messages))
        )

    hard, easy = asyncio.run(calls(f"{HARD} (nosettle)", f"{EASY} (nosettle)"))
    assert hard._hidden_params["model_id"] != easy._hidden_params["model_id"]
    for resp in (hard, easy):
        assert plugin.post_score(md, resp, 0.5)["recorded"] == 1  # type: ignore[index]
    view = api.get("/sessions/shared-nosettle").json()
    assert all(d["settled"] for d in view["recent_decisions"]) and view["reserved_usd"] == pytest.approx(0)
    first, second = asyncio.run(calls(f"{HARD} (nosettle 2)", f"{HARD} (nosettle 3)"))
    with pytest.raises(ValueError, match="2 calls in flight share this metadata dict"):
        plugin.post_score(md, first, 0.5)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_separate_calls_given_one_trace_id_are_each_routed_and_settled(
    tierwise: str, api: httpx.Client, mode: str
) -> None:
    """LiteLLM keeps a trace id the caller gives (a conversation's calls in one trace): the second call on the same
    metadata was taken for a retry of the first, neither routed nor settled; back to back it still was, as LiteLLM
    ends a call (its callbacks) after the call returned."""
    session = f"one-trace-{mode}"
    api.put(f"/sessions/{session}", json={"cap_usd": 10.0})
    router, _ = make_router(tierwise)
    md: dict[str, Any] = {"tierwise": {"session_id": session}}
    prompts = [[{"role": "user", "content": f"{p} (trace {mode} {i})"}] for i, p in enumerate((HARD, EASY))]

    async def calls() -> tuple[list[Any], dict[str, Any]]:
        done = [
            await router.acompletion(model="tierwise", messages=m, metadata=md, litellm_trace_id=f"conv-{mode}")
            for m in prompts
        ]
        return done, await asettled_view(api, session, 2)

    if mode == "async":
        responses, view = asyncio.run(calls())
    else:
        responses = [
            router.completion(model="tierwise", messages=m, metadata=md, litellm_trace_id=f"conv-{mode}")
            for m in prompts
        ]
        view = settled_view(api, session, 2)
    assert {r._hidden_params["model_id"] for r in responses} == {"dep-brain", "dep-main"}
    costs = [r._hidden_params["response_cost"] for r in responses]
    assert view["spent_usd"] == pytest.approx(sum(costs)) and view["reserved_usd"] == pytest.approx(0)


def test_streamed_calls_sharing_one_metadata_dict_are_each_scored_as_their_own(
    tierwise: str, api: httpx.Client
) -> None:
    """A streamed answer carries no LiteLLM call id: after both calls ended, each score went to the latest
    decision. The settler knows each answer by the upstream's response id too."""
    api.put("/sessions/shared-streams", json={"cap_usd": 10.0})
    router, plugin = make_router(tierwise)
    md: dict[str, Any] = {"tierwise": {"session_id": "shared-streams"}}

    async def one(prompt: str) -> Any:
        messages = [{"role": "user", "content": prompt}]
        stream = await router.acompletion(model="tierwise", messages=messages, metadata=md, stream=True)
        return litellm.stream_chunk_builder([c async for c in stream], messages=messages)

    async def calls() -> tuple[list[Any], dict[str, Any]]:
        answers = await asyncio.gather(one(f"{HARD} (stream a)"), one(f"{EASY} (stream b)"))
        return list(answers), await asettled_view(api, "shared-streams", 2)

    answers, view = asyncio.run(calls())
    for answer in answers:
        assert plugin.post_score(md, answer, 0.5)["recorded"] == 1  # type: ignore[index]
    for d in view["recent_decisions"]:  # each decision holds one score: posting it again is a retry
        again = api.post("/outcomes", json={"decision_id": d["decision_id"], "score": 0.5})
        assert again.status_code == 201 and again.json()["recorded"] == 0, again.text


def test_a_score_lands_on_the_one_call_left_in_flight(
    tierwise: str, api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No settler: two calls share a dict; B's score (named by its deployment) first, then A's, the one call left in
    flight. A's score went to the latest decision (B's)."""
    monkeypatch.setattr(TierwiseSettler, "_answered", lambda *_: None)
    monkeypatch.setattr(litellm_router, "_SETTLER", None)
    router, plugin = make_router(tierwise, settle=False)
    md: dict[str, Any] = {"tierwise": {"session_id": "left-in-flight"}}
    api.put("/sessions/left-in-flight", json={"cap_usd": 10.0})
    a = complete(router, "sync", f"{EASY} (left a)", md)
    b = complete(router, "sync", f"{HARD} (left b)", md)
    ids = {d["deployment_id"]: d["decision_id"] for d in md["tierwise_decisions"].values()}
    assert set(ids) == {a._hidden_params["model_id"], b._hidden_params["model_id"]}
    assert plugin.post_score(md, b, 0.9)["recorded"] == 1  # type: ignore[index]
    assert plugin.post_score(md, a, 0.1)["recorded"] == 1  # type: ignore[index]
    for resp, score in ((a, 0.1), (b, 0.9)):  # each decision holds its own score: posting it again is a retry
        body = {"decision_id": ids[resp._hidden_params["model_id"]], "score": score}
        again = api.post("/outcomes", json=body | {"cost_usd": resp._hidden_params["response_cost"]})
        assert again.status_code == 201 and again.json()["recorded"] == 0, again.text


def test_an_answer_from_a_fallback_group_is_none_of_the_tiers(tierwise: str, api: httpx.Client) -> None:
    """LiteLLM's fallbacks: every deployment of the tier fails and the `default` group answers. The decision is
    released, and that answer's score is not posted as the tier's outcome (it was, at the tier's decision)."""
    api.put("/sessions/fell-back", json={"cap_usd": 10.0})
    failing = [deployment(f"x-{t}", t, reply="litellm.InternalServerError") for t in TIERS]
    router = litellm.Router(
        model_list=[*failing, deployment("dep-default", group="default")],
        num_retries=0,
        fallbacks=[{"tierwise": ["default"]}],
    )
    plugin = TierwiseRoutingStrategy(
        router, TierwiseClient(tierwise, api_key=CLIENT_KEY, timeout_s=10.0), fallback_deployment_id="dep-default"
    )
    router.register_plugin(plugin)
    md: dict[str, Any] = {"tierwise": {"session_id": "fell-back"}}
    resp = complete(router, "sync", f"{HARD} (fell back)", md)
    assert resp._hidden_params["model_id"] == "dep-default" and md[DECISION_KEY]["decision_id"]
    view = settled_view(api, "fell-back", 1)
    assert view["spent_usd"] == 0 and view["reserved_usd"] == pytest.approx(0)  # released, charged nothing
    assert plugin.post_score(md, resp, 0.9) is None
    assert api.get("/sessions/fell-back").json()["spent_usd"] == 0


def test_a_long_lived_tasks_watch_list_is_bounded() -> None:
    """Calls cancelled inside a task that goes on (asyncio.timeout) are never reported ended: the task's watch list
    grew by one decision per such call (review finding)."""
    client = TierwiseClient("http://127.0.0.1:9", api_key=CLIENT_KEY)
    settler = TierwiseSettler(client)

    async def many() -> int:
        for i in range(500):
            settler.watch({"decision_id": f"d{i}", "tierwise_client": client.identity})
        task = asyncio.current_task()
        assert task is not None
        return len(settler._watched[task])

    assert asyncio.run(many()) <= litellm_router.WATCHED_PER_TASK


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_a_child_forked_while_a_release_held_the_settlers_locks_can_settle() -> None:
    """A process forked while a release worker held the settler's lock (or the in-flight lock) inherited it held,
    and its every settlement waited forever; the child gets locks of its own."""
    client = TierwiseClient("http://127.0.0.1:9")
    settler = TierwiseSettler(client)
    held, done = threading.Event(), threading.Event()

    def release_worker() -> None:  # holds both locks across the fork, as a release in progress does
        with settler._lock, litellm_router._IN_FLIGHT_LOCK:
            held.set()
            done.wait(10)

    t = threading.Thread(target=release_worker, daemon=True)
    t.start()
    assert held.wait(5)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: can it take each lock?
        status = b"x"
        try:
            own = settler._lock.acquire(timeout=2)
            in_flight = litellm_router._IN_FLIGHT_LOCK.acquire(timeout=2)
            status = b"%d%d" % (own, in_flight)
        finally:
            os.write(w, status)
            os._exit(0)
    os.close(w)
    try:
        out = b""
        while chunk := os.read(r, 16):
            out += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
        done.set()
        t.join(5)
    assert out == b"11", f"child took (settler lock, in-flight lock) = {out!r}"
