"""The outcome-log contract: formats, one-line errors naming file/row/column, duplicates."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router.schema import OutcomeLogError, TiersConfigError, load_outcomes, load_tiers, parse_tiers, tiers_to_dict
from tests.conftest import TIERS_TOML, make_log


def write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        df.to_parquet(path)
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        path.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_reads_every_format(tmp_path, tiers, suffix):
    log = make_log(20)
    df = load_outcomes(write(log, tmp_path / f"log{suffix}"), tiers)
    assert len(df) == len(log)
    assert set(df.columns) >= {"prompt_id", "prompt", "model", "score", "cost_usd", "category"}


@pytest.mark.parametrize(
    ("column", "value", "needle"),
    [
        ("score", 1.5, "score must be in [0, 1]"),
        ("score", -0.1, "score must be in [0, 1]"),
        ("cost_usd", -1.0, "cost_usd must be >= 0"),
        ("cost_usd", float("nan"), "missing or NaN"),
        ("prompt", "   ", "prompt is empty"),
        ("model", "mystery-model", "model 'mystery-model' is not in the tiers config"),
        ("score", "abc", "not a number"),
        ("prompt", ["hi"], "prompt must be text, not a list"),  # was stored as the text "['hi']"
        # A review's finds: each was accepted (an infinite token count made a tier's expected cost infinite in the
        # trained model), read as text, or a traceback.
        ("tokens_out", float("inf"), "tokens_out must be finite"),
        ("tokens_in", 1.5, "tokens_in must be a whole number"),
        ("tokens_out", True, "not a number"),
        ("score", True, "not a number"),
        ("cost_usd", 10**400, "cost_usd must be finite"),
        ("prompt", False, "prompt must be text, not true/false"),
        ("prompt_id", " ", "prompt_id is empty"),
        ("category", {"a": 1}, "category must be text, not a list or an object"),
    ],
)
def test_bad_value_names_file_row_and_column(tmp_path, tiers, column, value, needle):
    log = make_log(10)
    log[column] = (log[column] if column in log else pd.Series(10, index=log.index)).astype(object)
    log.at[7, column] = value
    path = write(log, tmp_path / "log.jsonl")
    with pytest.raises(OutcomeLogError) as err:
        load_outcomes(path, tiers)
    msg = str(err.value)
    assert str(path) in msg and "row 8" in msg and f"column '{column}'" in msg and needle in msg
    assert "\n" not in msg


def test_a_csv_cell_reading_na_or_none_is_text_and_the_suffix_any_case(tmp_path, tiers):
    log = make_log(5)
    log.loc[0, "prompt_id"], log.loc[1, "prompt"] = "NA", "None"
    log.loc[log["prompt_id"] == log.loc[1, "prompt_id"], "prompt"] = "None"  # the same text for each of its models
    log["tokens_in"] = [str(10 + i) for i in range(len(log))]
    log.loc[2, "tokens_in"] = "NA"  # a missing number as R writes it stays a missing number
    path = write(log, tmp_path / "log.csv").rename(tmp_path / "LOG.CSV")
    df = load_outcomes(path, tiers)
    assert "NA" in set(df["prompt_id"]) and "None" in set(df["prompt"])  # pandas read both as missing
    assert df["tokens_in"].isna().sum() == 1


def test_csv_ids_and_model_names_that_look_like_numbers_stay_text(tmp_path):
    """pandas read "01" and "1" as the same id 1, and a model "7" as 7.0 (not the tiers' "7"): false errors and
    rewritten ids (new-user finding)."""
    tiers = parse_tiers(
        {
            "models": {
                "7": {"input_per_1m": 0.2, "output_per_1m": 0.2},
                "70.5": {"input_per_1m": 9, "output_per_1m": 9},
            },
            "tiers": [{"name": "small", "model": "7"}, {"name": "big", "model": "70.5"}],
        }
    )
    log = make_log(6)
    log = log[log["model"].isin(["small", "large"])].replace({"model": {"small": "7", "large": "70.5"}})
    ids = {pid: f"0{i}" if i % 2 else str(i) for i, pid in enumerate(log["prompt_id"].unique())}
    log["prompt_id"] = log["prompt_id"].map(ids)
    df = load_outcomes(write(log, tmp_path / "log.csv"), tiers)
    assert set(df["prompt_id"]) == set(ids.values()) and set(df["model"]) == {"7", "70.5"}


def test_a_jsonl_log_starting_with_a_byte_order_mark_is_read(tmp_path, tiers):
    path = write(make_log(5), tmp_path / "log.jsonl")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as a Windows editor saves it
    assert len(load_outcomes(path, tiers)) == len(make_log(5))


def test_a_pq_log_is_parquet_and_a_folder_is_named_as_one(tmp_path, tiers):
    path = write(make_log(5), tmp_path / "log.parquet").rename(tmp_path / "log.pq")  # as --out x.pq writes it
    assert len(load_outcomes(path, tiers)) == len(make_log(5))
    with pytest.raises(OutcomeLogError, match="is a folder, not a file"):  # it said "file not found"
        load_outcomes(tmp_path, tiers)


def test_missing_column_and_empty_file(tmp_path, tiers):
    path = write(make_log(5).drop(columns=["cost_usd"]), tmp_path / "log.csv")
    with pytest.raises(OutcomeLogError, match=r"missing required column.*cost_usd"):
        load_outcomes(path, tiers)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(OutcomeLogError, match="empty"):
        load_outcomes(empty, tiers)
    with pytest.raises(OutcomeLogError, match="not found"):
        load_outcomes(tmp_path / "nope.parquet", tiers)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"prompt": "hi", "n": 1' + "1" * 5000 + "}", "invalid JSON: Exceeds the limit"),
        ("[" * 200_000, "invalid JSON: nested too deeply"),
    ],
)
def test_a_jsonl_line_python_cannot_parse_is_named(tmp_path, tiers, line, needle):
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps(make_log(1).iloc[0].to_dict()) + "\n" + line + "\n")
    with pytest.raises(OutcomeLogError, match="row 2") as err:
        load_outcomes(path, tiers)
    assert needle in str(err.value)


@pytest.mark.parametrize("column", ["score", "tokens_out"])
def test_a_number_column_of_true_false_only_is_refused(tmp_path, tiers, column):
    """One true among numbers was refused, a column of nothing else read as 1.0/0.0 (review finding)."""
    log = make_log(3)
    log[column] = [i % 2 == 0 for i in range(len(log))]
    with pytest.raises(OutcomeLogError, match=f"row 1, column '{column}': not a number"):
        load_outcomes(write(log, tmp_path / "log.jsonl"), tiers)


@pytest.mark.parametrize("kind", ["datetime", "timedelta"])
@pytest.mark.parametrize("column", ["score", "cost_usd"])
def test_a_number_column_of_dates_or_durations_is_refused(tmp_path, tiers, column, kind):
    """A Parquet cost stored as timestamps was read as nanoseconds: $4,961,817 a prompt, trained without a word
    (review finding)."""
    log = make_log(3)
    ns = (log[column] * 1e9).astype("int64")
    log[column] = pd.to_datetime(ns, unit="ns") if kind == "datetime" else pd.to_timedelta(ns, unit="ns")
    with pytest.raises(OutcomeLogError, match=f"row 1, column '{column}': not a number"):
        load_outcomes(write(log, tmp_path / "log.parquet"), tiers)


@pytest.mark.parametrize(("sep", "what"), [("\t", "tabs"), (";", "semicolons")])
def test_a_csv_of_another_separator_says_so(tmp_path, tiers, sep: str, what: str):
    """A tab- or semicolon-separated .csv was "a trailing comma" in some row, or "missing columns" (review)."""
    log = make_log(5)
    log.loc[3, "prompt"] = "one, two"  # a comma in a value: the diagnosis was a row with too many fields
    for name, frame in (("comma.csv", log), ("plain.csv", make_log(5))):
        frame.to_csv(tmp_path / name, sep=sep, index=False)
        with pytest.raises(OutcomeLogError, match=f"{name}: the header is one field separated by {what}: a .csv"):
            load_outcomes(tmp_path / name, tiers)


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path, tiers):
    """pandas read the second `score` as `score.1`, and training used the first, all zeros (review finding)."""
    log = make_log(5)
    log.insert(list(log.columns).index("score"), "zeros", 0.0)
    (tmp_path / "twice.csv").write_text(log.to_csv(index=False).replace("zeros,", "score,", 1))
    with pytest.raises(OutcomeLogError, match="twice.csv: the header names the column 'score' twice"):
        load_outcomes(tmp_path / "twice.csv", tiers)
    # Columns without a name (a spreadsheet export's trailing commas) and a repeated column the log does not read
    # are dropped, as before; a CSV with old Mac line endings (CR only) loads as before (review findings).
    lines = make_log(5).to_csv(index=False).splitlines()
    (tmp_path / "trailing.csv").write_text("".join(f"{line},,\n" for line in lines))
    assert len(load_outcomes(tmp_path / "trailing.csv", tiers)) == len(make_log(5))
    notes = [f"{line},notes,notes" if i == 0 else f"{line},a,b" for i, line in enumerate(lines)]
    (tmp_path / "notes.csv").write_text("\n".join(notes) + "\n")
    assert len(load_outcomes(tmp_path / "notes.csv", tiers)) == len(make_log(5))
    make_log(5).to_csv(tmp_path / "cr.csv", index=False, lineterminator="\r")
    assert len(load_outcomes(tmp_path / "cr.csv", tiers)) == len(make_log(5))


def test_a_gzip_log_in_any_case_and_a_broken_one(tmp_path, tiers):
    data = gzip.compress("\n".join(json.dumps(r) for r in make_log(30).to_dict("records")).encode())
    (tmp_path / "UP.JSONL.GZ").write_bytes(data)
    assert len(load_outcomes(tmp_path / "UP.JSONL.GZ", tiers)) == len(make_log(30))
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(OutcomeLogError, match="truncated"):
        load_outcomes(tmp_path / "cut.jsonl.gz", tiers)
    (tmp_path / "bad.jsonl.gz").write_bytes(data[:20] + bytes(200) + data[220:])
    with pytest.raises(OutcomeLogError, match="cannot be read as gzip"):
        load_outcomes(tmp_path / "bad.jsonl.gz", tiers)


@pytest.mark.parametrize("extra", ["", "algebra"])
def test_a_csv_row_with_more_fields_than_its_header_is_named(tmp_path, tiers, extra):
    """A trailing comma on each row made pandas take the first column for the index: every column shifted, and the
    error blamed another prompt text (review finding); an extra field must not be dropped without a word either."""
    path = tmp_path / "wide.csv"
    lines = make_log(10).to_csv(index=False).splitlines()
    lines[1:] = [f"{line},{extra}" for line in lines[1:]]  # from the first data row on: pandas made it the index
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(OutcomeLogError, match="row 1: 7 fields, the header has 6"):
        load_outcomes(path, tiers)


def test_a_later_csv_row_with_more_fields_is_named_by_its_row(tmp_path, tiers):
    """Past the first data row pandas raised "Expected 6 fields in line 7", counting neither rows nor the file's
    lines of a multi-line prompt (review finding)."""
    log = make_log(10)
    log.loc[2, "prompt"] = "a prompt\nover three\nlines"
    lines = log.to_csv(index=False).splitlines()
    lines[-4] += ",extra"  # the fourth data row from the end: the file's line two more than its row + 1
    (tmp_path / "ragged.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(OutcomeLogError, match=f"row {len(log) - 3}: 7 fields, the header has 6"):
        load_outcomes(tmp_path / "ragged.csv", tiers)


def test_a_parquet_prompt_of_bytes_is_text_when_utf8_else_named(tmp_path, tiers):
    log = make_log(5)
    table = pa.table({c: log[c].tolist() for c in log.columns} | {"prompt": [p.encode() for p in log["prompt"]]})
    pq.write_table(table, tmp_path / "ok.parquet")
    assert load_outcomes(tmp_path / "ok.parquet", tiers)["prompt"].tolist() == log["prompt"].tolist()
    prompts = [p.encode() for p in log["prompt"]]
    prompts[3] = b"caf\xe9 au lait"
    pq.write_table(table.set_column(table.column_names.index("prompt"), "prompt", pa.array(prompts)), tmp_path / "b.pq")
    with pytest.raises(OutcomeLogError, match="row 4, column 'prompt': not UTF-8 text"):
        load_outcomes(tmp_path / "b.pq", tiers)


def test_bad_jsonl_line_names_the_line(tmp_path, tiers):
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps(make_log(1).iloc[0].to_dict()) + "\n{not json\n")
    with pytest.raises(OutcomeLogError, match="row 2"):
        load_outcomes(path, tiers)


def test_a_jsonl_rows_error_names_its_line_past_blank_lines(tmp_path, tiers):
    """Blank lines are skipped, not rows: a check on a record names the line the user finds it on."""
    records = make_log(3).to_dict("records")
    records[2]["score"] = 7.0
    records[1]["prompt_id"], records[1]["prompt"] = records[0]["prompt_id"], "another text"
    lines = [json.dumps(r) for r in records]
    path = tmp_path / "log.jsonl"
    path.write_text(f"\n{lines[0]}\n\n{lines[2]}\n")
    with pytest.raises(OutcomeLogError, match=r"row 4, column 'score'.*score must be in"):
        load_outcomes(path, tiers)
    path.write_text(f"{lines[0]}\n   \n\n{lines[1]}\n")
    with pytest.raises(OutcomeLogError, match=r"row 4, column 'prompt'.*than in row 1:"):
        load_outcomes(path, tiers)


def test_duplicates_are_averaged(tmp_path, tiers):
    log = make_log(5)
    dup = log.iloc[[0]].copy()
    dup["score"] = 1 - dup["score"]
    dup["cost_usd"] = dup["cost_usd"] * 3
    df = load_outcomes(write(pd.concat([log, dup]), tmp_path / "log.parquet"), tiers)
    row = df[(df.prompt_id == log.prompt_id[0]) & (df.model == log.model[0])]
    assert len(row) == 1 and len(df) == len(log)
    assert row.score.iloc[0] == pytest.approx(0.5)
    assert row.cost_usd.iloc[0] == pytest.approx(log.cost_usd[0] * 2)


def test_a_prompt_id_with_two_prompt_texts_is_refused_naming_both_rows(tmp_path, tiers):
    log = make_log(5).reset_index(drop=True)
    same_id = log.index[log["prompt_id"] == log["prompt_id"][0]]
    assert len(same_id) >= 2  # one row per model of the first prompt
    log.loc[same_id[1], "prompt"] = "another prompt under the same id"
    with pytest.raises(OutcomeLogError) as err:
        load_outcomes(write(log, tmp_path / "log.csv"), tiers)
    msg = str(err.value)
    assert f"row {same_id[1] + 1}, column 'prompt'" in msg and f"than in row {same_id[0] + 1}" in msg, msg


def test_fusion_tier_is_priced_as_sum_of_parts():
    data = {
        **TIERS_TOML,
        "tiers": [
            *TIERS_TOML["tiers"],
            {"name": "panel", "kind": "fusion", "members": ["small", "medium"], "judge": "large"},
        ],
    }
    cfg = parse_tiers(data)
    panel = cfg.tier("panel")
    assert panel.model == "fusion:panel"
    assert panel.input_per_1m == pytest.approx(0.2 + 1.0 + 10.0)
    assert panel.output_per_1m == pytest.approx(0.2 + 2.0 + 30.0)
    assert panel.parts == ("small", "medium", "large")


@pytest.mark.parametrize(
    ("tiers", "needle"),
    [
        ([{"name": "a", "model": "nope"}], "no price"),
        ([{"name": "a", "model": "small"}, {"name": "a", "model": "medium"}], "duplicate tier"),
        ([{"name": "p", "kind": "fusion", "members": ["small"]}], "at least two members"),
        ([], "non-empty"),
        ([{"name": " ", "model": "small"}], "a tier's name is blank"),  # both were accepted (review finding)
        ([{"name": "a", "model": "  "}], "tier 'a' has no model"),
    ],
)
def test_bad_tiers(tiers, needle):
    with pytest.raises(TiersConfigError, match=needle):
        parse_tiers({"models": TIERS_TOML["models"], "tiers": tiers})


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"models": 3, "tiers": [{"name": "a", "model": "small"}]}, "models must be a table"),
        ({"models": {"small": 5}, "tiers": [{"name": "a", "model": "small"}]}, r'\[models."small"\] must be a table'),
        ({"tiers": [1, 2]}, r"\[\[tiers\]\] entry 1 must be a table"),
        ({"tiers": [{"name": "a", "model": ["small"]}]}, "tier 'a': model must be one model's name"),
        ({"tiers": [{"name": "p", "kind": "fusion", "members": "ab"}]}, "members must be a list of model names"),
        ({"tiers": [{"name": "a", "model": "small", "members": ["medium"]}]}, "belong to a fusion tier"),
        ({"tiers": [{"name": "a", "model": "x", "input_per_1m": float("inf"), "output_per_1m": 1}]}, "finite"),
        (
            {
                "models": {"x": {"input_per_1m": 1, "output_per_1m": float("inf")}},
                "tiers": [{"name": "a", "model": "x"}],
            },
            "finite",
        ),
        (
            {"models": {"x": {"input_per_1m": 1, "output_per_1m": 1, "base-url": "http://h/v1"}}, "tiers": []},
            "unknown key 'base-url'; did you mean 'base_url'",
        ),
        # A misspelt table ([[tier]], [model."x"]) was let through without a word (review finding).
        ({"tiers": TIERS_TOML["tiers"], "tier": [{"name": "x"}]}, r"unknown top-level key\(s\) 'tier'"),
        ({"tiers": TIERS_TOML["tiers"], "model": {"x": {}}, "fallback": 1}, "'fallback', 'model'; a tiers file"),
    ],
)
def test_a_tiers_file_of_the_wrong_shape_is_one_line(data, needle):
    # Each of these raised a TypeError, AttributeError or a silently ignored setting before.
    with pytest.raises(TiersConfigError, match=needle):
        parse_tiers({"models": TIERS_TOML["models"], **data})


def test_tiers_round_trip_through_their_dict():
    data = {
        **TIERS_TOML,
        "tiers": [
            *TIERS_TOML["tiers"],
            {"name": "panel", "kind": "fusion", "members": ["small", "medium"], "judge": "large"},
        ],
    }
    cfg = parse_tiers(data)
    assert parse_tiers(tiers_to_dict(cfg)) == cfg  # members come back as a tuple


def test_a_tiers_file_that_cannot_be_read_is_one_line(tmp_path):
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[[tiers]]\nname = "caf\xe9"\nmodel = "small"\n')
    with pytest.raises(TiersConfigError, match=r"latin1.toml: not UTF-8 \(byte 22"):
        load_tiers(latin1)
    with pytest.raises(TiersConfigError, match="is a folder"):
        load_tiers(tmp_path)


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[2] / "config"
    three = load_tiers(root / "tiers.toml")
    assert three.names == ["main", "mid", "brain"]
    assert three.tier("brain").model == "gpt-4-1106-preview"
    per_model = load_tiers(root / "tiers.per-model.toml")
    assert len(per_model.tiers) == 11
    prices = [t.input_per_1m + t.output_per_1m for t in per_model.tiers]
    assert prices == sorted(prices)


def test_one_outcome_shape_everywhere():
    """The log row, the store's row and table, and the API model all carry OutcomeBase's fields."""
    from infra.store import OutcomeRow, outcomes
    from router.schema import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, Outcome, OutcomeBase
    from serving.schemas import OutcomeIn

    base = set(OutcomeBase.model_fields)
    assert {"prompt", "model", "score", "cost_usd"} <= base
    assert set(Outcome.model_fields) == set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    assert issubclass(Outcome, OutcomeBase) and issubclass(OutcomeRow, OutcomeBase)
    assert set(outcomes.c.keys()) == set(OutcomeRow.model_fields) | {"prompt_id", "created_at"}
    assert issubclass(OutcomeIn, OutcomeBase) and base <= set(OutcomeIn.model_fields)


def test_a_tiers_file_nested_too_deep_or_with_a_byte_order_mark(tmp_path):
    from tests.conftest import write_tiers

    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(TiersConfigError, match="nested too deep"):  # was a RecursionError traceback
        load_tiers(deep)
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + write_tiers(tmp_path / "t.toml").read_bytes())  # was "not valid TOML"
    assert load_tiers(bom).names == ["main", "mid", "brain"]


def test_a_lone_surrogate_in_a_jsonl_log_names_its_line_and_column(tmp_path, tiers):
    """JSON may escape a lone surrogate ("\\ud800"), which no store or tokenizer takes: named, not a parser's crash."""
    lines = [json.dumps(r) for r in make_log(2).to_dict("records")]
    lines[1] = lines[1].replace('"prompt": "', '"prompt": "\\ud800', 1)
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(OutcomeLogError, match=r"row 2, column 'prompt': not valid Unicode text"):
        load_outcomes(path, tiers)


def test_token_price_of_a_catalogue_model_a_self_priced_tier_and_a_panel() -> None:
    """What POST /decisions/{id}/usage prices a caller's tokens at: the catalogue, else the single tier's own price;
    a fusion tier's model has none (its members and judge read different inputs), nor has a model not configured."""
    raw = {
        "models": {
            "small": {"input_per_1m": 0.2, "output_per_1m": 0.4},
            "large": {"input_per_1m": 10, "output_per_1m": 30},
        },
        "tiers": [
            {"name": "main", "model": "small"},
            {"name": "mid", "model": "own", "input_per_1m": 1.5, "output_per_1m": 2.5},
            {"name": "brain", "kind": "fusion", "members": ["small", "large"], "judge": "large"},
        ],
    }
    tiers = parse_tiers(raw)
    assert tiers.token_price("small") == pytest.approx((0.2e-6, 0.4e-6))
    assert tiers.token_price("own") == pytest.approx((1.5e-6, 2.5e-6))
    assert tiers.tier("brain").model == "fusion:brain" and tiers.token_price("fusion:brain") is None
    assert tiers.token_price("gpt-nope") is None
