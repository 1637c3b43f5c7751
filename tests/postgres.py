"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary folder on a free local port.

Needs PostgreSQL's server binaries (Debian's ``postgresql`` package; ``scripts/install_postgres.sh`` installs it
in CI) and the ``psycopg2`` driver (pyproject's dev extra). PostgreSQL refuses to run as root, so under root the
cluster belongs to (and runs as) the ``postgres`` user the package creates, through ``runuser``. Authentication
is ``trust`` on 127.0.0.1 only; the cluster is stopped and deleted when the context ends.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NEEDS = ("this test needs PostgreSQL: its server binaries (initdb, pg_ctl; Debian's postgresql package, installed "
         "by scripts/install_postgres.sh) and the psycopg2 driver (pip install -e '.[dev]')")  # fmt: skip
SERVER_USER = "postgres"  # the owner of the cluster when the tests run as root


def bindir() -> Path | None:
    """The folder of ``initdb`` / ``pg_ctl``: on PATH, else the newest ``/usr/lib/postgresql/<v>/bin``."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(cands[-1]).parent if cands else None


def missing() -> str | None:
    """Why a PostgreSQL server cannot be started here (None: it can)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return f"{NEEDS} (psycopg2 is not installed)"
    if bindir() is None:
        return f"{NEEDS} (no initdb found)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"{NEEDS} (running as root, and there is no {SERVER_USER!r} user to run the server as)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server() -> Iterator[str]:
    """A running PostgreSQL cluster; yields its SQLAlchemy URL (``postgresql+psycopg2://postgres@127.0.0.1:PORT/postgres``)."""
    bins = bindir()
    root = Path(tempfile.mkdtemp(prefix="amlx-postgres-"))  # not under pytest's tmp (mode 700, root's)
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", SERVER_USER, "--"]
    data, port = root / "data", _free_port()
    pg_ctl = [*as_user, str(bins / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run([*as_user, str(bins / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, text=True)  # fmt: skip
        options = f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off -c full_page_writes=off"
        subprocess.run([*pg_ctl, "-l", str(root / "server.log"), "-w", "-t", "60", "-o", options, "start"],
                       check=True, capture_output=True, text=True)  # fmt: skip
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    except subprocess.CalledProcessError as e:
        log = root / "server.log"
        raise RuntimeError(f"{e.cmd} failed: {e.stderr}\n{log.read_text() if log.exists() else ''}") from e
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
