"""The tiers a model was trained with, as a tiers file whose every model calls one stand-in upstream (docker/smoke.sh).

`python3 standin_tiers.py MODEL_DIR BASE_URL > tiers.toml` reads the tiers stored with the model (its
`router.json`, wherever it lies under MODEL_DIR) and writes them as TOML, each model's `base_url` set to BASE_URL
and its `api_key_env` dropped (the stand-in wants no key). Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    """A string, number, boolean or list of them as TOML (JSON's spelling of these is TOML's too)."""
    return json.dumps(value)


def standin_tiers(model_dir: Path, base_url: str) -> str:
    found = sorted(model_dir.rglob("router.json"))
    if not found:
        raise SystemExit(f"standin_tiers: no router.json under {model_dir}: not a tierwise model directory")
    tiers = json.loads(found[0].read_text())["tiers"]
    lines: list[str] = []
    for tier in tiers["tiers"]:
        lines.append("[[tiers]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in tier.items() if value is not None]
        lines.append("")
    for name, model in tiers["models"].items():
        lines.append(f"[models.{toml_value(name)}]")
        fields = {k: v for k, v in model.items() if v is not None and k not in ("base_url", "api_key_env")}
        lines += [f"{key} = {toml_value(value)}" for key, value in {**fields, "base_url": base_url}.items()]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: standin_tiers.py MODEL_DIR BASE_URL")
    sys.stdout.write(standin_tiers(Path(sys.argv[1]), sys.argv[2]))
