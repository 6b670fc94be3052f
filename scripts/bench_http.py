"""`make bench`, end to end: bets over HTTP and WebSocket, odds fan-out, and the
conventional row-lock service as the comparison, in one run on this machine.

    .venv/bin/python scripts/bench_http.py            # about 4 minutes
    .venv/bin/python scripts/bench_http.py --quick    # shorter runs, for a smoke test
    .venv/bin/python scripts/bench_http.py --skip-rowlock --runs fanout   # one part
    (--replicas N, --concurrency N, --keep: keep Ray's logs, --strict: exit 1 on a FAIL)

1. PostgreSQL: `DATABASE_URL`'s server, else an embedded one in a temporary
   directory; a fresh database `lootify_bench_http` on it, migrated.
2. The row-lock service (`scripts/rowlock_service.py`: FastAPI + asyncpg, one
   uvicorn process, one transaction per bet with `SELECT ... FOR UPDATE`) on a free
   port against that database; seeded; bets from `scripts/loadgen.py` (a separate
   process) with 95% on one market (hot) and uniformly over 20 (spread); stopped.
3. Lootify: a local Ray cluster (2 CPUs) with the HAProxy ingress and Serve's
   throughput-optimised mode, rate limits off, the Serve app of `serve_app.py`.
   Users are written to `users.users` directly with tokens signed here (scrypt for
   2,000 registrations would be the benchmark); the operator creates the event and
   the markets over HTTP; every user deposits over HTTP. Then, each from a loadgen
   process: the same HTTP bets against an empty endpoint deployed beside Lootify
   (the ingress's own ceiling on this machine), HTTP hot and spread, WebSocket
   `place_bet` hot and spread, and the odds fan-out to 1,000 sockets joined to
   `event:{id}`.
4. A table, the ratios Lootify / row-lock, the acceptance checks, and
   `bench-results/http-<time>.json`.

The load generator shares the 2 cores with the servers and PostgreSQL; it reports
its own CPU (`loadgen_cpu`, fraction of one core). Over each measured window the
CPU of every process of the run is recorded by kind (`cpu_cores`: Serve replica,
entity hosts, PubSub, PostgreSQL, HAProxy, ...), and so is the CPU that processes
outside this benchmark took (`others_on_machine`, the `others` column): figures
from a busy machine are not comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import psutil

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(SCRIPTS))

from loadgen import HttpConnection, request_bytes  # noqa: E402

from actors.ops import pgserver  # noqa: E402
from actors.ops.migrate import migrate  # noqa: E402
from actors.settings import PROJECT_ROOT  # noqa: E402

DB_NAME = "lootify_bench_http"
BALANCE = "1000000.00"
SELECTIONS = [{"key": "home", "name": "Home", "odds": "1.90"},
              {"key": "away", "name": "Away", "odds": "1.90"}]

# Acceptance (the issue): HTTP >= 2,000 bets/s with p99 < 100 ms; >= 3x the row-lock
# service with 95% of bets on one market, >= 2x spread over 20 markets; odds changes
# reaching 1,000 sockets with p99 < 250 ms.
TARGET_BETS_PER_S = 2000
TARGET_P99_MS = 100
TARGET_HOT_RATIO = 3.0
TARGET_SPREAD_RATIO = 2.0
TARGET_FANOUT_P99_MS = 250
RUNS = ("ingress", "http_hot", "http_spread", "ws_hot", "ws_spread", "fanout")
CEILING_PREFIX = "/ingress-ceiling"


async def empty_bet_endpoint(scope: dict, receive, send) -> None:
    """The cheapest bet endpoint the ingress can serve: reads and parses the body,
    answers 201 with a fixed bet. Measures HAProxy + Serve alone on this machine."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = json.dumps({"bet": {"id": str(uuid.uuid4()), **json.loads(body or b"{}")}}).encode()
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


def log(msg: str) -> None:
    print(f"[bench-http {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> float:
    return round(os.getloadavg()[0], 2)


def wait_healthy(url: str, deadline_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            last = httpx.get(url + "/health", timeout=10, trust_env=False)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become healthy: {last!r}")


async def prepare_database(base_dsn: str) -> str:
    conn = await asyncpg.connect(base_dsn)
    try:
        await conn.execute(f'drop database if exists "{DB_NAME}" with (force)')
        await conn.execute(f'create database "{DB_NAME}"')
    finally:
        await conn.close()
    dsn = base_dsn.rsplit("/", 1)[0] + "/" + DB_NAME
    await migrate(dsn)
    return dsn


# -- where the CPU goes -----------------------------------------------------------------------


def _group(proc: psutil.Process) -> str:
    """A stable name: Ray workers rename themselves after the task they run."""
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except psutil.Error:
        return "?"
    first = cmd[0] if cmd else name
    if first.startswith("ray::"):
        return first.split(".")[0].split(":")[2] if first.count(":") >= 3 else \
            first.split(".")[0][5:]
    if "haproxy" in name:
        return "haproxy"
    if name.startswith("postgres") or first.startswith("postgres"):
        return "postgres"
    if any("rowlock_service" in c for c in cmd):
        return "rowlock-uvicorn"
    if any("loadgen.py" in c for c in cmd):
        return "loadgen"
    if name in ("raylet", "gcs_server"):
        return name
    if any("ray/dashboard" in c or "ray/_private" in c or "ray/autoscaler" in c for c in cmd):
        return "ray-daemons"
    return "driver" if proc.pid == os.getpid() else name


class CpuMeter:
    """CPU seconds of our process tree (and of the embedded PostgreSQL, which pg_ctl
    detaches) by kind of process, and of the whole machine, between two points."""

    def __init__(self) -> None:
        self.pg_pid: int | None = None

    def _procs(self) -> list[psutil.Process]:
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        if self.pg_pid is not None:
            try:
                pg = psutil.Process(self.pg_pid)
                procs += [pg, *pg.children(recursive=True)]
            except psutil.Error:
                pass
        return procs

    def sample(self) -> tuple[float, dict[int, tuple[str, float]], float]:
        seen: dict[int, tuple[str, float]] = {}
        for p in self._procs():
            try:
                t = p.cpu_times()
                seen[p.pid] = (_group(p), t.user + t.system)
            except psutil.Error:
                continue
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        return time.perf_counter(), seen, busy

    @staticmethod
    def cores(before: tuple, after: tuple) -> dict[str, float]:
        t0, s0, busy0 = before
        t1, s1, busy1 = after
        wall = max(t1 - t0, 1e-6)
        groups: dict[str, float] = {}
        for pid, (group, cpu) in s1.items():
            start = s0.get(pid, (group, 0.0))[1]  # new since: count all of it
            groups[group] = groups.get(group, 0.0) + (cpu - start)
        ours = sum(groups.values())
        out = {k: round(v / wall, 2) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
               if v / wall >= 0.01}
        out["machine_busy"] = round((busy1 - busy0) / wall, 2)
        out["others_on_machine"] = round(max(0.0, (busy1 - busy0) - ours) / wall, 2)
        return out


METER = CpuMeter()


def run_loadgen(mode: str, config: Path, extra: list[str], timeout: float) -> dict:
    """Run one loadgen process; sample the CPU of every process when it prints its
    `#window-start` and `#window-end` markers (its measured window)."""
    cmd = [sys.executable, str(SCRIPTS / "loadgen.py"), mode, "--config", str(config), *extra]
    log(f"loadgen {mode} {' '.join(extra)} (load {load()})")
    load_before = load()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    before = after = None
    lines = []
    try:
        for line in proc.stdout:
            if line.startswith("#window-start"):
                before = METER.sample()
            elif line.startswith("#window-end"):
                after = METER.sample()
            elif line.startswith("{"):
                lines.append(line)
        proc.wait()
    finally:
        killer.cancel()
    if proc.returncode != 0 or not lines:
        return {"mode": mode, "failed": f"loadgen exited {proc.returncode}",
                "load_before": load_before}
    out = json.loads(lines[-1])
    out["load_before"] = load_before
    if before is not None and after is not None:
        out["cpu_cores"] = CpuMeter.cores(before, after)
    return out


def http_args(args: argparse.Namespace, distribution: str) -> list[str]:
    return ["--distribution", distribution, "--concurrency", str(args.concurrency),
            "--duration", str(args.duration), "--warmup", str(args.warmup)]


# -- the row-lock service -------------------------------------------------------------------


def bench_rowlock(dsn: str, args: argparse.Namespace, work: Path) -> dict:
    port = free_port()
    env = dict(os.environ, ROWLOCK_DSN=dsn, ROWLOCK_POOL_SIZE=str(args.rowlock_pool))
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(SCRIPTS), "rowlock_service:app",
           "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http",
           "httptools", "--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env)
    log(f"row-lock service pid {proc.pid} on port {port}")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, 60, proc)
        seeded = httpx.post(url + "/seed", json={"users": args.users, "markets": args.markets,
                                                 "balance": BALANCE},
                            timeout=120, trust_env=False).json()
        config = work / "rowlock.json"
        config.write_text(json.dumps({
            "base_url": url, "auth": "x-user",
            "users": [{"id": u} for u in seeded["users"]], "markets": seeded["markets"],
            "selections": ["home", "away"]}))
        out = {}
        for dist in ("hot", "spread"):
            if f"http_{dist}" in args.runs:
                out[f"http_{dist}"] = run_loadgen("http", config, http_args(args, dist),
                                                  args.warmup + args.duration + 120)
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- Lootify on Ray -------------------------------------------------------------------------


class Api:
    """A few keep-alive connections for the set-up calls (deposits are thousands)."""

    def __init__(self, base_url: str, size: int = 32) -> None:
        u = httpx.URL(base_url)
        self.host, self.port = u.host, u.port or 80
        self.size = size
        self.free: asyncio.Queue[HttpConnection] = asyncio.Queue()

    async def call(self, method: str, path: str, token: str, body: dict | None = None,
                   expect: tuple[int, ...] = (200, 201)) -> dict:
        conn = None if self.free.empty() else self.free.get_nowait()
        if conn is None or conn.closed:
            conn = await HttpConnection.open(self.host, self.port)
        raw = b"" if body is None else json.dumps(body).encode()
        data = request_bytes(method, path, f"{self.host}:{self.port}",
                             {"Authorization": f"Bearer {token}"}, raw)
        status, answer = await conn.request(data)
        self.free.put_nowait(conn)
        if status not in expect:
            raise RuntimeError(f"{method} {path}: {status} {answer[:300]!r}")
        return json.loads(answer) if answer else {}

    async def many(self, calls: list[tuple], parallel: int = 32) -> list[dict]:
        sem = asyncio.Semaphore(parallel)

        async def one(c: tuple) -> dict:
            async with sem:
                return await self.call(*c)

        return await asyncio.gather(*(one(c) for c in calls))

    def close(self) -> None:
        while not self.free.empty():
            self.free.get_nowait().close()


async def setup_lootify(dsn: str, url: str, args: argparse.Namespace, work: Path) -> Path:
    from gateway.auth import tokens
    from gateway.auth.users import User, hash_password

    pw = hash_password("bench " + secrets.token_hex(8))
    players = [User(str(uuid.uuid4()), f"bench-{i}-{uuid.uuid4().hex[:6]}@example.com",
                    f"bench{i}", "player") for i in range(args.users)]
    operator = User(str(uuid.uuid4()), f"op-{uuid.uuid4().hex[:8]}@example.com", "operator",
                    "operator")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "users", schema_name="users",
            columns=["id", "email", "username", "password_hash", "role"],
            records=[(uuid.UUID(u.id), u.email, u.username, pw, u.role)
                     for u in [*players, operator]])
    finally:
        await conn.close()
    op_token = tokens.issue(operator)
    users = [{"id": u.id, "token": tokens.issue(u)} for u in players]
    api = Api(url)
    try:
        now = dt.datetime.now(dt.UTC).isoformat()
        event = (await api.call("POST", "/api/events", op_token,
                                {"name": "Bench", "category": "bench", "starts_at": now}))["event"]
        market_body = {"name": "Winner", "type": "fixed_odds", "selections": SELECTIONS,
                       "max_stake": "10000.00", "max_payout": "10000000.00"}
        made = await api.many([("POST", f"/api/events/{event['id']}/markets", op_token,
                                market_body)] * args.markets, parallel=4)
        markets = [m["market"]["id"] for m in made]
        fan_event = (await api.call("POST", "/api/events", op_token,
                                    {"name": "Fan-out", "category": "bench",
                                     "starts_at": now}))["event"]
        fan_market = (await api.call("POST", f"/api/events/{fan_event['id']}/markets",
                                     op_token, market_body))["market"]["id"]
        t = time.perf_counter()
        await api.many([("POST", "/api/wallet/deposit", u["token"], {"amount": BALANCE})
                        for u in users], parallel=64)
        log(f"{len(users)} deposits over HTTP in {time.perf_counter() - t:.1f} s")
    finally:
        api.close()
    config = work / "lootify.json"
    config.write_text(json.dumps({
        "base_url": url, "auth": "bearer", "users": users, "markets": markets,
        "selections": ["home", "away"], "event_id": fan_event["id"],
        "fanout_market": fan_market, "operator_token": op_token}))
    return config


def bench_lootify(dsn: str, args: argparse.Namespace, work: Path) -> dict:
    # Serve reads these when its controller and proxy start: set before ray.init so
    # every Ray process inherits them. HAProxy's files default to a directory shared
    # by every cluster on the machine: keep ours in our own.
    hap = work / "hap"
    hap.mkdir()
    serve_env = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{hap}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{hap}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hap),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{hap}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{hap}/metrics.sock",
        # Its metrics and stats listeners default to fixed ports (9101, 8404) on every
        # interface: a second cluster on the machine (`make up`) would collide.
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
    }
    namespace = f"lootify-bench-http-{os.getpid()}"
    app_env = {
        "DATABASE_URL": dsn,
        "LOOTIFY_NAMESPACE": namespace,
        "LOOTIFY_RATE_LIMITS": "off",
        "LOOTIFY_JWT_SECRET": secrets.token_urlsafe(48),
        "LOOTIFY_IDLE_SECONDS": "3600",
    }
    os.environ.update(serve_env)
    os.environ.update(app_env)

    import ray
    from ray import serve

    import serve_app

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out: dict = {}
    t = time.perf_counter()
    ray.init(address="local", num_cpus=2, namespace=namespace, include_dashboard=False,
             log_to_driver=False, _temp_dir=str(work / "ray"),
             runtime_env={"env_vars": app_env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(serve_app.build(app_env, replicas=args.replicas), name="lootify",
                  route_prefix="/", blocking=False)
        wait_healthy(url, 180)
        out["startup_s"] = round(time.perf_counter() - t, 1)
        log(f"Lootify healthy on {url} after {out['startup_s']} s")
        config = asyncio.run(setup_lootify(dsn, url, args, work))
        limit = args.warmup + args.duration + 180
        if "ingress" in args.runs:
            out["ingress"] = measure_ingress_ceiling(config, args, limit)
        for mode in ("http", "ws"):
            for dist in ("hot", "spread"):
                if f"{mode}_{dist}" in args.runs:
                    out[f"{mode}_{dist}"] = run_loadgen(mode, config, http_args(args, dist),
                                                        limit)
        if "fanout" in args.runs:
            out["fanout"] = run_loadgen("fanout", config, [
                "--sockets", str(args.sockets), "--changes", str(args.changes),
                "--interval", str(args.interval)], 600)
    finally:
        try:
            serve.shutdown()
        except Exception as exc:  # noqa: BLE001
            log(f"serve.shutdown: {exc!r}")
        ray.shutdown()
    return out


def measure_ingress_ceiling(config: Path, args: argparse.Namespace, limit: float) -> dict:
    """The same HTTP workload against `empty_bet_endpoint`, deployed beside Lootify
    behind the same HAProxy and Serve settings: what any Serve app can do here."""
    from ray import serve

    @serve.deployment(name="ingress_ceiling", ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=10_000)
    @serve.ingress()
    class IngressCeiling:
        def __serve_build_asgi_app__(self):  # noqa: ANN204
            return empty_bet_endpoint

    serve.run(IngressCeiling.bind(), name="ingress_ceiling", route_prefix=CEILING_PREFIX)
    try:
        return run_loadgen("http", config,
                           [*http_args(args, "hot"), "--path", CEILING_PREFIX + "/api/bets"],
                           limit)
    finally:
        serve.delete("ingress_ceiling")


# -- report ---------------------------------------------------------------------------------


def ratio(a: dict, b: dict) -> float | None:
    x, y = a.get("bets_per_s"), b.get("bets_per_s")
    return round(x / y, 2) if x and y else None


def report(results: dict) -> list[str]:
    lines = []
    head = (f"{'run':<28}{'bets/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
            f"{'others':>8}  errors")
    lines += [head, "-" * len(head)]
    for system in ("rowlock", "lootify"):
        if results.get(system, {}).get("error"):
            lines.append(f"{system:<28}FAILED: {results[system]['error'][:300]}")
        for key, run in results.get(system, {}).items():
            if not isinstance(run, dict) or "bets_per_s" not in run:
                if isinstance(run, dict) and run.get("failed"):
                    lines.append(f"{system + ' ' + key:<28}{run['failed']}")
                continue
            others = run.get("cpu_cores", {}).get("others_on_machine", "")
            if key == "ingress":
                key = "empty endpoint"  # the ingress alone: no auth, no actors, no database
            lines.append(f"{system + ' ' + key:<28}{run['bets_per_s']:>10}{run['p50']:>9}"
                         f"{run['p95']:>9}{run['p99']:>9}{others:>8}  {run.get('errors') or ''}")
    fan = results.get("lootify", {}).get("fanout")
    if fan and "last_socket_p99" in fan:
        lines.append("")
        lines.append(f"odds fan-out to {fan['sockets']} sockets, {fan['changes']} changes: "
                     f"PUT -> last socket p50 {fan['last_socket_p50']} ms, "
                     f"p99 {fan['last_socket_p99']} ms, max {fan['last_socket_max']} ms; "
                     f"first socket p50 {fan.get('first_socket_p50')} ms; "
                     f"every delivery p50 {fan['delivery_p50']} / p99 {fan['delivery_p99']} "
                     f"ms; missing {fan['missing']}")
    lines.append("(others: cores busy with processes outside this benchmark during the run;")
    lines.append(" lootify empty endpoint: an ASGI app that parses the bet and answers 201,")
    lines.append(" behind the same HAProxy and Serve: the ceiling of any Serve app here)")
    busiest = max((run.get("cpu_cores", {}).get("others_on_machine", 0.0)
                   for system in ("rowlock", "lootify")
                   for run in results.get(system, {}).values() if isinstance(run, dict)),
                  default=0.0)
    if busiest > 0.3:
        lines.append(f"WARNING: other processes kept up to {busiest} of the "
                     f"{os.cpu_count()} cores busy: these figures are not comparable")
    r = results.get("ratios", {})
    lines.append("")
    lines.append(f"lootify / rowlock, bets/s: hot {r.get('hot') or '-'}x, "
                 f"spread {r.get('spread') or '-'}x")
    lines.append("")
    for name, ok, what in results.get("acceptance", []):
        lines.append(f"{'PASS' if ok else 'FAIL'}  {name}: {what}")
    return lines


def judge(results: dict) -> None:
    lo, rl = results.get("lootify", {}), results.get("rowlock", {})
    results["ratios"] = {
        "hot": ratio(lo.get("http_hot", {}), rl.get("http_hot", {})),
        "spread": ratio(lo.get("http_spread", {}), rl.get("http_spread", {})),
        "ws_hot_vs_rowlock_http": ratio(lo.get("ws_hot", {}), rl.get("http_hot", {})),
        "ws_spread_vs_rowlock_http": ratio(lo.get("ws_spread", {}), rl.get("http_spread", {})),
    }
    checks = []
    for dist in ("hot", "spread"):
        run = lo.get(f"http_{dist}", {})
        bps, p99 = run.get("bets_per_s", 0), run.get("p99", float("inf"))
        checks.append((f"HTTP {dist}: >= {TARGET_BETS_PER_S} bets/s, p99 < {TARGET_P99_MS} ms",
                       bps >= TARGET_BETS_PER_S and p99 < TARGET_P99_MS,
                       f"{bps} bets/s, p99 {p99} ms"))
    r = results["ratios"]
    checks.append((f"hot >= {TARGET_HOT_RATIO}x row-lock",
                   (r["hot"] or 0) >= TARGET_HOT_RATIO, f"{r['hot']}x"))
    checks.append((f"spread >= {TARGET_SPREAD_RATIO}x row-lock",
                   (r["spread"] or 0) >= TARGET_SPREAD_RATIO, f"{r['spread']}x"))
    fan = lo.get("fanout", {})
    p99 = fan.get("last_socket_p99", float("inf"))
    complete = fan.get("missing", 1) == 0 and fan.get("sockets", 0) >= 1000
    checks.append((f"odds change to the 1,000th socket p99 < {TARGET_FANOUT_P99_MS} ms",
                   complete and p99 < TARGET_FANOUT_P99_MS,
                   f"p99 {p99} ms, {fan.get('sockets')} sockets, missing {fan.get('missing')}"))
    results["acceptance"] = checks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 s runs, 20 odds changes")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=64,
                   help="connections / sockets, one bet in flight each (both services)")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--markets", type=int, default=20)
    p.add_argument("--sockets", type=int, default=1000, help="fan-out subscribers")
    p.add_argument("--changes", type=int, default=100, help="fan-out odds changes")
    p.add_argument("--interval", type=float, default=0.1, help="pause between odds changes")
    p.add_argument("--replicas", type=int, default=None,
                   help="Serve replicas (default: LOOTIFY_REPLICAS, else 1)")
    p.add_argument("--rowlock-pool", type=int, default=20, help="row-lock service's pool")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    p.add_argument("--runs", default=",".join(RUNS),
                   help=f"which Lootify runs (the row-lock service does the http ones): "
                        f"{','.join(RUNS)}")
    p.add_argument("--skip-rowlock", action="store_true")
    p.add_argument("--skip-lootify", action="store_true")
    args = p.parse_args()
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if unknown := set(args.runs) - set(RUNS):
        p.error(f"unknown runs: {', '.join(sorted(unknown))}")
    if args.quick:
        args.duration, args.warmup, args.changes = 5.0, 2.0, 20

    work = Path(tempfile.mkdtemp(prefix="lbh-", dir="/tmp"))  # short: unix socket paths
    work.chmod(0o755)  # the embedded server runs as its own user when we are root
    results: dict = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     "cpus": os.cpu_count(), "load_at_start": load(),
                     "settings": {k: getattr(args, k) for k in (
                         "duration", "warmup", "concurrency", "users", "markets", "sockets",
                         "changes", "rowlock_pool", "replicas")}}
    pg_dir = None
    base = os.environ.get("DATABASE_URL")
    try:
        if not base:
            pg_dir = work / "pg"
            base = pgserver.start(pg_dir, port=free_port())
            METER.pg_pid = pgserver.pid(pg_dir)
        dsn = asyncio.run(prepare_database(base))
        if not args.skip_rowlock:
            results["rowlock"] = bench_rowlock(dsn, args, work)
        if not args.skip_lootify:
            try:
                results["lootify"] = bench_lootify(dsn, args, work)
            except Exception as exc:  # keep the row-lock figures and say what broke
                log(f"the Lootify part failed: {exc!r} (--keep keeps Ray's logs)")
                results["lootify"] = {"error": repr(exc)[:2000]}
    finally:
        if pg_dir is not None:
            pgserver.stop(pg_dir)
        if args.keep:
            log(f"kept {work} (Ray logs under ray/session_*/logs)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["load_at_end"] = load()
    judge(results)
    print("\n".join(report(results)))
    out = PROJECT_ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    path = out / f"http-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {path.relative_to(PROJECT_ROOT)}")
    if args.strict and not all(ok for _, ok, _ in results["acceptance"]):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
