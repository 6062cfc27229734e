"""Bring outcome logs into data/: copy staged datasets, or download RouterBench's subset and import it."""

from __future__ import annotations

import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from router.schema import OutcomeLogError
from training.importers import import_routerbench

logger = logging.getLogger(__name__)

# The staged routerbench_subset was made from RouterDC's split of RouterBench's 0-shot data, pinned to
# one commit; downloading the same six CSVs (about 5 MB) and importing them reproduces it row for row.
ROUTERDC_COMMIT = "0e63989c5bf4363330b8a4616386e3f7f116d9f8"
ROUTERBENCH_BASE_URL = f"https://raw.githubusercontent.com/shuhao02/RouterDC/{ROUTERDC_COMMIT}/datasets/routerbench_zs/"
ROUTERBENCH_FILES = tuple(
    f"{task}_{part}.csv" for task in ("arc_challenge", "mbpp", "winograde") for part in ("train", "test")
)
ROUTERBENCH_DIR = "routerbench_subset"
MODELS_TOML = Path(__file__).resolve().parent.parent / "config" / "routerbench_models.toml"


def copy_staged(source: Path, dest: Path) -> list[str]:
    """Copy every dataset folder (outcomes.parquet + models.toml) under `source` into `dest`; a log that is no
    Parquet file (truncated, empty) is refused before anything of it is copied."""
    datasets = sorted(p for p in source.iterdir() if (p / "outcomes.parquet").is_file())
    for ds in datasets:
        try:
            pq.ParquetFile(ds / "outcomes.parquet")
        except (OSError, pa.ArrowException) as exc:
            raise OutcomeLogError(ds / "outcomes.parquet", f"not a readable Parquet file: {exc}") from None
    copied = []
    for ds in datasets:
        target = dest / ds.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("outcomes.parquet", "models.toml"):
            if (ds / name).is_file():
                tmp = target / f".{name}.partial"
                shutil.copyfile(ds / name, tmp)
                tmp.replace(target / name)
        copied.append(ds.name)
    return copied


def _download(url: str, path: Path) -> None:
    """Fetch url into path via a .part file, so an interrupted download is never taken for a finished one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    logger.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, tmp.open("wb") as fh:  # URL from settings
            shutil.copyfileobj(resp, fh)
    except (urllib.error.URLError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(f"cannot download {url}: {exc}") from exc
    tmp.replace(path)


def download_routerbench(dest: Path, cache_dir: Path, base_url: str = ROUTERBENCH_BASE_URL) -> Path:
    """Download RouterBench's ARC, MBPP and Winogrande CSVs (RouterDC's split) and import them into dest."""
    raw_dir = cache_dir / "routerbench_raw"
    files = []
    for name in ROUTERBENCH_FILES:
        path = raw_dir / name
        if not path.is_file():
            _download(base_url + name, path)
        files.append(path)
    out = dest / ROUTERBENCH_DIR
    out.mkdir(parents=True, exist_ok=True)
    try:
        log = import_routerbench(files)
    except OutcomeLogError as exc:  # a downloaded file damaged since: say how to fetch it again
        raise OutcomeLogError(raw_dir, f"{exc}; delete this folder to download the files again") from None
    log.to_parquet(out / "outcomes.parquet", index=False)
    shutil.copyfile(MODELS_TOML, out / "models.toml")
    return out


def fetch_data(source: Path | None, dest: Path, cache_dir: Path, base_url: str = ROUTERBENCH_BASE_URL) -> str:
    """Copy from `source` when it holds datasets; otherwise download the public RouterBench subset."""
    if source is not None and source.is_dir():
        names = copy_staged(source, dest)
        if names:
            return f"copied {', '.join(names)} from {source} into {dest}"
    logger.info("no staged data at %s; downloading RouterBench from its original source", source)
    try:
        out = download_routerbench(dest, cache_dir, base_url)
    except OSError as exc:
        if source is None:
            raise
        where = "holds no dataset folders" if source.is_dir() else "is not a folder"
        raise OSError(f"{source} {where} (TIERWISE_DATA_DIR, --source), and {exc}") from exc
    return f"downloaded and imported RouterBench into {out}"
