"""The layering the issue asks for, held by a test: pgbust/ is the library and knows no
application's tables; api/, invalidator/ and worker/ are services built on it and never
import one another."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("api", "invalidator", "worker")
# the tables of the demo (pgbust.toml) and of the second app (examples/blog/pgbust.toml)
APP_TABLES = re.compile(r"\b(products?|categor(y|ies)|authors?|posts?|comments?)\b", re.I)


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_no_service_imports_another_service() -> None:
    offences = []
    for service in SERVICES:
        for path in sorted((ROOT / service).rglob("*.py")):
            others = _imported_packages(path) & (set(SERVICES) - {service})
            offences += [f"{path.relative_to(ROOT)} imports {other}" for other in sorted(others)]
    assert offences == []


def test_the_library_imports_no_service() -> None:
    offences = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "pgbust").rglob("*.py"))
        # db/ is where SQL lives (the status queries): a folder of .sql files, not a service
        for name in sorted(_imported_packages(path) & {*SERVICES, "loadtest", "examples"})
    ]
    assert offences == []


def test_the_example_app_is_built_on_the_library_alone() -> None:
    """examples/blog uses pgbust (and db's query-file format), never a demo service."""
    offences = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "examples").rglob("*.py"))
        for name in sorted(_imported_packages(path) & {*SERVICES, "loadtest", "tests"})
    ]
    assert offences == []


def test_no_table_of_either_app_is_named_in_the_library() -> None:
    offences = []
    # pgbust/ and the capture's SQL (db/triggers: what `python -m db` installs for any app)
    library = [*(ROOT / "pgbust").rglob("*"), *(ROOT / "db" / "triggers").glob("*.sql")]
    for path in sorted(library):
        if path.suffix not in (".py", ".sql", ".lua"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if APP_TABLES.search(line):
                offences.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offences == []
