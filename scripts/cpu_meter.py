"""Where the CPU goes: CPU seconds of every process of a benchmark between two moments,
by kind of process and by process group, and the CPU time the hypervisor took.

The processes are the caller's tree (Ray's daemons and workers, HAProxy, the load
generator, ...) and the embedded PostgreSQL's, which pg_ctl detaches (`pg_pid`). A
process's kind comes from its name (Ray workers rename themselves after their actor
class) unless `roles` names it by pid: the wallet and the market hosts are both
`EntityHost`. `GROUPS` gathers kinds into the groups a report prints.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

_INGRESS = "ingress (haproxy, serve proxy/controller)"
_RAY = "ray daemons (raylet, gcs, agents, idle workers)"
GROUPS = {
    "ServeReplica": "serve replica",
    "wallet-host": "wallet hosts",
    "market-host": "market hosts",
    "postgres": "postgresql",
    "PubSub": "pubsub actor",
    **dict.fromkeys(("haproxy", "HAProxyManager", "ProxyActor", "ServeController"), _INGRESS),
    **dict.fromkeys(("raylet", "gcs_server", "ray-daemons", "DashboardAgent",
                     "RuntimeEnvAgent", "IDLE"), _RAY),
    "loadgen": "load generator",
    "rowlock-uvicorn": "row-lock service",
    "driver": "benchmark driver",
}
GROUP_ORDER = list(dict.fromkeys([*GROUPS.values(), "other"]))


def kind_of(proc: psutil.Process) -> str:
    """A stable name: Ray workers rename themselves after the task they run
    (`ray::EntityHost.stats`, `ray::ServeReplica:lootify:gateway`)."""
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


# Not the machine's work: waiting, and time its hypervisor ran other guests. Linux
# counts a guest's time inside user and nice already.
NOT_BUSY = ("idle", "iowait", "steal", "guest", "guest_nice")


def busy_seconds(times: tuple[float, ...]) -> float:
    """The CPU seconds the machine worked, of `psutil.cpu_times()`."""
    return sum(times) - sum(getattr(times, field, 0.0) for field in NOT_BUSY)


@dataclass(frozen=True)
class Sample:
    at: float  # perf_counter
    cpu: dict[int, tuple[str, float]]  # pid -> (kind, user + system seconds)
    machine_busy: float  # seconds, every process on the machine
    stolen: float  # seconds the hypervisor ran something else while a CPU had work


@dataclass(frozen=True)
class Usage:
    """CPU seconds over `wall` seconds. Stolen time is no process's: a virtual machine's
    CPU was ready to run and its host ran another guest, so it is not counted busy."""

    wall: float
    kinds: dict[str, float]
    machine_busy: float
    stolen: float

    @property
    def ours(self) -> float:
        return sum(self.kinds.values())

    @property
    def others(self) -> float:
        """Seconds that processes outside the benchmark took."""
        return max(0.0, self.machine_busy - self.ours)

    def groups(self) -> dict[str, float]:
        out = dict.fromkeys(GROUP_ORDER, 0.0)
        for kind, seconds in self.kinds.items():
            out[GROUPS.get(kind, "other")] += seconds
        return {g: s for g, s in out.items() if s > 0}

    def cores(self) -> dict[str, float]:
        """By kind, in cores (those above 0.01), then the whole machine's and others'."""
        out = {k: round(v / self.wall, 2) for k, v in sorted(self.kinds.items(),
                                                             key=lambda kv: -kv[1])
               if v / self.wall >= 0.01}
        out["machine_busy"] = round(self.machine_busy / self.wall, 2)
        out["others_on_machine"] = round(self.others / self.wall, 2)
        out["stolen"] = round(self.stolen / self.wall, 2)
        return out


class CpuMeter:
    def __init__(self) -> None:
        self.pg_pid: int | None = None
        self.roles: dict[int, str] = {}  # pid -> kind, for what a name cannot tell

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

    def sample(self) -> Sample:
        seen: dict[int, tuple[str, float]] = {}
        for p in self._procs():
            try:
                t = p.cpu_times()
                seen[p.pid] = (self.roles.get(p.pid) or kind_of(p), t.user + t.system)
            except psutil.Error:
                continue
        machine = psutil.cpu_times()
        return Sample(time.perf_counter(), seen, busy_seconds(machine),
                      getattr(machine, "steal", 0.0))

    @staticmethod
    def usage(before: Sample, after: Sample) -> Usage:
        kinds: dict[str, float] = {}
        for pid, (kind, cpu) in after.cpu.items():
            start = before.cpu.get(pid, (kind, 0.0))[1]  # new since: count all of it
            kinds[kind] = kinds.get(kind, 0.0) + (cpu - start)
        return Usage(max(after.at - before.at, 1e-6), kinds,
                     after.machine_busy - before.machine_busy, after.stolen - before.stolen)
