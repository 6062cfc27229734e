"""Bring outcome logs into data/: copy staged datasets, or download RouterBench's subset and import it."""

from __future__ import annotations

import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path

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
    """Copy every dataset folder (outcomes.parquet + models.toml) under `source` into `dest`."""
    copied = []
    for ds in sorted(p for p in source.iterdir() if (p / "outcomes.parquet").is_file()):
        target = dest / ds.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("outcomes.parquet", "models.toml"):
            if (ds / name).is_file():
                shutil.copyfile(ds / name, target / name)
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
    import_routerbench(files).to_parquet(out / "outcomes.parquet", index=False)
    shutil.copyfile(MODELS_TOML, out / "models.toml")
    return out


def fetch_data(source: Path | None, dest: Path, cache_dir: Path, base_url: str = ROUTERBENCH_BASE_URL) -> str:
    """Copy from `source` when it holds datasets; otherwise download the public RouterBench subset."""
    if source is not None and source.is_dir():
        names = copy_staged(source, dest)
        if names:
            return f"copied {', '.join(names)} from {source} into {dest}"
    logger.info("no staged data at %s; downloading RouterBench from its original source", source)
    out = download_routerbench(dest, cache_dir, base_url)
    return f"downloaded and imported RouterBench into {out}"
