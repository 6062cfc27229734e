"""The proxy's metrics on /metrics move with what happened: upstream calls by model and outcome, their latency,
retries, fallbacks, fusion members left out, and the tokens and cost settled (only for answered requests)."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import CLIENT_KEY
from tests.integration.fake_upstream import FakeUpstream, Reply
from tests.integration.proxy_fixtures import proxied_tierwise, proxy_fixtures
from tests.integration.test_openai_fallback import ask
from tests.integration.test_openai_proxy import EASY, HARD, cost, session

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

served, up, url, sdk = proxy_fixtures("metrics", upstream_retry_backoff_s=0.01)


def scrape(url: str) -> Samples:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_an_answered_call_counts_its_outcome_latency_tokens_and_cost(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    up.script("small", Reply(text="hi", usage=(12, 7), delay_s=0.06))
    before = scrape(url)
    ask(sdk, session(url))
    after = scrape(url)
    assert moved(before, after, "tierwise_upstream_calls_total", model="small", outcome="ok") == 1
    assert moved(before, after, "tierwise_upstream_seconds_count", model="small", outcome="ok") == 1
    assert moved(before, after, "tierwise_upstream_seconds_sum", model="small", outcome="ok") >= 0.06
    assert moved(before, after, "tierwise_upstream_seconds_bucket", model="small", outcome="ok", le="0.05") == 0
    assert moved(before, after, "tierwise_upstream_tokens_total", model="small", direction="in") == 12
    assert moved(before, after, "tierwise_upstream_tokens_total", model="small", direction="out") == 7
    assert moved(before, after, "tierwise_upstream_cost_usd_total", model="small") == pytest.approx(
        cost("small", 12, 7)
    )
    assert moved(before, after, "tierwise_upstream_retries_total", model="small") == 0


def test_retries_and_a_fallback_are_counted(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    up.script("small", Reply(status=503), Reply(status=503))
    up.script("medium", Reply(text="from medium", usage=(20, 10)))
    before = scrape(url)
    ask(sdk, session(url))
    after = scrape(url)
    assert moved(before, after, "tierwise_upstream_calls_total", model="small", outcome="server") == 2
    assert moved(before, after, "tierwise_upstream_retries_total", model="small") == 1
    assert moved(before, after, "tierwise_upstream_fallbacks_total", from_tier="main", to_tier="mid") == 1
    assert moved(before, after, "tierwise_upstream_calls_total", model="medium", outcome="ok") == 1
    assert moved(before, after, "tierwise_upstream_tokens_total", model="medium", direction="in") == 20
    assert moved(before, after, "tierwise_upstream_tokens_total", model="small", direction="in") == 0


def test_a_request_nobody_answered_settles_no_tokens_or_cost(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    up.script("large", Reply(status=429), Reply(status=429))
    before = scrape(url)
    with pytest.raises(openai.RateLimitError):
        ask(sdk, session(url), HARD)
    after = scrape(url)
    assert moved(before, after, "tierwise_upstream_calls_total", model="large", outcome="rate_limited") == 2
    assert moved(before, after, "tierwise_upstream_cost_usd_total", model="large") == 0
    assert moved(before, after, "tierwise_upstream_tokens_total", model="large", direction="out") == 0


def test_a_streamed_answer_settles_its_usage(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    up.script("small", Reply(text="streamed", usage=(9, 4)))
    before = scrape(url)
    list(ask(sdk, session(url), stream=True).parse())  # type: ignore[attr-defined]
    after = scrape(url)
    assert moved(before, after, "tierwise_upstream_tokens_total", model="small", direction="out") == 4
    assert moved(before, after, "tierwise_upstream_cost_usd_total", model="small") == pytest.approx(cost("small", 9, 4))


def test_a_fusion_member_left_out_is_counted(tmp_path: Path, artifact_dir: Path, up: FakeUpstream) -> None:
    up.script("medium", Reply(status=500), Reply(status=500))
    with proxied_tierwise(tmp_path, artifact_dir, up, fusion=True, upstream_retry_backoff_s=0.01) as fused:
        before = scrape(fused)
        client = OpenAI(base_url=f"{fused}/v1", api_key=CLIENT_KEY, max_retries=0)
        client.chat.completions.create(model="tierwise/brain", messages=[{"role": "user", "content": EASY}])
        after = scrape(fused)
    assert moved(before, after, "tierwise_fusion_member_failures_total", tier="brain", member="medium") == 1
    assert moved(before, after, "tierwise_fusion_member_failures_total", tier="brain", member="small") == 0
    assert moved(before, after, "tierwise_upstream_calls_total", model="large", outcome="ok") == 1  # the judge


def test_fusion_members_charged_when_the_judge_fails_are_counted(
    tmp_path: Path, artifact_dir: Path, up: FakeUpstream
) -> None:
    """The session is charged what the members cost though nobody answered; the cost and token counters missed it
    (review finding: the failure's settlement was not given the metrics)."""
    up.script("small", Reply(text="answer A", usage=(10, 3)))
    up.script("medium", Reply(text="answer B", usage=(11, 4)))
    up.script("large", Reply(status=500), Reply(status=500))
    with proxied_tierwise(tmp_path, artifact_dir, up, fusion=True, upstream_retry_backoff_s=0.01) as fused:
        before = scrape(fused)
        client = OpenAI(base_url=f"{fused}/v1", api_key=CLIENT_KEY, max_retries=0)
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="tierwise/brain", messages=[{"role": "user", "content": EASY}])
        after = scrape(fused)
    assert moved(before, after, "tierwise_upstream_cost_usd_total", model="small") == pytest.approx(
        cost("small", 10, 3)
    )
    assert moved(before, after, "tierwise_upstream_tokens_total", model="medium", direction="out") == 4
    assert moved(before, after, "tierwise_upstream_cost_usd_total", model="large") == 0
