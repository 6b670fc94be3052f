"""Acceptance: the official `phoenix` npm client runs the seed README's WebSocket flow.

`tests/js/seed_flow.mjs` is the seed's client code (join `user:{id}` and `event:{id}`,
`place_bet`, `get_balance`, the `balance`/`bet_placed`/`bet_settled`/`odds_updated`/
`event_data`/`status_changed` handlers) on `phoenix` 1.8 with the `ws` transport. This
test does what a player's client does not: it creates the operator, event and market,
deposits, and once the script reports the bet placed it closes and settles the market
over HTTP. The script prints what it received as JSON lines; the payload shapes are
checked here against the contract.

`npm ci` runs in tests/js once per session (skipped when node_modules already matches
package-lock.json); the tests skip only when `node` or `npm` is missing.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.cluster

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS_DIR / "seed_flow.mjs"

MONEY = re.compile(r"^\d+\.\d{2}$")
ODDS = re.compile(r"^\d+\.\d{2}$")
BALANCE_KEYS = {"balance", "available", "reserved", "currency"}
BET_KEYS = {"id", "market_id", "selection", "amount", "odds", "potential_payout", "status",
            "payout", "placed_at", "settled_at"}
SELECTIONS = [{"key": "home_win", "name": "Home", "odds": "2.00"},
              {"key": "draw", "name": "Draw", "odds": "3.20"},
              {"key": "away_win", "name": "Away", "odds": "3.50"}]


# -- node and the phoenix package ----------------------------------------------------------


def _installed_matches_lock() -> bool:
    """node_modules was installed from this package-lock.json (npm keeps a copy of what it
    installed in node_modules/.package-lock.json)."""
    hidden = JS_DIR / "node_modules" / ".package-lock.json"
    lock = JS_DIR / "package-lock.json"
    if not hidden.is_file() or not lock.is_file():
        return False

    def packages(path: Path) -> dict[str, tuple[Any, Any]]:
        data = json.loads(path.read_text())
        return {name: (p.get("version"), p.get("integrity"))
                for name, p in data.get("packages", {}).items() if name}

    return packages(hidden) == packages(lock)


@pytest.fixture(scope="session")
def node() -> str:
    """The `node` binary, with tests/js/node_modules installed from the lockfile."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run the official phoenix JS client")
    if not _installed_matches_lock():
        lock = (JS_DIR / "package-lock.json").is_file()
        cmd = [npm, "ci" if lock else "install", "--no-audit", "--no-fund", "--prefer-offline"]
        done = subprocess.run(cmd, cwd=JS_DIR, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return node


class Script:
    """seed_flow.mjs as a child process; its stdout JSON lines arrive on a queue."""

    def __init__(self, node: str, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [node, str(SCRIPT), *args], cwd=JS_DIR, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self.stderr: list[str] = []
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                self._queue.put(json.loads(line))
            except json.JSONDecodeError:
                pass  # kept in self.raw for the failure message
        self.proc.stdout.close()
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
        self.proc.stderr.close()

    def output(self) -> str:
        return f"stdout:\n{''.join(self.raw)}\nstderr:\n{''.join(self.stderr)}"

    def until(self, kind: str, timeout: float) -> dict:
        """Collect lines until one of `kind`; fail on the script's end or a timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"no {kind!r} line within {timeout}s\n{self.output()}") from None
            if line is None:
                raise AssertionError(f"the script ended before {kind!r}\n{self.output()}")
            self.lines.append(line)
            if line.get("kind") == kind:
                return line

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the script did not exit within {timeout}s\n{self.output()}") from None
        while (line := self._queue.get(timeout=5)) is not None:  # drain to EOF
            self.lines.append(line)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # this child only, by its pid
        self.proc.wait(timeout=10)
        for reader in self._readers:  # they close the pipes at EOF
            reader.join(timeout=10)

    def pushes(self, event: str) -> list[dict]:
        return [m["payload"] for m in self.lines if m["kind"] == "push" and m["event"] == event]

    def replies(self, event: str) -> list[dict]:
        return [m for m in self.lines if m["kind"] == "reply" and m["event"] == event]


@pytest.fixture
def run_script(node: str) -> Iterator:
    started: list[Script] = []

    def start(*args: str) -> Script:
        script = Script(node, list(args))
        started.append(script)
        return script

    yield start
    for script in started:
        script.stop()


# -- helpers -------------------------------------------------------------------------------


def socket_url(serve_url: str) -> str:
    return serve_url.replace("http://", "ws://") + "/socket"  # the client adds /websocket


def book(api: httpx.Client, new_user) -> tuple[Any, dict, dict]:
    op = new_user("operator")
    r = api.post("/api/events", headers=op.headers, json={
        "name": "Flamengo x Palmeiras", "category": "football",
        "starts_at": "2030-01-01T18:00:00+00:00"})
    assert r.status_code == 201, r.text
    event = r.json()["event"]
    r = api.post(f"/api/events/{event['id']}/markets", headers=op.headers, json={
        "name": "Match winner", "type": "fixed_odds", "selections": SELECTIONS})
    assert r.status_code == 201, r.text
    return op, event, r.json()["market"]


def assert_balance(b: dict, balance: str | None = None) -> None:
    """The balance object; with `balance`, also that nothing is reserved."""
    assert set(b) == BALANCE_KEYS, b
    assert all(MONEY.match(b[k]) for k in ("balance", "available", "reserved")), b
    assert isinstance(b["currency"], str) and b["currency"]
    assert Decimal(b["balance"]) == Decimal(b["available"]) + Decimal(b["reserved"]), b
    if balance is not None:
        assert (b["balance"], b["available"], b["reserved"]) == (balance, balance, "0.00"), b


def assert_bet(bet: dict) -> None:
    assert set(bet) == BET_KEYS, bet
    assert MONEY.match(bet["amount"]) and MONEY.match(bet["payout"]), bet
    assert ODDS.match(bet["odds"]) and MONEY.match(bet["potential_payout"]), bet
    assert isinstance(bet["placed_at"], str), bet


def base_args(serve_url: str, user, event: dict) -> list[str]:
    return ["--url", socket_url(serve_url), "--token", user.token, "--user-id", user.id,
            "--event-id", event["id"]]


# -- the tests -----------------------------------------------------------------------------


def test_seed_flow_with_the_official_phoenix_client(node: str, serve_url: str,
                                                    api: httpx.Client, new_user,
                                                    run_script) -> None:
    op, event, market = book(api, new_user)
    player = new_user()
    r = api.post("/api/wallet/deposit", json={"amount": "100.00"}, headers=player.headers)
    assert r.status_code == 200, r.text

    script = run_script(*base_args(serve_url, player, event), "--market-id", market["id"],
                        "--selection", "home_win", "--timeout-ms", "30000")
    ready = script.until("ready", timeout=120)

    r = api.post(f"/api/markets/{market['id']}/close", headers=op.headers)
    assert r.status_code == 200 and r.json()["market"]["status"] == "closed", r.text
    r = api.post(f"/api/markets/{market['id']}/settle", json={"winner": "home_win"},
                 headers=op.headers)
    assert r.status_code == 200 and r.json()["market"]["status"] == "settled", r.text

    assert script.wait(timeout=90) == 0, script.output()
    out = script
    assert out.lines[-1] == {"kind": "done"}, out.output()

    # the connection: token in the query string (the seed's `params`), Phoenix V2
    connect = next(m for m in out.lines if m["kind"] == "connect")
    assert "token=<redacted>" in connect["url"] and "vsn=2.0.0" in connect["url"]
    assert player.token not in "".join(out.raw)

    # both joins answered ok
    joins = {m["topic"]: m for m in out.lines if m["kind"] == "join"}
    assert joins[f"user:{player.id}"]["status"] == "ok"
    assert joins[f"event:{event['id']}"]["status"] == "ok"

    # event_data: the event object with its market, odds as strings
    (data,) = out.pushes("event_data")
    assert data["id"] == event["id"] and data["name"] == event["name"]
    (m,) = [m for m in data["markets"] if m["id"] == market["id"]]
    assert m["status"] == "open"
    assert [(s["key"], s["odds"]) for s in m["selections"]] == [
        (s["key"], s["odds"]) for s in SELECTIONS]

    # place_bet -> {bet}
    (reply,) = out.replies("place_bet")
    assert reply["status"] == "ok" and set(reply["response"]) == {"bet"}, reply
    bet = reply["response"]["bet"]
    assert_bet(bet)
    assert ready["bet_id"] == bet["id"]
    assert bet["market_id"] == market["id"] and bet["selection"] == "home_win"
    assert bet["amount"] == "50.00" and bet["odds"] == "2.00"
    assert bet["potential_payout"] == "100.00" and bet["payout"] == "0.00"
    assert bet["status"] == "accepted" and bet["settled_at"] is None

    # bet_placed: the bare bet, as the reply had it
    (placed,) = out.pushes("bet_placed")
    assert placed == bet

    # balance pushes: the stake (possibly reserved first, then committed), then the payout
    balances = out.pushes("balance")
    for b in balances:
        assert_balance(b)
    payout = (Decimal(bet["amount"]) * Decimal(bet["odds"])).quantize(Decimal("0.01"),
                                                                       rounding=ROUND_DOWN)
    staked = {"balance": "50.00", "available": "50.00", "reserved": "0.00"}
    assert [b for b in balances if all(b[k] == v for k, v in staked.items())], balances
    assert_balance(balances[-1], f"{Decimal('50.00') + payout:.2f}")
    assert {b["balance"] for b in balances} <= {"100.00", "50.00", "150.00"}, balances

    # get_balance -> the balance object
    (got,) = out.replies("get_balance")
    assert got["status"] == "ok"
    assert_balance(got["response"], "50.00")

    # odds_updated: {market_id, odds: {key: "2.10"}} for every selection
    odds_updates = out.pushes("odds_updated")
    assert odds_updates, out.output()
    for u in odds_updates:
        assert set(u) == {"market_id", "odds"} and u["market_id"] == market["id"], u
        assert set(u["odds"]) == {s["key"] for s in SELECTIONS}, u
        assert all(ODDS.match(o) for o in u["odds"].values()), u

    # status_changed: closed, then settled
    statuses = [s["status"] for s in out.pushes("status_changed")
                if s.get("market_id") == market["id"]]
    assert statuses[-1] == "settled" and "closed" in statuses, statuses

    # bet_settled: won, paid stake x accepted odds
    (settled,) = out.pushes("bet_settled")
    assert_bet(settled)
    assert settled["id"] == bet["id"] and settled["status"] == "won"
    assert settled["payout"] == f"{payout:.2f}" == "100.00"
    assert settled["amount"] == "50.00" and isinstance(settled["settled_at"], str)

    # and the HTTP view agrees
    r = api.get("/api/wallet/balance", headers=player.headers)
    assert r.json() == balances[-1]


def test_phoenix_auth_token_option(node: str, serve_url: str, api: httpx.Client, new_user,
                                   run_script) -> None:
    """Phoenix 1.8's `authToken`: the token travels in Sec-WebSocket-Protocol, not the URL."""
    _, event, _ = book(api, new_user)
    player = new_user()
    assert api.post("/api/wallet/deposit", json={"amount": "12.34"},
                    headers=player.headers).status_code == 200

    script = run_script(*base_args(serve_url, player, event), "--auth-token", "--short")
    assert script.wait(timeout=90) == 0, script.output()
    out = script
    assert out.lines[-1] == {"kind": "done"}, out.output()

    connect = next(m for m in out.lines if m["kind"] == "connect")
    assert "token=" not in connect["url"] and "vsn=2.0.0" in connect["url"], connect
    assert connect["protocol"] == "phoenix", connect
    assert all(m["status"] == "ok" for m in out.lines if m["kind"] == "join")
    (got,) = out.replies("get_balance")
    assert got["status"] == "ok"
    assert_balance(got["response"], "12.34")
    (data,) = out.pushes("event_data")
    assert data["id"] == event["id"]


def test_the_script_fails_when_a_message_never_comes(node: str, serve_url: str,
                                                     api: httpx.Client, new_user,
                                                     run_script) -> None:
    """The harness is not vacuous: a push that never arrives ends the run with exit 1."""
    _, event, _ = book(api, new_user)
    player = new_user()
    script = run_script(*base_args(serve_url, player, event), "--short",
                        "--expect", "user:never_pushed", "--timeout-ms", "2000")
    assert script.wait(timeout=60) == 1, script.output()
    assert script.lines[-1] == {"kind": "timeout",
                                "waiting_for": f"never_pushed on user:{player.id}"}
