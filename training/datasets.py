"""Bring outcome logs into data/: copy staged datasets, or download RouterBench and import it."""

from __future__ import annotations

import logging
import shutil
import urllib.request
from pathlib import Path

from training.importers import import_routerbench

logger = logging.getLogger(__name__)

ROUTERBENCH_URL = "https://huggingface.co/datasets/withmartian/routerbench/resolve/main/routerbench_0shot.pkl"
ROUTERBENCH_DIR = "routerbench_subset"
SUBSET_TASKS = ("arc-challenge", "mbpp", "winogrande")
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


def download_routerbench(dest: Path, cache_dir: Path, url: str = ROUTERBENCH_URL) -> Path:
    """Download RouterBench's 0-shot pickle (about 100 MB); import its ARC, MBPP and Winogrande rows."""
    raw = cache_dir / "routerbench_0shot.pkl"
    if not raw.is_file():
        raw.parent.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %s", url)
        tmp = raw.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=60) as resp, tmp.open("wb") as fh:  # noqa: S310 - fixed https URL
            shutil.copyfileobj(resp, fh)
        tmp.rename(raw)
    out = dest / ROUTERBENCH_DIR
    out.mkdir(parents=True, exist_ok=True)
    df = import_routerbench([raw])
    df = df[df["category"].isin(SUBSET_TASKS)]
    df.to_parquet(out / "outcomes.parquet", index=False)
    shutil.copyfile(MODELS_TOML, out / "models.toml")
    return out


def fetch_data(source: Path | None, dest: Path, cache_dir: Path) -> str:
    """Copy from `source` when it exists; otherwise download the public RouterBench data."""
    if source is not None and source.is_dir():
        names = copy_staged(source, dest)
        if names:
            return f"copied {', '.join(names)} from {source} into {dest}"
    logger.info("no staged data at %s; downloading RouterBench from its original source", source)
    out = download_routerbench(dest, cache_dir)
    return f"downloaded and imported RouterBench into {out}"
