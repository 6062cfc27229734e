"""Serving fixtures: a router trained once on the generated log, and a TestClient factory."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from infra.settings import Settings
from infra.store import Store
from router.artifact import RouterArtifact
from router.embedders.protocol import Embedder
from router.features import FeatureSpec, featurize
from router.model import DifficultyModel
from router.schema import parse_tiers
from serving.app import create_app
from serving.model_source import LocalSource
from serving.security import hash_key
from tests.conftest import TIERS_TOML, HashingEmbedder, make_log, write_tiers
from tests.integration.live_server import live_server
from training.data import pivot_log

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLIENT_KEY, OTHER_KEY, ADMIN_KEY = "client-key-1", "client-key-2", "admin-key"
KEYS = {hash_key(CLIENT_KEY): "client", hash_key(OTHER_KEY): "client", hash_key(ADMIN_KEY): "admin"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def local_client(app: Any, **kwargs: Any) -> TestClient:
    """A TestClient calling from this machine's loopback (peer and Host): without keys the service answers no one
    else (LoopbackOnly), not TestClient's "testclient" at "testserver"."""
    return TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 50000), **kwargs)


def metric(client: TestClient, name: str) -> float:
    """The value of an unlabelled metric on /metrics; fails when it is missing (a renamed metric reads as absent,
    not as 0)."""
    [line] = [x for x in client.get("/metrics").text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[-1])


def train_artifact(embedder: Embedder, out_dir: Path, n_prompts: int = 200) -> Path:
    """Train a small router on the generated log with `embedder` and save it under `out_dir`."""
    tiers = parse_tiers(TIERS_TOML)
    table = pivot_log(make_log(n_prompts), tiers)
    spec = FeatureSpec(embedder_id=embedder.id)
    X = featurize(list(table.prompts["prompt"]), spec, embedder)
    model = DifficultyModel(n_estimators=30, learning_rate=0.3, num_leaves=15, colsample_bytree=1.0, n_jobs=1).fit(
        X, table.scores, tiers.names
    )
    art = RouterArtifact(model, spec, tiers, tokens_out=dict.fromkeys(tiers.names, 100.0))
    return art.save(out_dir)


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_artifact(HashingEmbedder(), tmp_path_factory.mktemp("artifact"))


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    def make(**fields: Any) -> Settings:
        base: dict[str, Any] = {
            "database_url": f"sqlite:///{tmp_path / 'serve.db'}",
            "tiers_path": write_tiers(tmp_path / "tiers.toml"),
            "spool_path": tmp_path / "spool.jsonl",
            "reload_signal_path": tmp_path / "reload-generation",
            "quality_target": 0.7,
            "api_keys": KEYS,
        }
        return Settings(**{**base, **fields})

    return make


@pytest.fixture
def client_factory(
    artifact_dir: Path, settings_factory: Callable[..., Settings]
) -> Iterator[Callable[..., TestClient]]:
    """Start apps (lifespan included) on the trained artifact; all are closed at teardown."""
    opened: list[TestClient] = []

    def make(store: Store | None = None, source: Any = None, **fields: Any) -> TestClient:
        settings = settings_factory(**fields)
        app = create_app(
            settings=settings, model_source=source or LocalSource(artifact_dir), store=store, embedder=HashingEmbedder()
        )
        client = TestClient(app) if settings.api_keys else local_client(app)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths of the requests FastAPI solved dependencies for (its own path; LeanRoute skips it)."""
    seen: list[str] = []
    solve = fastapi.routing.solve_dependencies  # type: ignore[attr-defined]

    async def counted(*, request: Any, **kw: Any) -> Any:
        seen.append(request.url.path)
        return await solve(request=request, **kw)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    yield seen


@pytest.fixture
def client(client_factory: Callable[..., TestClient]) -> TestClient:
    return client_factory()


def pg_available() -> bool:
    try:
        eng = sa.create_engine(PG_URL, connect_args={"connect_timeout": 2})
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the local PostgreSQL, dropped afterwards; skips when PostgreSQL is unreachable."""
    if not pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = f"tw_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A Store on a fresh SQLite file, then on a fresh PostgreSQL schema (the tests that use it run on both)."""
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store(url)
    yield s
    s.dispose()


# A real browser for the page tests: Debian's Chromium driven by Playwright, reaching no other host.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def live_url(settings_factory: Callable[..., Settings], artifact_dir: Path) -> Iterator[str]:
    def factory() -> Any:
        return create_app(
            settings=settings_factory(), model_source=LocalSource(artifact_dir), embedder=HashingEmbedder()
        )

    with live_server(factory) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian package `chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package `playwright` is absent")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()
