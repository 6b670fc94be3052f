"""py-spy on a benchmark's busy processes, and where their samples went.

`Profiler(pids, seconds, out_dir)` runs `py-spy record --native --format raw` on each
process in turn, `seconds` each (with `--native` py-spy stops the target at every
sample: one process at a time disturbs the run least), into `prof-<name>.txt`
(collapsed stacks, `frame;frame;... count`, outermost first). It also reads every
thread's CPU time from /proc meanwhile: py-spy sees only the threads that run Python,
and the Ray core worker's C++ threads are invisible to it.

`summarize(path)` first sets apart the samples that wait rather than run (futexes,
epoll, condition variables; `gil wait` when the waiter is the interpreter taking the
GIL back), then answers shares of the running samples:
  - `self`: the innermost frames (function and file, without the line);
  - `library`: each sample charged to the innermost frame that belongs to a known
    library or layer (`LIBRARIES`, first match wins; a system call or a thread
    hand-off is a layer of its own), else `python/native other`;
  - `inclusive`: the share with a frame of each of `INCLUSIVE` anywhere in the stack
    (e.g. all the work done under the idempotency-key code).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

PY_SPY = Path(sys.executable).with_name("py-spy")

# (label, regular expression on one frame), checked in order against each frame.
LIBRARIES = [
    ("write/read syscalls (sockets, pipes)", r"^(write|read|writev|readv|sendmsg|recvmsg) \("),
    ("thread hand-offs (GIL, condition variables)",
     r"^(pthread_cond_signal|pthread_cond_broadcast|sched_yield) \("),
    ("ray core (_raylet, core worker)", r"_raylet|ray::core|ray::rpc|grpc|boost::|absl::|"
                                        r"ray/_private|ray/actor\.py|ray/remote_function"),
    ("ray serve", r"ray/serve/"),
    ("pickle / cloudpickle", r"pickle"),
    ("msgpack (actors/wire)", r"msgpack|actors/wire\.py"),
    ("asyncpg", r"asyncpg|\((protocol|pgproto)\.c\)"),
    ("fastapi / starlette", r"fastapi/|starlette/"),
    ("pydantic", r"pydantic"),
    ("uvicorn / httptools / h11", r"uvicorn/|httptools|h11/"),
    ("jwt / hmac / hashlib", r"jwt/|hmac|_hashopenssl|hashlib|libcrypto"),
    ("json", r"json/|_json\.c|orjson"),
    ("websockets", r"websockets/"),
    ("prometheus_client / logging", r"prometheus_client|logging/"),
    ("gateway (app)", r"gateway/"),
    ("actors (app runtime)", r"actors/"),
    ("asyncio / uvloop (event loop)", r"asyncio/|_asynciomodule|uvloop|selectors\.py|"
                                      r"\((loop|core|linux|stream|loop-watcher|queue)\.[ch]\)"),
]
INCLUSIVE = {
    "actor's asyncio loop thread": r"initialize_eventloops_for_actor",
    "ray submit (ActorMethod.remote)": r"ActorMethod\._remote|submit_actor_task",
    "ray execute (CoreWorker::ExecuteTask)": r"CoreWorker::ExecuteTask|_raylet_task_execution",
    "ray results (GetAsync, as_future)": r"GetAsync|as_future",
    "ray serialization (incl. pickle)": r"SerializationContext|serialization\.py|pickle",
    "ray serve request path": r"ray/serve/",
    "fastapi / starlette": r"fastapi/|starlette/",
    "idempotency keys (gateway/idempotency.py)": r"gateway/idempotency\.py",
    "token verification (gateway/tokens.py)": r"gateway/tokens\.py",
    "prometheus metrics": r"prometheus_client|gateway/metrics\.py",
    "asyncpg": r"asyncpg",
    "actors/runtime.py (host rounds)": r"actors/runtime\.py",
    "actors/client.py (router)": r"actors/client\.py",
    "actors/pubsub.py": r"actors/pubsub\.py",
}
_WAIT = re.compile(r"^(epoll_p?wait|pthread_cond_(timed)?wait|PyThread_acquire_lock_timed|"
                   r"sem_(timed|clock)?wait|nanosleep|clock_nanosleep|__?poll|select|"
                   r"std::condition_variable::wait\w*) ")
_RUNTIME_WAITERS = re.compile(r"_raylet\.so|libstdc\+\+|libpython|libc\.so")
_LINE = re.compile(r":\d+\)$")


def _frame(raw: str) -> str:
    return _LINE.sub(")", raw.strip())


def _waiting(frames: list[str]) -> str | None:
    """`gil wait`, `wait` or None (running), from the innermost frames."""
    for i in range(len(frames) - 1, max(-1, len(frames) - 4), -1):
        if _WAIT.match(frames[i]):
            caller = frames[i - 1] if i > 0 else ""
            if frames[i].startswith("pthread_cond") and not _RUNTIME_WAITERS.search(caller):
                return "gil wait"  # the eval loop (inlined take_gil) under a Python frame
            return "wait"
    return None


def summarize(path: Path, top: int = 8) -> dict:
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append(([_frame(f) for f in stack.split(";")], int(count)))
    total = sum(n for _, n in stacks) or 1
    libs = [(label, re.compile(rx)) for label, rx in LIBRARIES]
    marks = {label: re.compile(rx) for label, rx in INCLUSIVE.items()}
    waits: Counter[str] = Counter()
    own: Counter[str] = Counter()
    library: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        if wait := _waiting(frames):
            waits[wait] += n
            continue
        own[frames[-1]] += n
        library[_library(frames, libs)] += n
        for label, rx in marks.items():
            if any(rx.search(f) for f in frames):
                inclusive[label] += n
    running = total - sum(waits.values()) or 1

    def shares(counter: Counter[str], k: int | None) -> list[tuple[str, float]]:
        return [(name, round(100 * n / running, 1)) for name, n in counter.most_common(k)]

    return {"samples": total, "running": running,
            "waiting_share": {w: round(100 * n / total, 1) for w, n in waits.items()},
            "self": shares(own, top), "library": shares(library, None),
            "inclusive": dict(shares(inclusive, None))}


def _library(frames: list[str], libs: list[tuple[str, re.Pattern]]) -> str:
    for frame in reversed(frames):
        for label, rx in libs:
            if rx.search(frame):
                return label
    return "python/native other"


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (`/proc/<pid>/task/<tid>/comm`)."""
    out: dict[str, float] = {}
    try:
        for t in psutil.Process(pid).threads():
            try:
                name = Path(f"/proc/{pid}/task/{t.id}/comm").read_text().strip()
            except OSError:
                continue
            out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    except psutil.Error:
        pass
    return out


class Profiler:
    def __init__(self, pids: dict[str, int], seconds: float, out_dir: Path) -> None:
        self.pids = pids
        self.seconds = int(seconds)
        self.out_dir = out_dir
        self.results: dict[str, dict] = {}
        self.thread: threading.Thread | None = None

    @property
    def duration(self) -> float:
        """How long the load must last to cover every process (and py-spy's attach)."""
        return (self.seconds + 1) * len(self.pids) + 2

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self) -> dict[str, dict]:
        if self.thread is not None:
            self.thread.join()
        return self.results

    def _run(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            path = self.out_dir / f"prof-{name}.txt"
            before, t0 = _threads(pid), time.perf_counter()
            try:
                subprocess.run([str(PY_SPY), "record", "--native", "-d", str(self.seconds),
                                "-p", str(pid), "-o", str(path), "--format", "raw"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=self.seconds + 60, check=False)
            except subprocess.TimeoutExpired:
                pass
            wall = time.perf_counter() - t0
            cores = {t: round((s - before.get(t, 0.0)) / wall, 3)
                     for t, s in _threads(pid).items()}
            entry = {"pid": pid, "file": str(path),
                     "thread_cores": dict(sorted(((t, c) for t, c in cores.items() if c >= 0.005),
                                                 key=lambda kv: -kv[1]))}
            if path.exists():
                entry.update(summarize(path))
            self.results[name] = entry
