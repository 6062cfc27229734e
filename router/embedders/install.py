"""Put an embedder's built files into its directory from a copy elsewhere (the copy a registered model carries).

A host without torch cannot build them (`make setup`); a model registered by tierwise carries the very files it was
trained with. They are downloaded into a temporary folder beside the files and renamed into place, so a reader never
sees half a file; a file already there is kept.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FETCH_PREFIX = ".fetch-"
STALE_FETCH_S = 3600.0
"""A download folder this much older than its last change is a fetch's that was killed midway: removed."""


def install_files(download: Callable[[Path], Path], onnx_dir: Path) -> list[Path]:
    """Call `download(tmp)` (it returns the folder holding the files, inside `tmp`) and move each of its files into
    `onnx_dir` where `onnx_dir` has none of that name. The files put there."""
    onnx_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_downloads(onnx_dir)
    put = []
    with tempfile.TemporaryDirectory(dir=onnx_dir, prefix=FETCH_PREFIX) as tmp:
        for f in sorted(download(Path(tmp)).iterdir()):
            if f.is_file() and not (onnx_dir / f.name).exists():
                put.append(f.replace(onnx_dir / f.name))
    return put


def install_from_repository(repo: Any, path: str, onnx_dir: Path) -> list[Path]:
    """`install_files` from the folder `path` of an artifact repository (an MLflow one: anything with
    `list_artifacts` and `download_artifacts`); none when the repository has no such folder."""
    if not repo.list_artifacts(path):
        return []
    return install_files(lambda tmp: Path(repo.download_artifacts(path, dst_path=str(tmp))), onnx_dir)


def remove_stale_downloads(onnx_dir: Path, older_than_s: float = STALE_FETCH_S) -> list[Path]:
    """Remove the download folders of fetches killed midway (unchanged for `older_than_s`); those removed. A fetch
    still running beside is left alone: its folder changes as its files arrive."""
    cutoff = time.time() - older_than_s
    gone = []
    for d in onnx_dir.glob(f"{FETCH_PREFIX}*"):
        try:
            stale = d.is_dir() and not d.is_symlink() and _last_change(d) < cutoff
        except OSError:  # removed meanwhile by another process
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


def _last_change(folder: Path) -> float:
    """The newest modification time of the folder and of everything in it (a download writes in a subfolder)."""
    return max([folder.stat().st_mtime, *(p.lstat().st_mtime for p in folder.rglob("*"))])  # a link's own time
