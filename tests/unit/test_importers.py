"""RouterBench importer: the native wide format becomes the long outcome log."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest

from infra.settings import Settings
from router.schema import OutcomeLogError
from training.datasets import ROUTERBENCH_FILES, fetch_data
from training.importers import import_routerbench, import_routerbench_frame

ROOT = Path(__file__).resolve().parents[2]


def test_wide_frame_to_long_rows():
    wide = pd.DataFrame(
        {
            "sample_id": ["arc.1", "arc.2"],
            "prompt": ["['Q1?']", "['Q2?', 'Q2?']"],
            "eval_name": ["arc-challenge", "arc-challenge"],
            "m1": [1.0, 0.0],
            "m2": [0.0, None],
            "m1|total_cost": [0.1, 0.2],
            "m2|total_cost": [1.0, 2.0],
            "m1|model_response": ["A", "B"],
        }
    )
    long = import_routerbench_frame(wide)
    assert len(long) == 3  # the missing m2 score is dropped
    assert set(long.columns) == {"prompt_id", "prompt", "model", "score", "cost_usd", "category"}
    assert long.loc[long.prompt_id.str.startswith("arc.2"), "prompt"].iloc[0] == "Q2?"  # twin copies collapse
    with pytest.raises(OutcomeLogError, match="not a RouterBench table"):
        import_routerbench_frame(wide.drop(columns=["eval_name"]))


@pytest.mark.parametrize(
    ("column", "values", "says"),
    [
        ("m2", [0.0, "yes"], r"row 2, column 'm2': not a number: 'yes'"),  # the model was dropped silently
        ("m1", [1.0, 7.0], r"row 2, column 'm1': score must be in \[0, 1\]"),  # was named by its long-table row
        ("m1|total_cost", [0.1, -0.2], r"row 2, column 'm1\|total_cost': cost must be finite"),
        ("prompt", ["['Q1?']", "['  ']"], r"row 2, column 'prompt': prompt is empty"),  # was the long table's row 4
        ("prompt", ["['Q1?']", None], r"row 2, column 'prompt': value is missing"),  # was imported as the text 'None'
        # A review's finds: each was a traceback.
        ("m1|total_cost", [0.1, 10**400], r"row 2, column 'm1\|total_cost': cost must be finite"),
        ("prompt", ["['Q1?']", b"\xff"], r"row 2, column 'prompt': not UTF-8 text"),
        ("m1", [1.0, True], r"row 2, column 'm1': not a number: True"),
    ],
)
def test_a_bad_entry_is_named_by_its_row_and_column_in_the_file(column: str, values: list, says: str):
    wide = pd.DataFrame(
        {
            "sample_id": ["arc.1", "arc.2"],
            "prompt": ["['Q1?']", "['Q2?']"],
            "eval_name": ["arc", "arc"],
            "m1": [1.0, 0.0],
            "m2": [0.0, 1.0],
            "m1|total_cost": [0.1, 0.2],
            "m2|total_cost": [1.0, 2.0],
        }
    )
    wide[column] = values
    with pytest.raises(OutcomeLogError, match=f"wide.csv, {says}"):
        import_routerbench_frame(wide, "wide.csv")


def test_a_column_named_by_a_number_is_no_model_of_the_table():
    wide = pd.DataFrame({"sample_id": ["a.1"], "prompt": ["['Q?']"], "eval_name": ["a"], "m1": [1.0], 7: [0.5]})
    wide["m1|total_cost"] = [0.1]
    assert import_routerbench_frame(wide)["model"].tolist() == ["m1"]  # the int column name was a traceback


def test_a_file_that_is_no_routerbench_table_is_one_line(tmp_path: Path):
    truncated, listed, bad_csv = tmp_path / "t.pkl", tmp_path / "l.pkl", tmp_path / "b.csv"
    pd.DataFrame({"a": range(100)}).to_pickle(truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    pd.to_pickle([1, 2], listed)
    bad_csv.write_text('a,b\n1,"unterminated\n')
    for path, says in (
        (truncated, "cannot be read as a pickle"),
        (listed, "holds a list, not RouterBench's table"),
        (bad_csv, "cannot be read as CSV"),
        (tmp_path / "none.csv", "file not found"),
    ):
        with pytest.raises(OutcomeLogError, match=f"{path.name}: {says}"):
            import_routerbench([path])


def _raw_and_staged() -> tuple[list[Path], Path]:
    raw = sorted((Settings().data_dir / "routerbench_subset" / "raw").glob("*.csv.gz"))
    staged = ROOT / "data" / "routerbench_subset" / "outcomes.parquet"
    if not raw or not staged.is_file():
        pytest.skip("the raw RouterBench CSVs (TIERWISE_DATA_DIR/routerbench_subset/raw) or `make data` are missing")
    return raw, staged


def _assert_same_as_staged(ours: pd.DataFrame, staged: Path) -> None:
    ref = pd.read_parquet(staged, columns=["prompt_id", "model", "prompt", "score", "cost_usd", "category"])
    merged = ours.merge(ref, on=["prompt_id", "model"], suffixes=("", "_ref"), validate="one_to_one")
    assert len(ours) == len(ref) == len(merged) == 34804
    for col in ("prompt", "score", "category"):
        assert (merged[col] == merged[f"{col}_ref"]).all(), col
    assert (merged["cost_usd"] - merged["cost_usd_ref"]).abs().max() < 1e-12


def test_raw_routerbench_files_reproduce_the_staged_log():
    raw, staged = _raw_and_staged()
    _assert_same_as_staged(import_routerbench(raw), staged)


def test_make_data_without_staged_data_downloads_and_imports_the_source(tmp_path: Path):
    """`make data` outside this workplace: the source CSVs come over a URL (here file://, no hub is reachable)."""
    raw, staged = _raw_and_staged()
    remote = tmp_path / "remote"
    remote.mkdir()
    for path in raw:  # the source serves plain CSVs; the staged copies are gzipped
        with gzip.open(path, "rb") as src, (remote / path.name.removesuffix(".gz")).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    assert sorted(p.name for p in remote.iterdir()) == sorted(ROUTERBENCH_FILES)
    message = fetch_data(tmp_path / "no-such-dir", tmp_path / "data", tmp_path / "cache", remote.as_uri() + "/")
    assert "downloaded" in message
    out = tmp_path / "data" / "routerbench_subset"
    _assert_same_as_staged(pd.read_parquet(out / "outcomes.parquet"), staged)
    assert (out / "models.toml").read_text() == (staged.parent / "models.toml").read_text()


def test_a_failed_download_names_the_url_and_leaves_no_partial_file(tmp_path: Path):
    missing = (tmp_path / "empty").as_uri() + "/"
    with pytest.raises(OSError, match="cannot download .*arc_challenge_train.csv"):
        fetch_data(None, tmp_path / "data", tmp_path / "cache", missing)
    assert not list((tmp_path / "cache").rglob("*.part"))
    assert not (tmp_path / "data" / "routerbench_subset" / "outcomes.parquet").exists()


def test_a_failed_download_says_the_staged_folder_was_not_there_either(tmp_path: Path):
    # `data --source nosuchdir` fell back to the download and named only its URL.
    missing = (tmp_path / "empty").as_uri() + "/"
    with pytest.raises(
        OSError, match=r"nosuchdir is not a folder \(TIERWISE_DATA_DIR, --source\), and cannot download"
    ):
        fetch_data(tmp_path / "nosuchdir", tmp_path / "data", tmp_path / "cache", missing)


def test_a_staged_log_that_is_no_parquet_file_is_refused_before_copying(tmp_path: Path):
    for name, content in (("good", None), ("broken", b"PAR1 truncated")):
        (tmp_path / "staged" / name).mkdir(parents=True)
        path = tmp_path / "staged" / name / "outcomes.parquet"
        if content is None:
            pd.DataFrame({"a": [1]}).to_parquet(path)
        else:
            path.write_bytes(content)
    with pytest.raises(OutcomeLogError, match=r"broken/outcomes.parquet: not a readable Parquet file"):
        fetch_data(tmp_path / "staged", tmp_path / "data", tmp_path / "cache")
    assert not (tmp_path / "data").exists()  # nothing of it copied


def test_a_damaged_download_in_the_cache_says_how_to_fetch_it_again(tmp_path: Path):
    raw_dir = tmp_path / "cache" / "routerbench_raw"
    raw_dir.mkdir(parents=True)
    for name in ROUTERBENCH_FILES:
        (raw_dir / name).write_text("")
    with pytest.raises(OutcomeLogError, match="delete this folder to download the files again"):
        fetch_data(None, tmp_path / "data", tmp_path / "cache", "file:///nowhere/")


def test_an_error_in_the_second_of_several_files_names_that_file_and_its_row(tmp_path: Path):
    """The checks of the whole log ran on the files' concatenation, whose errors named neither file (review)."""
    good = {
        "sample_id": ["arc.1", "arc.2"],
        "prompt": ["['Q1?']", "['Q2?']"],
        "eval_name": ["arc", "arc"],
        "m1": [1.0, 0.0],
        "m1|total_cost": [0.1, 0.2],
    }
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame(good).to_csv(a, index=False)
    # A model column named by blanks: the log's own check ("model is empty") is the one that refuses it.
    pd.DataFrame(
        good | {"m1": [None, 1.0], "m1|total_cost": [None, 0.2], " ": [None, 1.0], " |total_cost": [None, 1.0]}
    ).to_csv(b, index=False)
    with pytest.raises(OutcomeLogError, match=r"b\.csv, row 2, column 'model': model is empty"):
        import_routerbench([a, b])
    assert len(import_routerbench([a, a])) == 2  # the same outcomes in two files: the first file's, once
