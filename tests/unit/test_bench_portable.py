"""Committed benchmark results carry no machine paths: bench.common.write_json writes them portably."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bench.common import REPO, write_json


def test_results_are_written_without_machine_paths(tmp_path: Path) -> None:
    report = {
        "argv": [str(REPO / "bench" / "fastpath.py")],
        "env": {"CACHE": str(Path(tempfile.gettempdir()) / "x" / "cache"), "N": 3},
        "warning": f"{Path.home()}/.pyenv/lib/x.py:1: UserWarning",
    }
    out = tmp_path / "r.json"
    write_json(out, report)
    text = out.read_text()
    assert str(REPO) not in text and tempfile.gettempdir() not in text and str(Path.home()) not in text
    assert json.loads(text) == {
        "argv": ["./bench/fastpath.py"],
        "env": {"CACHE": "$TMPDIR/x/cache", "N": 3},
        "warning": "~/.pyenv/lib/x.py:1: UserWarning",
    }
