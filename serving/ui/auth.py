"""The admin page's login: signed session tokens (never the key) and CSRF tokens bound to them.

A session token is `<key hash>.<expiry>.<nonce>.<HMAC>` signed with a secret every worker of the service reads
from one file, so a login made on one worker holds on all. The key hash is checked against the live key ring on
every request: removing a key from TIERWISE_API_KEYS ends its logins too.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

SECRET_BYTES = 32
ANON = "-"  # the key hash of a login made while keys are off (loopback only)


def load_secret(path: Path) -> bytes:
    """The signing secret kept at `path`, made (mode 0600) by whichever worker gets there first.

    Written whole to a private temporary file, then hard-linked into place (which fails if the file exists), so no
    worker ever reads a half-written secret.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(SECRET_BYTES))
            with contextlib.suppress(FileExistsError):  # another worker linked its secret first: use that one
                os.link(tmp, path)
        finally:
            tmp.unlink()
    data = path.read_bytes()
    if len(data) < SECRET_BYTES:
        raise ValueError(f"{path}: the /ui signing secret is shorter than {SECRET_BYTES} bytes; delete it to renew")
    return data


def same(a: str, b: str) -> bool:
    """Constant-time equality of two strings, whatever characters a client sent (compare_digest refuses non-ASCII
    str)."""
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class Signer:
    """Signs and checks session tokens and the CSRF tokens derived from them."""

    secret: bytes
    ttl_s: float

    def _mac(self, purpose: str, message: str) -> str:
        return hmac.new(self.secret, f"{purpose}:{message}".encode(), hashlib.sha256).hexdigest()

    def issue(self, key_hash: str | None, now: float | None = None, purpose: str = "session") -> str:
        expiry = int((time.time() if now is None else now) + self.ttl_s)
        body = f"{key_hash or ANON}.{expiry}.{secrets.token_hex(8)}"
        return f"{body}.{self._mac(purpose, body)}"

    def verify(self, token: str | None, now: float | None = None, purpose: str = "session") -> str | None:
        """The key hash a valid, unexpired token was issued for ('-' for keys off); None for anything else.

        A token issued for one purpose (a session, a pre-login nonce) is refused for another."""
        if not token or token.count(".") != 3:
            return None
        body, mac = token.rsplit(".", 1)
        if not same(mac, self._mac(purpose, body)):
            return None
        key_hash, expiry, _nonce = body.split(".")
        if not expiry.isdigit() or int(expiry) < (time.time() if now is None else now):
            return None
        return key_hash

    def csrf(self, token: str) -> str:
        """The CSRF token of a session: forms carry it, POSTs must echo it."""
        return self._mac("csrf", token)

    def check_csrf(self, token: str, sent: str | None) -> bool:
        return bool(sent) and same(self.csrf(token), sent or "")

    def login_csrf(self, nonce: str) -> str:
        """The login form's CSRF token, bound to a pre-login nonce cookie (no session exists yet)."""
        return self._mac("login", nonce)

    def check_login_csrf(self, nonce: str | None, sent: str | None) -> bool:
        return bool(nonce) and bool(sent) and same(self.login_csrf(nonce or ""), sent or "")
