"""The store-backed commands on generated logged traffic: evaluate --from-store, calibrate --from-store, purge."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from infra.settings import get_settings
from infra.store import DecisionRow, OutcomeRow, Store, decisions, outcomes
from router.exploration import exploration_probs
from router.features import FeatureSpec
from router.model import DifficultyModel
from router.policy import tradeoff
from router.routing import Router
from router.schema import parse_tiers
from tests.conftest import TIERS_TOML, HashingEmbedder, make_log
from tests.integration.conftest import write_tiers
from training import cli
from training.data import pivot_log, split_log
from training.fit import train_router
from training.ope_data import INVALID_PROPENSITY, INVALID_VALUES, load_traffic
from training.ope_eval import Refusal, candidate_policy, evaluate_traffic, gate_difference

runner = CliRunner()
NAMES = ["main", "mid", "brain"]


def fill_store(
    url: str,
    epsilon: float,
    n: int = 300,
    seed: int = 0,
    cost_factor: float = 1.0,
    novel: np.ndarray | None = None,
    pred_out: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Log n decisions (ε-greedy around a noisy model) with outcomes; return the true scores and costs per tier.
    `cost_factor`: each outcome costs that many times its expected cost (the cost drifted). `novel`: the prompts past
    the novelty limit, served brain by the fallback (novelty 1.0, never explored). `pred_out` receives the
    predictions logged."""
    rng = np.random.default_rng(seed)
    table = pivot_log(make_log(n, seed=seed), parse_tiers(TIERS_TOML))
    scores, costs = table.scores, table.costs
    pred = np.clip(scores * 0.6 + 0.2 + rng.normal(0, 0.1, scores.shape), 0, 1)
    if pred_out is not None:
        pred_out.append(pred)
    store = Store(url)
    store.migrate()
    rows, outs = [], []
    for i, prompt in enumerate(table.prompts["prompt"]):
        fallback = novel is not None and bool(novel[i])
        choice = 2 if fallback else int(np.argmax(pred[i] - 200 * costs[i]))
        mu = exploration_probs(choice, np.ones(3, bool), 0.0 if fallback else epsilon)
        a = int(rng.choice(3, p=mu))
        rows.append(
            DecisionRow(
                id=f"d{i}",
                prompt=prompt,
                tier=NAMES[a],
                model=TIERS_TOML["tiers"][a]["model"],
                expected_cost_usd=float(costs[i, a]),
                router_version="1",
                reason="r",
                propensity=float(mu[a]),
                explored=a != choice,
                predicted_quality=dict(zip(NAMES, map(float, pred[i]), strict=True)),
                propensities=dict(zip(NAMES, map(float, mu), strict=True)),
                expected_costs=dict(zip(NAMES, map(float, costs[i]), strict=True)),
                novelty=1.0 if fallback else 0.5,
            )
        )
        outs.append(
            OutcomeRow(
                id=f"o{i}",
                decision_id=f"d{i}",
                prompt=prompt,
                model=rows[-1].model,
                score=scores[i, a],
                cost_usd=costs[i, a] * cost_factor,
            )
        )
    store.record_decisions(rows)
    store.record_outcomes(outs)
    store.dispose()
    return scores, costs


def candidate_router(n_estimators: int) -> Router:
    """A router trained on a generated log (another seed than the logged traffic's), to judge on that traffic."""
    tiers = parse_tiers(TIERS_TOML)
    emb = HashingEmbedder()
    split = split_log(make_log(300, seed=1), tiers, 0.3, 0)
    model = DifficultyModel(n_estimators=n_estimators)
    return Router(train_router(split, emb, None, FeatureSpec(embedder_id=emb.id), model), tiers, emb)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("TIERWISE_DATABASE_URL", url)
    monkeypatch.setenv("TIERWISE_TIERS_PATH", str(write_tiers(tmp_path / "tiers.toml")))
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_evaluate_from_store_with_exploration(env: str) -> None:
    fill_store(env, epsilon=0.3)
    res = runner.invoke(cli.app, ["evaluate", "--from-store"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "300 logged decisions with outcomes" in out
    for name in ("logging policy (as served)", "of top tier's)", "always main", "always brain"):
        assert name in out
    assert "refused" not in out


def test_evaluate_from_store_judges_operating_points_with_the_novelty_fallback(env: str) -> None:
    """The prompts past the novelty limit were served brain and never explored: another operating point serves them
    brain too, so it is estimable. Judged as if λ chose for them, every operating point was refused (no support)."""
    fill_store(env, epsilon=0.3, novel=np.random.default_rng(5).random(300) < 0.2)
    res = runner.invoke(cli.app, ["evaluate", "--from-store"])
    assert res.exit_code == 0, res.output
    points = [line for line in res.output.splitlines() if line.startswith("logged model at λ=")]
    assert len(points) >= 2 and not any("refused" in line for line in points), res.output
    costs = [float(line.split()[-2]) for line in points]  # the DR cost column: the operating points differ
    assert len(set(costs)) == len(costs), res.output


def test_evaluate_from_store_refuses_what_the_log_cannot_support(env: str) -> None:
    fill_store(env, epsilon=0.0)
    res = runner.invoke(cli.app, ["evaluate", "--from-store"])
    assert res.exit_code == 0, res.output
    assert "always brain" in res.output and "refused: the log cannot support this estimate" in res.output


def test_calibrate_from_store(env: str) -> None:
    _, costs = fill_store(env, epsilon=0.3)
    budget = float(costs[:, 1].mean())
    res = runner.invoke(cli.app, ["calibrate", "--from-store", "--mean-cost-usd", str(budget)])
    assert res.exit_code == 0, res.output
    assert '"cost_weight_per_usd":' in res.output and "estimated (DR, 95% CI)" in res.output
    res = runner.invoke(cli.app, ["calibrate", "--from-store", "--top-share", "0.2"])
    assert res.exit_code == 2 and "--mean-cost-usd" in res.output


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_calibrate_from_store_keeps_its_promise_when_costs_drifted_and_novel_prompts_fall_back(
    env: str, epsilon: float
) -> None:
    """Outcomes cost twice what was expected, and a fifth of the prompts were past the novelty limit (the fallback
    serves them brain whatever λ): the λ printed must spend what was asked as the service routes. It assumed every
    prompt followed λ and, without exploration, priced it at expected cost: about twice the promise (review)."""
    novel = np.random.default_rng(5).random(300) < 0.2
    logged: list[np.ndarray] = []
    _, costs = fill_store(env, epsilon=epsilon, cost_factor=2.0, novel=novel, pred_out=logged)
    budget = 2.0 * float(np.where(novel, costs[:, 2], costs[:, 1]).mean())  # realised: mid for the familiar ones
    res = runner.invoke(cli.app, ["calibrate", "--from-store", "--mean-cost-usd", str(budget)])
    assert res.exit_code == 0, res.output
    lam = float(res.output.split('"cost_weight_per_usd": ')[1].split()[0])
    choice = np.where(novel, 2, tradeoff(logged[0], costs, lam))  # as the service decides (ties: the cheaper)
    spent = float((2.0 * costs[np.arange(300), choice]).mean())
    assert 0.85 * budget <= spent <= 1.05 * budget, (lam, spent / budget, res.output)
    # The shares it reports are those of the policy the service runs at that λ (within a prompt: the λ found sits
    # where a prompt changes tier, and the printed λ is rounded).
    line = next(x for x in res.output.splitlines() if x.startswith(("mean cost", "estimated (DR")))
    printed = {n: float(line.split(f"{n} ")[1].split("%")[0]) / 100 for n in NAMES}
    for j, n in enumerate(NAMES):
        assert abs(printed[n] - (choice == j).mean()) <= 1 / 300 + 0.001, (n, printed, res.output)  # printed to 0.1%


def test_empty_store_is_one_line(env: str) -> None:
    Store(env).migrate()  # the service's store, before any traffic
    res = runner.invoke(cli.app, ["evaluate", "--from-store"])
    assert res.exit_code == 2 and "no logged decisions" in res.output and "Traceback" not in res.output


def test_a_store_url_naming_no_file_is_refused_not_created(
    env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review found a mistyped SQLite URL making a new empty store: a purge from cron then "deleted 0" for good."""
    typo = tmp_path / "typo" / "dir" / "store.db"
    monkeypatch.setenv("TIERWISE_DATABASE_URL", f"sqlite:///{typo}")
    monkeypatch.setenv("TIERWISE_RETENTION_DAYS", "7")
    get_settings.cache_clear()
    log = tmp_path / "log.csv"
    make_log(60, seed=0).to_csv(log, index=False)
    for args in (
        ["purge"],
        ["evaluate", "--from-store"],
        ["calibrate", "--from-store", "--mean-cost-usd", "0.001"],
        ["train", "--outcomes", str(log), "--from-store"],
    ):
        res = runner.invoke(cli.app, args)
        assert res.exit_code == 2, (args, res.output)
        assert f"{typo}: no such SQLite database" in res.output and "TIERWISE_DATABASE_URL" in res.output, res.output
    assert not (tmp_path / "typo").exists()


def test_purge(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fill_store(env, epsilon=0.0, n=50)
    engine = sa.create_engine(env)
    with engine.begin() as conn:
        old = datetime.now(UTC) - timedelta(days=10)
        conn.execute(decisions.update().where(decisions.c.id.in_(["d1", "d2"])).values(created_at=old))
        conn.execute(outcomes.update().where(outcomes.c.id == "o1").values(created_at=old))
    assert runner.invoke(cli.app, ["purge"]).exit_code == 2  # no retention configured
    monkeypatch.setenv("TIERWISE_RETENTION_DAYS", "7")
    get_settings.cache_clear()
    res = runner.invoke(cli.app, ["purge"])
    assert res.exit_code == 0 and "deleted 2 decisions and 1 outcomes older than 7 days" in res.output
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(decisions)).scalar_one() == 48


def test_a_candidate_is_evaluated_on_the_prompts_with_text(env: str, tmp_path: Path) -> None:
    fill_store(env, epsilon=0.3)
    tiers = parse_tiers(TIERS_TOML)
    emb = HashingEmbedder()
    split = split_log(make_log(300, seed=1), tiers, 0.3, 0)
    art = train_router(split, emb, None, FeatureSpec(embedder_id=emb.id), DifficultyModel(n_estimators=20))
    candidate = Router(art, tiers, emb)
    store = Store(env)
    traffic = load_traffic(store, NAMES)
    rows = evaluate_traffic(traffic, candidate, target=0.7, n_boot=200)
    [cand] = [r for r in rows if r.name.startswith("candidate")]
    assert not isinstance(cand, Refusal) and "300 decisions with text" in cand.name
    diff, low, high, n = gate_difference(candidate, traffic, 0.7, n_boot=200)
    assert low <= diff <= high and n == 300
    # A store written partly without text (the storage mode changed): the candidate's row is refused, the rest
    # estimated (the whole table failed with "need at least 30": review finding).
    with store.engine.begin() as conn:
        kept = conn.execute(sa.select(decisions.c.id).limit(5)).scalars().all()
        conn.execute(decisions.update().where(decisions.c.id.not_in(kept)).values(prompt=None))
    rows = evaluate_traffic(load_traffic(store, NAMES), candidate, target=0.7, n_boot=50)
    [cand] = [r for r in rows if r.name.startswith("candidate")]
    assert isinstance(cand, Refusal) and "only 5 of 300 logged decisions kept prompt text" in cand.reason
    assert any(not isinstance(r, Refusal) for r in rows)  # the logged model's rows are still estimated
    # Without text, a candidate cannot be scored: said plainly.
    with store.engine.begin() as conn:
        conn.execute(decisions.update().values(prompt=None))
    rows = evaluate_traffic(load_traffic(store, NAMES), candidate, target=0.7, n_boot=50)
    [cand] = [r for r in rows if r.name.startswith("candidate")]
    assert isinstance(cand, Refusal) and "no prompt text" in cand.reason
    store.dispose()


def test_decisions_with_unusable_evidence_are_skipped_and_named(env: str) -> None:
    """A stored per-tier value that is not a number, or a served tier logged at propensity 0, is skipped, counted
    and named by decision id (they failed the whole command with a TypeError or an unnamed ValueError)."""
    fill_store(env, epsilon=0.3, n=60)
    store = Store(env)
    with store.engine.begin() as conn:
        conn.execute(decisions.update().where(decisions.c.id == "d1").values(predicted_quality={"main": None}))
        conn.execute(decisions.update().where(decisions.c.id == "d2").values(expected_costs=dict.fromkeys(NAMES, "x")))
        zero = dict.fromkeys(NAMES, 0.0) | {"brain": 1.0}
        conn.execute(decisions.update().where(decisions.c.id == "d3").values(tier="main", propensities=zero))
    traffic = load_traffic(store, NAMES)
    store.dispose()
    assert len(traffic.logged) == 57
    named = {why.split(" (e.g. ")[0]: (n, why.split(" (e.g. ")[-1]) for why, n in traffic.skipped.items()}
    assert named[INVALID_VALUES][0] == 2 and named[INVALID_VALUES][1] in ("decision d1)", "decision d2)")
    assert named[INVALID_PROPENSITY] == (1, "decision d3)")
    res = runner.invoke(cli.app, ["evaluate", "--from-store"])
    assert res.exit_code == 0, res.output
    assert "57 logged decisions with outcomes" in res.output and "decision d3" in res.output


def test_a_candidate_prices_each_logged_decision_at_the_input_its_caller_counted(env: str) -> None:
    """A door decision was priced on the whole conversation (decisions.input_tokens): a candidate re-scoring its
    stored prompt view must price it so too, or it evaluates a policy the service would not run (a review's find)."""
    fill_store(env, epsilon=0.3, n=40)
    candidate = candidate_router(20)
    store = Store(env)
    with store.engine.begin() as conn:  # d0 was a conversation of 20,000 input tokens, its prompt view the same text
        conn.execute(decisions.update().where(decisions.c.id == "d0").values(input_tokens=20_000))
    traffic = load_traffic(store, NAMES)
    assert sorted(n for n in traffic.input_tokens if n is not None) == [20_000]
    _, sub = candidate_policy(candidate, traffic, 0.7)
    prompts = [p for p in traffic.prompts if p is not None]
    at = traffic.input_tokens.index(20_000)
    expected = candidate.expected_cost([prompts[at]], [20_000])[0]
    np.testing.assert_allclose(sub.predicted_cost[at], expected)
    others = [i for i, n in enumerate(traffic.input_tokens) if n is None]
    np.testing.assert_allclose(sub.predicted_cost[others], candidate.expected_cost([prompts[i] for i in others]))
    assert (sub.predicted_cost[at] > 100 * candidate.expected_cost([prompts[at]])[0]).all()
    store.dispose()


def test_ope_gate_check(env: str) -> None:
    from training.ope_gate import ope_check

    good = candidate_router(30)
    fill_store(env, epsilon=0.3, n=400)
    store = Store(env)
    traffic = load_traffic(store, NAMES)
    assert ope_check(good, traffic, 0.7, min_decisions=1000, max_loss=0.01).passed is None  # too little traffic
    check = ope_check(good, traffic, 0.7, min_decisions=100, max_loss=0.5, n_boot=200)
    assert check.passed is True and check.metrics["ope_decisions"] == 400
    # A candidate that always answers with the cheapest tier loses far more than 0.01 on this traffic.
    cheap = ope_check(good, traffic, 0.0, min_decisions=100, max_loss=0.01, n_boot=200)
    assert cheap.passed is False and "failed" in cheap.detail
    store.dispose()


def test_the_champion_gate_runs_the_off_policy_check(env: str) -> None:
    from training.ope_cli import gate_check_from_store
    from training.ope_gate import off_policy_gate_check

    tiers = parse_tiers(TIERS_TOML)
    emb = HashingEmbedder()
    split = split_log(make_log(300, seed=1), tiers, 0.3, 0)
    art = train_router(split, emb, None, FeatureSpec(embedder_id=emb.id), DifficultyModel(n_estimators=30))
    candidate = Router(art, tiers, emb)
    assert gate_check_from_store(get_settings(), candidate)(None) is None  # type: ignore[arg-type]  # empty store
    fill_store(env, epsilon=0.3, n=400)
    traffic = load_traffic(Store(env), NAMES)
    check = off_policy_gate_check(candidate, traffic, 0.0, min_decisions=100, max_loss=0.01)
    result = check(None)  # type: ignore[arg-type]  # the check reads the store's traffic, not the held-out evidence
    assert result is not None and result.name == "off_policy_dr" and result.passed is False
    assert off_policy_gate_check(candidate, traffic, 0.7, 1000, 0.01)(None) is None  # type: ignore[arg-type]


def test_what_the_estimates_leave_out_is_counted(env: str) -> None:
    """An outcome answered by another tier's model (the proxy's fallback) is no evidence about the routed tier, and
    decisions without an outcome are counted, not silently dropped (both found by a review)."""
    fill_store(env, epsilon=0.3, n=100)
    engine = sa.create_engine(env)
    with engine.begin() as conn:
        routed = dict(conn.execute(sa.select(decisions.c.id, decisions.c.model)).all())
        fallback = [f"d{i}" for i in range(10) if routed[f"d{i}"] != "large"]
        conn.execute(outcomes.update().where(outcomes.c.decision_id.in_(fallback)).values(model="large"))
        conn.execute(outcomes.delete().where(outcomes.c.decision_id.in_([f"d{i}" for i in range(10, 17)])))
        explored = conn.execute(
            sa.select(sa.func.count())
            .select_from(decisions)
            .where(decisions.c.explored, decisions.c.id.not_in([*fallback, *(f"d{i}" for i in range(10, 17))]))
        ).scalar_one()
    assert fallback
    traffic = load_traffic(Store(env), NAMES)
    assert len(traffic.logged) == 100 - len(fallback) - 7 and traffic.explored == explored
    assert traffic.skipped == {
        "without an outcome yet": 7,
        "answered by another model than the routed tier's (a fallback)": len(fallback),
    }
    res = runner.invoke(cli.app, ["evaluate", "--from-store"])
    assert res.exit_code == 0, res.output
    assert f"{len(traffic.logged)} logged decisions with outcomes ({explored} explored" in res.output
    assert "7 without an outcome yet" in res.output and f"{len(fallback)} answered by another model" in res.output


def test_a_tiny_log_or_one_without_evidence_gets_no_estimate(env: str) -> None:
    fill_store(env, epsilon=0.3, n=12)
    for args in (["evaluate", "--from-store"], ["calibrate", "--from-store", "--mean-cost-usd", "0.001"]):
        res = runner.invoke(cli.app, args)
        assert res.exit_code == 2 and "off-policy estimates need at least 30" in res.output, res.output
    engine = sa.create_engine(env)
    with engine.begin() as conn:
        conn.execute(decisions.delete())
        conn.execute(outcomes.delete())
    fill_store(env, epsilon=0.3, n=300)
    with engine.begin() as conn:  # no outcome of a main decision came back
        main = sa.select(decisions.c.id).where(decisions.c.tier == "main")
        conn.execute(outcomes.delete().where(outcomes.c.decision_id.in_(main)))
    res = runner.invoke(cli.app, ["evaluate", "--from-store"])
    assert res.exit_code == 0, res.output
    [always_main] = [line for line in res.output.splitlines() if line.startswith("always main")]
    assert "refused" in always_main and "effective sample size 0" in always_main


def test_train_from_a_store_kept_without_text_says_so(env: str, tmp_path: Path) -> None:
    """A review found `train --from-store` on a hash store failing with "holds no outcomes" though it held them."""
    from infra.prompt_policy import PromptPolicy

    store = Store(env, PromptPolicy("hash", b"secret"))
    store.migrate()
    store.record_outcomes(
        [OutcomeRow(id=f"o{i}", prompt=f"prompt {i}", model="small", score=1, cost_usd=0.01) for i in range(3)]
    )
    store.dispose()
    log = tmp_path / "log.csv"
    make_log(60, seed=0).to_csv(log, index=False)
    res = runner.invoke(cli.app, ["train", "--outcomes", str(log), "--from-store"])
    assert res.exit_code == 2, res.output
    assert "holds 3 outcomes, none with prompt text" in res.output and "TIERWISE_PROMPT_STORAGE" in res.output


def test_the_gate_abstains_on_a_log_too_small_for_any_estimate(env: str) -> None:
    """TIERWISE_OPE_GATE_MIN_DECISIONS may be set below what an estimate needs: the gate abstains, it does not fail."""
    from training.ope_gate import ope_check

    candidate = candidate_router(20)
    fill_store(env, epsilon=0.3, n=12)
    check = ope_check(candidate, load_traffic(Store(env), NAMES), 0.7, min_decisions=5, max_loss=0.01, n_boot=20)
    assert check.passed is None and "need at least 30" in check.detail, check.detail


def test_a_candidate_is_judged_with_its_own_novelty_fallback(env: str) -> None:
    """The service serves a prompt past the novelty limit the fallback's tier: a candidate judged on logged traffic
    must be too, or the gate judges a policy the service would never run (review finding)."""
    from dataclasses import replace

    from router.features import featurize
    from router.novelty import NoveltyReference

    fill_store(env, epsilon=0.3, n=60)
    candidate = candidate_router(20)
    prompts = list(pivot_log(make_log(300, seed=1), parse_tiers(TIERS_TOML)).prompts["prompt"])
    X = featurize(prompts, candidate.artifact.features, candidate.embedder)
    reference = NoveltyReference(n_reference=100).fit(X[:, : candidate.embedder.dim])
    novel_aware = Router(replace(candidate.artifact, novelty=reference), candidate.tiers, candidate.embedder)
    store = Store(env)
    everything_novel = load_traffic(store, NAMES, novelty_limit=0.0)  # every prompt is past a limit of 0
    probs, _ = candidate_policy(novel_aware, everything_novel, 0.7)
    assert (probs.argmax(axis=1) == NAMES.index("brain")).all(), probs.argmax(axis=1)
    plain, _ = candidate_policy(novel_aware, load_traffic(store, NAMES), 0.7)
    assert (plain.argmax(axis=1) != NAMES.index("brain")).any()  # without the limit, the candidate's own choices
    store.dispose()


def test_calibrate_from_store_with_since_days_says_nothing_is_that_recent(env: str) -> None:
    fill_store(env, epsilon=0.3, n=40)
    res = runner.invoke(cli.app, ["calibrate", "--from-store", "--mean-cost-usd", "0.001", "--since-days", "1e-7"])
    assert res.exit_code == 2 and "no decision since" in res.output and "has an outcome" not in res.output, res.output


def test_evaluate_from_store_refuses_an_operating_point_the_fallback_alone_overspends(env: str) -> None:
    """With 45% of the prompts at the fallback's tier, a quarter of always-top's cost is out of reach: that row is
    refused, not the whole table (the command failed after a shift, when the report is wanted most; review)."""
    fill_store(env, epsilon=0.3, novel=np.random.default_rng(5).random(300) < 0.45)
    res = runner.invoke(cli.app, ["evaluate", "--from-store"])
    assert res.exit_code == 0, res.output
    assert "logged model at 25% of the top tier's expected cost" in res.output and "refused" in res.output
    assert "logging policy (as served)" in res.output and "always brain" in res.output


def test_calibrate_from_store_still_uses_dr_when_one_decision_could_not_have_had_the_top_tier(
    env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One logged decision whose max_cost_usd excluded brain (propensity 0 there) made λ = 0 unsupported, and the
    scan gave up on DR for every λ (1.42x the promise in the review's run): the answer must barely change."""
    logged: list[np.ndarray] = []
    _, costs = fill_store(env, epsilon=0.2, n=600, pred_out=logged)
    # brain answers 3x longer than expected where its predicted gain is large, 0.3x elsewhere: one ratio for the tier
    # misprices the prompts a λ keeps on brain, which only DR sees.
    gain = logged[0][:, 2] - logged[0][:, 1]
    long_answers = [f"d{i}" for i in np.flatnonzero(gain > np.median(gain))]
    store = Store(env)
    with store.engine.begin() as conn:
        brain = sa.select(decisions.c.id).where(decisions.c.tier == "brain")
        for ids, factor in ((long_answers, 3.0), (None, 0.3)):
            chosen = outcomes.c.decision_id.in_(brain)
            chosen &= outcomes.c.decision_id.in_(ids) if ids else outcomes.c.decision_id.not_in(long_answers)
            conn.execute(outcomes.update().where(chosen).values(cost_usd=outcomes.c.cost_usd * factor))
    budget = 0.4 * float(costs[:, 2].mean())  # brain for about a third of the prompts
    args = ["calibrate", "--from-store", "--mean-cost-usd", str(budget)]
    plain = runner.invoke(cli.app, args)
    with store.engine.begin() as conn:  # d0 was routed under a cap below brain: brain had no chance
        row = conn.execute(sa.select(decisions.c.propensities, decisions.c.tier).where(decisions.c.id == "d0")).one()
        if row.tier == "brain":
            pytest.skip("d0 was served brain in this draw")
        mu = dict(row.propensities)
        mu[row.tier] += mu["brain"]
        mu["brain"] = 0.0
        conn.execute(decisions.update().where(decisions.c.id == "d0").values(propensities=mu, propensity=mu[row.tier]))
    store.dispose()
    capped = runner.invoke(cli.app, args)
    assert plain.exit_code == 0 and capped.exit_code == 0, (plain.output, capped.output)

    def lam(out: str) -> float:
        return float(out.split('"cost_weight_per_usd": ')[1].split()[0])

    assert "estimated (DR, 95% CI)" in plain.output, plain.output
    # Before: the uncapped run took the grid's λ by DR, the capped one the ratio estimate's (4.6% apart here).
    assert abs(lam(capped.output) / lam(plain.output) - 1) < 0.02, (plain.output, capped.output)
