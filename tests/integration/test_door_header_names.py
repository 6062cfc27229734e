"""A tier or model named in another script through the door: its headers are percent-encoded, its answer arrives.

Starlette writes header values as Latin-1: a model named "Qwen-千问" failed every door answer with a 500 after
the upstream was called and charged, and a streamed one kept its reservation and its upstream stream open (review
finding).
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.model_source import LocalSource
from serving.proxy import service
from tests.conftest import TIERS_TOML, HashingEmbedder
from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.fake_upstream import Reply, fake_upstream
from tests.integration.proxy_fixtures import proxy_settings

NAME = "Qwen-千问 v2"


def _tiers_naming_mid(path: Path, base_url: str) -> Path:
    """The test tiers with mid's model called NAME, every upstream at `base_url`."""
    lines = []
    for t in TIERS_TOML["tiers"]:
        model = NAME if t["name"] == "mid" else t["model"]
        lines += ["[[tiers]]", f'name = "{t["name"]}"', f'model = "{model}"', ""]
    for model, price in TIERS_TOML["models"].items():
        named = NAME if model == "medium" else model
        lines += [f'[models."{named}"]', *(f"{k} = {v}" for k, v in price.items()), f'base_url = "{base_url}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _ask_mid_in_a_session(client: TestClient, session_id: str, stream: bool) -> Any:
    """POST a door call to the mid tier in a new session capped at $1."""
    assert client.put(f"/sessions/{session_id}", json={"cap_usd": 1.0}, headers=bearer(CLIENT_KEY)).status_code == 200
    body = {
        "model": "tierwise/mid",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": stream,
        "tierwise": {"session_id": session_id},
    }
    return client.post("/v1/chat/completions", json=body, headers=bearer(CLIENT_KEY))


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_named_in_another_script_is_served_and_settled(
    tmp_path: Path, artifact_dir: Path, stream: bool
) -> None:
    with fake_upstream() as up:
        settings = proxy_settings(tmp_path, up, tiers_path=_tiers_naming_mid(tmp_path / "named.toml", up.base_url))
        app = create_app(settings=settings, model_source=LocalSource(artifact_dir), embedder=HashingEmbedder())
        with TestClient(app) as client:
            up.script(NAME, Reply(text="ni hao", usage=(10, 3)))
            r = _ask_mid_in_a_session(client, "s1", stream)
            assert r.status_code == 200, r.text
            assert r.headers["x-tierwise-model"].isascii() and r.headers["x-tierwise-tier"] == "mid"
            assert urllib.parse.unquote(r.headers["x-tierwise-model"]) == NAME
            if stream:
                events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
                text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
            else:
                text = r.json()["choices"][0]["message"]["content"]
            assert text == "ni hao"
            s = client.get("/sessions/s1", headers=bearer(CLIENT_KEY)).json()
            assert s["reserved_usd"] == pytest.approx(0.0) and s["spent_usd"] > 0, s


def test_a_stream_whose_response_cannot_be_built_is_settled(
    tmp_path: Path, artifact_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails between the open upstream stream and the response (it was the header above) settles the
    call: no reservation is stranded."""

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("a response that cannot be built")

    monkeypatch.setattr(service, "ClosingStreamingResponse", broken)
    with fake_upstream() as up:
        app = create_app(
            settings=proxy_settings(tmp_path, up), model_source=LocalSource(artifact_dir), embedder=HashingEmbedder()
        )
        with TestClient(app, raise_server_exceptions=False) as client:
            r = _ask_mid_in_a_session(client, "s2", stream=True)
            assert r.status_code == 500
            s = client.get("/sessions/s2", headers=bearer(CLIENT_KEY)).json()
            assert s["reserved_usd"] == pytest.approx(0.0) and s["spent_usd"] > 0, s
