"""The LiteLLM proxy config (integrations/litellm_proxy/config.yaml) without the proxy server: its `router_settings`
are Router arguments, its plugin resolves the way the proxy resolves it (LiteLLM's `get_instance_fn`), and a Router
built from it like the proxy builds one routes through a live tierwise (deployments answer `mock_response`) and
settles each call there; its `tierwise` model reaches tierwise's own door (a fake upstream behind it).

The proxy server itself (`litellm[proxy]`) is not installable here: its `litellm-proxy` package is not published
for the pinned version, so the YAML is loaded the way the proxy loads it, step by step.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price map download (no network)
litellm = pytest.importorskip("litellm", reason="the litellm extra is not installed (pip install -e '.[litellm]')")

from litellm.proxy.types_utils.utils import get_instance_fn  # noqa: E402
from litellm.router_api import router_init_args  # noqa: E402
from litellm.types.router import RoutingPlugin  # noqa: E402

from bench.process import free_port  # noqa: E402
from integrations import litellm_router  # noqa: E402
from integrations.litellm_plugin import TierwiseRoutingPlugin, tier_models  # noqa: E402
from integrations.litellm_router import DECISION_KEY, SIGNALS_KEY  # noqa: E402
from tests.integration.conftest import CLIENT_KEY  # noqa: E402
from tests.integration.fake_upstream import Reply, fake_upstream  # noqa: E402
from tests.integration.proxy_fixtures import proxied_tierwise  # noqa: E402
from tests.integration.test_openai_proxy import EASY, HARD, get_session, session  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "integrations" / "litellm_proxy" / "config.yaml"


def proxy_router(monkeypatch: pytest.MonkeyPatch, tierwise_url: str, v1_url: str = "http://127.0.0.1:9/v1") -> Any:
    """The Router the LiteLLM proxy builds from CONFIG, its environment pointing at `tierwise_url`."""
    for name, value in {
        "TIERWISE_URL": tierwise_url,
        "TIERWISE_V1_URL": v1_url,
        "TIERWISE_API_KEY": CLIENT_KEY,
        "OPENAI_API_KEY": "sk-test-not-used",
    }.items():
        monkeypatch.setenv(name, value)
    config = yaml.safe_load(CONFIG.read_text())
    settings = dict(config["router_settings"])
    settings["plugins"] = [get_instance_fn(p, config_file_path=str(CONFIG)) for p in settings["plugins"]]
    return litellm.Router(model_list=config["model_list"], **settings)


def test_the_config_is_what_the_proxy_accepts() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert set(config) <= {"model_list", "router_settings", "litellm_settings", "general_settings"}
    assert set(config["router_settings"]) <= set(router_init_args()), "the proxy ignores unknown router settings"
    [hook] = config["router_settings"]["plugins"]
    plugin = get_instance_fn(hook, config_file_path=str(CONFIG))
    assert isinstance(plugin, TierwiseRoutingPlugin) and isinstance(plugin, RoutingPlugin)
    assert asyncio.iscoroutinefunction(plugin.run)  # the proxy refuses a plugin whose run is not async
    assert sorted(set(plugin.model_tier.values())) == ["brain", "main", "mid"]
    assert plugin.model_tier == tier_models(config["model_list"]) and plugin.fallback_tier == "main"
    groups = {d["model_name"] for d in config["model_list"]}
    assert groups == {"tierwise", "routed"}


def test_one_model_serving_two_tiers_is_refused() -> None:
    deps = [{"litellm_params": {"model": "openai/x"}, "model_info": {"tierwise_tier": t}} for t in ("main", "mid")]
    with pytest.raises(ValueError, match="serves tiers"):
        tier_models(deps)


async def settled(url: str, sid: str) -> dict[str, Any]:
    """The session once nothing is reserved, polled from the call's event loop (LiteLLM's async callbacks run there)."""
    for _ in range(400):
        s = await asyncio.to_thread(get_session, url, sid)
        if s["recent_decisions"] and s["reserved_usd"] == 0:
            return s
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {sid} not settled: {s}")


@pytest.mark.parametrize(("prompt", "tier"), [(EASY, "main"), (HARD, "brain")])
def test_the_routed_group_serves_the_tier_tierwise_chose_and_settles_it(
    monkeypatch: pytest.MonkeyPatch, live_url: str, prompt: str, tier: str
) -> None:
    routed = httpx.post(f"{live_url}/route", json={"prompt": prompt}, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert routed.json()["tier"] == tier  # the plugin must agree with /route on the same prompt
    router = proxy_router(monkeypatch, live_url)
    sid = session(live_url, cap_usd=1.0)
    metadata: dict[str, Any] = {"tierwise": {"session_id": sid}}

    async def call() -> tuple[Any, dict[str, Any]]:
        messages = [{"role": "user", "content": prompt}]
        response = await router.acompletion(model="routed", messages=messages, mock_response="ok", metadata=metadata)
        return response, await settled(live_url, sid)

    response, s = asyncio.run(call())
    assert response._hidden_params["model_id"] == f"routed-{tier}"
    decision = metadata[SIGNALS_KEY][DECISION_KEY]
    assert decision["tier"] == tier and decision["decision_id"] and decision["session_id"] == sid
    assert s["spent_usd"] == pytest.approx(response._hidden_params["response_cost"]) and s["spent_usd"] > 0


def test_a_cancelled_call_is_released(monkeypatch: pytest.MonkeyPatch, live_url: str) -> None:
    """The proxy cancels a request's task when its client leaves: LiteLLM reports no end for the call, so its
    reservation stayed held; the plugin's decision is now released once the task ended cancelled."""
    monkeypatch.setattr(litellm_router, "RELEASE_AFTER_CANCEL_S", 0.2)
    router = proxy_router(monkeypatch, live_url)
    sid = session(live_url, cap_usd=1.0)
    metadata: dict[str, Any] = {"tierwise": {"session_id": sid}}

    async def call() -> dict[str, Any]:
        messages = [{"role": "user", "content": HARD}]
        slow = router.acompletion(
            model="routed", messages=messages, mock_response="ok", mock_delay=30, metadata=metadata
        )
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow, 1.0)
        assert (await asyncio.to_thread(get_session, live_url, sid))["reserved_usd"] > 0
        return await settled(live_url, sid)

    s = asyncio.run(call())
    assert (
        s["spent_usd"] == 0
        and s["recent_decisions"][0]["decision_id"] == metadata[SIGNALS_KEY][DECISION_KEY]["decision_id"]
    )


def test_tierwise_down_serves_the_fallback_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    router = proxy_router(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    metadata: dict[str, Any] = {}
    response = asyncio.run(
        router.acompletion(
            model="routed", messages=[{"role": "user", "content": HARD}], mock_response="ok", metadata=metadata
        )
    )
    assert response._hidden_params["model_id"] == "routed-main"
    decision = metadata[SIGNALS_KEY][DECISION_KEY]
    assert decision["decision_id"] is None and decision["reason"].startswith("fallback:")


def test_the_tierwise_model_is_tierwises_own_door(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, artifact_dir: Path
) -> None:
    with fake_upstream() as up, proxied_tierwise(tmp_path, artifact_dir, up) as url:
        up.script("small", Reply(text="served through tierwise", usage=(6, 3)))
        router = proxy_router(monkeypatch, url, v1_url=f"{url}/v1")
        response = asyncio.run(router.acompletion(model="tierwise", messages=[{"role": "user", "content": EASY}]))
        assert response.choices[0].message.content == "served through tierwise"
        [(model, body)] = up.requests
    assert model == "small" and body["messages"] == [{"role": "user", "content": EASY}]
