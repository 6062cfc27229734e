"""The data contract: the outcome log, the tiers config, and the errors they raise."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import tomllib
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("prompt_id", "prompt", "model", "score", "cost_usd")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "category",
    "session_id",
    "tokens_in",
    "tokens_out",
    "latency_ms",
    "timestamp",
)
CHARS_PER_TOKEN = 4.0
"""ASCII characters a token where nothing counted the tokens, as the public logs do (router.text.token_estimate)."""


class OutcomeBase(BaseModel):
    """One prompt answered by one model: what it earned and what it cost.

    The fields an outcome has wherever it is kept: declared once here; the log row (`Outcome`) and the
    store's row (`infra.store.OutcomeRow`) derive from it and add what only they carry.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    prompt: str = Field(min_length=1)
    model: str = Field(min_length=1)
    score: float = Field(ge=0, le=1)
    cost_usd: float = Field(ge=0)
    session_id: str | None = None
    tokens_in: int | None = Field(default=None, ge=0)
    tokens_out: int | None = Field(default=None, ge=0)
    latency_ms: float | None = Field(default=None, ge=0)


class Outcome(OutcomeBase):
    """One row of an outcome log: an outcome with its prompt id, category and time."""

    prompt_id: str = Field(min_length=1)
    category: str | None = None
    timestamp: str | None = None

    @model_validator(mode="after")
    def _prompt_not_blank(self) -> Outcome:
        if not self.prompt.strip():
            raise ValueError("prompt is blank")
        return self


class OutcomeLogError(ValueError):
    """A bad outcome log: names the file, the row (1-based: a data row, or a JSONL file's line) and the column."""

    def __init__(self, path: Path | str, message: str, row: int | None = None, column: str | None = None):
        self.path = str(path)
        self.row = row
        self.column = column
        where = self.path
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {message}")


class TiersConfigError(ValueError):
    """A bad tiers config file."""


# --------------------------------------------------------------------------- tiers config


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class ModelPrice(BaseModel):
    """List price of one model, USD per 1M tokens, and where the proxy calls it (an OpenAI-compatible upstream).

    `base_url` is the upstream's API root (the proxy posts to `<base_url>/chat/completions`), `api_key_env` the
    environment variable holding its key (sent as a bearer token; none when absent), `upstream_model` the name the
    upstream knows the model by (default: the catalogue name), `answer_limit_field` the request field that limits
    an answer's length there (default `max_tokens`; OpenAI's reasoning models take only `max_completion_tokens`):
    a caller's limit, or the one the proxy sets in a capped session, is sent in it.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")
    input_per_1m: float = Field(ge=0, allow_inf_nan=False)
    output_per_1m: float = Field(ge=0, allow_inf_nan=False)
    base_url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s/]+(/\S*)?$")] | None = None
    api_key_env: Annotated[str, StringConstraints(pattern=ENV_NAME)] | None = None
    upstream_model: Annotated[str, StringConstraints(min_length=1)] | None = None
    answer_limit_field: Literal["max_tokens", "max_completion_tokens"] | None = None


class Tier(BaseModel):
    """One rung of the ladder: the model (or fusion of models) that serves it, and its price.

    A `single` tier is served by `model`. A `fusion` tier runs every model in `members`, then
    `judge` merges the answers; its runs are logged under `model` (default `fusion:<name>`), and
    its price is the sum of its parts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1)
    kind: Literal["single", "fusion"] = "single"
    model: str = ""
    members: tuple[str, ...] = ()
    judge: str | None = None
    input_per_1m: float = Field(0.0, ge=0, allow_inf_nan=False)
    output_per_1m: float = Field(0.0, ge=0, allow_inf_nan=False)
    fallback: tuple[str, ...] | None = Field(
        None, description="tiers the proxy falls back to, in order, when this one fails; default: every tier above"
    )

    @property
    def parts(self) -> tuple[str, ...]:
        """Models that are called (and paid for) when this tier answers."""
        if self.kind == "single":
            return (self.model,)
        return (*self.members, *((self.judge,) if self.judge else ()))


@dataclass(frozen=True)
class TiersConfig:
    """Ordered tiers, cheapest first, plus the catalogue of known models and their prices."""

    tiers: tuple[Tier, ...]
    models: Mapping[str, ModelPrice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [t.name for t in self.tiers]
        if not names:
            raise TiersConfigError("no tiers defined")
        if len(set(names)) != len(names):
            raise TiersConfigError(f"duplicate tier names: {names}")
        logged = [t.model for t in self.tiers]
        if len(set(logged)) != len(logged):
            raise TiersConfigError(f"two tiers are served by the same model: {logged}")
        for t in self.tiers:
            unknown = [f for f in t.fallback or () if f not in names or f == t.name]
            if unknown:
                raise TiersConfigError(f"tier '{t.name}': fallback {unknown} must name other tiers of {names}")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tiers]

    def tier(self, name: str) -> Tier:
        for t in self.tiers:
            if t.name == name:
                return t
        raise KeyError(f"unknown tier '{name}'; tiers are {self.names}")

    def index(self, name: str) -> int:
        return self.names.index(self.tier(name).name)

    def fallbacks(self, name: str) -> list[Tier]:
        """The tiers to try, in order, when `name` fails: its `fallback` list, or else every tier above it."""
        tier = self.tier(name)
        if tier.fallback is not None:
            return [self.tier(f) for f in tier.fallback]
        return list(self.tiers[self.index(name) + 1 :])

    @property
    def known_models(self) -> set[str]:
        return set(self.models) | {t.model for t in self.tiers}

    def token_price(self, model: str) -> tuple[float, float] | None:
        """USD per input and per output token of one model: its catalogue price, or the own price of the single tier
        it serves; None for a fusion tier's model (its parts see different inputs) or a model not in the config."""
        if model in self.models:
            return self.models[model].input_per_1m / 1e6, self.models[model].output_per_1m / 1e6
        tier = next((t for t in self.tiers if t.model == model and t.kind == "single"), None)
        return None if tier is None else (tier.input_per_1m / 1e6, tier.output_per_1m / 1e6)


def _check_spelling(raw: Mapping[str, Any], model: type[BaseModel], where: str) -> None:
    """Refuse a key that is a known field written another way (`base-url`, `API_KEY_ENV`): ignored, it would leave
    the setting unset without a word."""
    fields = set(model.model_fields)
    for key in raw:
        meant = str(key).replace("-", "_").lower()
        if key not in fields and meant in fields:
            raise TiersConfigError(f"{where}: unknown key '{key}'; did you mean '{meant}'?")


def _price_tier(raw: Mapping[str, Any], models: Mapping[str, ModelPrice], path: Path) -> Tier:
    data = dict(raw)
    name = data.get("name", "?")
    kind = data.get("kind", "single")
    where = f"{path}: tier '{name}'"
    if isinstance(name, str) and not name.strip():
        raise TiersConfigError(f"{path}: a tier's name is blank")
    if not isinstance(data.get("model", ""), str):
        raise TiersConfigError(f"{where}: model must be one model's name (a string)")
    members = data.get("members", [])
    if not isinstance(members, list | tuple) or not all(isinstance(m, str) for m in members):
        raise TiersConfigError(f"{where}: members must be a list of model names")
    if not isinstance(data.get("judge", ""), str | None):
        raise TiersConfigError(f"{where}: judge must be one model's name (a string)")
    if kind == "single" and (members or data.get("judge")):
        raise TiersConfigError(f'{where}: members and judge belong to a fusion tier (kind = "fusion")')
    if kind == "fusion":
        parts = [*data.get("members", []), *([data["judge"]] if data.get("judge") else [])]
        if len(data.get("members", [])) < 2:
            raise TiersConfigError(f"{path}: fusion tier '{name}' needs at least two members")
        data.setdefault("model", f"fusion:{name}")
    else:
        if not str(data.get("model") or "").strip():
            raise TiersConfigError(f"{path}: tier '{name}' has no model")
        parts = [data["model"]]
    if "input_per_1m" not in data or "output_per_1m" not in data:
        missing = [p for p in parts if p not in models]
        if missing:
            raise TiersConfigError(
                f"{path}: tier '{name}' uses {missing}, which have no price: add them under [models] "
                "or give the tier input_per_1m and output_per_1m"
            )
        data.setdefault("input_per_1m", sum(models[p].input_per_1m for p in parts))
        data.setdefault("output_per_1m", sum(models[p].output_per_1m for p in parts))
    try:
        return Tier(**data)
    except ValidationError as exc:
        raise TiersConfigError(f"{path}: tier '{name}': {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


TIERS_FILE_KEYS = ("tiers", "models")


def parse_tiers(data: Mapping[str, Any], path: Path | str = "<tiers>") -> TiersConfig:
    """Build a TiersConfig from parsed TOML."""
    path = Path(path)
    unknown = sorted(str(k) for k in data if k not in TIERS_FILE_KEYS)
    if unknown:
        raise TiersConfigError(
            f"{path}: unknown top-level key(s) {', '.join(map(repr, unknown))}; a tiers file holds [[tiers]] and "
            '[models."<name>"] only'
        )
    raw_models = data.get("models", {})
    if not isinstance(raw_models, Mapping):
        raise TiersConfigError(f'{path}: models must be a table of model names ([models."<name>"])')
    models = {}
    for name, raw in raw_models.items():
        if not isinstance(raw, Mapping):
            raise TiersConfigError(f'{path}: [models."{name}"] must be a table (input_per_1m = ..., and so on)')
        _check_spelling(raw, ModelPrice, f'{path}: [models."{name}"]')
        try:
            models[name] = ModelPrice(**raw)
        except ValidationError as exc:
            raise TiersConfigError(f'{path}: [models."{name}"]: {_first_error(exc)}') from None
    raw_tiers = data.get("tiers")
    if not isinstance(raw_tiers, list) or not raw_tiers:
        raise TiersConfigError(f"{path}: expected a non-empty [[tiers]] list")
    for i, t in enumerate(raw_tiers, 1):
        if not isinstance(t, Mapping):
            raise TiersConfigError(f"{path}: [[tiers]] entry {i} must be a table (name = ..., model = ...)")
    tiers = tuple(_price_tier(t, models, path) for t in raw_tiers)
    try:
        return TiersConfig(tiers=tiers, models=models)
    except TiersConfigError as exc:
        raise TiersConfigError(f"{path}: {exc}") from None


def load_tiers(path: Path | str) -> TiersConfig:
    """Read a tiers TOML file."""
    path = Path(path)
    if path.is_dir():
        raise TiersConfigError(f"{path}: is a folder, not a tiers file")
    if not path.exists():  # a pipe (`<(...)`) is read like a file
        raise TiersConfigError(f"{path}: tiers file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark, as Windows editors write
    except tomllib.TOMLDecodeError as exc:
        raise TiersConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise TiersConfigError(f"{path}: not a tiers file: arrays or tables nested too deep to read") from None
    except UnicodeDecodeError as exc:
        raise TiersConfigError(f"{path}: not UTF-8 (byte {exc.start + 1} of the file); TOML is UTF-8") from None
    except OSError as exc:
        raise TiersConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    return parse_tiers(data, path)


def tiers_to_dict(cfg: TiersConfig) -> dict[str, Any]:
    """Serialise a TiersConfig to plain data (the inverse of parse_tiers)."""
    return {
        "models": {k: v.model_dump(exclude_none=True) for k, v in cfg.models.items()},
        "tiers": [t.model_dump(exclude_none=True) for t in cfg.tiers],
    }


# --------------------------------------------------------------------------- outcome log


TEXT_COLUMNS = ("prompt_id", "prompt", "model", "category", "session_id", "timestamp")
NUMBER_COLUMNS = ("score", "cost_usd", "tokens_in", "tokens_out", "latency_ms")
NA_NUMBERS = ("NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "None", "<NA>", "#N/A")


def _read_table(path: Path) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The file's table, with the numbers its rows have in the file when they are not its data rows 1..n (a JSONL
    file's line numbers: blank lines are skipped, not rows)."""
    suffix = ("".join(path.suffixes[-2:]) if path.suffix.lower() == ".gz" else path.suffix).lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path), None
        if suffix in (".csv", ".csv.gz"):
            # In a text column only an empty cell is missing (a prompt or id reading "NA" or "None" is that text); a
            # number column also takes the usual spellings of a missing number (R writes NA, pandas may write NaN).
            # A text column is read as text: an id "01" or a model "7" is not the number 1 or 7.0.
            na = {c: [""] for c in TEXT_COLUMNS} | {c: ["", *NA_NUMBERS] for c in NUMBER_COLUMNS}
            text = dict.fromkeys(TEXT_COLUMNS, str)
            # index_col=False: a row with more fields than the header must not turn the first column into the index
            # (every column shifted); pandas would drop the extra fields, so such a row is refused, named
            _check_header(path)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", pd.errors.ParserWarning)
                try:
                    df = pd.read_csv(path, keep_default_na=False, na_values=na, dtype=text, index_col=False)
                except pd.errors.ParserError as exc:
                    if "Expected" in str(exc) and "fields" in str(exc):  # a later row has more fields than the header
                        _refuse_extra_fields(path)
                    raise
            if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
                _refuse_extra_fields(path)
            return df, None
        if suffix in (".jsonl", ".ndjson", ".jsonl.gz"):
            return _read_jsonl(path)
    except OutcomeLogError:
        raise
    except pd.errors.EmptyDataError:
        return pd.DataFrame(), None
    except UnicodeDecodeError:
        raise OutcomeLogError(path, _first_non_utf8_line(path)) from None
    except Exception as exc:  # any parser failure becomes one clear line
        raise OutcomeLogError(path, f"cannot be read as {suffix.lstrip('.')}: {exc}") from None
    raise OutcomeLogError(path, f"unsupported format '{suffix}': use .parquet, .csv or .jsonl")


def _check_header(path: Path) -> None:
    """Raise naming a column of the log the CSV's header names twice: pandas would read the second as `name.1`, and
    the log would use the first without a word (a Parquet file with such a header is refused by its reader). The
    header as pandas reads it (any line ending, gzip); a column the log does not read may repeat, as before. A
    header that is one field holding tabs or semicolons is another separator's: said, where a later row with a
    comma was "a trailing comma" and a row without one "missing columns" (review finding)."""
    names = [str(v) for v in pd.read_csv(path, nrows=1, header=None, dtype=str, keep_default_na=False).iloc[0]]
    if len(names) == 1 and (used := next((sep for sep in ("\t", ";") if sep in names[0]), None)):
        what = "tabs" if used == "\t" else "semicolons"
        raise OutcomeLogError(
            path,
            f"the header is one field separated by {what}: a .csv log is "
            "comma-separated (save it with commas, or as .parquet or .jsonl)",
        )
    for name in names:
        if name in (*TEXT_COLUMNS, *NUMBER_COLUMNS) and names.count(name) > 1:
            raise OutcomeLogError(path, f"the header names the column '{name}' twice: keep one")


def _refuse_extra_fields(path: Path) -> None:
    """Raise naming the first data row with more fields than the CSV's header (a trailing comma, an unquoted comma)."""
    rows = csv.reader(line for _, line in _text_lines(path))
    width = len(next(rows, []))
    for row_number, row in enumerate(rows, start=1):
        if len(row) > width:
            raise OutcomeLogError(
                path,
                f"{len(row)} fields, the header has {width} (a trailing comma, or a comma in a value that is not "
                "quoted): fix the row, or quote the value",
                row=row_number,
            )
    raise OutcomeLogError(path, f"a row has more fields than the header's {width}")


def _not_utf8(lineno: int, raw: bytes, exc: UnicodeDecodeError) -> str:
    return (
        f"line {lineno} is not UTF-8 (byte {raw[exc.start]:#04x}, the line's byte {exc.start + 1}); "
        "save the file as UTF-8"
    )


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file (gzip when it ends in .gz), without the byte-order mark a Windows
    editor may start it with; a line that is not UTF-8 is named."""
    lineno = 0
    with gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb") as fh:
        try:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise OutcomeLogError(path, _not_utf8(lineno, raw, exc)) from None
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:  # a truncated or corrupt gzip file
            why = "ends before its gzip stream does (truncated)" if isinstance(exc, EOFError) else f"is corrupt ({exc})"
            raise OutcomeLogError(path, f"cannot be read as gzip after line {lineno}: the file {why}") from None


def _first_non_utf8_line(path: Path) -> str:
    """Why a text file failed to decode, naming its first line that is not UTF-8."""
    try:
        for _ in _text_lines(path):
            pass
    except OutcomeLogError as exc:
        return str(exc).removeprefix(f"{path}: ")
    return "not UTF-8; save the file as UTF-8"


def iter_jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line, streamed; a bad line raises OutcomeLogError naming it."""
    for lineno, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OutcomeLogError(path, f"invalid JSON: {exc.msg} (character {exc.colno})", row=lineno) from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise OutcomeLogError(path, f"invalid JSON: {exc}", row=lineno) from None
        except RecursionError:
            raise OutcomeLogError(path, "invalid JSON: nested too deeply", row=lineno) from None
        if not isinstance(rec, dict):
            raise OutcomeLogError(path, "each line must be a JSON object", row=lineno)
        yield lineno, rec


def is_unicode_text(text: str) -> bool:
    """Whether `text` is Unicode a tokenizer and a store take: no lone surrogate (JSON's "\\ud800", or a command
    line's bytes that are no UTF-8, which Python keeps as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    lines, records = [], []
    for lineno, rec in iter_jsonl_objects(path):
        for column, value in rec.items():
            if isinstance(value, str) and not is_unicode_text(value):
                raise OutcomeLogError(
                    path, "not valid Unicode text (a lone surrogate such as \\ud800)", row=lineno, column=column
                )
        lines.append(lineno)
        records.append(rec)
    return pd.DataFrame.from_records(records), np.asarray(lines, dtype=np.int64)


def is_utf8(raw: bytes) -> bool:
    """Whether bytes (a Parquet or pickled cell) decode as UTF-8 text."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _number(value: Any) -> Any:
    """A cell as `pd.to_numeric` takes it: true/false is no number (NaN), an integer beyond float's range ±inf."""
    if isinstance(value, bool | np.bool_):
        return math.nan
    if isinstance(value, int) and abs(value) > 2**1023:
        return math.inf if value > 0 else -math.inf
    return value


def numbers_of(column: pd.Series) -> pd.Series:
    """A column's cells as floats; NaN where a cell is no number (a missing cell is NaN too)."""
    # A column of true/false, dates or durations only: no numbers at all (pandas reads dates as nanoseconds).
    if pd.api.types.is_bool_dtype(column) or column.dtype.kind in "mM":
        return pd.Series(np.nan, index=column.index, dtype=float)
    if column.dtype == object:
        column = column.map(_number)
    return pd.to_numeric(column, errors="coerce").astype(float)


def _first_bad(path: Path | str, mask: pd.Series, column: str, message: str, rows: np.ndarray) -> None:
    if mask.any():
        raise OutcomeLogError(path, message, row=int(rows[np.flatnonzero(mask.to_numpy())[0]]), column=column)


def validate_outcomes(
    df: pd.DataFrame,
    path: Path | str,
    known_models: Iterable[str] | None = None,
    row_numbers: np.ndarray | None = None,
) -> pd.DataFrame:
    """Check a raw outcome table against the contract; return it with canonical dtypes.

    Errors name a row by `row_numbers` (its number in the file, e.g. a JSONL line), by default counting data rows
    from 1 (not the header).
    """
    if df.empty:
        raise OutcomeLogError(path, "the outcome log is empty")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise OutcomeLogError(path, f"missing required column(s) {missing}", column=missing[0])
    df = df.reset_index(drop=True)
    rows = np.arange(1, len(df) + 1) if row_numbers is None else row_numbers

    def first_bad(mask: pd.Series, column: str, message: str) -> None:
        _first_bad(path, mask, column, message, rows)

    for col in [c for c in TEXT_COLUMNS if c in df.columns]:
        nested = df[col].map(lambda v: isinstance(v, list | tuple | dict | np.ndarray))
        first_bad(nested, col, f"{col} must be text, not a list or an object")  # was written as its repr
        first_bad(df[col].map(lambda v: isinstance(v, bool | np.bool_)), col, f"{col} must be text, not true/false")
        first_bad(df[col].map(lambda v: isinstance(v, bytes) and not is_utf8(v)), col, "not UTF-8 text")
    for col in ("prompt_id", "prompt", "model"):
        first_bad(df[col].isna(), col, "value is missing")
        df[col] = df[col].map(lambda v: v.decode() if isinstance(v, bytes) else v).astype(str)
    first_bad(df["prompt_id"].str.strip().eq(""), "prompt_id", "prompt_id is empty")
    first_bad(df["prompt"].str.strip().eq(""), "prompt", "prompt is empty")
    first_bad(df["model"].str.strip().eq(""), "model", "model is empty")
    _one_text_per_prompt_id(path, df, rows)
    for col, lo, hi in (("score", 0.0, 1.0), ("cost_usd", 0.0, np.inf)):
        values = numbers_of(df[col])
        first_bad(values.isna() & df[col].notna(), col, f"not a number: {col}")
        first_bad(values.isna(), col, f"{col} is missing or NaN")
        if col == "score":
            first_bad((values < lo) | (values > hi), col, "score must be in [0, 1]")
        else:
            first_bad(values < lo, col, "cost_usd must be >= 0")
            first_bad(~np.isfinite(values), col, "cost_usd must be finite")
        df[col] = values.astype(float)
    for col in ("tokens_in", "tokens_out", "latency_ms"):
        if col in df.columns:
            values = numbers_of(df[col])
            first_bad(values.isna() & df[col].notna(), col, f"not a number: {col}")
            first_bad(values < 0, col, f"{col} must be >= 0")
            first_bad(values.notna() & ~np.isfinite(values), col, f"{col} must be finite")
            if col != "latency_ms":
                first_bad(values.notna() & (values % 1 != 0), col, f"{col} must be a whole number")
            df[col] = values
    if known_models is not None:
        unknown = ~df["model"].isin(set(known_models))
        if unknown.any():
            names = sorted(set(df.loc[unknown, "model"]))
            listed = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            first_bad(
                unknown,
                "model",
                f"model {df.loc[unknown, 'model'].iloc[0]!r} is not in the tiers config (no tier uses it and "
                f"[models] does not list it); the log's models not in it: {listed}",
            )
    keep = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in df.columns]
    return df[keep]


def _one_text_per_prompt_id(path: Path | str, df: pd.DataFrame, rows: np.ndarray) -> None:
    """A prompt_id names one prompt: a row giving an earlier row's prompt_id another text is refused, naming both."""
    first_text = df.groupby("prompt_id", sort=False)["prompt"].transform("first")
    other = df["prompt"].ne(first_text).to_numpy()
    if other.any():
        row = int(np.flatnonzero(other)[0])
        prompt_id = df["prompt_id"].iloc[row]
        first_row = int(np.flatnonzero(df["prompt_id"].eq(prompt_id).to_numpy())[0])
        raise OutcomeLogError(
            path,
            f"prompt_id '{prompt_id}' has another prompt text than in row {rows[first_row]}: one prompt_id, one prompt",
            row=int(rows[row]),
            column="prompt",
        )


def deduplicate_outcomes(df: pd.DataFrame, source: Path | str = "the outcome log") -> pd.DataFrame:
    """One prompt_id per prompt text (`_one_id_per_text`), then repeated (prompt_id, model) rows collapsed: the mean
    score and mean cost of the repeats, every row counting once.

    Repeats are re-runs of the same prompt on the same model; their mean is the best estimate
    of that model's expected score and cost. Other columns keep the first repeat's value.
    """
    df = _one_id_per_text(df, source)  # first: a text's re-runs under either id weigh alike
    if not df.duplicated(["prompt_id", "model"]).any():
        return df
    agg: dict[str, str] = {c: "first" for c in df.columns if c not in ("prompt_id", "model")}
    agg.update(score="mean", cost_usd="mean")
    out = df.groupby(["prompt_id", "model"], sort=False, as_index=False).agg(agg)
    logger.info("collapsed %d duplicate (prompt_id, model) rows", len(df) - len(out))
    return out[df.columns]


def normalize_text(prompt: str) -> str:
    """Collapse whitespace runs so that layout changes never change a prompt's features."""
    return " ".join(prompt.split())


def _one_id_per_text(df: pd.DataFrame, source: Path | str) -> pd.DataFrame:
    """The log with one prompt_id per prompt text: an id whose (whitespace-normalised) text an earlier id has
    becomes that id, logged.

    The router sees only the text, so copies are one prompt to it. Kept apart (a log with an id per run or per
    sample), they counted as held-out prompts of their own (the gate's size floor passed on 43 texts logged twice),
    narrowed the bootstrap intervals as if independent, and sat at distance 0 from their twins in the novelty
    reference, which then flagged ordinary prompts as out of distribution (review finding)."""
    ids = df.drop_duplicates("prompt_id")
    canonical = ids.groupby(ids["prompt"].map(normalize_text), sort=False)["prompt_id"].transform("first")
    renamed = canonical.ne(ids["prompt_id"])
    if not renamed.any():
        return df
    logger.info(  # shown by the CLI; the shared logs hold some (16, 119 and 105), for no fault of the user
        "%s: %d prompt_id(s) repeat the text of an earlier prompt_id (e.g. %r as %r): merged into it, each text is "
        "one prompt (its outcomes of a model averaged)",
        source,
        int(renamed.sum()),
        str(ids["prompt_id"][renamed].iloc[0]),
        str(canonical[renamed].iloc[0]),
    )
    to = dict(zip(ids["prompt_id"], canonical, strict=True))
    return df.assign(prompt_id=df["prompt_id"].map(to))


def load_outcomes(path: Path | str, tiers: TiersConfig | None = None) -> pd.DataFrame:
    """Read, validate and deduplicate one outcome log (Parquet, CSV or JSONL): one prompt_id per prompt text."""
    path = Path(path)
    if path.is_dir():
        raise OutcomeLogError(path, "is a folder, not a file: give the outcome log's file")
    if not path.exists():
        raise OutcomeLogError(path, "file not found")
    if not path.is_file():  # a CSV is read twice (its header is checked first); training reads the whole log anyway
        raise OutcomeLogError(path, "is not a regular file (a pipe or a device): save the log to a file and give that")
    raw, row_numbers = _read_table(path)
    df = validate_outcomes(raw, path, tiers.known_models if tiers else None, row_numbers)
    return deduplicate_outcomes(df, path)


def outcomes_to_frame(rows: Sequence[Outcome]) -> pd.DataFrame:
    """Turn validated Outcome objects into a log table."""
    return pd.DataFrame([r.model_dump() for r in rows])
