"""Turn the RawConfigParser dialect of the original runner's config files into configobj lines.

The original read runner.cfg with Python 2.7's RawConfigParser, and fleets' files are
written for it. This pre-pass keeps one output line per input line (so configobj's line
numbers and the origins stay right) and, in one linear scan:

- drops `;` comment lines (indented too, as Python 3 does) and column-0 `REM` lines;
- rewrites `key: value` as `key = value` (the first `:` or `=` ends the key, as there);
- cuts an inline comment from an unquoted value the way Python 2.7 did: at the first `;`
  when whitespace precedes it;
- joins continuation lines (indented deeper than the key) into the value above them, as
  RawConfigParser did (stripped, blank lines skipped, joined with newlines); such a value
  is kept exactly as RawConfigParser reads it, so configobj gets a marker in its place,
  and the value is put back after parsing.

A line that reads differently in the two dialects is refused (DialectError) with what
to change, rather than guessed at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from configobj import ConfigObj

QUOTES = "\"'"
TRIPLES = ('"""', "'''")


class DialectError(ValueError):
    """A line that cannot be read the way the original read it; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


@dataclass
class _Option:
    """An option line whose value indented lines below may continue."""

    out_index: int
    indent: str
    key: str
    pieces: list[str]


@dataclass
class Translated:
    """configobj lines (one per input line) and the multi-line values behind markers."""

    lines: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)
    # A marker no file can contain by chance: configobj gets it in place of a joined value.
    # (os.urandom, what secrets.token_hex reads, without importing secrets: its hashlib
    # and random cost every command that loads the configuration.)
    token: str = field(default_factory=lambda: f"\x00{os.urandom(8).hex()}:")


def translate(lines: list[str]) -> Translated:
    """The configobj reading of `lines` written in RawConfigParser's dialect."""
    result = Translated()
    option: _Option | None = None
    triple: str | None = None  # inside a configobj triple-quoted value: its closing quotes
    for number, text in enumerate(lines, start=1):
        if triple is not None:  # configobj's own multi-line value: its lines are data
            result.lines.append(text)
            if triple in text:
                triple = None
            continue
        stripped = text.strip()
        if not stripped or stripped[0] == "#":  # blank lines do not end a continued value
            result.lines.append(text)
        elif stripped[0] == ";" or _is_rem(text, stripped, number):
            result.lines.append("")
        elif stripped[0] == "[":
            _finish(option, result)
            option = None
            result.lines.append(text)
        elif option is not None and _deeper(text, option):
            _continue(option, stripped, number)
            result.lines.append("")
        else:
            _finish(option, result)
            line, option, triple = _option_line(text, len(result.lines))
            result.lines.append(line)
    _finish(option, result)
    return result


def restore(parsed: ConfigObj, translated: Translated) -> None:
    """Put the joined multi-line values back where translate() left markers."""
    if not translated.values:
        return
    for section in [parsed, *(parsed[name] for name in parsed.sections)]:
        for key in section.scalars:
            value = section[key]
            if isinstance(value, str) and value in translated.values:
                section[key] = translated.values[value]


def _is_rem(text: str, stripped: str, number: int) -> bool:
    """Python 2.7 skipped lines whose first word is REM (any case) at column 0."""
    if text[0] not in "rR" or stripped.split(None, 1)[0].lower() != "rem":
        return False
    if "=" in stripped or ":" in stripped:
        raise DialectError(number, "a line starting with REM was a comment in the original "
                           "runner: start it with # to keep it a comment, or rename the key")
    return True


def _deeper(text: str, option: _Option) -> bool:
    """Indented more than the option line: a continuation (Python 3's rule, the same as
    2.7's for a file 2.7 could read, whose keys start at column 0; a file indented as a
    whole keeps its keys)."""
    return len(text) - len(text.lstrip()) > len(option.indent)


def _continue(option: _Option, stripped: str, number: int) -> None:
    if "=" in stripped:
        raise DialectError(number, (
            f"indented line continues the value of {option.key!r} in RawConfigParser's "
            "dialect but reads as a key here: un-indent it to make it a key, or write "
            "the whole value on one line"))
    option.pieces.append(stripped)


def _finish(option: _Option | None, result: Translated) -> None:
    """Replace a continued option's line by `key = MARKER`, keeping the joined value."""
    if option is not None and len(option.pieces) > 1:
        marker = f"{result.token}{len(result.values)}"
        result.values[marker] = "\n".join(option.pieces)
        result.lines[option.out_index] = f"{option.indent}{option.key} = {marker}"


def _option_line(text: str, index: int) -> tuple[str, _Option | None, str | None]:
    """One `key = value` or `key: value` line: the configobj line, the option that
    continuation lines may extend, and the closing quotes of a multi-line value."""
    stripped = text.lstrip()
    indent = text[:len(text) - len(stripped)]
    if stripped[0] in QUOTES:  # a quoted key is configobj's syntax: leave it to configobj
        return text, None, _opened_triple(_after_quoted_key(stripped))
    ends = [at for at in (stripped.find("="), stripped.find(":")) if at > 0]
    if not ends or not stripped[:min(ends)].strip():
        return text, None, None  # no key: configobj reports the line
    at = min(ends)
    key, raw = stripped[:at].strip(), stripped[at + 1:].lstrip()
    if raw and raw[0] in QUOTES:  # a quoted value: configobj unquotes it, ; and all
        line = text if stripped[at] == "=" else f"{indent}{key} = {raw}"
        return line, None, _opened_triple(raw)
    value = _cut_inline_comment(raw).strip()
    return f"{indent}{key} = {value}", _Option(index, indent, key, [value]), None


def _cut_inline_comment(value: str) -> str:
    """Python 2.7's rule: the first `;` starts a comment if whitespace precedes it
    (for a `;` that opens the value, the character checked is the value's last one)."""
    at = value.find(";")
    if at != -1 and value[at - 1].isspace():
        return value[:at]
    return value


def _after_quoted_key(stripped: str) -> str | None:
    close = stripped.find(stripped[0], 1)
    rest = stripped[close + 1:].lstrip() if close != -1 else ""
    return rest[1:].lstrip() if rest.startswith("=") else None


def _opened_triple(value: str | None) -> str | None:
    """The closing quotes when `value` opens a configobj value that goes on below."""
    if value and value[:3] in TRIPLES and value.find(value[:3], 3) == -1:
        return value[:3]
    return None
