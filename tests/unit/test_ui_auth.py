"""The admin page's session and CSRF tokens: signed, expiring, bound to their session, never the key."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from serving.ui.auth import ANON, SECRET_BYTES, Signer, load_secret

KEY_HASH = "ab" * 32


@pytest.fixture
def signer() -> Signer:
    return Signer(b"s" * SECRET_BYTES, ttl_s=60)


def test_a_token_names_its_key_hash_until_it_expires(signer: Signer) -> None:
    token = signer.issue(KEY_HASH, now=1000)
    assert signer.verify(token, now=1000) == KEY_HASH
    assert signer.verify(token, now=1060) == KEY_HASH
    assert signer.verify(token, now=1061) is None
    assert signer.verify(signer.issue(None, now=1000), now=1000) == ANON


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),  # the MAC
        lambda t: "cd" * 32 + t[64:],  # another key hash
        lambda t: t.replace(t.split(".")[1], str(int(t.split(".")[1]) + 10_000)),  # a later expiry
        lambda t: t.rsplit(".", 1)[0],  # no MAC
        lambda _: "",
        lambda _: "a.b.c.d",
    ],
)
def test_a_tampered_token_is_refused(signer: Signer, tamper: object) -> None:
    token = signer.issue(KEY_HASH, now=1000)
    assert signer.verify(tamper(token), now=1000) is None  # type: ignore[operator]


def test_a_token_holds_only_for_its_purpose(signer: Signer) -> None:
    nonce = signer.issue(None, now=1000, purpose="nonce")
    assert signer.verify(nonce, now=1000, purpose="nonce") == ANON
    assert signer.verify(nonce, now=1000) is None  # a login nonce is no session


def test_another_secret_refuses_the_token(signer: Signer) -> None:
    other = Signer(b"t" * SECRET_BYTES, ttl_s=60)
    assert other.verify(signer.issue(KEY_HASH, now=1000), now=1000) is None


def test_csrf_tokens_are_bound_to_their_session(signer: Signer) -> None:
    a, b = signer.issue(KEY_HASH), signer.issue(KEY_HASH)
    assert a != b  # a nonce: two logins of one key are two sessions
    assert signer.check_csrf(a, signer.csrf(a))
    assert not signer.check_csrf(a, signer.csrf(b))
    assert not signer.check_csrf(a, "")
    assert not signer.check_csrf(a, None)
    assert not signer.check_csrf(a, "é" * 64)  # non-ASCII input is a mismatch, not a TypeError
    assert signer.verify("é.1.2.ü") is None
    assert signer.check_login_csrf("n1", signer.login_csrf("n1"))
    assert not signer.check_login_csrf("n2", signer.login_csrf("n1"))
    assert not signer.check_login_csrf(None, signer.login_csrf("n1"))
    assert signer.csrf(a) != signer.login_csrf(a)  # purposes are separated


def test_the_secret_is_made_once_private_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "ui-secret"
    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(load_secret(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got[0]) == SECRET_BYTES  # every worker reads the same secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(path) == got[0]


def test_a_short_secret_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "ui-secret"
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match=str(path)):
        load_secret(path)
