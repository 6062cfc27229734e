"""integrations/ talks to tierwise over HTTP: it imports no tierwise package (so it installs beside LiteLLM with
nothing of the service) and no web framework."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_imports import imported_roots

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"serving", "training", "router", "infra", "bench", "fastapi", "starlette", "uvicorn", "mlflow"}


def test_integrations_import_no_tierwise_package() -> None:
    files = sorted((ROOT / "integrations").rglob("*.py"))
    assert files, "no Python files under integrations/"
    bad = {
        str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN) for f in files if imported_roots(f) & FORBIDDEN
    }
    assert not bad, f"forbidden imports: {bad}"
