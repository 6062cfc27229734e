"""The Makefile's installer passes pip's configuration on to uv, or leaves the install to pip."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "venv_install.py"
spec = importlib.util.spec_from_file_location("venv_install", SCRIPT)
assert spec is not None and spec.loader is not None
venv_install: Any = importlib.util.module_from_spec(spec)
spec.loader.exec_module(venv_install)

PIP_CONFIG = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.find-links='/srv/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/pip/constraints.txt'
global.extra-index-url='file:///srv/a/simple file:///srv/b/simple'
global.find-links='/srv/old-wheels'
"""


def test_pips_indexes_find_links_and_constraints_are_passed_on() -> None:
    assert venv_install.uv_options(PIP_CONFIG) == [
        "--index-strategy", "unsafe-best-match",  # pip's rule: the best version over all indexes
        "--extra-index-url", "file:///srv/a/simple", "--extra-index-url", "file:///srv/b/simple",
        "--find-links", "/srv/wheels",  # PIP_FIND_LINKS replaces the file's, as pip reads them
        "--constraint", "/etc/pip/constraints.txt",
    ]  # fmt: skip


def test_the_highest_scope_sets_the_index() -> None:
    config = "global.index-url='https://a/simple'\nuser.index-url='https://b/simple'\n"
    assert venv_install.uv_options(config)[-2:] == ["--index-url", "https://b/simple"]
    assert venv_install.uv_options("") == ["--index-strategy", "unsafe-best-match"]


@pytest.mark.parametrize("setting", ["global.no-index='true'", "user.only-binary=':all:'", ":env:.pre='1'"])
def test_a_setting_uv_would_not_honour_leaves_the_install_to_pip(setting: str) -> None:
    assert venv_install.uv_options(PIP_CONFIG + setting + "\n") is None


def test_pip_installs_when_uv_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def run(cmd: list[str]) -> bool:
        calls.append(cmd)
        return cmd[2] != "uv"  # installing uv works; uv's install fails

    monkeypatch.setattr(venv_install, "run", run)
    monkeypatch.setattr(
        venv_install.subprocess, "run", lambda *a, **k: type("R", (), {"returncode": 0, "stdout": ""})()
    )
    assert venv_install.main(["-e", ".[train]"]) == 0
    assert [c[2:4] for c in calls] == [["pip", "install"], ["uv", "pip"], ["pip", "install"], ["pip", "install"]]
    assert calls[-1][-2:] == ["-e", ".[train]"]


def test_another_venv_gets_the_packages_and_this_one_keeps_uv(monkeypatch: pytest.MonkeyPatch) -> None:
    """--python: uv is installed into (and run from) this interpreter; the target gets the packages, and pip's
    fallback installs into the target."""
    calls: list[list[str]] = []

    def run(cmd: list[str]) -> bool:
        calls.append(cmd)
        return cmd[2] != "uv"  # uv's install fails, so pip's fallback runs too

    monkeypatch.setattr(venv_install, "run", run)
    monkeypatch.setattr(
        venv_install.subprocess, "run", lambda *a, **k: type("R", (), {"returncode": 0, "stdout": ""})()
    )
    assert venv_install.main(["--python", "/elsewhere/bin/python", "-r", "req.txt"]) == 0
    here = venv_install.sys.executable
    assert calls[0][:4] == [here, "-m", "pip", "install"] and calls[0][-1] == "uv"
    assert calls[1][:3] == [here, "-m", "uv"] and calls[1][calls[1].index("--python") + 1] == "/elsewhere/bin/python"
    assert "--compile-bytecode" in calls[1]  # as pip compiles: no process compiles what it imports
    assert [c[0] for c in calls[2:]] == ["/elsewhere/bin/python"] * 2
    assert all(c[-2:] == ["-r", "req.txt"] for c in (calls[1], calls[3]))
