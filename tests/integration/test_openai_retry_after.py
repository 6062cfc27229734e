"""An upstream's Retry-After (429, 503) through the OpenAI SDK: tierwise waits it out before retrying (never past
the request's deadline, never longer than it is configured to wait), falls back when it will not wait, and when no
upstream answers, forwards the wait to the caller in a clean OpenAI-format error the SDK itself honours."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import CLIENT_KEY
from tests.integration.fake_upstream import FakeUpstream, Reply, fake_upstream
from tests.integration.proxy_fixtures import proxied_tierwise, proxy_fixtures
from tests.integration.test_openai_fallback import ask
from tests.integration.test_openai_proxy import HARD, get_session, session

# Every bound below leaves seconds of slack for a slow or busy machine: what a test tells apart is a wait of several
# seconds (or none), never a fraction of one.
DEADLINE_S = 6.0  # the request's deadline the service is started with
MAX_WAIT_S = 1.0  # the longest Retry-After it waits out

served, up, url, sdk = proxy_fixtures(
    "retry_after",
    upstream_timeout_s=30.0,
    upstream_retry_backoff_s=0.01,
    upstream_deadline_s=DEADLINE_S,
    upstream_max_retry_after_s=MAX_WAIT_S,
)


def busy(status: int = 429, hint: dict[str, str] | None = None) -> Reply:
    """A refusal with the wait `hint` in its headers."""
    return Reply(status=status, headers=tuple((hint or {}).items()))


@pytest.mark.parametrize(
    "hint",
    [{"retry-after": "0.4"}, {"retry-after-ms": "400"}, {"retry-after": "0.4", "retry-after-ms": "400"}],
    ids=["seconds", "ms", "both"],
)
@pytest.mark.parametrize("status", [429, 503])
def test_the_retry_waits_out_the_upstreams_retry_after(
    sdk: OpenAI, url: str, up: FakeUpstream, status: int, hint: dict[str, str]
) -> None:
    up.script("small", busy(status, hint), Reply(text="after the wait"))
    raw = ask(sdk, session(url))
    assert raw.parse().choices[0].message.content == "after the wait"  # type: ignore[attr-defined]
    assert raw.headers["x-tierwise-tier"] == "main"  # type: ignore[attr-defined]
    first, second = up.times("small")
    assert second - first >= 0.4  # the policy's own backoff is 0.01 s: the upstream's hint set the wait


def test_a_retry_after_over_the_wait_limit_falls_back_at_once(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    sid = session(url, cap_usd=1.0)
    up.script("small", busy(429, {"retry-after": "3600"}))  # over the limit (and past the deadline)
    up.script("medium", Reply(text="from medium"))
    started = time.monotonic()
    raw = ask(sdk, sid)
    assert time.monotonic() - started < 60  # a guard against a hang; the reason below tells why it did not wait
    assert raw.headers["x-tierwise-tier"] == "mid" and len(up.calls("small")) == 1  # type: ignore[attr-defined]
    assert "Retry-After over the" in get_session(url, sid)["recent_decisions"][0]["reason"]


def test_no_upstream_answers_the_wait_is_forwarded_in_openai_shape(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    sid = session(url, cap_usd=1.0)
    up.script("large", busy(429, {"retry-after": "600"}))  # brain has no fallback; over what tierwise waits
    with pytest.raises(openai.RateLimitError) as err:
        ask(sdk, sid, HARD)
    assert err.value.status_code == 429 and err.value.code == "upstream_rate_limited"
    assert isinstance(err.value.body, dict) and set(err.value.body) >= {"message", "type", "code", "param"}
    headers = err.value.response.headers
    assert 540 <= int(headers["retry-after"]) <= 600 and int(headers["retry-after-ms"]) == 1000 * int(
        headers["retry-after"]
    )
    assert len(up.calls("large")) == 1
    s = get_session(url, sid)
    assert s["spent_usd"] == 0 and s["reserved_usd"] == pytest.approx(0)


def test_an_upstreams_503_with_retry_after_stays_a_503(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    up.script("large", busy(503, {"retry-after": "600"}))
    with pytest.raises(openai.InternalServerError) as err:
        ask(sdk, session(url), HARD)
    assert err.value.status_code == 503 and err.value.code == "upstream_unavailable"
    assert 540 <= int(err.value.response.headers["retry-after"]) <= 600


def test_an_error_without_a_hint_carries_no_retry_after(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    up.script("large", busy(), busy())
    with pytest.raises(openai.RateLimitError) as err:
        ask(sdk, session(url), HARD)
    assert "retry-after" not in err.value.response.headers and len(up.calls("large")) == 2


def test_a_wait_past_the_deadline_is_not_made(tmp_path: Path, artifact_dir: Path) -> None:
    """Within the wait limit (60 s), but past the request's deadline (10 s): no retry, the wait goes to the caller.
    A service of its own: with this module's 1 s limit the window between the two would be under a second."""
    limits = {"upstream_deadline_s": 10.0, "upstream_max_retry_after_s": 60.0, "upstream_timeout_s": 30.0}
    with fake_upstream() as up, proxied_tierwise(tmp_path, artifact_dir, up, **limits) as url:
        up.script("large", busy(429, {"retry-after": "30"}))
        sid = session(url, cap_usd=1.0)
        with pytest.raises(openai.RateLimitError) as err:
            ask(OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0), sid, HARD)
        assert len(up.calls("large")) == 1 and 20 <= int(err.value.response.headers["retry-after"]) <= 30
        assert "would pass the request's deadline" in get_session(url, sid)["recent_decisions"][0]["reason"]


def test_the_deadline_bounds_a_slow_upstream(sdk: OpenAI, url: str, up: FakeUpstream) -> None:
    """The upstream timeout is 30 s; the request's deadline (6 s) cuts the attempt short: a 504."""
    up.script("large", Reply(delay_s=60.0))
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as err:
        ask(sdk, session(url), HARD)
    assert err.value.status_code == 504
    assert time.monotonic() - started < 2 * DEADLINE_S  # the upstream timeout would have taken 30 s


def test_the_sdk_retries_after_the_forwarded_wait_and_gets_its_answer(url: str, up: FakeUpstream) -> None:
    """The caller's own OpenAI SDK (one retry) reads the forwarded Retry-After and comes back then."""
    up.script("large", busy(429, {"retry-after": "2"}), Reply(text="second time lucky"))
    client = OpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=1)
    started = time.monotonic()
    answer = client.chat.completions.create(model="tierwise", messages=[{"role": "user", "content": HARD}])
    assert answer.choices[0].message.content == "second time lucky"
    first, second = up.times("large")
    assert second - first >= 1.5 and time.monotonic() - started >= 1.5  # the SDK waited the ~2 s it was told
