"""Streaming bulk routing: chunked JSONL/Parquet in and out gives exactly the one-shot decisions."""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router.features import FeatureSpec
from router.model import DifficultyModel
from router.routing import Router
from router.schema import OutcomeLogError
from tests.conftest import HashingEmbedder, make_log
from training.bulk import DecisionOutputError, decisions_json, output_format, route_file
from training.data import split_log
from training.fit import train_router


@pytest.fixture(scope="module")
def router() -> Router:
    from router.schema import parse_tiers
    from tests.conftest import TIERS_TOML

    tiers = parse_tiers(TIERS_TOML)
    emb = HashingEmbedder()
    split = split_log(make_log(150), tiers, 0.3, 0)
    art = train_router(split, emb, None, FeatureSpec(embedder_id=emb.id), DifficultyModel(n_estimators=20))
    return Router(art, tiers, emb)


def _rows(n: int) -> list[dict[str, str]]:
    log = make_log(n, seed=7).drop_duplicates("prompt_id")
    return [{"prompt_id": str(i), "prompt": p} for i, p in zip(log["prompt_id"], log["prompt"], strict=True)]


@pytest.mark.parametrize("src_suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("out_suffix", [".jsonl", ".parquet"])
def test_streamed_output_equals_the_one_shot_path(router: Router, tmp_path: Path, src_suffix: str, out_suffix: str):
    rows = _rows(103)
    src, out = tmp_path / f"in{src_suffix}", tmp_path / f"out{out_suffix}"
    if src_suffix == ".jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pd.DataFrame(rows).to_parquet(src, row_group_size=17)
    n = route_file(router, src, out, 0.7, rows_per_chunk=10, chunk=4, show_progress=False).decisions
    expected = decisions_json(router, rows, 0.7, 256)
    if out_suffix == ".jsonl":
        got = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        got = pq.read_table(out).to_pylist()  # a null novelty stays None (pandas would make it NaN)
    assert n == len(rows) == len(got)
    assert got == expected
    assert len({json.dumps(d["predicted_quality"]) for d in got}) > 10  # the prompts really score differently


def test_a_bad_row_is_named_by_file_and_row(router: Router, tmp_path: Path):
    src = tmp_path / "mine.jsonl"
    src.write_text('{"prompt": "fine"}\n\n{"prompt_id": "x", "prompt": "  "}\n')
    with pytest.raises(OutcomeLogError, match=r"mine.jsonl, row 3, column 'prompt'"):
        route_file(router, src, tmp_path / "out.jsonl", 0.7, show_progress=False)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        # each was "expected a non-empty prompt" (review finding): the message says what is wrong
        ('{"prompt_id": "x", "promt": "typo"}', r"column 'prompt': no prompt \(the row's keys: prompt_id, promt\)"),
        ('{"prompt": 42}', "column 'prompt': the prompt is int, not text"),
        ('{"prompt_id": "x", "prompt": null}', "column 'prompt': the prompt is null"),
        ('{"prompt_id": " ", "prompt": "fine"}', "column 'prompt_id': the prompt_id is blank"),  # was written out
    ],
)
def test_a_bad_prompt_or_id_says_what_is_wrong(router: Router, tmp_path: Path, line: str, says: str):
    src = tmp_path / "mine.jsonl"
    src.write_text(line + "\n")
    with pytest.raises(OutcomeLogError, match=rf"mine.jsonl, row 1, {says}"):
        route_file(router, src, tmp_path / "out.jsonl", 0.7, show_progress=False)


@pytest.mark.parametrize(
    ("line", "message"), [("[1, 2]", "each line must be a JSON object"), ("{oops", "invalid JSON")]
)
def test_a_line_that_is_no_json_object_is_named_by_row(router: Router, tmp_path: Path, line: str, message: str):
    src = tmp_path / "mine.jsonl"
    src.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(OutcomeLogError, match=rf"mine.jsonl, row 2: {message}"):
        route_file(router, src, tmp_path / "out.jsonl", 0.7, show_progress=False)


def test_a_parquet_input_without_prompts_is_refused(router: Router, tmp_path: Path):
    src = tmp_path / "mine.parquet"
    pd.DataFrame({"text": ["a"]}).to_parquet(src)
    with pytest.raises(OutcomeLogError, match=r"mine.parquet, column 'prompt': no 'prompt' column"):
        route_file(router, src, None, 0.7, show_progress=False)


@pytest.mark.parametrize("src_suffix", [".jsonl", ".parquet"])
def test_a_task_column_is_each_rows_task_hint(router: Router, tmp_path: Path, src_suffix: str):
    rows = _rows(40)
    for i, r in enumerate(rows):
        r["task"] = ("hard", None, "no such task")[i % 3]
    src, out = tmp_path / f"in{src_suffix}", tmp_path / "out.jsonl"
    if src_suffix == ".jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pd.DataFrame(rows).to_parquet(src, row_group_size=7)
    route_file(router, src, out, 0.7, rows_per_chunk=9, chunk=4, show_progress=False)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got == decisions_json(router, rows, 0.7, 256)
    hinted, _, _ = router.assess([r["prompt"] for r in rows], [r["task"] for r in rows])
    plain, _, _ = router.assess([r["prompt"] for r in rows])
    for i, d in enumerate(got):
        assert list(d["predicted_quality"].values()) == pytest.approx(hinted[i].tolist(), abs=1e-4)
    changed = [bool(abs(hinted[i] - plain[i]).max() > 1e-6) for i in range(len(rows))]
    assert all(changed[0::3]) and not any(changed[1::3]) and not any(changed[2::3])  # only the known task moves


def test_a_task_that_is_no_string_is_named_by_row(router: Router, tmp_path: Path):
    src = tmp_path / "tasks.jsonl"
    src.write_text('{"prompt": "fine", "task": "hard"}\n{"prompt": "also fine", "task": 7}\n')
    with pytest.raises(OutcomeLogError, match=r"tasks.jsonl.*row 2.*task"):
        route_file(router, src, tmp_path / "o.jsonl", 0.7, show_progress=False)


@pytest.mark.parametrize(
    ("line", "column"),
    [
        ('{"prompt_id": "\\ud800", "prompt": "x"}', "prompt_id"),  # was a traceback writing Parquet
        ('{"prompt_id": "s", "prompt": "x", "task": "\\ud800"}', "task"),  # /route/batch refuses it too
        ('{"prompt_id": true, "prompt": "x"}', "prompt_id"),  # was routed as the id "True"
        ('{"prompt_id": {"a": 1}, "prompt": "x"}', "prompt_id"),
        ('{"prompt_id": 1.5, "prompt": "x"}', "prompt_id"),
    ],
)
def test_a_prompt_id_or_task_no_output_can_hold_is_named_by_row(router: Router, tmp_path: Path, line: str, column: str):
    src = tmp_path / "ids.jsonl"
    src.write_text('{"prompt_id": 7, "prompt": "an integer id is fine"}\n' + line + "\n")
    with pytest.raises(OutcomeLogError, match=rf"ids.jsonl.*row 2.*{column}"):
        route_file(router, src, tmp_path / "o.parquet", 0.7, show_progress=False)


@pytest.mark.parametrize("out_suffix", [".jsonl", ".parquet"])
def test_a_failed_run_leaves_the_old_output_as_it_was(router: Router, tmp_path: Path, out_suffix: str):
    # rows_per_chunk=2: the first chunk is written before the bad row 3 is read
    src, out = tmp_path / "mine.jsonl", tmp_path / f"out{out_suffix}"
    src.write_text('{"prompt": "fine"}\n{"prompt": "fine too"}\n{"prompt_id": "x", "prompt": "  "}\n')
    out.write_bytes(b"the previous run's decisions\n")
    with pytest.raises(OutcomeLogError, match=r"row 3"):
        route_file(router, src, out, 0.7, rows_per_chunk=2, show_progress=False)
    assert out.read_bytes() == b"the previous run's decisions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mine.jsonl", out.name])  # no partial file left
    src.write_text("")  # no prompts: nothing replaces the output either
    assert route_file(router, src, out, 0.7, show_progress=False).decisions == 0
    assert out.read_bytes() == b"the previous run's decisions\n"


def test_a_symlinked_output_is_written_through_not_replaced(router: Router, tmp_path: Path):
    src, real, link = tmp_path / "in.jsonl", tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _rows(5)))
    real.write_text("old\n")
    link.symlink_to(real)
    inode = real.stat().st_ino
    assert route_file(router, src, link, 0.7, show_progress=False).decisions == 5
    assert link.is_symlink() and len(real.read_text().splitlines()) == 5  # the link kept, its file written
    assert real.stat().st_ino == inode  # in place: a shell's open redirection (/dev/stdout -> a file) sees it


def test_a_hard_linked_output_is_written_in_place_so_its_other_name_sees_it(router: Router, tmp_path: Path):
    """A rename would have left the file's other name holding the old decisions (review finding)."""
    src, out, other = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "other.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _rows(5)))
    out.write_text("old\n")
    os.link(out, other)
    assert route_file(router, src, out, 0.7, show_progress=False).decisions == 5
    assert out.stat().st_ino == other.stat().st_ino and len(other.read_text().splitlines()) == 5


def test_an_output_in_a_folder_it_may_not_search_is_a_failure_of_the_output(
    router: Router, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Checking what --out is (a symlink?) in a folder without search permission raised a bare PermissionError
    (root may search any folder, so the check's failure is simulated)."""
    src, out = tmp_path / "in.jsonl", tmp_path / "locked" / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _rows(2)))

    def is_symlink(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_symlink", is_symlink)
    with pytest.raises(DecisionOutputError, match=rf"--out {out}: cannot write the decisions: Permission denied"):
        route_file(router, src, out, 0.7, show_progress=False)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_symlinked_output_that_fails_says_what_it_holds_and_a_parquet_one_has_no_footer(
    router: Router, tmp_path: Path, suffix: str
):
    """A symlink is written through (its target may be a shell's redirection, /dev/stdout, or sit in a folder only
    the file is writable in): a bad row left it truncated without saying so (review finding); the failure now says
    how many decisions it holds, and a Parquet one is left without its footer, so no reader takes it for whole."""
    src, real, link = tmp_path / "in.jsonl", tmp_path / f"real{suffix}", tmp_path / f"link{suffix}"
    src.write_text('{"prompt": "fine"}\n{"prompt": "fine too"}\n{"prompt": "  "}\n')
    link.symlink_to(real)  # dangling until written
    with pytest.raises(OutcomeLogError, match=r"row 3") as failed:
        route_file(router, src, link, 0.7, rows_per_chunk=2, show_progress=False)
    assert failed.value.__notes__ == [f"--out {link} holds the 2 decisions written before this: incomplete"]
    assert link.is_symlink()
    if suffix == ".parquet":
        with pytest.raises(pa.ArrowInvalid):
            pq.read_table(real)
    else:
        assert len(real.read_text().splitlines()) == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("kind", ["symlink", "hard link"])
def test_an_output_written_in_place_is_untouched_by_a_run_that_fails_before_its_first_decision(
    router: Router, tmp_path: Path, suffix: str, kind: str
):
    """It was opened, and so emptied, before the input was read: an input with no prompts, or a bad row in the
    first chunk, left it (and the file it links to) empty (review finding)."""
    src, real, out = tmp_path / "in.jsonl", tmp_path / f"real{suffix}", tmp_path / f"out{suffix}"
    real.write_bytes(b"the previous run's decisions\n")
    out.symlink_to(real) if kind == "symlink" else os.link(real, out)
    src.write_text('{"prompt": "fine"}\n{"prompt": "  "}\n')
    with pytest.raises(OutcomeLogError, match=r"row 2"):
        route_file(router, src, out, 0.7, show_progress=False)
    src.write_text("")
    assert route_file(router, src, out, 0.7, show_progress=False).decisions == 0
    assert real.read_bytes() == b"the previous run's decisions\n"
    src.write_text('{"prompt": "fine"}\n')
    assert route_file(router, src, out, 0.7, show_progress=False).decisions == 1
    assert (pq.read_table(real).num_rows if suffix == ".parquet" else len(real.read_text().splitlines())) == 1


def test_an_unwritable_output_written_in_place_fails_before_routing(router: Router, tmp_path: Path):
    src, real, out = tmp_path / "in.jsonl", tmp_path / "real.jsonl", tmp_path / "out.jsonl"
    real.write_text("old\n")
    out.symlink_to(real)
    src.write_text('{"prompt": "fine"}\n')
    real.chmod(0o400)
    if os.access(real, os.W_OK):
        pytest.skip("root writes a read-only file")
    with pytest.raises(DecisionOutputError, match="Permission denied"):
        route_file(router, src, out, 0.7, show_progress=False)


def test_a_parquet_input_with_a_column_twice_is_refused(router: Router, tmp_path: Path):
    src = tmp_path / "dup.parquet"
    pq.write_table(
        pa.Table.from_arrays([pa.array(["a"]), pa.array(["x"]), pa.array(["y"])], ["prompt_id", "prompt", "prompt"]),
        src,
    )
    with pytest.raises(OutcomeLogError, match="column 'prompt' appears more than once"):
        route_file(router, src, None, 0.7, show_progress=False)


def test_a_replaced_output_keeps_its_mode(router: Router, tmp_path: Path):
    """The temporary file renamed onto --out had the umask's mode: a private 0600 file became world-readable."""
    src, out = tmp_path / "in.jsonl", tmp_path / "private.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _rows(5)))
    out.write_text("old\n")
    out.chmod(0o600)
    assert route_file(router, src, out, 0.7, show_progress=False).decisions == 5
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and len(out.read_text().splitlines()) == 5


def test_output_written_in_place_is_named_incomplete_when_the_run_fails(
    router: Router, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Standard output (or a pipe, a device) cannot be taken back: the error says what it already holds."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "fine"}\n{"prompt": "fine too"}\n{"prompt": "  "}\n')
    with pytest.raises(OutcomeLogError) as failed:
        route_file(router, src, None, 0.7, rows_per_chunk=2, show_progress=False)
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert failed.value.__notes__ == ["standard output holds the 2 decisions written before this: incomplete"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_rows_with_and_without_a_prompt_id_are_refused(router: Router, tmp_path: Path, suffix: str):
    """A row without an id got its row number as id, which another row's id could be: "2" named two decisions."""
    rows = [{"prompt_id": "2", "prompt": "first"}, {"prompt_id": None, "prompt": "second"}]
    src = tmp_path / f"in{suffix}"
    if suffix == ".jsonl":
        src.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "second"}) + "\n")
    else:
        pd.DataFrame(rows).to_parquet(src)
    with pytest.raises(OutcomeLogError, match=r"row 2, column 'prompt_id': this row gives no prompt_id and row 1"):
        route_file(router, src, tmp_path / "out.jsonl", 0.7, show_progress=False)


def test_rows_without_prompt_ids_are_named_by_their_line(router: Router, tmp_path: Path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"prompt": "first"}\n\n{"prompt": "second"}\n')
    assert route_file(router, src, out, 0.7, show_progress=False).repeated_ids == 0
    assert [json.loads(line)["prompt_id"] for line in out.read_text().splitlines()] == ["1", "3"]


def test_repeated_prompt_ids_are_counted(router: Router, tmp_path: Path):
    src = tmp_path / "in.jsonl"
    ids: list[object] = ["a", "b", "a", 1, "1", "c", "a"]
    src.write_text("".join(json.dumps({"prompt_id": i, "prompt": f"prompt {n}"}) + "\n" for n, i in enumerate(ids)))
    run = route_file(router, src, tmp_path / "out.jsonl", 0.7, rows_per_chunk=3, show_progress=False)
    assert (run.decisions, run.repeated_ids) == (7, 3)


def test_each_decision_says_what_its_task_hint_did(router: Router, tmp_path: Path):
    """The service's reason says whether a hint was used; the bulk records said nothing (README promises both)."""
    assert router.knows_task("easy") and not router.knows_task("poetry")
    src = tmp_path / "in.jsonl"
    tasks = ["easy", "poetry", None]
    src.write_text("".join(json.dumps({"prompt": "easy question 1: alpha", "task": t}) + "\n" for t in tasks))
    out = tmp_path / "out.jsonl"
    route_file(router, src, out, 0.7, show_progress=False)
    reasons = [json.loads(line)["reason"] for line in out.read_text().splitlines()]
    assert "task hint 'easy': its tiers' mean scores in the training log blended in" in reasons[0]
    assert "task hint 'poetry' is not a task this model knows" in reasons[1]
    assert "GET /tiers" not in reasons[1]  # the service's endpoint means nothing in a bulk file
    assert "task hint" not in reasons[2]


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("d.jsonl", "jsonl"),
        ("d", "jsonl"),
        ("d.json", "jsonl"),
        ("d.PARQUET", "parquet"),
        ("d.pq", "parquet"),
        ("d.jsonl.gz", "jsonl.gz"),
        ("d.gz", "jsonl.gz"),
        ("d.csv", None),
        ("d.csv.gz", None),
        ("d.parquet.gz", None),
        ("d.jsonl.zst", None),
        ("d.xlsx", None),
    ],
)
def test_the_output_name_says_how_it_is_written(name: str, written: str | None):
    """`--out x.jsonl.gz` wrote plain JSONL and `--out x.csv` JSONL too (review finding)."""
    if written is None:
        with pytest.raises(ValueError, match="name it .jsonl, .jsonl.gz or .parquet"):
            output_format(Path(name))
    else:
        assert output_format(Path(name)) == written


def test_a_gz_output_is_gzip_and_holds_the_same_decisions(router: Router, tmp_path: Path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _rows(20)))
    plain, packed = tmp_path / "d.jsonl", tmp_path / "d.jsonl.gz"
    route_file(router, src, plain, 0.7, show_progress=False)
    route_file(router, src, packed, 0.7, show_progress=False)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed.read_bytes()).decode() == plain.read_text()
