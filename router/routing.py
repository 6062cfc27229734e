"""Router: the one door that decides. Score many prompts with a trained artifact, then decide many.

The service, bulk routing (`tierwise route`), evaluation and the benchmarks all route through it, so
there is one loop over prompts and one place that says why no tier fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

from router.artifact import RouterArtifact
from router.embedders.protocol import Embedder
from router.embedding_cache import EmbeddingCache
from router.guarantee import OperatingPoint
from router.novelty import OOD_NOVELTY, OOD_REASON
from router.policy import Decision, NoTierFits, allowed_tiers, decide, no_tier_fits, resolve_knob
from router.schema import TiersConfig


class Router:
    """A trained artifact with the live tiers and the embedder: `score` prompts, then `decide` on the scores."""

    def __init__(
        self,
        artifact: RouterArtifact,
        tiers: TiersConfig | None = None,
        embedder: Embedder | None = None,
        num_threads: int | None = None,
        cache: EmbeddingCache | None = None,
    ):
        self.artifact = artifact
        self.tiers = tiers or artifact.tiers
        self.embedder = embedder
        self.num_threads = num_threads
        self.cache = cache

    @property
    def names(self) -> list[str]:
        return self.tiers.names

    def predict_quality(
        self, prompts: Sequence[str], chunk: int | None = None, tasks: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """Predicted score per tier, (n, k); with `chunk`, embedded in length-sorted chunks of that many prompts.
        `tasks`: one task hint (or None) a prompt, as in `assess`."""
        return self._chunked(prompts, chunk, tasks, novelty=False)[0]

    def _chunked(
        self, prompts: Sequence[str], chunk: int | None, tasks: Sequence[str | None] | None, novelty: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted quality (n, k) and, with `novelty` and a reference, each prompt's novelty (n,), embedded in
        length-sorted chunks of `chunk` prompts (all at once without)."""
        if self.embedder is None:
            raise ValueError("this Router was built without an embedder; it can decide but not score")
        if tasks is not None and len(tasks) != len(prompts):
            raise ValueError(f"{len(tasks)} task hints for {len(prompts)} prompts")
        embedder, art = self.embedder, self.artifact
        with_novelty = novelty and art.novelty is not None

        def scored(part: Sequence[str], hints: Sequence[str | None] | None) -> tuple[np.ndarray, np.ndarray | None]:
            if with_novelty:
                return art.predict_quality_and_novelty(part, embedder, self.cache, self.num_threads, hints)
            return art.predict_quality(part, embedder, self.cache, self.num_threads, hints), None

        if chunk is None or len(prompts) <= chunk:
            return scored(prompts, tasks)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        quality = np.empty((len(prompts), len(self.tiers.tiers)))
        novel = np.empty(len(prompts)) if with_novelty else None
        for start in range(0, len(order), chunk):
            idx = order[start : start + chunk]
            q, n = scored([prompts[i] for i in idx], None if tasks is None else [tasks[i] for i in idx])
            quality[idx] = q
            if novel is not None:
                novel[idx] = n
        return quality, novel

    def assess(
        self,
        prompts: Sequence[str],
        tasks: Sequence[str | None] | None = None,
        tokens_in: Sequence[float | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Predicted quality and expected cost per tier (n, k), and each prompt's novelty (None without a reference).

        `tasks`, one hint (or None) a prompt: a task the model's log had as a category blends that task's prior in
        instead of the one the model guesses from the prompt (router.task_hint); any other hint is as no hint.
        `tokens_in`, the input tokens each call sends when the caller counted them (else estimated from the prompt).
        """
        if self.embedder is None:
            raise ValueError("this Router was built without an embedder; it can decide but not score")
        quality, novelty = self.artifact.predict_quality_and_novelty(
            prompts, self.embedder, self.cache, self.num_threads, tasks
        )
        return quality, self.expected_cost(prompts, tokens_in), novelty

    def guesses_task(self) -> bool:
        """Whether the model guesses a prompt's task when no hint names one it knows (router.task_hint)."""
        prior = self.artifact.task_prior
        return prior is not None and prior.classifier is not None

    def knows_task(self, task: str | None) -> bool:
        """Whether a task hint changes this model's predictions (a category of its log with enough prompts)."""
        prior = self.artifact.task_prior
        return task is not None and prior is not None and task in prior.means

    def task_hint_note(self, task: str | None, listed_by: str | None = None) -> str:
        """What a task hint did to a decision, for its reason ("" without one); `listed_by`, where the caller can
        read the tasks the model knows (the service's `GET /tiers`)."""
        if task is None:
            return ""
        if self.knows_task(task):
            return f"; task hint {task!r}: its tiers' mean scores in the training log blended in (router.task_hint)"
        fallback = "the model's own guess of the task is used" if self.guesses_task() else "ignored"
        listed = f" ({listed_by} lists them)" if listed_by else ""
        return f"; task hint {task!r} is not a task this model knows{listed}: {fallback}"

    @cached_property
    def guarantee_void(self) -> str | None:
        """Why the stored quality guarantee does not hold for the live tiers, None when it does (or there is none).
        Worked out once per Router (its artifact and tiers are fixed), not on every request.

        Learn then Test certified the choices the model's predictions make of the models it was trained with: a tier
        now served by another model keeps the old model's predictions, so the certificate says nothing of it. Other
        prices alone do not void it: the guarantee's choices are made at the prices it was calibrated with
        (`calibration_cost`)."""
        if self.artifact.guarantee is None:
            return None
        changed = self.artifact.swapped_models(self.tiers)
        if not changed:
            return None
        return (
            f"the quality guarantee was calibrated with other models behind the tiers ({'; '.join(changed)}): "
            "retrain the model to calibrate it for these (`tierwise add-model` makes a model without a guarantee)"
        )

    def calibration_cost(self, prompts: Sequence[str]) -> np.ndarray:
        """Each tier's expected cost of the prompts at the prices the model was trained with (its own tiers) and the
        prompts' own token estimate: the cost scale the stored guarantee's λ was calibrated on, whatever the live
        prices or a caller's token count. A guaranteed decision trades quality against it; limits and budgets still
        use the live cost."""
        return self.artifact.expected_cost(prompts, self.artifact.tiers)

    def expected_cost(self, prompts: Sequence[str], tokens_in: Sequence[float | None] | None = None) -> np.ndarray:
        """Expected cost per tier at the live prices, (n, k) (`tokens_in`: RouterArtifact.expected_cost)."""
        return self.artifact.expected_cost(prompts, self.tiers, tokens_in)

    def score(
        self,
        prompts: Sequence[str],
        chunk: int | None = None,
        tasks: Sequence[str | None] | None = None,
        tokens_in: Sequence[float | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted quality and expected cost per tier, both (n, k) (`tokens_in`: RouterArtifact.expected_cost)."""
        return self.predict_quality(prompts, chunk, tasks), self.expected_cost(prompts, tokens_in)

    def cheapest_allowed(self, cost: np.ndarray, min_tier: int = 0, max_cost_usd: float | None = None) -> np.ndarray:
        """Per prompt, the expected cost of the cheapest tier the request allows; NoTierFits, saying why, if none."""
        cost = np.asarray(cost, dtype=float).reshape(-1, len(self.names))
        masks = allowed_tiers(cost, min_tier, max_cost_usd)
        if not masks.any(axis=1).all():
            raise no_tier_fits(self.names, min_tier, max_cost_usd)
        return np.asarray(np.where(masks, cost, np.inf).min(axis=1, initial=np.inf))

    def decide(
        self,
        quality: np.ndarray,
        cost: np.ndarray,
        target: float,
        min_tier: int = 0,
        max_cost_usd: float | None = None,
        cost_weight: float | None = None,
        budget_usd: float | None = None,
        novelty: np.ndarray | None = None,
        novelty_limit: float | None = OOD_NOVELTY,
        guarantee: OperatingPoint | None = None,
        guarantee_cost: np.ndarray | None = None,
    ) -> list[Decision]:
        """One decision per prompt; NoTierFits when the request's constraints exclude every tier for some prompt.

        With a budget (that must cover the batch at its cheapest allowed tiers), each prompt may spend what is
        left after keeping its floor for every later prompt: the whole batch fits, and earlier prompts are
        downgraded only as far as the later ones need.

        A prompt whose novelty reaches `novelty_limit` is unlike the training prompts, so its predictions are not
        to be trusted: it gets the conservative choice, the most expensive tier the request allows (see
        `conservative`). With a `guarantee`, the knob is its calibrated λ and the reason states the guarantee; λ
        trades quality against `guarantee_cost` (default `cost`), the cost scale it was calibrated on
        (`calibration_cost`: the training prices and the prompts' own token estimate; `cost` still sets what fits a
        budget or max cost).
        """
        floor = self.cheapest_allowed(cost, min_tier, max_cost_usd)
        if budget_usd is not None and float(floor.sum()) > budget_usd:
            raise NoTierFits(f"the batch needs ${float(floor.sum()):.6g} at its cheapest, over the budget")
        out = []
        for i, (q, c) in enumerate(zip(quality, cost, strict=True)):
            share = None if budget_usd is None else max(budget_usd - float(floor[i + 1 :].sum()), float(floor[i]))
            if novelty is not None and novelty_limit is not None and novelty[i] >= novelty_limit:
                d = self.conservative(c, min_tier, max_cost_usd, share)
                d = Decision(
                    d.tier_index,
                    f"{OOD_REASON}: the prompt is farther from the training prompts than {novelty[i]:.1%} "
                    f"of held-out training prompts (limit {novelty_limit:.1%}), so predictions are unreliable; "
                    f"{d.reason}",
                )
            elif guarantee is not None:
                rank = None if guarantee_cost is None else guarantee_cost[i]
                if guarantee.cost_weight_per_usd is None:  # "always the top tier": the top at calibration prices
                    d = self.conservative(c, min_tier, max_cost_usd, share, rank)
                else:
                    d = decide(
                        q,
                        c,
                        self.names,
                        target,
                        min_tier,
                        max_cost_usd,
                        share,
                        guarantee.cost_weight_per_usd,
                        rank,
                    )
                d = Decision(
                    d.tier_index, f"{guarantee.describe()}{self._uncovered(d, c)}; {d.reason}", d.unconstrained
                )
            else:
                d = decide(q, c, self.names, target, min_tier, max_cost_usd, share, cost_weight)
            out.append(d)
            if budget_usd is not None:
                budget_usd = max(budget_usd - float(c[d.tier_index]), 0.0)
        return out

    def _uncovered(self, d: Decision, cost: Sequence[float]) -> str:
        """What to add to a guaranteed decision's reason when the request's limits (max_cost_usd, the session's budget)
        chose a cheaper tier than the guarantee's operating point would: it was calibrated without them, so it does
        not cover that decision."""
        free = d.unconstrained
        if free is None or cost[d.tier_index] >= cost[free]:
            return ""
        return (
            f", which does not cover this decision: its operating point picks {self.names[free]}, "
            "and the request's cost limits chose a cheaper tier"
        )

    def conservative(
        self,
        cost: np.ndarray,
        min_tier: int = 0,
        max_cost_usd: float | None = None,
        budget_usd: float | None = None,
        rank_cost: np.ndarray | None = None,
    ) -> Decision:
        """The conservative choice for one prompt: the most expensive tier its constraints allow (by `rank_cost`
        when given, e.g. the prices a guarantee was calibrated at; `cost` still says what is allowed)."""
        c = np.asarray(cost, dtype=float)
        r = c if rank_cost is None else np.asarray(rank_cost, dtype=float)
        mask = allowed_tiers(c, min_tier, max_cost_usd, budget_usd)
        if not mask.any():
            raise no_tier_fits(self.names, min_tier, max_cost_usd, budget_usd)
        pick = int(np.argmax(np.where(mask, r, -np.inf)))
        top = int(np.argmax(r))
        why = (
            "the top tier" if pick == top else f"the most expensive tier the request allows ({self.names[top]} is not)"
        )
        return Decision(pick, f"{self.names[pick]} is the conservative choice, {why}")

    def knob(
        self, quality_target: float | None, cost_weight: float | None, default_target: float
    ) -> tuple[float, float | None]:
        """The (target, λ per USD) to decide with: the request's knob, else the model's stored operating point
        (at the live prices), else `default_target`."""
        stored = self.artifact.default_cost_weight_per_usd(self.tiers)
        return resolve_knob(quality_target, cost_weight, stored, default_target)

    def route(
        self,
        prompts: Sequence[str],
        target: float,
        chunk: int | None = None,
        cost_weight: float | None = None,
        tasks: Sequence[str | None] | None = None,
        novelty_limit: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[Decision], np.ndarray | None]:
        """Score and decide in one call (bulk routing, benchmarks): quality, cost, the decisions and each prompt's
        novelty. With `novelty_limit`, as `/route` decides: a prompt whose novelty reaches it takes the
        conservative choice (`decide`); None (benchmarks): on the predictions alone, and no novelty."""
        quality, novelty = self._chunked(prompts, chunk, tasks, novelty=novelty_limit is not None)
        cost = self.expected_cost(prompts)
        decisions = self.decide(
            quality, cost, target, cost_weight=cost_weight, novelty=novelty, novelty_limit=novelty_limit
        )
        return quality, cost, decisions, novelty
