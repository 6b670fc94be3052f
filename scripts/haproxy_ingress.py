#!/usr/bin/env python3
"""HAProxy as Serve's ingress, with two amendments to the config Serve generates.

Serve renders `haproxy.cfg` from its own template, which has no hook for them, and
starts (and reloads) HAProxy as `<binary> -db -f <haproxy.cfg> ...`. `make up` points
`RAY_SERVE_HAPROXY_BINARY_PATH` at this script, which amends the file in place and
then execs the real binary (`LOOTIFY_HAPROXY_BINARY`) with the same arguments, so
Serve manages the process as before (it finds its workers by the config path).

- Access log lines name the request without its query string: a socket's `?token=`
  must appear in no log.
- `X-Forwarded-For` is set to the connecting address, replacing whatever a client
  sent, so the gateway (which believes the header only from this proxy) counts the
  real client against per-IP limits, and a forged header counts for nothing.
- HAProxy's own errors (502: the replica went away mid-request, 503: no replica is
  up, 504: none answered in time) are the contract's JSON 503 `unavailable`, not the
  plain-text 500 of Serve's error file: the client retries, with the same
  Idempotency-Key to learn the outcome of a request that may have acted.

Standard library only: it runs under whatever `python3` the PATH gives Serve.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys

REAL_BINARY_ENV = "LOOTIFY_HAPROXY_BINARY"
AMENDED = "# amended by scripts/haproxy_ingress.py"
# HAProxy's `option httplog` format with the request line (`%{+Q}r`, which carries the
# query string) replaced by method, path and version.
LOG_FORMAT = (
    '"%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc '
    '%ac/%fc/%bc/%sc/%rc %sq/%bq %hr %hs \\"%HM %HPO %HV\\""'
)
SET_FORWARDED_FOR = "http-request set-header X-Forwarded-For %[src]"
FRONTEND = "frontend http_frontend"
ERROR_FILE = "lootify-unavailable.http"
HAPROXY_ERRORS = ("502", "503", "504")
_UNAVAILABLE = json.dumps({"error": {
    "code": "unavailable",
    "message": "the server handling this request went away or did not answer; retry "
               "(with the same Idempotency-Key to learn the outcome of a money request)",
}}).encode()
UNAVAILABLE_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Cache-Control: no-store\r\n"
    b"Content-Length: " + str(len(_UNAVAILABLE)).encode() + b"\r\n"
    b"\r\n" + _UNAVAILABLE
)


def amend(config: str, error_file: str) -> str:
    """The config with the three amendments (`error_file` holds the answer to HAProxy's
    own errors); unchanged if already amended. SystemExit if Serve's template no longer
    has the lines they attach to."""
    if config.startswith(AMENDED):
        return config
    out = [AMENDED]
    section = ""
    replaced_log = added_header = False
    for line in config.splitlines():
        if line and not line[0].isspace():
            section = line.strip()
        if section == "defaults" and line.strip() == "option httplog":
            out.append(f"    log-format {LOG_FORMAT}")
            out.extend(f"    errorfile {status} {error_file}" for status in HAPROXY_ERRORS)
            replaced_log = True
            continue
        if section == "defaults" and line.split()[:1] == ["errorfile"]:
            continue  # Serve's: a plain-text 500 for each
        out.append(line)
        if section == FRONTEND and line.strip().startswith("bind ") and not added_header:
            out.append(f"    {SET_FORWARDED_FOR}")
            added_header = True
    if not (replaced_log and added_header):
        raise SystemExit("haproxy_ingress: Serve's HAProxy config changed shape: no "
                         f"`option httplog` in defaults or no bind in {FRONTEND}")
    return "\n".join(out) + "\n"


def amend_file(path: str) -> None:
    # The lock Serve takes while it writes the file.
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            error_file = os.path.join(os.path.dirname(path), ERROR_FILE)
            with open(error_file, "wb") as fh:
                fh.write(UNAVAILABLE_RESPONSE)
            with open(path) as fh:
                config = fh.read()
            amended = amend(config, error_file)
            if amended != config:
                with open(path, "w") as fh:
                    fh.write(amended)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def main(argv: list[str]) -> None:
    real = os.environ.get(REAL_BINARY_ENV)
    if not real:
        raise SystemExit(f"haproxy_ingress: {REAL_BINARY_ENV} is not set")
    if "-f" in argv:
        amend_file(argv[argv.index("-f") + 1])
    os.execv(real, [real, *argv[1:]])


if __name__ == "__main__":
    main(sys.argv)
