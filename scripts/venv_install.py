"""Install packages into the venv this runs in: with uv when it can be had, else pip (the Makefile's installer).

`make train` on a fresh machine spent most of its setup in pip (81 of about 200 s on a Zen 4: resolving and
unpacking some 110 wheels one by one); uv installs the same set in a few seconds. uv does not read pip's
configuration, so pip's indexes, find-links and constraints (`pip config list`: its files and PIP_* variables) are
passed on as uv's options, and uv resolves across all indexes for the best match, as pip does (same versions; see
tests/unit/test_venv_install.py). A pip setting this does not know how to pass on, uv that cannot be installed, or
a uv install that fails: pip installs instead, as before.

    python scripts/venv_install.py torch==2.13.0 -e ".[train]"
    python scripts/venv_install.py --python other-venv/bin/python -r requirements.txt   # into another venv

With `--python`, uv comes from (and is installed into) the venv this runs in, not the target, so the target gets
only what is asked for.

Installed modules are compiled to bytecode, as pip does and uv does not by default: where Python may not write
`__pycache__` (PYTHONDONTWRITEBYTECODE, a read-only venv) every process compiled every module it imported, so
`tierwise route --batch` on one prompt took 7.6-8.5 s on a Cascade Lake Xeon of our kind (2.7-2.8 s compiled;
`import lightgbm` alone 9 s against 2.4 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

# pip settings with a uv option of the same meaning (repeatable: each value is passed on).
PASSED_ON = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}
# pip settings that do not change what gets installed.
IGNORED = {"cert", "client-cert", "timeout", "default-timeout", "disable-pip-version-check", "progress-bar",
           "quiet", "verbose", "no-input", "root-user-action", "no-cache-dir", "cache-dir", "retries"}  # fmt: skip
# The scopes of `pip config list`, highest precedence first: as in pip, the highest scope that sets a value wins.
SCOPES = (":env:", "site", "user", "global")


def uv_options(pip_config_list: str) -> list[str] | None:
    """uv's options for what `pip config list` printed; None when a setting cannot be passed on."""
    found: dict[str, list[tuple[int, list[str]]]] = {}
    for line in pip_config_list.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        scope, _, name = key.strip().rpartition(".")
        if name in IGNORED:
            continue
        if name not in PASSED_ON:
            return None
        rank = next((i for i, s in enumerate(SCOPES) if scope.startswith(s)), len(SCOPES))
        found.setdefault(name, []).append((rank, value.strip().strip("'\"").split()))
    options = ["--index-strategy", "unsafe-best-match"]
    for name, flag in PASSED_ON.items():
        ranked = sorted(found.get(name, []), key=lambda r: r[0])
        values = ranked[0][1] if ranked else []  # as pip: the highest scope's value replaces the others
        for v in dict.fromkeys(values[:1] if name == "index-url" else values):
            options += [flag, v]
    return options


COMPILE_TIMEOUT_S = "900"
"""uv's time limit while compiling the installed modules (60 s by default; a busy slow machine can reach it, and a
compile uv gives up on fails the install, after which pip, finding everything installed, compiles nothing)."""


def run(cmd: Sequence[str]) -> bool:
    env = {
        **os.environ,
        "UV_COMPILE_BYTECODE_TIMEOUT": os.environ.get("UV_COMPILE_BYTECODE_TIMEOUT", COMPILE_TIMEOUT_S),
    }
    return subprocess.run(list(cmd), check=False, env=env).returncode == 0


def main(args: Sequence[str]) -> int:
    python = sys.executable
    if args[:1] == ["--python"] and len(args) > 1:
        python, args = args[1], args[2:]
    config = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False)
    options = uv_options(config.stdout) if config.returncode == 0 else None
    if options is not None and run([sys.executable, "-m", "pip", "install", "-q", "uv"]):
        uv = [sys.executable, "-m", "uv", "pip", "install", "-q", "--compile-bytecode", "--python", python]
        if run([*uv, *options, *args]):
            return 0
        sys.stderr.write("uv could not install these; pip will\n")
    elif options is None:
        sys.stderr.write("a pip setting uv cannot take: pip installs\n")
    run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    return 0 if run([python, "-m", "pip", "install", "-q", *args]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
