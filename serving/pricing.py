"""Tokens a caller reports without a cost, priced at the tiers config's catalogue prices (as the door settles).

`POST /decisions/{id}/usage` and `POST /outcomes` take `tokens_in` and `tokens_out` in place of `cost_usd`: a
gateway that cannot price a deployment (LiteLLM without a price for it) still settles the call at tierwise's price.
"""

from __future__ import annotations

from router.schema import TiersConfig
from serving.errors import Invalid
from serving.schemas import MAX_OUTCOME_COST_USD


def priced_tokens(tiers: TiersConfig, model: str, tokens_in: int, tokens_out: int) -> float:
    """What `tokens_in` + `tokens_out` of `model` cost at the config's prices; 422 for a model the config cannot
    price from one count of tokens (a fusion tier's, one no longer configured) or a cost over a call's bound."""
    price = tiers.token_price(model)
    if price is None:
        raise Invalid(
            f"no price for '{model}' from one count of tokens (a fusion tier, or a model no longer in the tiers "
            "config): give cost_usd",
            ("body", "cost_usd"),
        )
    cost = tokens_in * price[0] + tokens_out * price[1]
    if cost > MAX_OUTCOME_COST_USD:
        raise Invalid(
            f"{tokens_in} + {tokens_out} tokens of '{model}' cost ${cost:.0f}, over the ${MAX_OUTCOME_COST_USD:.0e} "
            "one call may",
            ("body", "tokens_in"),
        )
    return cost
