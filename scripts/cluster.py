"""`make up` / `make down`: the local cluster (embedded PostgreSQL, a Ray head, Serve).

    python scripts/cluster.py up      # idempotent; recovers after a crash
    python scripts/cluster.py down    # stops Serve, our Ray processes, our PostgreSQL
    python scripts/cluster.py status

Environment: DATABASE_URL (skip the embedded server), RAY_ADDRESS (deploy to that
cluster instead of starting a head), LOOTIFY_HTTP_PORT (8000), LOOTIFY_RAY_PORT (6380),
LOOTIFY_RAY_TEMP_DIR (/tmp/lootify-ray-<uid>), LOOTIFY_RAY_NODE_IP (Ray's choice),
LOOTIFY_RAY_NUM_CPUS (2), LOOTIFY_PG_PORT (54329), RAY_AUTH_MODE (token),
LOOTIFY_HTTP_HOST (127.0.0.1; cluster.yaml sets 0.0.0.0).
Every LOOTIFY_* variable reaches the Ray processes.

The cluster uses Ray token authentication (its GCS listens on every interface): the
token is ~/.ray/auth_token (generated if missing). A client joining it by address
must run with RAY_AUTH_MODE=token (`actors.settings.use_ray_token_auth()`).

Never `ray stop`: it kills every Ray process on the machine (other clusters, test
clusters). `down` only ends processes this checkout started, found by a marker in
their environment, our temp dir in their command line, or descent from those.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import functools
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import psutil  # noqa: E402  (ships with ray)
from local_stack import haproxy_ingress_env  # noqa: E402

from actors import settings as config  # noqa: E402
from actors.client import Settings  # noqa: E402
from actors.ops import pgserver  # noqa: E402
from actors.ops.migrate import migrate  # noqa: E402
from gateway import page  # noqa: E402
from gateway.settings import GatewaySettings  # noqa: E402

PG_DIR = config.DATA_DIR / "pg"
RAY_ADDRESS_FILE = config.RAY_ADDRESS_FILE
RAY_PORT = int(os.environ.get("LOOTIFY_RAY_PORT", "6380"))
# Ray never registers a node as 127.0.0.1 (it swaps in a reachable address), and its
# GCS listens on every interface: the address is what `ray start` reports.
RAY_NODE_IP = os.environ.get("LOOTIFY_RAY_NODE_IP")
# Short: Ray puts unix sockets under it (sun_path is 108 bytes), and so do we (HAProxy).
RAY_TEMP_DIR = Path(os.environ.get("LOOTIFY_RAY_TEMP_DIR", f"/tmp/lootify-ray-{os.getuid()}"))
# Set in the environment of every Ray process we start (inherited by workers and the
# HAProxy they spawn), so `down` finds exactly ours.
OWNER_ENV = "LOOTIFY_RAY_OWNER"
HEALTH_DEADLINE_S = 120.0
VENV_PREFIX = str(Path(sys.executable).parent.parent)



_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[cluster {time.monotonic() - _T0:5.1f}s] {msg}", flush=True)


@contextmanager
def _exclusive() -> Iterator[None]:
    """Two `make up`/`make down` at once would fight over the same processes."""
    config.DATA_DIR.mkdir(parents=True, exist_ok=True)
    with open(config.DATA_DIR / ".cluster.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _redact(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


# ---------------------------------------------------------------- processes


def _ancestors() -> set[int]:
    pids = {os.getpid()}
    try:
        for p in psutil.Process().parents():
            pids.add(p.pid)
    except psutil.Error:
        pass
    return pids


def ray_processes() -> list[psutil.Process]:
    """Live processes of our Ray cluster (and the HAProxy its Serve proxy started)."""
    marker = str(RAY_TEMP_DIR)
    skip = _ancestors()
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.pid in skip or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        argv = proc.info["cmdline"] or []
        # Our temp dir in the command line of a program from our venv (not, say, a
        # `tail -f` of one of its logs).
        ours = bool(argv) and argv[0].startswith(VENV_PREFIX) and marker in " ".join(argv)
        if not ours:
            try:
                ours = proc.environ().get(OWNER_ENV) == marker
            except psutil.Error:
                ours = False
        if ours:
            found[proc.pid] = proc
    # Workers rename themselves (`ray::ServeReplica...`): take every descendant too.
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                if child.pid not in skip:
                    found.setdefault(child.pid, child)
        except psutil.Error:
            pass
    alive = []
    for proc in found.values():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            pass
    return sorted(alive, key=lambda p: p.pid)


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:140]}"
    except psutil.Error:
        return f"{proc.pid} (gone)"


def _kind(proc: psutil.Process) -> str:
    try:
        return Path((proc.cmdline() or [""])[0]).name
    except psutil.Error:
        return ""


def _terminate(procs: list[psutil.Process], grace: float = 5.0) -> list[psutil.Process]:
    """SIGTERM, wait up to `grace`, SIGKILL the rest; returns those still alive.
    (gcs_server and the autoscaler monitor sit out SIGTERM for a long time; nothing
    of theirs needs saving: the cluster's state lives in PostgreSQL.)"""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    alive = [p for p in alive if _alive(p)]
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=10)
    return [p for p in alive if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def ray_head_running() -> bool:
    kinds = {_kind(p) for p in ray_processes()}
    return {"gcs_server", "raylet"} <= kinds and _port_open("127.0.0.1", RAY_PORT)


def ray_address() -> str:
    """The GCS address of our head, as `ray start` reported it."""
    try:
        address = (RAY_TEMP_DIR / "ray_current_cluster").read_text().strip()
    except OSError:
        address = ""
    return address or f"{RAY_NODE_IP or '127.0.0.1'}:{RAY_PORT}"


def _ensure_auth_token() -> None:
    """Token auth is on unless RAY_AUTH_MODE says otherwise; make sure a token exists.
    (Left to itself, `ray start` 2.60 turns auth on only if ~/.ray/auth_token happens
    to exist, and a client given an explicit address never turns it on.)"""
    config.use_ray_token_auth()
    if os.environ["RAY_AUTH_MODE"] != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return
    token_path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray/auth_token"))
    if token_path.exists():
        return
    log(f"generating a Ray auth token in {token_path}")
    subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # it prints the token
    )


# ---------------------------------------------------------------- up


@functools.cache
def _serve_env() -> dict[str, str]:
    """Serve's settings for the cluster (each one overridable from the environment),
    taken once: the head, the driver and the drain script must see the same ports."""
    wanted = {
        # HAProxy's files under our temp dir. A stopping replica is kept 10 s: every
        # redeploy and `make down` waits for it, and HAProxy's health checks drop it
        # from the backends within 2 x 5 s anyway.
        **haproxy_ingress_env(RAY_TEMP_DIR / "hap", draining_s=10),
        # uvicorn in Serve's proxy would take X-Forwarded-For from any loopback peer; the
        # gateway alone decides whom to believe (LOOTIFY_TRUSTED_PROXIES, set in `up`).
        "FORWARDED_ALLOW_IPS": "",
    }
    return {k: os.environ.get(k, v) for k, v in wanted.items()}


def _start_ray_head(dsn: str) -> None:
    leftovers = ray_processes()
    if leftovers:
        log(f"Ray is not healthy; ending {len(leftovers)} leftover process(es) of ours")
        _terminate(leftovers)
    if _port_open("127.0.0.1", RAY_PORT):
        raise SystemExit(
            f"port {RAY_PORT} is taken by a process that is not our Ray head; "
            "set LOOTIFY_RAY_PORT to another port"
        )
    RAY_TEMP_DIR.mkdir(parents=True, exist_ok=True)
    _prune_sessions()
    RAY_TEMP_DIR.joinpath("ray_current_cluster").unlink(missing_ok=True)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(_serve_env())
    env[OWNER_ENV] = str(RAY_TEMP_DIR)
    env["DATABASE_URL"] = dsn
    # Workers import actors/, gateway/, serve_app even if the project is not installed.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        f"--port={RAY_PORT}",
        f"--num-cpus={os.environ.get('LOOTIFY_RAY_NUM_CPUS', '2')}",
        "--disable-usage-stats",
        "--include-dashboard=false",
        f"--temp-dir={RAY_TEMP_DIR}",
    ]
    if RAY_NODE_IP:
        cmd.append(f"--node-ip-address={RAY_NODE_IP}")
    log("starting the Ray head: " + " ".join(cmd[1:]))
    with tempfile.TemporaryFile("w+") as out:
        # Own session: Ctrl-C in the terminal must not reach the daemons. Output goes
        # to a file: the daemons would inherit (and hold open) a pipe.
        rc = subprocess.call(
            cmd,
            env=env,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if rc != 0:
            out.seek(0)
            sys.stderr.write(out.read())
            raise SystemExit(f"`ray start` failed with exit code {rc}")


def _prune_sessions(keep: int = 3) -> None:
    """Ray keeps a session_* directory (logs) per start; keep the last few."""
    sessions = sorted(
        (p for p in RAY_TEMP_DIR.glob("session_2*") if p.is_dir() and not p.is_symlink()),
        key=lambda p: p.stat().st_mtime,
    )
    for old in sessions[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _deploy(address: str, port: int, host: str) -> None:
    os.environ.update(_serve_env())  # the driver reads Serve's settings too
    import ray

    ray.init(
        address=address,
        namespace=Settings().namespace,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    try:
        import serve_app

        if not hasattr(serve_app, "deploy"):
            raise SystemExit("serve_app.py has no deploy(port) function")
        serve_app.deploy(port, host)
        # Recurring rounds: the scheduler is a detached actor, so it outlives this driver.
        from actors.markets.series import scheduler

        ray.get(scheduler(Settings()).start.remote(), timeout=60)
    finally:
        ray.shutdown()


def _ingress_networks(ray_address: str) -> str:
    networks = ["127.0.0.1/32", "::1/128"]
    host = ray_address.rsplit(":", 1)[0].strip("[]")
    try:
        networks.append(str(ipaddress.ip_network(host)))
    except ValueError:
        pass  # a host name: only the loopback addresses are trusted
    return ",".join(dict.fromkeys(networks))


def _wait_healthy(port: int) -> None:
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + HEALTH_DEADLINE_S
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(1)
    raise SystemExit(f"{url} not healthy after {HEALTH_DEADLINE_S:.0f}s (last: {last})")


def up() -> int:
    gateway = GatewaySettings.from_env()
    port = gateway.http_port
    _ensure_auth_token()
    with _exclusive():
        config.DATA_DIR.mkdir(parents=True, exist_ok=True)
        dsn = os.environ.get("DATABASE_URL")
        if dsn:
            log("DATABASE_URL is set: not starting the embedded PostgreSQL")
        else:
            dsn = pgserver.start(PG_DIR)
            config.DATABASE_URL_FILE.write_text(dsn + "\n")
            log(f"PostgreSQL running: {dsn}")

        applied = asyncio.run(migrate(dsn))
        log(f"migrations applied: {', '.join(applied)}" if applied else "migrations up to date")

        external = os.environ.get("RAY_ADDRESS")
        if external:
            address = external
            log(f"RAY_ADDRESS is set: deploying to {address}, not starting a head")
        else:
            address = ray_address()
            if ray_head_running():
                log(f"Ray head already running at {address}")
            else:
                _start_ray_head(dsn)
            RAY_ADDRESS_FILE.write_text(address + "\n")

        # HAProxy runs on this node and reaches the replicas from its loopback or Ray
        # address: the gateway believes X-Forwarded-For from those peers only.
        os.environ.setdefault("LOOTIFY_TRUSTED_PROXIES", _ingress_networks(address))
        try:
            if page.ensure_built():
                log("the page's assets built (npm ci in web/)")
        except page.PageBuildError as exc:  # the API does not need the page
            log(f"the page at / is not built: {exc}")
        log(f"deploying the Serve app on {gateway.http_host}:{port}")
        _deploy(address, port, gateway.http_host)
        _wait_healthy(port)

    print()
    print(f"  HTTP       http://127.0.0.1:{port}")
    print(f"  Odds page  http://127.0.0.1:{port}/")
    print(f"  WebSocket  ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0&token=<jwt>")
    print(f"  API docs   http://127.0.0.1:{port}/docs")
    print(f"  Ray        {address}   (RAY_ADDRESS={address}, namespace "
          f"{Settings().namespace})")
    print(f"  Database   {_redact(dsn)}")
    print()
    return 0


# ---------------------------------------------------------------- down


def _serve_shutdown(address: str, drain_hosts: bool) -> None:
    """Stop gracefully (`actors.ops.shutdown`): sockets told to reconnect, Serve's
    requests in flight finished, then, when the hosts are to stop too, every host's
    queue and cycles committed (a drained host admits nothing more)."""
    code = (
        "import sys, ray\n"
        "from actors.ops.shutdown import stop_gracefully\n"
        "from actors.runtime import RuntimeSettings\n"
        "ray.init(address=sys.argv[1], namespace=sys.argv[2], logging_level='ERROR',"
        " log_to_driver=False)\n"
        "drain = RuntimeSettings().drain_timeout_s if sys.argv[3] == 'drain' else None\n"
        "left = stop_gracefully(sys.argv[2], drain)\n"
        "if any(left.values()):\n"
        "    print(f'hosts left messages unanswered: {left}', file=sys.stderr)\n"
        "ray.shutdown()\n"
    )
    env = dict(os.environ)
    env.update(_serve_env())
    try:
        rc = subprocess.call(
            [sys.executable, "-c", code, address, Settings().namespace,
             "drain" if drain_hosts else "keep"],
            env=env,
            timeout=90,
            stdin=subprocess.DEVNULL,
        )
        if rc != 0:
            log(f"serve.shutdown() failed (exit {rc}); stopping the processes anyway")
    except subprocess.TimeoutExpired:
        log("serve.shutdown() timed out; stopping the processes anyway")


def down() -> int:
    config.use_ray_token_auth()
    with _exclusive():
        external = os.environ.get("RAY_ADDRESS")
        if external:
            log(f"RAY_ADDRESS is set: shutting Serve down on {external}, leaving Ray running")
            _serve_shutdown(external, drain_hosts=False)
        elif ray_processes():
            if ray_head_running():
                log("shutting Serve down, then draining the hosts")
                _serve_shutdown(ray_address(), drain_hosts=True)
            procs = ray_processes()
            log(f"stopping {len(procs)} Ray process(es) of ours")
            stuck = _terminate(procs)
            for proc in stuck:
                log(f"could not stop {_describe(proc)}")
        else:
            log("Ray: nothing of ours running")
        RAY_ADDRESS_FILE.unlink(missing_ok=True)

        if pgserver.is_running(PG_DIR):
            log("stopping PostgreSQL")
            pgserver.stop(PG_DIR)
        else:
            log("PostgreSQL: not running")

        left = ray_processes()
        pg_pid = pgserver.pid(PG_DIR)
        if pg_pid is not None:
            left.append(psutil.Process(pg_pid))
        if left:
            log("still running:")
            for proc in left:
                print("  " + _describe(proc))
            return 1
        log("down: nothing of ours is running (data kept in .data/)")
    return 0


def status() -> int:
    pg = pgserver.is_running(PG_DIR)
    ray_up = ray_head_running()
    print(f"PostgreSQL: {'running ' + pgserver.dsn(PG_DIR) if pg else 'stopped'}")
    print(f"Ray head:   {'running at ' + ray_address() if ray_up else 'stopped'}")
    for proc in ray_processes():
        print("  " + _describe(proc))
    return 0 if pg and ray_up else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cluster.py", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["up", "down", "status"])
    args = ap.parse_args(argv)
    return {"up": up, "down": down, "status": status}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
