"""Checks of the code itself: no SQL built from strings, no secrets committed."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The asyncpg calls (and the `psql`-like helpers of tests) that take SQL text first.
SQL_METHODS = frozenset({
    "execute", "executemany", "fetch", "fetchrow", "fetchval", "fetchmany", "prepare",
    "cursor", "copy_from_query",
})
# An identifier (a database's name) cannot be a `$1` parameter: a call that must format
# one says so with this marker (on its lines or the line above) and why it is safe.
IDENTIFIER_MARKER = "# sql-identifier:"


def _python_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split()
    return [ROOT / name for name in listed]


def _static(node: ast.expr) -> bool:
    """Text fixed in the code: literals and module constants by name (`TABLES`)."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id.isupper()
    if isinstance(node, ast.JoinedStr):
        return all(_static(v.value if isinstance(v, ast.FormattedValue) else v)
                   for v in node.values)
    if isinstance(node, ast.BinOp):
        return _static(node.left) and _static(node.right)
    return False


def _textual(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.BinOp):
        return _textual(node.left) or _textual(node.right)
    return isinstance(node, ast.JoinedStr)


def _built(node: ast.expr) -> bool:
    """Does `node` build a string from values at run time?"""
    if isinstance(node, ast.JoinedStr):
        return not _static(node)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return _textual(node) and not _static(node)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("format", "join") and isinstance(
            node.func.value, ast.Constant | ast.JoinedStr)
    return False


def string_built_sql(source: str) -> list[int]:
    """Line numbers where a string built at run time is passed as SQL text, directly
    or through a local variable assigned it in the same function."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = []
    for scope in ast.walk(tree):
        if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
            continue
        built_names = {
            target.id
            for node in ast.walk(scope) if isinstance(node, ast.Assign) and _built(node.value)
            for target in node.targets if isinstance(target, ast.Name)
        }
        for node in ast.walk(scope):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in SQL_METHODS):
                continue
            query = node.args[0] if node.args else next(
                (k.value for k in node.keywords if k.arg in ("query", "sql")), None)
            if query is None:
                continue
            if _built(query) or (isinstance(query, ast.Name) and query.id in built_names):
                marked = lines[max(node.lineno - 2, 0):node.end_lineno or node.lineno]
                if not any(IDENTIFIER_MARKER in line for line in marked):
                    found.append(node.lineno)
    return sorted(set(found))


def test_no_sql_is_built_from_strings() -> None:
    offenders = {
        str(path.relative_to(ROOT)): lines
        for path in _python_files()
        if (lines := string_built_sql(path.read_text()))
    }
    assert offenders == {}, "pass values as $1 parameters: " + repr(offenders)


@pytest.mark.parametrize("snippet", [
    'async def f(c, x):\n    await c.execute(f"select * from t where a = {x}")\n',
    'async def f(c, x):\n    await c.fetch("select * from t where a = " + x)\n',
    'async def f(c, x):\n    await c.fetchrow("select * from t where a = %s" % x)\n',
    'async def f(c, x):\n    await c.fetchval("select * from t where a = {}".format(x))\n',
    'async def f(c, x):\n    q = f"delete from t where a = {x}"\n    await c.execute(q)\n',
    'async def f(c, x):\n    await c.copy_from_query(query=f"select {x}", output="o")\n',
    'async def f(c, x):\n    await c.execute(f"drop database {x}")  # a comment\n',
])
def test_the_scanner_finds_string_built_sql(snippet: str) -> None:
    assert string_built_sql(snippet) != []


@pytest.mark.parametrize("snippet", [
    'async def f(c, x):\n    await c.execute("select * from t where a = $1", x)\n',
    'async def f(c):\n    await c.execute(f"truncate {TABLES}")\n',
    'async def f(c):\n    await c.fetch("select 1 " "from t")\n',
    'async def f(c, x):\n    # sql-identifier: checked\n    await c.execute(f"drop {x}")\n',
    'def f(x):\n    print(f"not sql {x}")\n',
])
def test_the_scanner_lets_parameters_and_constants_pass(snippet: str) -> None:
    assert string_built_sql(snippet) == []


# -- secrets -------------------------------------------------------------------------------

SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "JWT": re.compile(r"eyJ[\w-]{10,}\.eyJ[\w-]{10,}\.[\w-]{10,}"),
    "AWS access key": re.compile(r"AKIA[0-9A-Z]{16}"),
    # An upper-case word is a placeholder (`postgresql://lootify:SECRET@db`).
    "password in a URL": re.compile(
        r"\b[a-z][a-z0-9+]*://[^\s:/@'\"]+:(?![A-Z_]+@)[^\s@/'\"{}$<]+@"),
    "GitHub token": re.compile(r"gh[pousr]_[A-Za-z0-9]{36}"),
}
SECRET_FILES = re.compile(r"(^|/)(jwt_secret|auth_token|\.env|id_rsa|.*\.pem|.*\.key)$")


def secrets_in(path: str, text: str) -> list[str]:
    found = [f"{path}: secret file"] if SECRET_FILES.search(path) else []
    found += [f"{path}: {name}" for name, pattern in SECRET_PATTERNS.items()
              if pattern.search(text)]
    return found


def test_no_secrets_are_committed() -> None:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.split()
    found = []
    for name in listed:
        path = ROOT / name
        if path.is_file() and path.stat().st_size < 2_000_000:
            found += secrets_in(name, path.read_text(errors="ignore"))
    assert found == []


@pytest.mark.parametrize(("path", "text"), [
    # Each sample is split in two, or this file would be flagged itself.
    ("a.txt", "-----BEGIN RSA PRIVATE " + "KEY-----\nMIIE..."),
    ("a.py", 'T = "eyJhbGciOiJIUzI1NiJ9.' + 'eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N"'),
    ("a.py", 'DSN = "postgresql://lootify:hun' + 'ter2@db:5432/lootify"'),
    (".data/jwt_secret", "x"),
    ("deploy/.env", "x"),
])
def test_the_secret_scan_finds_secrets(path: str, text: str) -> None:
    assert secrets_in(path, text) != []


def test_the_generated_jwt_secret_stays_out_of_git() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", ".data/jwt_secret"], cwd=ROOT)
    assert ignored.returncode == 0
