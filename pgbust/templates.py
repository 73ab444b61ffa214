"""Key templates: "order:{id}" and how a row's values render into entry and tag names (pure).

A template is ':'-separated segments; a segment is literal text or holds one placeholder
("{id}", optionally with literal text around it: "v{n}"). A rendered value is escaped so that
it can never be mistaken for template text: '%', ':', '{', '}', the ASCII space and control
characters become %XX (upper-case hex); everything else, unicode included, is kept. Two
different value tuples therefore render to two different names under one template, and a
rendered name parses back to its values (`Template.match`).

Values render from their Postgres text form, so the trigger (which sends `col::text`), the WAL
decoder (pgoutput's text tuples) and an application passing Python values agree: int ->
decimal, bool -> true/false, uuid.UUID -> lower-case hyphenated, str -> itself, Decimal ->
str(). Types whose text form depends on server settings (floats, timestamps) are refused: pass
their Postgres text as a str. The SQL twin of `escape` is pgbust.key_part() in
db/triggers/05_key_part.sql; a test checks that the two agree.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED = frozenset("%:{}")
_ESCAPED = re.compile(r"%([0-9A-F]{2})")


class TemplateError(ValueError):
    """A template that cannot be used; the message says what is wrong with it."""


def _needs_escape(char: str) -> bool:
    # ASCII only, so that the SQL twin is a plain character test (unicode is unambiguous)
    return char in _RESERVED or ord(char) <= 0x20 or ord(char) == 0x7F


def escape(text: str) -> str:
    """The value as it appears inside a name: reserved characters as %XX."""
    if not any(_needs_escape(char) for char in text):
        return text
    out = []
    for char in text:
        if _needs_escape(char):
            out.append(f"%{ord(char):02X}")
        else:
            out.append(char)
    return "".join(out)


def unescape(text: str) -> str:
    """The inverse of escape."""
    if "%" not in text:
        return text
    raw = bytearray()
    position = 0
    for match in _ESCAPED.finditer(text):
        raw += text[position : match.start()].encode()
        raw.append(int(match[1], 16))
        position = match.end()
    raw += text[position:].encode()
    return raw.decode()


def text_of(value: Any) -> str:
    """A Python value in its Postgres text form (what the trigger sends as col::text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str | Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(
        f"cannot render a {type(value).__name__} into a cache key: use int, str, bool, "
        "uuid.UUID or Decimal, or pass the column's Postgres text form as a str"
    )


@dataclass(frozen=True, slots=True)
class _Segment:
    prefix: str
    name: str | None  # None: a literal segment
    suffix: str = ""

    def render(self, values: dict[str, str]) -> str:
        if self.name is None:
            return self.prefix
        return self.prefix + escape(values[self.name]) + self.suffix


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template; `names` are its placeholders in order of appearance."""

    text: str
    segments: tuple[_Segment, ...]
    names: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        if not isinstance(text, str) or not text:
            raise TemplateError("a template must be a non-empty string")
        segments = []
        names: list[str] = []
        for part in text.split(":"):
            found = list(_PLACEHOLDER.finditer(part))
            stray = _PLACEHOLDER.sub("", part)
            if "{" in stray or "}" in stray:
                raise TemplateError(f"unbalanced brace in {text!r}")
            if not part:
                raise TemplateError(f"empty segment in {text!r} (two ':' in a row?)")
            if not found:
                segments.append(_Segment(part, None))
                continue
            if len(found) > 1:
                raise TemplateError(
                    f"{text!r}: one placeholder per ':'-separated segment (in {part!r}), so "
                    "that a rendered name is never ambiguous"
                )
            match = found[0]
            name = match[1]
            if not _NAME.fullmatch(name):
                raise TemplateError(f"{text!r}: {{{name}}} is not a column name")
            if name in names:
                raise TemplateError(f"{text!r}: {{{name}}} appears twice")
            names.append(name)
            segments.append(_Segment(part[: match.start()], name, part[match.end() :]))
        return cls(text, tuple(segments), tuple(names))

    def render(self, values: dict[str, str]) -> str:
        """The name for these (text) values; every placeholder must be given."""
        return ":".join(segment.render(values) for segment in self.segments)

    def render_row(self, row: Mapping[str, Any]) -> str:
        """The name for Python values (converted by text_of)."""
        return self.render({name: text_of(row[name]) for name in self.names})

    def match(self, name: str) -> dict[str, str] | None:
        """The (unescaped text) values a name was rendered from, or None if it is not one."""
        parts = name.split(":")
        if len(parts) != len(self.segments):
            return None
        values: dict[str, str] = {}
        for part, segment in zip(parts, self.segments, strict=True):
            if segment.name is None:
                if part != segment.prefix:
                    return None
                continue
            if not (part.startswith(segment.prefix) and part.endswith(segment.suffix)):
                return None
            if len(part) < len(segment.prefix) + len(segment.suffix):
                return None
            inner = part[len(segment.prefix) : len(part) - len(segment.suffix)]
            values[segment.name] = unescape(inner)
        return values

    def overlaps(self, other: Template) -> bool:
        """True when some name could be rendered by both templates (ambiguous pair)."""
        if len(self.segments) != len(other.segments):
            return False
        for mine, theirs in zip(self.segments, other.segments, strict=True):
            if mine.name is None and theirs.name is None:
                if mine.prefix != theirs.prefix:
                    return False
            elif mine.name is None or theirs.name is None:
                literal, slot = (mine, theirs) if mine.name is None else (theirs, mine)
                text = literal.prefix
                if not (text.startswith(slot.prefix) and text.endswith(slot.suffix)):
                    return False
                if len(text) < len(slot.prefix) + len(slot.suffix):
                    return False
            elif not _affixes_compatible(mine, theirs):
                return False
        return True


def _affixes_compatible(a: _Segment, b: _Segment) -> bool:
    return (a.prefix.startswith(b.prefix) or b.prefix.startswith(a.prefix)) and (
        a.suffix.endswith(b.suffix) or b.suffix.endswith(a.suffix)
    )
