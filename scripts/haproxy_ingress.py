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

Standard library only: it runs under whatever `python3` the PATH gives Serve.
"""

from __future__ import annotations

import fcntl
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


def amend(config: str) -> str:
    """The config with both amendments; unchanged if already amended. SystemExit if
    Serve's template no longer has the lines they attach to."""
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
            replaced_log = True
            continue
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
            with open(path) as fh:
                config = fh.read()
            amended = amend(config)
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
