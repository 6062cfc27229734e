"""The door keeps an upstream's words, which may quote the prompt, out of the store and the log unless prompts are
stored as text (TIERWISE_PROMPT_STORAGE): vLLM's validation errors quote `input_value=...`, a moderation error
event may quote what it flagged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration.conftest import CLIENT_KEY, bearer
from tests.integration.fake_upstream import Reply
from tests.integration.proxy_fixtures import door_client

SECRET = "my card number is 4111-1111-1111-1111"
ECHO = f"1 validation error: messages.0.content [input_value='{SECRET}', input_type=str]"
STORAGE = {"text": {"prompt_storage": "text"}, "hash": {"prompt_storage": "hash", "prompt_hash_key": "k" * 32}}


def stored_text(db: Path) -> str:
    """Every row of every table of the store, as text."""
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            return "\n".join(repr(tuple(row)) for t in tables for row in conn.execute(sa.text(f'SELECT * FROM "{t}"')))
    finally:
        engine.dispose()


def ask(storage: str, tmp_path: Path, artifact_dir: Path, reply: Reply, stream: bool) -> tuple[str, str]:
    """One door call in a session, every upstream answering `reply`: the caller's answer and the store's rows."""
    with door_client(tmp_path, artifact_dir, **STORAGE[storage]) as (client, up):
        up.default = reply
        body = {"model": "tierwise", "stream": stream, "messages": [{"role": "user", "content": SECRET}]}
        r = client.post(
            "/v1/chat/completions", json={**body, "tierwise": {"session_id": "s1"}}, headers=bearer(CLIENT_KEY)
        )
        answered = r.text
    return answered, stored_text(tmp_path / "serve.db")


@pytest.mark.parametrize("storage", ["hash", "text"])
def test_an_upstream_error_quoting_the_prompt_is_kept_only_with_text_storage(
    storage: str, tmp_path: Path, artifact_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answered, rows = ask(storage, tmp_path, artifact_dir, Reply(status=400, error_message=ECHO), stream=False)
    assert SECRET in answered  # the caller is told what its upstream said
    assert "upstream failures: " in rows and "client HTTP 400" in rows or storage == "text"
    assert (SECRET in rows) == (storage == "text"), rows
    assert not any(SECRET in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize("storage", ["hash", "text"])
def test_an_error_event_quoting_the_prompt_mid_stream_is_kept_only_with_text_storage(
    storage: str, tmp_path: Path, artifact_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    flagged = Reply(text="one two three", error_event_after_chunks=1, error_message=f"moderation flagged: {SECRET}")
    answered, rows = ask(storage, tmp_path, artifact_dir, flagged, stream=True)
    assert "the upstream failed mid-stream" in answered
    assert "mid-stream: server" in rows or storage == "text"
    assert (SECRET in rows) == (storage == "text"), rows
    logged = [rec.getMessage() for rec in caplog.records if "failed mid-stream" in rec.getMessage()]
    assert logged and all((SECRET in line) == (storage == "text") for line in logged), logged
