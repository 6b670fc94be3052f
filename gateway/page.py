"""The live odds page at `/`: web/index.html, web/app.js, web/style.css, and the
official `phoenix` client's own ESM build, which `npm ci` installs into web/node_modules
from the committed web/package-lock.json (`ensure_built`: `make up` and the page's test
call it). Served as a handful of fixed files, so no path of the page can shadow an API
route, `/docs`, `/health` or `/metrics`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

from actors.errors import NotFound
from actors.settings import PROJECT_ROOT

from .error_handlers import error_response

WEB_DIR = PROJECT_ROOT / "web"
LOCKFILE = WEB_DIR / "package-lock.json"
# npm's record of what it installed: node_modules matches the lockfile iff they agree.
INSTALLED_LOCKFILE = WEB_DIR / "node_modules" / ".package-lock.json"
ASSETS = {
    "app.js": WEB_DIR / "app.js",
    "style.css": WEB_DIR / "style.css",
    "phoenix.js": WEB_DIR / "node_modules" / "phoenix" / "priv" / "static" / "phoenix.mjs",
}


class PageBuildError(RuntimeError):
    pass


def _locked_packages(path: Path) -> dict[str, tuple[Any, Any]]:
    packages = json.loads(path.read_text()).get("packages", {})
    return {name: (p.get("version"), p.get("integrity")) for name, p in packages.items() if name}


def is_built() -> bool:
    return (INSTALLED_LOCKFILE.is_file() and ASSETS["phoenix.js"].is_file()
            and _locked_packages(INSTALLED_LOCKFILE) == _locked_packages(LOCKFILE))


def ensure_built() -> bool:
    """Run `npm ci` in web/ when node_modules is missing or not what the lockfile says.
    True when it ran; raises PageBuildError when npm is missing or fails."""
    if is_built():
        return False
    npm = shutil.which("npm")
    if npm is None:
        raise PageBuildError("npm is needed to build the page's assets (web/)")
    cmd = [npm, "ci", "--no-audit", "--no-fund"]
    done = subprocess.run(cmd, cwd=WEB_DIR, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not is_built():
        raise PageBuildError(f"`{' '.join(cmd)}` in {WEB_DIR} failed (exit {done.returncode}):"
                             f"\n{done.stdout}\n{done.stderr}")
    return True


def _file(path: Path) -> Response:
    if not path.is_file():
        return error_response(503, "page_not_built",
                              "the page's assets are not built: `make up` builds them")
    return FileResponse(path)


def add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return _file(WEB_DIR / "index.html")

    @app.get("/page/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise NotFound(f"no page asset {name!r}")
        return _file(ASSETS[name])
