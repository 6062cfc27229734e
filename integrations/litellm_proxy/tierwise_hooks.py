"""The hooks config.yaml (beside this file) names: LiteLLM's proxy loads this file by path when it starts.

An entry point for LiteLLM, so it reads its environment: TIERWISE_URL (default http://127.0.0.1:8000) and
TIERWISE_API_KEY (a tierwise client key). The tiers come from config.yaml's `model_list`; tierwise down serves
the `main` tier. Building the plugin also registers the settler that settles each routed call on tierwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from integrations.litellm_plugin import TierwiseRoutingPlugin
from integrations.tierwise_http import TierwiseClient

routing = TierwiseRoutingPlugin.from_proxy_config(
    Path(__file__).with_name("config.yaml"),
    TierwiseClient(os.environ.get("TIERWISE_URL", "http://127.0.0.1:8000"), api_key=os.environ.get("TIERWISE_API_KEY")),
    fallback_tier="main",
)
