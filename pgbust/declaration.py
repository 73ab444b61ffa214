"""The declaration file (pgbust.toml): which tables are captured and what their changes
invalidate, and which entries an application reads (pure: parsing and validation, no I/O
beyond reading the file).

    [tables."public.orders"]
    key = ["id"]                       # the row's identity: any type, composite allowed
    depends = ["customer_id"]          # columns whose OLD and NEW values name dependencies
    entries = ["order:{id}"]         # entries a change of the row invalidates
    tags = ["customer:{customer_id}"]  # tags a change of the row bumps

A rule may also be an inline table that says when it applies:

    tags = [{ tag = "customer:{customer_id}:summary", columns = ["status", "total_cents"] }]

`when` (default: insert, update, delete) limits the operations; `columns` limits updates to
those that change one of these columns. A row whose rendered name differs between OLD and NEW
(it moved to another customer) always invalidates both names, whatever `when` and `columns`.

    [entries."customer:{id}:summary"]  # an entry the application reads ...
    tags = ["customer:{id}:summary"]   # ... filed under these tags

    [entries."customer:{id}:orders:{limit}:{offset}"]
    tags = ["customer:{id}:pages"]
    rows = ["row:orders:{id}"]       # ... and under a tag per row its content lists

`rows` are row tags: their placeholders name columns of the rows the loader returns
(pgbust.Loaded(payload, rows=[...])), not of the entry's name, so they are known only after
the load; the fill is then guarded by time (pgbust/lua.py, "Row tags").

Every mistake is reported as `<file>:<line>: <where>: <what is wrong>` (DeclarationError),
so that every process refuses to start with the same line.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgbust.errors import ConfigError
from pgbust.templates import Template, TemplateError

DEFAULT_PATH = "pgbust.toml"
ENV_VAR = "PGBUST_CONFIG"
OPERATIONS = ("insert", "update", "delete")
DEFAULT_MAX_ROWS = 1000
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_RELATION = re.compile(r"([A-Za-z_][A-Za-z0-9_$]*)\.([A-Za-z_][A-Za-z0-9_$]*)")
_TOML_LINE = re.compile(r"\(at line (\d+), column (\d+)\)")


class DeclarationError(ConfigError):
    """The declaration file is missing or wrong; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry or tag template of a table, and when a change of a row applies it."""

    template: Template
    kind: str  # "entry" | "tag"
    when: frozenset[str] = frozenset(OPERATIONS)
    columns: frozenset[str] | None = None  # None: any update counts


@dataclass(frozen=True, slots=True)
class Table:
    relation: str  # schema.table, as declared
    key: tuple[str, ...]
    depends: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    max_rows: int = DEFAULT_MAX_ROWS

    @property
    def schema(self) -> str:
        return self.relation.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.relation.split(".", 1)[1]

    @property
    def watched(self) -> tuple[str, ...]:
        """Columns some rule restricts updates to: the capture reports which of them changed."""
        seen: list[str] = []
        for rule in self.rules:
            for column in sorted(rule.columns or ()):
                if column not in seen:
                    seen.append(column)
        return tuple(seen)

    @property
    def captured_columns(self) -> tuple[str, ...]:
        return self.key + self.depends


class UndeclaredEntry(LookupError):
    """A name no [entries."..."] template of the declaration matches."""


@dataclass(frozen=True, slots=True)
class EntryType:
    """An entry the application reads, the tags it is filed under, and the row tags of what
    its content lists (rendered from the loader's rows)."""

    template: Template
    tags: tuple[Template, ...] = ()
    rows: tuple[Template, ...] = ()

    def tags_for(self, values: dict[str, str]) -> tuple[str, ...]:
        return tuple(tag.render(values) for tag in self.tags)

    def row_tags(self, rows: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
        """The row tags of the rows a load returned, in order, without repeats."""
        if not self.rows:
            return ()
        seen: dict[str, None] = {}
        for row in rows:
            for template in self.rows:
                try:
                    seen[template.render_row(row)] = None
                except KeyError as exc:
                    raise ValueError(
                        f"a row of {self.template.text!r} has no column {exc.args[0]!r}, which "
                        f"its row tag {template.text!r} names"
                    ) from None
        return tuple(seen)


@dataclass(frozen=True)
class Declaration:
    path: Path
    tables: Mapping[str, Table] = field(default_factory=dict)
    entries: Mapping[str, EntryType] = field(default_factory=dict)
    loaders: str | None = None  # "module:attribute" of the application's pgbust.Loaders
    migrations: tuple[Path, ...] = ()  # folders of the application's schema migrations

    def table(self, relation: str) -> Table | None:
        """The table by its declared name, or by its bare name when that is unambiguous."""
        found = self.tables.get(relation)
        if found is not None or "." in relation:
            return found
        matches = [t for t in self.tables.values() if t.name == relation]
        return matches[0] if len(matches) == 1 else None

    def entry_type(self, name: str) -> tuple[EntryType, dict[str, str]] | None:
        """The declared entry type a rendered name belongs to, with its values."""
        for entry in self.entries.values():
            values = entry.template.match(name)
            if values is not None:
                return entry, values
        return None

    def resolve(self, name: str) -> tuple[EntryType, tuple[str, ...]]:
        """The entry type of a rendered name and the tags it is filed under; raises
        UndeclaredEntry for a name no entry template matches (it could not be invalidated)."""
        found = self.entry_type(name)
        if found is None:
            raise UndeclaredEntry(
                f'{name!r} matches no [entries."..."] template of {self.path}: declare it, '
                "with the tags it is filed under, so that changes can invalidate it"
            )
        entry, values = found
        return entry, entry.tags_for(values)

    def home_of(self, name: str) -> str:
        """Where an entry lives on a Redis Cluster (keys.ClusterNames): its first tag, or the
        entry itself when it has none (or is undeclared: no reader could have filled it)."""
        found = self.entry_type(name)
        if found is None:
            return name
        entry, values = found
        return entry.tags[0].render(values) if entry.tags else name

    def render(self, template: str, values: Mapping[str, Any]) -> str:
        """The name of a declared entry for these (Python) values, escaped."""
        entry = self.entries.get(template)
        if entry is None:
            raise UndeclaredEntry(f'{template!r} is not an [entries."..."] template of {self.path}')
        missing = [n for n in entry.template.names if n not in values]
        if missing:
            raise ValueError(f"{template!r} needs a value for {{{missing[0]}}}")
        return entry.template.render_row(values)


# --- loading ----------------------------------------------------------------------------------


def path_from_env(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(ENV_VAR) or DEFAULT_PATH)


def load(path: str | os.PathLike[str] | None = None) -> Declaration:
    """Read and validate the declaration file (PGBUST_CONFIG, default ./pgbust.toml)."""
    file = Path(path) if path is not None else path_from_env()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeclarationError(
            f"{file}: no declaration file (set {ENV_VAR} to the path of your pgbust.toml)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeclarationError(f"{file}: cannot read the declaration file: {exc}") from None
    return parse(text, file)


def parse(text: str, path: str | os.PathLike[str] = DEFAULT_PATH) -> Declaration:
    file = Path(path)
    try:
        body = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_LINE.search(message)
        line = found[1] if found else str(max(1, len(text.splitlines())))
        reason = _TOML_LINE.sub("", message).strip()
        raise DeclarationError(f"{file}:{line}: not valid TOML: {reason}") from None
    return _Parser(file, text).declaration(body)


class _Parser:
    def __init__(self, file: Path, text: str) -> None:
        self.file = file
        self.locate = _Locator(text)

    def fail(self, where: tuple[str | int, ...], message: str) -> DeclarationError:
        shown = _dotted(where)
        line = self.locate(where)
        return DeclarationError(f"{self.file}:{line}: {shown}: {message}")

    def declaration(self, body: dict[str, Any]) -> Declaration:
        unknown = sorted(set(body) - {"pgbust", "tables", "entries"})
        if unknown:
            raise self.fail(
                (unknown[0],), "unknown section (expected [pgbust], [tables.*] or [entries.*])"
            )
        options = self._table_value(body, ("pgbust",))
        loaders, migrations = self._options(options)
        tables_body = self._table_value(body, ("tables",))
        tables = {name: self._table(name, spec) for name, spec in tables_body.items()}
        entries_body = self._table_value(body, ("entries",))
        entries = {name: self._entry(name, spec) for name, spec in entries_body.items()}
        declaration = Declaration(self.file, tables, entries, loaders, migrations)
        self._check_entries_are_invalidated(declaration)
        return declaration

    # --- sections -----------------------------------------------------------------------------

    def _table_value(self, body: dict[str, Any], where: tuple[str, ...]) -> dict[str, Any]:
        value = body.get(where[-1], {})
        if not isinstance(value, dict):
            raise self.fail(where, "must be a table")
        return value

    def _options(self, options: dict[str, Any]) -> tuple[str | None, tuple[Path, ...]]:
        unknown = sorted(set(options) - {"loaders", "migrations"})
        if unknown:
            raise self.fail(("pgbust", unknown[0]), "unknown key (expected loaders, migrations)")
        loaders = options.get("loaders")
        if loaders is not None and (
            not isinstance(loaders, str) or not re.fullmatch(r"[\w.]+:[\w.]+", loaders)
        ):
            raise self.fail(("pgbust", "loaders"), 'must be "module:attribute"')
        raw = options.get("migrations", [])
        folders = [raw] if isinstance(raw, str) else raw
        if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
            raise self.fail(("pgbust", "migrations"), "must be a folder or a list of folders")
        base = self.file.parent
        return loaders, tuple((base / folder).resolve() for folder in folders)

    def _table(self, relation: str, spec: Any) -> Table:
        where: tuple[str | int, ...] = ("tables", relation)
        if not _RELATION.fullmatch(relation):
            raise self.fail(where, 'the table must be named "schema.table" (e.g. public.orders)')
        if not isinstance(spec, dict):
            raise self.fail(where, "must be a table")
        allowed = {"key", "depends", "entries", "tags", "max_rows"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise self.fail(
                (*where, unknown[0]), f"unknown key (expected {', '.join(sorted(allowed))})"
            )
        if "key" not in spec:
            raise self.fail(where, "needs key = [...] (the columns that identify a row)")
        key = self._columns(spec["key"], (*where, "key"), allow_empty=False)
        depends = self._columns(spec.get("depends", []), (*where, "depends"), allow_empty=True)
        both = sorted(set(key) & set(depends))
        if both:
            raise self.fail((*where, "depends"), f"{both[0]} is already a key column")
        names = frozenset(key + depends)
        rules = [
            *self._rules(spec.get("entries", []), (*where, "entries"), "entry", names),
            *self._rules(spec.get("tags", []), (*where, "tags"), "tag", names),
        ]
        if not rules:
            raise self.fail(
                where, "declares no entries and no tags: a change would invalidate nothing"
            )
        max_rows = spec.get("max_rows", DEFAULT_MAX_ROWS)
        if (
            not isinstance(max_rows, int)
            or isinstance(max_rows, bool)
            or not 1 <= max_rows <= 1_000_000
        ):
            raise self.fail((*where, "max_rows"), "must be an integer from 1 to 1000000")
        return Table(relation, key, depends, tuple(rules), max_rows)

    def _columns(
        self, value: Any, where: tuple[str | int, ...], *, allow_empty: bool
    ) -> tuple[str, ...]:
        if not isinstance(value, list) or (not value and not allow_empty):
            raise self.fail(
                where,
                "must be a non-empty list of column names"
                if not allow_empty
                else "must be a list of column names",
            )
        for index, column in enumerate(value):
            if not isinstance(column, str) or not _COLUMN.fullmatch(column):
                raise self.fail((*where, index), f"{column!r} is not a column name")
        if len(set(value)) != len(value):
            raise self.fail(where, "names a column twice")
        return tuple(value)

    def _rules(
        self, value: Any, where: tuple[str | int, ...], kind: str, names: frozenset[str]
    ) -> list[Rule]:
        if not isinstance(value, list):
            raise self.fail(where, f"must be a list of {kind} templates")
        return [self._rule(item, (*where, index), kind, names) for index, item in enumerate(value)]

    def _rule(
        self, item: Any, where: tuple[str | int, ...], kind: str, names: frozenset[str]
    ) -> Rule:
        when: frozenset[str] = frozenset(OPERATIONS)
        columns: frozenset[str] | None = None
        if isinstance(item, dict):
            allowed = {kind, "when", "columns"}
            unknown = sorted(set(item) - allowed)
            if unknown or kind not in item:
                problem = f"unknown key {unknown[0]!r}" if unknown else f'needs {kind} = "..."'
                raise self.fail(where, f"{problem} (an inline rule has {kind}, when, columns)")
            text = item[kind]
            if "when" in item:
                ops = item["when"]
                if not isinstance(ops, list) or not ops or not all(op in OPERATIONS for op in ops):
                    raise self.fail(where, f"when must list some of {', '.join(OPERATIONS)}")
                when = frozenset(ops)
            if "columns" in item:
                columns = frozenset(
                    self._columns(item["columns"], (*where, "columns"), allow_empty=False)
                )
        else:
            text = item
        template = self._template(text, where)
        extra = [name for name in template.names if name not in names]
        if extra:
            known = ", ".join(sorted(names))
            raise self.fail(
                where,
                f"{{{extra[0]}}} in {text!r} is not a key or depends column (those are: {known}); "
                "a template may only name columns the capture sends",
            )
        return Rule(template, kind, when, columns)

    def _template(self, text: Any, where: tuple[str | int, ...]) -> Template:
        try:
            return Template.parse(text)
        except TemplateError as exc:
            raise self.fail(where, str(exc)) from None

    def _entry(self, name: str, spec: Any) -> EntryType:
        where: tuple[str | int, ...] = ("entries", name)
        template = self._template(name, where)
        if not isinstance(spec, dict):
            raise self.fail(where, "must be a table")
        unknown = sorted(set(spec) - {"tags", "rows"})
        if unknown:
            raise self.fail((*where, unknown[0]), "unknown key (expected tags, rows)")
        raw = spec.get("tags", [])
        if not isinstance(raw, list):
            raise self.fail((*where, "tags"), "must be a list of tag templates")
        tags = []
        for index, text in enumerate(raw):
            tag = self._template(text, (*where, "tags", index))
            extra = [n for n in tag.names if n not in template.names]
            if extra:
                raise self.fail(
                    (*where, "tags", index),
                    f"{{{extra[0]}}} is not a placeholder of the entry {name!r}",
                )
            tags.append(tag)
        raw_rows = spec.get("rows", [])
        if not isinstance(raw_rows, list):
            raise self.fail((*where, "rows"), "must be a list of row tag templates")
        rows = [
            self._template(text, (*where, "rows", index)) for index, text in enumerate(raw_rows)
        ]
        return EntryType(template, tuple(tags), tuple(rows))

    def _check_entries_are_invalidated(self, declaration: Declaration) -> None:
        """An entry no table rule can reach would be stale forever: refuse it."""
        entry_rules = [
            r.template for t in declaration.tables.values() for r in t.rules if r.kind == "entry"
        ]
        tag_rules = [
            r.template for t in declaration.tables.values() for r in t.rules if r.kind == "tag"
        ]
        seen: list[Template] = []
        for name, entry in declaration.entries.items():
            for other in seen:
                if other.overlaps(entry.template):
                    raise self.fail(
                        ("entries", name),
                        f"overlaps the entry {other.text!r}: a name could belong to both",
                    )
            seen.append(entry.template)
            for section, templates in (("tags", entry.tags), ("rows", entry.rows)):
                for index, tag in enumerate(templates):
                    if not any(rule.overlaps(tag) for rule in tag_rules):
                        raise self.fail(
                            ("entries", name, section, index),
                            f"no table rule bumps a tag like {tag.text!r}: entries filed under "
                            "it would never be invalidated (a typo?)",
                        )
            if not entry.tags and not any(rule.overlaps(entry.template) for rule in entry_rules):
                raise self.fail(
                    ("entries", name),
                    "no table rule invalidates this entry and it has no tags: it would never "
                    "be invalidated",
                )


def _dotted(where: Iterable[str | int]) -> str:
    out = ""
    for part in where:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _COLUMN.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f'."{part}"' if out else f'"{part}"'
    return out


class _Locator:
    """The line of a section or key in the TOML text (tomllib keeps no positions).

    Looks for the section header ([tables."public.orders"]) and then for the key inside
    it; falls back to the header's line, then to line 1.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: list[tuple[int, tuple[str, ...]]] = []
        for number, line in enumerate(self.lines, start=1):
            stripped = line.strip()
            if stripped.startswith("[") and not stripped.startswith("[["):
                try:
                    parsed = tomllib.loads(stripped.split("#", 1)[0].strip() + "\n")
                except tomllib.TOMLDecodeError:
                    continue
                self.headers.append((number, _first_path(parsed)))

    def __call__(self, where: tuple[str | int, ...]) -> int:
        names = tuple(part for part in where if isinstance(part, str))
        best_line, best_len = 1, 0
        for number, path in self.headers:
            if names[: len(path)] == path and len(path) > best_len:
                best_line, best_len = number, len(path)
        rest = names[best_len:]
        if not rest:
            return best_line
        key = re.compile(rf"^\s*{re.escape(rest[0])}\s*=")
        end = next((n for n, _ in self.headers if n > best_line), len(self.lines) + 1)
        start = best_line if best_len else 1
        for number in range(start, end):
            if key.match(self.lines[number - 1]):
                return number
        return best_line


def _first_path(parsed: dict[str, Any]) -> tuple[str, ...]:
    path: list[str] = []
    node: Any = parsed
    while isinstance(node, dict) and len(node) == 1:
        name = next(iter(node))
        path.append(name)
        node = node[name]
    return tuple(path)
