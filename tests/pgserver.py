"""A throwaway PostgreSQL server that a test (or ``benchmarks/chaos.py``) owns: restart it,
kill it, start it again, without touching the shared server on port 5432.

Built with the machine's ``initdb``/``pg_ctl`` (``/usr/lib/postgresql/*/bin``) in a fresh
folder under /tmp, on a free loopback port. PostgreSQL refuses to run as root; as root the
server runs as the ``postgres`` user (``runuser``), which owns the folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why no throwaway server can run here (None: it can)."""
    if _bin_dir() is None:
        return "no initdb under /usr/lib/postgresql/*/bin"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root (initdb refuses root) and no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root (initdb refuses root) and no runuser to switch to 'postgres'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayPostgres:
    """One PostgreSQL cluster in a temporary folder; :meth:`close` removes it."""

    def __init__(self) -> None:
        reason = unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        bindir = _bin_dir()
        assert bindir is not None
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="hpo-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            pg = pwd.getpwnam("postgres")
            os.chown(self.root, pg.pw_uid, pg.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE hpo")
        conn.close()

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its ``hpo`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/hpo"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self.bin / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.root,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections (crash recovery included)."""
        # fsync off: a test server's data need not survive a power cut, and fsync is slow here.
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnects every client; ``immediate``: no checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """A restart as an operator does it: every connection drops, the server comes back."""
        self.stop("fast")
        self.start()

    def kill9(self) -> None:
        """SIGKILL the server and its backends (a crash); :meth:`start` recovers it."""
        import psutil

        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        time.sleep(0.2)

    def close(self) -> None:
        """Stop the server (if it runs) and delete its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
