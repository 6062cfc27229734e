"""The model the service answers with: artifact, live tiers, embedder and version, swapped as one object.

Handlers read `app.state.runtime` once per request, so a reload that assigns a new Runtime never
changes the model under a request in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.artifact import RouterArtifact
from router.embedders.factory import backend_of
from router.embedders.protocol import Embedder
from router.features import EmbedderMismatch
from router.routing import Router
from router.schema import TiersConfig, load_tiers
from serving.model_source import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """The Router the service decides with, and the registry version it came from."""

    router: Router
    version: str
    # Scoring a short request costs well under a millisecond of CPU (the static embedder), so the service may score it
    # on the event loop; a transformer embedder (ONNX, torch) takes milliseconds and releases the GIL: threadpool.
    inline_scoring: bool = False

    @property
    def tiers(self) -> TiersConfig:
        return self.router.tiers

    def score(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Predicted quality and expected cost per tier, both (n, k)."""
        return self.router.score(prompts)

    def tier_index(self, tier: int | str | None) -> int:
        """A tier given by index or name, as an index; raises KeyError or IndexError."""
        if tier is None:
            return 0
        if isinstance(tier, int):
            if tier >= len(self.tiers.tiers):
                raise IndexError(f"min_tier {tier} is past the last tier ({len(self.tiers.tiers) - 1})")
            return tier
        return self.tiers.index(tier)


def check_embedder(artifact: RouterArtifact, embedder: Embedder) -> None:
    """Refuse a model trained on other embeddings than the configured embedder makes."""
    trained = artifact.features.embedder_id
    if embedder.id == trained:
        return
    if backend_of(trained) == backend_of(embedder.id):
        fix = f"this tierwise builds that backend differently now; retrain (`make train`) to serve '{embedder.id}'"
    else:
        fix = f"set TIERWISE_EMBEDDER={backend_of(trained)} or serve a model trained with '{embedder.id}'"
    raise EmbedderMismatch(
        f"the model was trained with embedder '{trained}' but the service is configured with '{embedder.id}'; {fix}"
    )


def build_runtime(
    loaded: LoadedModel, tiers_path: Path, embedder: Embedder, num_threads: int, *, tiers_path_named: bool = True
) -> Runtime:
    """Check the model against the live tiers file and the embedder, then wrap them together.

    Without a tiers file the model's own tiers serve: said as a warning when the file was named
    (TIERWISE_TIERS_PATH), as information when it is the default path (e.g. the container has none, by design).
    """
    check_embedder(loaded.artifact, embedder)
    if tiers_path.is_file():
        tiers = load_tiers(tiers_path)
    else:
        logger.log(
            logging.WARNING if tiers_path_named else logging.INFO,
            "tiers file %s not found; serving the tiers the model was trained with",
            tiers_path,
        )
        tiers = loaded.artifact.tiers
    loaded.artifact.check_tiers(tiers)
    swapped = loaded.artifact.swapped_models(tiers)
    if swapped:
        logger.warning(
            "tiers file %s puts other models behind tiers than model %s was trained with (%s): their predicted "
            "quality is the trained models' until a retrain or `tierwise add-model`",
            tiers_path,
            loaded.version,
            "; ".join(swapped),
        )
    inline = backend_of(embedder.id) == "static"
    return Runtime(Router(loaded.artifact, tiers, embedder, num_threads), loaded.version, inline_scoring=inline)
