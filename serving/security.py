"""Bearer API keys, configured as sha256 hashes, with two scopes: client and admin."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from serving.errors import Forbidden, Unauthorized

logger = logging.getLogger(__name__)

Scope = Literal["client", "admin"]
SCOPES: tuple[Scope, ...] = ("client", "admin")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class Principal:
    """Who is calling: the hash of their key (None when keys are off) and its scope."""

    key_hash: str | None
    scope: Scope

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


ANONYMOUS = Principal(key_hash=None, scope="admin")


def hash_key(key: str) -> str:
    """The form a key is configured in: its sha256 hex digest."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """Configured key hashes -> scope. Empty means auth is off, which only a loopback bind allows."""

    def __init__(self, hashes: Mapping[str, str]):
        bad = {h: s for h, s in hashes.items() if s not in SCOPES}
        if bad:
            raise ValueError(f"TIERWISE_API_KEYS: unknown scope(s) {sorted(set(bad.values()))}; use client or admin")
        self._hashes = {h.lower(): s for h, s in hashes.items()}

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def check_bind(self, host: str) -> None:
        """Refuse to serve without keys on anything but loopback; warn when serving without keys at all."""
        if self.enabled:
            return
        if host not in LOOPBACK:
            raise ValueError(
                f"no API keys configured (TIERWISE_API_KEYS) and bound to {host}: keys are required off 127.0.0.1"
            )
        logger.warning("no API keys configured: every caller has admin scope (allowed only on %s)", host)

    def authenticate(self, token: str | None) -> Principal:
        """The caller holding bearer `token` (None when the request carried no bearer token)."""
        if not self.enabled:
            return ANONYMOUS
        if not token or not token.strip():
            raise Unauthorized("missing bearer token")
        digest = hash_key(token.strip())
        for known, scope in self._hashes.items():
            if hmac.compare_digest(known, digest):
                return Principal(key_hash=digest, scope=scope)  # type: ignore[arg-type]
        raise Unauthorized("unknown API key")

    def principal_of(self, key_hash: str) -> Principal | None:
        """The caller a configured key hash stands for, None if it is no longer configured (/ui logins keep the
        hash, never the key)."""
        scope = self._hashes.get(key_hash.lower())
        return Principal(key_hash=key_hash.lower(), scope=scope) if scope else None  # type: ignore[arg-type]


def require_admin(principal: Principal) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this needs an admin key")
    return principal


def owns(principal: Principal, owner: str | None) -> bool:
    """Whether `principal` may touch a session or decision `owner` created: admin any, a client key its own. One
    with no owner was made while keys were off (every caller was admin then): admin only, once keys are on; any
    client key could read it, raise its cap and settle its decisions (review finding)."""
    return principal.is_admin or (
        owner is not None and principal.key_hash is not None and hmac.compare_digest(owner, principal.key_hash)
    )


def check_owner(principal: Principal, owner: str | None, what: str = "this session") -> None:
    """403 unless `principal` owns(`owner`)."""
    if not owns(principal, owner):
        raise Forbidden(f"{what} belongs to another client" if owner is not None else f"{what} needs an admin key")
