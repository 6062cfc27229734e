"""Embedder files taken from a copy elsewhere: renamed into place where missing, leftovers of killed fetches removed."""

from __future__ import annotations

import os
from pathlib import Path

from router.embedders.install import FETCH_PREFIX, STALE_FETCH_S, install_files, remove_stale_downloads


def _copy_of(files: dict[str, bytes]):
    def download(tmp: Path) -> Path:
        folder = tmp / "artifacts" / "embedder"  # as MLflow downloads: in a subfolder of the temporary one
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return folder

    return download


def test_missing_files_are_put_and_existing_ones_kept(tmp_path: Path) -> None:
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "tokenizer.json").write_bytes(b"mine")
    put = install_files(_copy_of({"tokenizer.json": b"theirs", "minilm-int8.onnx": b"model"}), onnx)
    assert put == [onnx / "minilm-int8.onnx"]
    assert (onnx / "tokenizer.json").read_bytes() == b"mine"
    assert (onnx / "minilm-int8.onnx").read_bytes() == b"model"
    assert sorted(p.name for p in onnx.iterdir()) == ["minilm-int8.onnx", "tokenizer.json"]


def test_a_killed_fetchs_folder_is_removed_and_a_running_ones_kept(tmp_path: Path) -> None:
    onnx = tmp_path / "onnx"
    killed, running = onnx / f"{FETCH_PREFIX}killed", onnx / f"{FETCH_PREFIX}running"
    for d in (killed, running):
        (d / "artifacts").mkdir(parents=True)
        (d / "artifacts" / "part.onnx").write_bytes(b"\0")
    old = os.stat(killed).st_mtime - 2 * STALE_FETCH_S
    for p in (killed, killed / "artifacts", killed / "artifacts" / "part.onnx"):
        os.utime(p, (old, old))
    # The running fetch's top folder is as old, but a file in its subfolder is still arriving.
    for p in (running, running / "artifacts"):
        os.utime(p, (old, old))
    assert remove_stale_downloads(onnx) == [killed]
    assert not killed.exists() and (running / "artifacts" / "part.onnx").exists()
    # A file of that prefix is no download folder of ours: left alone.
    (onnx / f"{FETCH_PREFIX}note").write_text("x")
    os.utime(onnx / f"{FETCH_PREFIX}note", (old, old))
    assert remove_stale_downloads(onnx) == []
