"""A throwaway PostgreSQL cluster for tests and benchmarks.

`PostgresCluster().start()` runs Debian's `initdb` in a fresh temporary folder and starts the
server on a free loopback port with no Unix socket, as the `postgres` user when this process is
root (PostgreSQL refuses to run as root); `stop()` ends it and removes the folder. Nothing of
the machine's own PostgreSQL set-up is used or touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Self

_FAST = (
    # A test cluster holds nothing worth a power cut: no fsync makes CREATE DATABASE and commits
    # cheap. Benchmarks start with durable=True and keep PostgreSQL's own defaults.
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
)


def find_bindir() -> Path | None:
    """The folder of the newest installed PostgreSQL server programs, or None.

    EEFETCH_PG_BINDIR overrides; otherwise Debian's /usr/lib/postgresql/<version>/bin, then
    whatever `pg_ctl` on PATH belongs to.
    """
    override = os.environ.get("EEFETCH_PG_BINDIR")
    candidates: list[Path] = [Path(override)] if override else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.name)],
        reverse=True,
    )
    candidates += versions
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def missing_reason() -> str | None:
    """Why PostgreSQL tests cannot run here (None when they can)."""
    if find_bindir() is None:
        return (
            "PostgreSQL server programs (initdb, pg_ctl) are not installed; "
            "scripts/system_deps.sh installs Debian's postgresql package"
        )
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One PostgreSQL server in a temporary folder, reachable at 127.0.0.1:`port`."""

    def __init__(self, *, durable: bool = False, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise RuntimeError(missing_reason() or "PostgreSQL is not installed")
        self.bindir = found
        self.durable = durable
        self.port = 0
        self.root: Path | None = None
        self._as_root = os.geteuid() == 0

    @property
    def datadir(self) -> Path:
        assert self.root is not None, "cluster not started"
        return self.root / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = (
            {"user": "postgres", "group": "postgres"} if self._as_root else {}
        )
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            check=check,
            capture_output=True,
            text=True,
            cwd="/",
            timeout=120,
            **kwargs,
        )

    def start(self) -> Self:
        """initdb and start the server; returns self."""
        self.root = Path(tempfile.mkdtemp(prefix="eefetch-pg-"))
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
        )
        for _ in range(5):
            self.port = _free_port()
            if self._start_server(check=False):
                return self
        raise RuntimeError(f"PostgreSQL did not start; its log:\n{self.log()}")

    def _options(self) -> str:
        settings = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
            " -c max_connections=200"
        )
        return settings if self.durable else f"{settings} {_FAST}"

    def _serve(self, action: str, *extra: str, check: bool = True) -> bool:
        """`pg_ctl start` or `restart` with this cluster's log and settings."""
        done = self._run(
            "pg_ctl",
            action,
            *extra,
            "-w",
            "-t",
            "60",
            "-D",
            str(self.datadir),
            "-l",
            str(self.root / "log"),
            "-o",
            self._options(),
            check=check,
        )
        return done.returncode == 0

    def _start_server(self, *, check: bool = True) -> bool:
        return self._serve("start", check=check)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "log").read_text(errors="replace")[-4000:]
        return ""

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server (the data stays): clients see the database go away."""
        self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.datadir))

    def start_server(self) -> None:
        """Start a stopped server again on the same port."""
        self._start_server()

    def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart`: every client connection is cut."""
        self._serve("restart", "-m", mode)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and remove its folder."""
        if self.root is None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.datadir))
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
