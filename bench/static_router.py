"""A router trained with the static embedder, for the fast-path benchmarks: built once, kept under .cache/bench/.

The fast-path targets (issue 12) are about the static embedder, which is a setting, not the default, so the
champion in the user's registry may be an onnx-int8 model. This trains the same DifficultyModel on the same
log and split as `tierwise train`, with the static embedder, and saves the artifact where
TIERWISE_LOCAL_MODEL_PATH can serve it. Rebuilt when the log, the tiers or the static vectors change.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from bench.common import ONNX_DIR, REPO
from infra.settings import Settings
from router.artifact import ARTIFACT_FILE, RouterArtifact
from router.embedders.factory import make_embedder
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.schema import load_outcomes, load_tiers
from training.data import split_log
from training.fit import train_router

logger = logging.getLogger(__name__)


def _fingerprint(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def static_router_dir(settings: Settings | None = None) -> Path:
    """The saved static-embedder artifact for the configured log and tiers, trained on first use."""
    settings = settings or Settings()
    outcomes, tiers_path = REPO / settings.outcomes_path, REPO / settings.tiers_path
    key = _fingerprint(outcomes, tiers_path, ONNX_DIR / "static-vectors.npy", ONNX_DIR / "static-meta.json")
    out = REPO / ".cache" / "bench" / f"static-router-{key}"
    if (out / ARTIFACT_FILE).is_file():
        return out
    logger.info("training a static-embedder router for the benchmarks into %s", out)
    tiers = load_tiers(tiers_path)
    split = split_log(load_outcomes(outcomes, tiers), tiers, settings.test_size, settings.seed)
    embedder = make_embedder("static", onnx_dir=ONNX_DIR)
    features = FeatureSpec(
        embedder_id=embedder.id,
        embedding_dim=embedder.dim,
        tail_chars=settings.tail_chars,
        text_features=settings.text_features,
    )
    model = DifficultyModel(calibration=settings.calibration, random_state=settings.seed)
    artifact = train_router(split, embedder, None, features, model)
    tmp = out.with_name(out.name + ".tmp")
    artifact.save(tmp)
    tmp.rename(out)
    return out


def load_static_router(settings: Settings | None = None) -> RouterArtifact:
    return RouterArtifact.load(static_router_dir(settings))
