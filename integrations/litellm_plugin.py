"""tierwise as a LiteLLM routing plugin (`Router(plugins=[...])`, or `router_settings.plugins` in the LiteLLM proxy's
config.yaml): for each request to a model group whose deployments carry `model_info.tierwise_tier`, ask tierwise
`POST /route` and narrow LiteLLM's candidates to the deployments of the tier it chose; LiteLLM's own routing
strategy then picks among them (load, cooldowns, retries as usual).

The plugin works on LiteLLM's async path (the proxy's; LiteLLM refuses sync calls on a Router with plugins). It
sees the candidates' `litellm_params.model` strings, so each tier's deployments need their own model strings
(`TierwiseRoutingPlugin.from_proxy_config` reads the mapping from the config's `model_list`). A request to a group
with no tier deployments passes untouched. Options, fallbacks and refusals are those of `TierwiseRoutingStrategy`
(`metadata={"tierwise": {...}}`; tierwise down serves `fallback_tier`, else every candidate; a 402 is LiteLLM's
BudgetExceededError); the decision goes to the request's `metadata["routing_plugin_signals"]["tierwise_decision"]`,
and `TierwiseSettler` settles the call on tierwise when it ends (or, for a call cancelled before it ends, releases its
reservation once its task ended cancelled, leaving the decision open for an answer reported later).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from litellm.exceptions import BadRequestError
from litellm.types.router import RoutingContext

from integrations.litellm_router import (
    DECISION_KEY,
    OPTIONS_KEY,
    SIGNALS_KEY,
    TIER_FIELD,
    Decision,
    TierwiseSettler,
    prompt_digest,
    prompt_view,
    refusal,
    shared_settler,
)
from integrations.tierwise_http import TierwiseClient, TierwiseRefused, TierwiseUnavailable

logger = logging.getLogger(__name__)


def tier_models(model_list: Sequence[Mapping[str, Any]], tier_field: str = TIER_FIELD) -> dict[str, str]:
    """`litellm_params.model` -> tier, for the deployments whose `model_info` names a tier.

    Raises ValueError when one model string serves two tiers (the plugin could not tell them apart).
    """
    out: dict[str, str] = {}
    for dep in model_list:
        tier = (dep.get("model_info") or {}).get(tier_field)
        model = (dep.get("litellm_params") or {}).get("model")
        if not tier or not isinstance(model, str):
            continue
        if out.setdefault(model, str(tier)) != str(tier):
            raise ValueError(f"litellm model {model!r} serves tiers {out[model]!r} and {tier!r}: give each its own")
    return out


class TierwiseRoutingPlugin:
    """Narrow LiteLLM's candidate deployments to the tier tierwise chooses for the prompt.

    `model_tier` maps a deployment's `litellm_params.model` to its tier. `fallback_tier` is served when tierwise
    cannot decide (None: every candidate stays). With `settle` (the default) every routed call is settled on
    tierwise when it ends (`TierwiseSettler`, added to LiteLLM's callbacks).
    """

    def __init__(
        self,
        client: TierwiseClient,
        model_tier: Mapping[str, str],
        *,
        fallback_tier: str | None = None,
        settle: bool = True,
    ) -> None:
        if fallback_tier is not None and fallback_tier not in set(model_tier.values()):
            raise ValueError(f"fallback_tier {fallback_tier!r} is no deployment's tier")
        self.client = client
        self.model_tier = dict(model_tier)
        self.fallback_tier = fallback_tier
        self.settler: TierwiseSettler | None = shared_settler(client) if settle else None

    @classmethod
    def from_proxy_config(
        cls, config_path: Path, client: TierwiseClient, *, fallback_tier: str | None = None, settle: bool = True
    ) -> TierwiseRoutingPlugin:
        """The plugin for a LiteLLM proxy config: the tiers of its `model_list` deployments."""
        config = yaml.safe_load(config_path.read_text()) or {}
        return cls(client, tier_models(config.get("model_list") or []), fallback_tier=fallback_tier, settle=settle)

    async def run(self, context: RoutingContext) -> RoutingContext:
        routed = [m for m in context.candidate_models if m in self.model_tier]
        if not routed:
            return context  # a group tierwise does not route
        signals = context.metadata.get(SIGNALS_KEY)
        earlier = signals.get(DECISION_KEY) if isinstance(signals, Mapping) else None
        decision: Mapping[str, Any]
        if isinstance(earlier, dict) and not (self.settler is not None and self.settler.settled(earlier)):
            decision = earlier
        else:  # a new call, or one whose earlier try was released (its task cancelled): routed anew
            decision = await self._decide(context)
        if self.settler is not None:
            self.settler.watch(decision)  # released if its call is cancelled (LiteLLM reports no end for it)
        context.signals[DECISION_KEY] = decision
        tier = decision["tier"]
        keep = [m for m in routed if self.model_tier[m] == tier]
        if keep:
            context.candidate_models = keep
        elif tier is not None:
            logger.warning("no candidate deployment serves tierwise tier %r: every candidate stays", tier)
        return context

    async def _decide(self, context: RoutingContext) -> Decision:
        options = context.metadata.get(OPTIONS_KEY) or {}
        if not isinstance(options, Mapping):
            message = f"metadata[{OPTIONS_KEY!r}] must be a dict of /route options"
            raise BadRequestError(message=message, model="", llm_provider="tierwise")
        prompt = prompt_view(context.structured_messages)
        answer: Mapping[str, Any] | None = None
        why = "no text to route on"
        if prompt:
            try:
                answer = await self.client.aroute(prompt, options)
            except TierwiseRefused as e:
                raise refusal(e, "", options) from e
            except TierwiseUnavailable as e:
                why = str(e)
        if answer is None:
            logger.warning("tierwise did not route (%s); serving fallback tier %s", why, self.fallback_tier)
        return Decision(
            decision_id=answer["decision_id"] if answer else None,
            tier=str(answer["tier"]) if answer else self.fallback_tier,
            deployment_id="",
            reason=str(answer.get("reason", "")) if answer else f"fallback: {why}",
            session_id=(answer.get("session_id") if answer else None) or options.get("session_id"),
            trace_id=None,
            tierwise_url=self.client.base_url,
            tierwise_client=self.client.identity,
            prompt_digest=prompt_digest(prompt),
        )
