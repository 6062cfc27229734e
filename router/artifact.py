"""RouterArtifact: everything a trained router needs to score prompts, saved as one directory."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from router.embedders.protocol import Embedder
from router.embedding_cache import EmbeddingCache
from router.features import FeatureSpec, featurize
from router.guarantee import QualityGuarantee
from router.model import FORMAT_VERSION, DifficultyModel
from router.novelty import NoveltyReference
from router.policy import DefaultKnob
from router.schema import TiersConfig, TiersConfigError, parse_tiers, tiers_to_dict
from router.task_classifier import TASK_CLASSIFIER_FILE, TaskClassifier
from router.task_hint import TaskPrior
from router.text import prompt_tokens

ARTIFACT_FILE = "router.json"
# The keys a packaged (MLflow pyfunc) model keeps the router artifact and the ONNX embedder files under.
PACKAGED_ROUTER, PACKAGED_EMBEDDER = "router", "embedder"


def estimate_tokens_out(log: pd.DataFrame, tiers: TiersConfig) -> dict[str, float]:
    """Mean output tokens per tier from the log: the tokens_out column, else what the cost implies.

    Without token counts, output tokens are the cost left after pricing the input at its estimate
    (router.text.token_estimate), divided by the output price.
    """
    out: dict[str, float] = {}
    for tier in tiers.tiers:
        rows = log[log["model"] == tier.model]
        if rows.empty:
            out[tier.name] = 0.0
            continue
        if "tokens_out" in rows and rows["tokens_out"].notna().any():
            out[tier.name] = float(rows["tokens_out"].mean())
            continue
        tokens_in = prompt_tokens(rows["prompt"].tolist())
        residual = rows["cost_usd"] - tokens_in * tier.input_per_1m / 1e6
        per_token = tier.output_per_1m / 1e6
        out[tier.name] = float(np.clip(residual / per_token, 0, None).mean()) if per_token > 0 else 0.0
    return out


@dataclass(frozen=True)
class HeldOut:
    """How training split its log (training.data.split_log): the test share, the seed and the rule
    (router.evaluate.SPLIT_RULES). `tierwise evaluate` and `calibrate` split the same way by default, so they score
    the model on prompts it did not train on."""

    test_size: float
    seed: int
    # A digest of the set of the log's normalised prompt texts (under the "draw" rule, another digest is another
    # log, so another split); the tiers `add-model` swapped in since, which learned from held-out prompts too.
    log_digest: str | None = None
    refit_tiers: tuple[str, ...] = ()
    rule: str = "hash"  # a model that recorded none was split by "draw"


@dataclass
class RouterArtifact:
    """A fitted DifficultyModel with its feature spec, tier names and output-token estimates."""

    model: DifficultyModel
    features: FeatureSpec
    tiers: TiersConfig
    tokens_out: Mapping[str, float]
    # Trust (optional; a model trained before they existed has neither): how far a prompt is from the
    # training prompts, and the quality guarantee's calibrated operating points.
    novelty: NoveltyReference | None = None
    guarantee: QualityGuarantee | None = None
    # The operating point the model routes with when a request sets no knob (None: trained before it was stored).
    default_knob: DefaultKnob | None = None
    # Each tier's mean score per category of the log, blended in when a request names its task (None: the log
    # had no categories, or the model was trained before task hints existed).
    task_prior: TaskPrior | None = None
    # How its log was split (None: trained before it was stored).
    held_out: HeldOut | None = None

    @property
    def tier_names(self) -> list[str]:
        return list(self.model.tier_names_)

    def swapped_models(self, tiers: TiersConfig) -> list[str]:
        """The tiers `tiers` serves with other models than the model was trained with, each as 'tier: trained ->
        live' (a swap the tiers file made: their predicted quality is still the trained models' until a retrain or
        `tierwise add-model`)."""
        trained = {t.name: t.parts for t in self.tiers.tiers}
        return [
            f"{t.name}: {' + '.join(trained.get(t.name, ('none',)))} -> {' + '.join(t.parts)}"
            for t in tiers.tiers
            if trained.get(t.name) != t.parts
        ]

    def check_tiers(self, tiers: TiersConfig) -> None:
        """A live tiers config may swap models and prices, but not rename, add or reorder tiers."""
        if tiers.names != self.tier_names:
            raise TiersConfigError(
                f"the model was trained for tiers {self.tier_names}, the config has {tiers.names}: use the tiers "
                "file it was trained with, or train a model for these tiers"
            )

    def predict_quality(
        self,
        prompts: Sequence[str],
        embedder: Embedder,
        cache: EmbeddingCache | None = None,
        num_threads: int | None = None,
        tasks: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Predicted score per tier, (n, k): the boosters' with the task prior blended in (`quality_of`)."""
        X = featurize(prompts, self.features, embedder, cache)
        return self.quality_of(X, tasks, num_threads)

    def predict_quality_and_novelty(
        self,
        prompts: Sequence[str],
        embedder: Embedder,
        cache: EmbeddingCache | None = None,
        num_threads: int | None = None,
        tasks: Sequence[str | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted score per tier (n, k) and each prompt's novelty (n,), None without a reference: one embedding."""
        X = featurize(prompts, self.features, embedder, cache)
        quality = self.quality_of(X, tasks, num_threads)
        if self.novelty is None:
            return quality, None
        return quality, self.novelty.score(X[:, : self.features.embedding_dim])

    def quality_of(
        self, X: np.ndarray, tasks: Sequence[str | None] | None = None, num_threads: int | None = None
    ) -> np.ndarray:
        """Predicted score per tier of feature rows (n, k): the boosters' prediction, blended with each prompt's
        task prior (a known hint in `tasks`, else the classifier's guess; router/task_hint.py) when the model
        has one."""
        quality = self.model.predict_quality(X, num_threads=num_threads)
        if self.task_prior is None:
            return quality
        return self.task_prior.blend(quality, tasks, X)[0]

    def expected_cost(
        self,
        prompts: Sequence[str],
        tiers: TiersConfig | None = None,
        tokens_in: Sequence[float | None] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Expected cost per tier, (n, k): the input (`tokens_in` per prompt, when the caller counted what it sends;
        for a prompt whose count is None, or with no counts, the prompt's estimate, router.text.prompt_tokens) plus
        the tier's mean output."""
        tiers = tiers or self.tiers
        self.check_tiers(tiers)
        if tokens_in is None:
            counts = prompt_tokens(prompts)
        else:
            if len(tokens_in) != len(prompts):
                raise ValueError(f"{len(tokens_in)} input token counts for {len(prompts)} prompts")
            estimated = [i for i, n in enumerate(tokens_in) if n is None]
            counts = np.array([0.0 if n is None else n for n in tokens_in], dtype=float)
            counts[estimated] = prompt_tokens([prompts[i] for i in estimated])
        if not (np.isfinite(counts) & (counts >= 0)).all():
            raise ValueError("input token counts must be finite and at least 0")
        cols = [
            counts * t.input_per_1m / 1e6 + self.tokens_out.get(t.name, 0.0) * t.output_per_1m / 1e6
            for t in tiers.tiers
        ]
        return np.stack(cols, axis=1) if cols else np.zeros((len(prompts), 0))

    def reference_cost_usd(self, tokens_in: float, tiers: TiersConfig | None = None) -> float:
        """The priciest tier's expected cost for a prompt of `tokens_in` input tokens (the knob's cost unit)."""
        tiers = tiers or self.tiers
        return max(
            tokens_in * t.input_per_1m / 1e6 + self.tokens_out.get(t.name, 0.0) * t.output_per_1m / 1e6
            for t in tiers.tiers
        )

    def default_cost_weight_per_usd(self, tiers: TiersConfig | None = None) -> float | None:
        """The stored λ per USD at the live prices: λ per reference cost ÷ the reference cost at those prices."""
        if self.default_knob is None:
            return None
        ref = self.reference_cost_usd(self.default_knob.reference_tokens_in, tiers)
        return self.default_knob.cost_weight / ref if ref > 0 else None

    def save(self, directory: Path | str) -> Path:
        directory = Path(directory)
        self.model.save(directory / "difficulty_model")
        meta = {
            "format_version": FORMAT_VERSION,
            "features": self.features.model_dump(),
            "tiers": tiers_to_dict(self.tiers),
            "tokens_out": dict(self.tokens_out),
            "guarantee": self.guarantee.to_dict() if self.guarantee else None,
            "default_knob": self.default_knob.to_dict() if self.default_knob else None,
            "task_prior": self.task_prior.to_dict() if self.task_prior else None,
            "held_out": asdict(self.held_out) if self.held_out else None,
        }
        # A part this model lacks is removed if a folder saved before holds one: it would load with this model.
        if self.novelty is not None:
            self.novelty.save(directory / "novelty")
        else:
            shutil.rmtree(directory / "novelty", ignore_errors=True)
        if self.task_prior is not None and self.task_prior.classifier is not None:
            self.task_prior.classifier.save(directory / TASK_CLASSIFIER_FILE)
        else:
            (directory / TASK_CLASSIFIER_FILE).unlink(missing_ok=True)
        (directory / ARTIFACT_FILE).write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> RouterArtifact:
        directory = Path(directory)
        path = directory / ARTIFACT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {ARTIFACT_FILE}; not a tierwise router artifact")
        meta = json.loads(path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: artifact format {meta.get('format_version')} is not {FORMAT_VERSION}")
        return cls(
            model=DifficultyModel.load(directory / "difficulty_model"),
            features=FeatureSpec(**meta["features"]),
            tiers=parse_tiers(meta["tiers"], path),
            tokens_out=meta["tokens_out"],
            novelty=NoveltyReference.load(directory / "novelty"),
            guarantee=QualityGuarantee.from_dict(meta["guarantee"]) if meta.get("guarantee") else None,
            default_knob=DefaultKnob.from_dict(meta["default_knob"]) if meta.get("default_knob") else None,
            task_prior=_load_task_prior(directory, meta.get("task_prior")),
            held_out=_load_held_out(meta.get("held_out")),
        )


def _load_held_out(meta: dict[str, Any] | None) -> HeldOut | None:
    if not meta:
        return None
    digest = meta.get("log_digest")
    refit = tuple(str(t) for t in meta.get("refit_tiers") or ())
    rule = str(meta.get("rule", "draw"))  # recorded since the hash rule; a model from before was split by a draw
    return HeldOut(float(meta["test_size"]), int(meta["seed"]), None if digest is None else str(digest), refit, rule)


def _load_task_prior(directory: Path, meta: dict[str, Any] | None) -> TaskPrior | None:
    """The saved task prior with its classifier (a model trained before the classifier existed has none)."""
    if not meta:
        return None
    path = directory / TASK_CLASSIFIER_FILE
    return TaskPrior.from_dict(meta, TaskClassifier.load(path) if path.is_file() else None)


def find_artifact(root: Path | str) -> Path:
    """The directory under `root` (e.g. a downloaded MLflow model) that holds router.json."""
    root = Path(root)
    if (root / ARTIFACT_FILE).is_file():
        return root
    hits = sorted(root.rglob(ARTIFACT_FILE))
    if not hits:
        raise FileNotFoundError(f"{root}: no {ARTIFACT_FILE} found")
    return hits[0].parent
