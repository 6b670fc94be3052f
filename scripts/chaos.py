"""The chaos run (issue 14): a stack of its own under a sustained mix of HTTP and
WebSocket traffic while faults are injected on a schedule, then an audit.

    .venv/bin/python scripts/chaos.py [--minutes 10] [--json PATH]     # or: make chaos

It builds its own cluster (`chaos_stack`: embedded PostgreSQL in a temporary
directory, a `ray.cluster_utils.Cluster`, the Serve app), runs the load
(`chaos_load`), injects every kind of fault in `chaos_faults.KINDS` in turn (three
rounds in ten minutes; at least one round however short the run, which runs over
its time to finish one) and measures each one's recovery, stops the load, audits
(`chaos_audit`), prints the tables and takes everything down, also on Ctrl-C or
SIGTERM. Exit status 1 when the audit finds anything or a fault was not recovered
from within `chaos_faults.RECOVERY_LIMIT_S`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaos_stack import Stack, configure_environment  # noqa: E402

HTTP_PLAYERS = 6
WS_PLAYERS = 3
SEED_PLAYERS = 20
WARMUP_S = 10.0
_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[chaos {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


async def run(stack: Stack, minutes: float) -> dict[str, Any]:
    from chaos_audit import audit
    from chaos_client import Api, Tally
    from chaos_faults import KINDS, Injector
    from chaos_load import World

    from actors.client import AsyncLootify

    aio = await AsyncLootify.create()
    world = World(Api(stack.url, Tally()), stack.url)
    load: asyncio.Future | None = None
    try:
        await world.make_operator(stack.dsn)
        while len(world.players) < SEED_PLAYERS:
            player = await world.register()
            if player is not None:
                world.players.append(player)
        started = time.monotonic()
        injector = Injector(stack, world, started)
        await injector.prepare()
        workers = [world.operator_loop(), world.registrar(),
                   *(world.http_player() for _ in range(HTTP_PLAYERS)),
                   *(world.ws_player() for _ in range(WS_PLAYERS))]
        load = asyncio.gather(*(guarded(w, world) for w in workers))
        log(f"load running: {HTTP_PLAYERS} HTTP players, {WS_PLAYERS} sockets, an operator")
        end = started + minutes * 60
        rounds = max(1, round(minutes / 3.3))
        plan = [kind for _ in range(rounds) for kind in KINDS]
        await asyncio.sleep(WARMUP_S)
        for done, kind in enumerate(plan):
            fault = await injector.inject(kind)
            recovered = "not recovered" if fault.recovery_s is None else \
                f"recovered in {fault.recovery_s:.1f}s"
            log(f"fault {done + 1}/{len(plan)} {kind} ({fault.detail}): {recovered}")
            left = len(plan) - done - 1
            if left:
                await asyncio.sleep(max(2.0, (end - time.monotonic()) / (left + 1)))
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        log("stopping the load")
        world.stop.set()
        await asyncio.wait_for(load, 120)
        ran_s = time.monotonic() - started
        log("auditing")
        checks = await audit(stack.dsn, world.acked, aio)
    finally:
        world.stop.set()
        if load is not None and not load.done():
            try:
                await asyncio.wait_for(load, 120)
            except Exception as exc:  # noqa: BLE001 - already failing: say it, go on
                log(f"the load ended with {exc!r}")
        await world.api.close()
    tally = world.api.tally
    return {
        "minutes": round(ran_s / 60, 2),
        "operations": {kind: {
            "attempted": tally.attempted[kind], "acked": tally.acked[kind],
            "clear_errors": dict(tally.clear[kind]), "findings": dict(tally.findings[kind]),
            "retries": tally.retries[kind]} for kind in sorted(tally.attempted)},
        "finding_examples": tally.examples,
        "faults": [vars(f) for f in injector.faults],
        "audit": checks,
        "acked": {"registrations": len(world.acked.users),
                  "deposits": len(world.acked.deposits),
                  "withdrawals": len(world.acked.withdrawals), "bets": len(world.acked.bets),
                  "cancels": len(world.acked.cancelled), "settlements": len(world.acked.settled),
                  "voids": len(world.acked.voided)},
    }


async def guarded(worker: Any, world: Any) -> None:
    """A worker that dies of something unforeseen is a finding, not the run's end."""
    try:
        await worker
    except Exception as exc:  # noqa: BLE001 - reported, with what it was
        world.tally.finding("load", "worker_crashed", repr(exc))
        log(f"a load worker crashed: {exc!r}")


def _seconds(values: list[float]) -> str:
    return "-" if not values else f"{max(values):.1f} / {statistics.median(values):.1f}"


def tables(report: dict[str, Any]) -> str:
    lines = [f"Chaos run: {report['minutes']} minutes of load", "",
             "| operation | attempted | acknowledged | clear errors (by code) | findings | "
             "retries |", "|---|---|---|---|---|---|"]
    for kind, op in report["operations"].items():
        clear = ", ".join(f"{c} {n}" for c, n in sorted(op["clear_errors"].items())) or "-"
        found = ", ".join(f"{c} {n}" for c, n in sorted(op["findings"].items())) or "-"
        lines.append(f"| {kind} | {op['attempted']} | {op['acked']} | {clear} | {found} | "
                     f"{op['retries']} |")
    lines += ["", "| fault | injected | recovery s (max / median) | not recovered | "
              "outage s (max) |", "|---|---|---|---|---|"]
    by_kind: dict[str, list[dict]] = {}
    for fault in report["faults"]:
        by_kind.setdefault(fault["kind"], []).append(fault)
    for kind, faults in by_kind.items():
        recovered = [f["recovery_s"] for f in faults if f["recovery_s"] is not None]
        outage = max(f["outage_s"] for f in faults)
        lines.append(f"| {kind} | {len(faults)} | {_seconds(recovered)} | "
                     f"{len(faults) - len(recovered)} | {outage:.1f} |"
                     if outage else
                     f"| {kind} | {len(faults)} | {_seconds(recovered)} | "
                     f"{len(faults) - len(recovered)} | - |")
    lines += ["", "| audit | result |", "|---|---|"]
    for check, result in report["audit"].items():
        verdict = "holds" if not result["count"] else \
            f"**{result['count']} problems**: {'; '.join(result['examples'])}"
        lines.append(f"| {check} | {verdict} |")
    if report["finding_examples"]:
        lines += ["", "Findings (first ones):", *(f"- {e}" for e in report["finding_examples"])]
    return "\n".join(lines)


def failed(report: dict[str, Any]) -> bool:
    return any(r["count"] for r in report["audit"].values()) or any(
        f["recovery_s"] is None for f in report["faults"])


def _stop_on_sigterm(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="of load (default 10)")
    ap.add_argument("--json", type=Path, help="write the report here too")
    args = ap.parse_args(argv)
    configure_environment()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    stack = Stack.open(log)
    # Again: the cluster's head node installed a handler of its own.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        report = asyncio.run(run(stack, args.minutes))
    finally:
        log("taking the stack down")
        stack.close()
    print(tables(report), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if failed(report) else 0


if __name__ == "__main__":
    sys.exit(main())
