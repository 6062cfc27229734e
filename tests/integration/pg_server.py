"""A throwaway PostgreSQL server that tests may stop and restart (the shared one on 5432 is never touched).

`initdb` goes into a fresh temporary directory on a free port; as root, every server command runs as the
`postgres` user (PostgreSQL refuses to run as root). The `pg_server` fixture skips, saying why, where that
cannot work; import it into a test module to use it.
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa


def _port_outside_the_ephemeral_range() -> int:
    """A free port below the kernel's ephemeral range, so nothing can take it before the server starts.

    The server is configured (its URL handed to a service) while stopped, and started later. A port from
    `bind(("127.0.0.1", 0))` is one the kernel may hand out again, to the next `free_port()` or as the local
    port of an outgoing connection, including a client retrying this very port, which then connects to
    itself and holds it: `pg_ctl start` failed so in CI. Ports below the range are only ever taken on request.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{max(1024, low - 12000)}, {low})")


def _bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


class PgServer:
    """One PostgreSQL cluster in a temporary directory; `stop` is an immediate shutdown, like a crash."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        assert bin_dir is not None, PgServer.unavailable()
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="tierwise-pg-"))
        self.port = _port_outside_the_ephemeral_range()
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "-N", "-E", "UTF8")
        self.running = False

    @staticmethod
    def unavailable() -> str | None:
        """Why no throwaway server can be started here, or None."""
        if _bin_dir() is None:
            return "initdb is not installed (PostgreSQL server binaries)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root without a 'postgres' user to run the server as"
        return None

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, timeout=60, text=True)
        if done.returncode != 0:
            log = self.root / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else "(no server log)"
            raise RuntimeError(f"{tool} exited {done.returncode}: {done.stderr.strip()}\nserver log:\n{tail}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -h 127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.root / "data"), "-o", opts, "-l", str(self.root / "log"), "-w", "start")
        self.running = True

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        self.running = False

    def new_database(self) -> str:
        """A fresh database on this server; its URL."""
        name = f"tw_{uuid.uuid4().hex[:10]}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return self.url(name)

    def remove(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def pg_server() -> Iterator[PgServer]:
    """A stopped throwaway server (call `start()`), removed after the test."""
    reason = PgServer.unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = PgServer()
    try:
        yield server
    finally:
        server.remove()
