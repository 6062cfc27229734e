"""What the store keeps of a prompt at rest: its text, a keyed hash, or nothing (TIERWISE_PROMPT_STORAGE).

- text: the prompt text, as sent (default; `tierwise train --from-store` needs it).
- hash: no text; an HMAC-SHA256 of the normalised prompt under a configured key, so the same prompt is
  recognised again (outcomes join their prompt across models) without a dictionary attack on unkeyed hashes.
- none: no text and no hash; an outcome's prompt id is its decision's (or its own) id.

Either way the decision keeps what off-policy evaluation needs without the text: the per-tier predictions,
expected costs and propensities, the served tier and its outcome.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import SecretStr

from router.text import normalize_text

PromptStorage = Literal["text", "hash", "none"]
NOT_STORED = "[prompt not stored]"
"""What a row read back without text shows as its prompt (the column is NULL)."""


def prompt_id_of(prompt: str) -> str:
    """Stable id of a prompt across models: the same prompt logged for two tiers pivots to one row."""
    return hashlib.sha256(normalize_text(prompt).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class PromptPolicy:
    mode: PromptStorage = "text"
    key: bytes | None = field(default=None, repr=False)
    previous_keys: tuple[bytes, ...] = field(default=(), repr=False)  # retired keys: recognised, never used to store

    def __post_init__(self) -> None:
        if self.mode == "hash" and not self.key:
            raise ValueError("prompt storage 'hash' needs a key (TIERWISE_PROMPT_HASH_KEY)")

    def digest(self, prompt: str, key: bytes | None = None) -> str:
        """The keyed hash of a prompt (hash mode) under this policy's key (or `key`), hex."""
        key = key or self.key
        if not key:
            raise ValueError("prompt storage 'hash' needs a key")
        return hmac.new(key, normalize_text(prompt).encode(), hashlib.sha256).hexdigest()

    def decision(self, values: dict[str, Any]) -> dict[str, Any]:
        """A decision row's values as stored."""
        if self.mode == "text":
            return values
        return {**values, "prompt": None, "prompt_hash": self.digest(values["prompt"]) if self.mode == "hash" else None}

    def outcome(self, values: dict[str, Any], decision_hash: str | None = None) -> dict[str, Any]:
        """An outcome row's values as stored; `decision_hash` is its decision's stored prompt hash, if any.

        An outcome of a decision stored without its text (under an earlier hash or none setting) has no text to
        keep in any mode: never the placeholder, which training would read as the prompt."""
        if self.mode == "text" and values["prompt"] != NOT_STORED:
            return values
        if self.mode == "hash" and values["prompt"] != NOT_STORED:
            prompt_id = self.digest(values["prompt"])[:32]
        elif decision_hash:
            prompt_id = decision_hash[:32]
        else:  # no text to hash (none mode): the decision's id, else the outcome's own
            prompt_id = values.get("decision_id") or values["id"]
        return {**values, "prompt": None, "prompt_id": prompt_id}

    def is_prompt_id(self, outcome: Any, prompt_id: str, stored_text: bool) -> bool:
        """Whether an outcome without a decision (its `id` and `prompt`) may be the one stored under `prompt_id`, in
        whichever storage mode was set then (`stored_text`: whether that row kept its text).

        Its text's id (text mode), its keyed hash under this key or a retired one (hash), its own id (none) are the
        same prompt; a text id that differs is another. A hash that differs is another prompt while a key is set,
        and cannot be told apart without one (the row was stored in hash mode, the key is gone): the outcome's other
        fields decide. A hash stored under a key that is neither set nor kept as retired is not recognised: its
        retry is refused as another prompt (keep the old key in TIERWISE_PROMPT_HASH_PREVIOUS_KEYS on a rotation)."""
        ids = {prompt_id_of(outcome.prompt), outcome.id}
        for key in (self.key, *self.previous_keys):
            if key:
                ids.add(self.digest(outcome.prompt, key)[:32])
        return prompt_id in ids or not (stored_text or self.key)


def prompt_policy(storage: PromptStorage, key: SecretStr | None, previous: Sequence[SecretStr] = ()) -> PromptPolicy:
    """The policy for the settings' prompt_storage, prompt_hash_key and prompt_hash_previous_keys."""
    retired = tuple(k.get_secret_value().encode() for k in previous if k.get_secret_value())
    return PromptPolicy(storage, key.get_secret_value().encode() if key is not None else None, retired)
