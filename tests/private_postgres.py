"""A PostgreSQL server of a test's own, to stop and restart (the shared one stays up).

``initdb`` and ``pg_ctl`` come with the server package (Debian: under
``/usr/lib/postgresql/<version>/bin``). As root, the cluster belongs to the ``postgres``
user, since the server refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kafka_broker import free_port

__all__ = ["PrivatePostgres", "pg_bin"]


def pg_bin() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``; FileNotFoundError if there is none."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise FileNotFoundError("initdb (the PostgreSQL server package) is not installed")
    return Path(candidates[-1]).parent


@dataclass
class PrivatePostgres:
    """A cluster in a temporary directory, listening on a free loopback port."""

    root: Path
    port: int

    @classmethod
    def create(cls) -> PrivatePostgres:
        root = Path(tempfile.mkdtemp(prefix="hms-pg-"))
        pg = cls(root, free_port())
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        pg._run("initdb", "-D", str(pg.data), "-U", "postgres", "-A", "trust", "--no-sync")
        pg.start()
        return pg

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
            "-c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: connections are told; ``immediate``: they are cut)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        subprocess.run(
            self._as_owner(
                str(pg_bin() / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
            ),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            self._as_owner(str(pg_bin() / tool), *args), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stdout}{done.stderr}")
