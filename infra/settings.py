"""The one typed settings object. Only entry points build it; library functions take plain arguments.

Nothing is relative to the working directory but the inputs (the outcome log, the tiers file, and the logs pooled
into the shared difficulty, `pool_paths`, by default the checkout's `data/`: run elsewhere, they are skipped with a
warning): the build cache and the stores live in per-user directories (platformdirs), so `tierwise` works from
anywhere.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from platformdirs import user_cache_dir, user_data_dir
from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

EmbedderBackend = Literal["torch", "onnx-fp32", "onnx-int8", "static"]


MAX_RETENTION_DAYS = 100_000  # about 270 years: a cutoff date Python can still compute


# An API key's sha256 as hex, compared lowercased as the key ring compares it (an uppercase digest matched no key).
KeyHash = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9a-fA-F]{64}$"), AfterValidator(str.lower)
]


class Settings(BaseSettings):
    """Every knob of tierwise, read from TIERWISE_* environment variables (and MLFLOW_TRACKING_URI)."""

    model_config = SettingsConfigDict(env_prefix="TIERWISE_", extra="forbid")

    # data and training
    data_dir: Path = Field(Path("../shared/data"), description="where `tierwise data` copies staged datasets from")
    outcomes_path: Path = Path("data/routerbench_subset/outcomes.parquet")
    tiers_path: Path = Path("config/tiers.toml")
    cache_dir: Path = Field(
        default_factory=lambda: Path(user_cache_dir("tierwise")),
        description="rebuildable files: the ONNX embedder (onnx/), the embedding cache, metric files",
    )
    store_dir: Path = Field(
        default_factory=lambda: Path(user_data_dir("tierwise")),
        description="where the default SQLite stores (mlflow.db, tierwise.db), MLflow's artifacts and the spool live",
    )
    embedder: EmbedderBackend = "onnx-int8"
    tail_chars: int | None = Field(700, ge=16)
    text_features: bool = True
    calibration: Literal["none", "isotonic"] = "none"
    pool_paths: list[Path] = Field(
        default_factory=lambda: [Path(f"data/{name}/outcomes.parquet") for name in ("llmrouter_dc", "routellm_evals")],
        description="outcome logs (any models) pooled into the shared prompt difficulty; missing ones are skipped",
    )
    pool_max_prompts: int = Field(3000, ge=0, description="prompts taken from each pooled log, by category")
    test_size: float = Field(0.3, gt=0, lt=1)
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the split's and the models' random seed")

    # tracking and registry
    mlflow_tracking_uri: str = Field(
        default_factory=lambda data: _sqlite_url(data["store_dir"] / "mlflow.db"),
        validation_alias=AliasChoices("mlflow_tracking_uri", "MLFLOW_TRACKING_URI", "TIERWISE_MLFLOW_TRACKING_URI"),
    )
    experiment_name: str = "tierwise"
    registered_model: str = "tierwise-router"
    model_alias: str = "champion"

    # routing policy
    quality_target: float = Field(0.8, ge=0, le=1, allow_inf_nan=False)

    # serving
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(2, ge=1)
    decision_commit: Literal["durable", "async"] = Field(
        "durable",
        description="async: a sessionless decision's commit does not wait for the disk (kept through a service "
        "crash, not a power loss); session reservations stay durable",
    )
    intra_op_threads: int = Field(1, ge=1)
    database_url: str = Field(default_factory=lambda data: _sqlite_url(data["store_dir"] / "tierwise.db"))
    local_model_path: Path | None = None
    api_keys: dict[str, str] = Field(
        default_factory=dict, description="sha256 hex digest of a key -> scope ('client' or 'admin')"
    )
    max_prompt_chars: int = Field(100_000, ge=1)
    max_batch: int = Field(256, ge=1)
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="a request body over this many bytes is answered 413 before it is parsed"
    )
    reload_interval_s: float = Field(0.0, ge=0, description="poll the registry alias this often; 0 = never")
    spool_path: Path = Field(default_factory=lambda data: data["store_dir"] / "outcome-spool.jsonl")
    spool_replay_interval_s: float = Field(
        30.0, ge=0, description="replay the outcome spool this often; 0 = only at start-up and after a stored outcome"
    )
    metrics_dir: Path = Field(
        default_factory=lambda data: data["cache_dir"] / "prometheus",
        description="the workers' shared metric files when workers > 1; emptied at start",
    )
    reload_check_interval_s: float = Field(
        1.0, gt=0, description="each worker checks the shared reload generation this often (and retries a failed load)"
    )
    reload_signal_path: Path = Field(
        default_factory=lambda data: data["cache_dir"] / f"reload-generation-{data['port']}",
        description="the reload generation POST /admin/reload bumps and every worker of this service watches",
    )
    store_retry_interval_s: float = Field(
        2.0, gt=0, description="while the store is down at start-up, retry its migration this often"
    )

    # OpenAI-compatible proxy (/v1/chat/completions): calls to the upstreams named in the tiers file
    upstream_timeout_s: float = Field(
        120.0, gt=0, description="an upstream call (each read of a stream) taking longer is a timeout"
    )
    upstream_connect_timeout_s: float = Field(5.0, gt=0)
    upstream_max_connections: int = Field(100, ge=1, description="the pooled upstream client's connection limit")
    upstream_retries: int = Field(
        1, ge=0, le=10, description="extra attempts on the same upstream after a timeout, 5xx, 429 or lost connection"
    )
    upstream_retry_backoff_s: float = Field(
        0.2, ge=0, description="wait before the first retry, doubled before each next one; then the tier falls back"
    )
    upstream_deadline_s: float = Field(
        300.0,
        gt=0,
        description="a request's time for every attempt, retry wait and fallback until its answer starts; a retry "
        "that would start past it (an upstream's Retry-After included) is not made",
    )
    session_answer_tokens: int = Field(
        4096,
        ge=1,
        description="in a session with a cap, the door limits an answer the caller did not limit to this many tokens "
        "(and to what the cap leaves), and holds that worst case on the session until the call ends",
    )
    upstream_max_retry_after_s: float = Field(
        10.0,
        ge=0,
        description="the longest Retry-After (429/503) tierwise waits out before retrying the same upstream; a longer "
        "one falls back at once",
    )

    # trust: exploration, off-policy evaluation, prompts at rest
    exploration_rate: float = Field(
        0.0, ge=0, le=0.5, description="ε: share of decisions that serve a random allowed tier instead (0 = off)"
    )
    exploration_boundary_rate: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="ε_b: on prompts where a neighbouring operating point would pick another tier, serve it this often",
    )
    exploration_boundary_factor: float = Field(
        2.0, gt=1, description="the neighbouring operating points of a λ request: λ times and divided by this"
    )
    exploration_boundary_cost_weights: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=list,
        description="boundary exploration's neighbours as fixed operating points instead: the cost_weight_per_usd "
        "values (λ) of the budgets you mean to compare off-policy, e.g. from `tierwise calibrate --mean-cost-usd` "
        "(JSON list; empty = λ times and over exploration_boundary_factor)",
    )
    exploration_boundary_target_step: float = Field(
        0.1, gt=0, le=1, description="the neighbouring operating points of a quality target: the target plus/minus this"
    )
    exploration_opt_out_keys: list[KeyHash] = Field(
        default_factory=list, description="sha256 hex digests of API keys whose requests never explore"
    )
    prompt_storage: Literal["text", "hash", "none"] = Field(
        "text", description="what decisions and outcomes keep of a prompt: its text, a keyed hash, or nothing"
    )
    prompt_hash_key: SecretStr | None = Field(None, description="the HMAC key of prompt_storage=hash (required then)")
    prompt_hash_previous_keys: list[SecretStr] = Field(
        default_factory=list,
        description="HMAC keys retired by a rotation of prompt_hash_key: never used to store, but a retried outcome "
        "stored under one is still recognised as a retry (JSON list)",
    )
    retention_days: float | None = Field(
        None,
        gt=0,
        le=MAX_RETENTION_DAYS,
        description="`tierwise purge` deletes decisions and outcomes older than this; None = keep",
    )
    purge_interval_s: float = Field(
        3600.0, gt=0, description="with retention_days, the service purges older decisions and outcomes this often"
    )
    reservation_expiry_s: float = Field(
        86400.0,
        ge=0,
        le=MAX_RETENTION_DAYS * 86400,
        description="a decision's hold on its session is released once it is this old and unsettled (its caller "
        "never posted a settlement or an outcome; one posted later still books its cost); 0 = hold until settled",
    )
    ope_gate_min_decisions: int = Field(
        500, ge=1, description="logged decisions with outcomes the off-policy gate check needs before it judges"
    )
    ope_gate_max_loss: float = Field(
        0.01,
        ge=0,
        le=1,
        description="the gate refuses a challenger whose DR lower bound of quality vs the "
        "logging policy is below minus this",
    )

    # admin page (/ui)
    ui_secret_path: Path = Field(
        default_factory=lambda data: data["store_dir"] / "ui-secret",
        description="the key that signs /ui session cookies; made (mode 0600) on the first login if absent",
    )
    ui_session_ttl_s: float = Field(8 * 3600.0, gt=0, description="a /ui login lasts this long")
    ui_savings_sample: int = Field(
        5000, ge=1, description="savings against always-top are computed on at most this many recent decisions"
    )

    # trust: novelty (out-of-distribution fallback) and drift detection
    novelty_limit: float = Field(
        0.99,
        gt=0,
        description="a prompt farther from the training prompts than this share of held-out training prompts is "
        "out of distribution and gets the conservative tier (the priciest the request allows); above 1 = never",
    )
    drift_window: int = Field(200, ge=10, description="recent decisions (and outcomes) each drift check looks at")
    drift_recalibration_window: int = Field(
        16_000,
        ge=30,
        description="newest decisions /admin/drift's recalibrated λ is fitted on; far more than a check needs: fitted "
        "on 1,000 it misses the promised mean cost by over 5% in 20-52% of simulated shifts, on 16,000 (after "
        "2-3 rounds) in at most 1% (README: Drift detection and recalibration)",
    )
    drift_novelty_z: float = Field(
        4.0, gt=0, description="alert when the window's mean novelty is this many standard errors above 1/2"
    )
    drift_quality_gap: float = Field(
        0.1, gt=0, le=1, description="alert when a tier's predicted quality is off its realised by more than this"
    )
    drift_cost_ratio: float = Field(
        0.25, gt=0, description="alert when realised / expected cost leaves [1 / (1 + this), 1 + this]"
    )
    drift_min_outcomes: int = Field(30, ge=1, description="outcomes a tier (or the cost check) needs before it judges")
    guarantee_epsilon: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="the service default quality guarantee's ε (requests that set no knob of their own get it); "
        "unset = none",
    )
    guarantee_delta: float = Field(0.1, gt=0, lt=1, description="the service default quality guarantee's δ")

    @property
    def tiers_path_named(self) -> bool:
        """True when the tiers path was set (TIERWISE_TIERS_PATH or an argument), not left at its default."""
        return "tiers_path" in self.model_fields_set

    @model_validator(mode="after")
    def _hash_needs_a_key(self) -> Settings:
        if self.prompt_storage == "hash" and not (self.prompt_hash_key and self.prompt_hash_key.get_secret_value()):
            raise ValueError("prompt_storage=hash needs prompt_hash_key (TIERWISE_PROMPT_HASH_KEY), the HMAC key")
        return self

    def shortest_retention_days(self) -> float:
        """The shortest retention that purges no decision still being served (upstream_deadline_s) or holding its
        session's room (reservation_expiry_s): one purged then lost the cost its answer books."""
        return max(self.upstream_deadline_s, self.reservation_expiry_s) / 86400

    def check_retention(self, days: float, name: str) -> None:
        """ValueError naming `name` when `days` is shorter than `shortest_retention_days`."""
        if days < (shortest := self.shortest_retention_days()):
            raise ValueError(
                f"{name} {days:g} is shorter than {shortest:g} days, the longest a decision can wait for its cost "
                "(TIERWISE_RESERVATION_EXPIRY_S, TIERWISE_UPSTREAM_DEADLINE_S): a call answered after its decision "
                "was purged would never be booked; keep longer, or lower TIERWISE_RESERVATION_EXPIRY_S"
            )

    @model_validator(mode="after")
    def _retention_outlasts_open_decisions(self) -> Settings:
        if self.retention_days is not None:
            self.check_retention(self.retention_days, "TIERWISE_RETENTION_DAYS")
        return self


def settings_error(exc: Exception) -> str | None:
    """A bad TIERWISE_* value as one line naming the variable (for the CLI and `python -m serving`), None when `exc`
    is no settings error."""
    if isinstance(exc, SettingsError):  # a value pydantic-settings could not even parse (JSON of a list field)
        return f"the environment's TIERWISE_* settings: {exc}"
    if not isinstance(exc, ValidationError):
        return None
    # A field that failed makes the fields defaulted from it fail too ("default_factory_not_called"): noise.
    errors = [e for e in exc.errors() if e["type"] != "default_factory_not_called"] or exc.errors()
    loc, msg = errors[0]["loc"], errors[0]["msg"].removeprefix("Value error, ")
    return f"TIERWISE_{str(loc[0]).upper()}: {msg}" if loc else f"the environment's TIERWISE_* settings: {msg}"


def _sqlite_url(path: Path) -> str:
    """A SQLAlchemy URL for a SQLite file."""
    return f"sqlite:///{Path(path).as_posix()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
