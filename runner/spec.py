"""The configspec as data: typed checks, defaults and documentation of every key.

Everything that needs to know what a key means (validation, the sample config,
the docs) reads it from here, so they cannot drift apart.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass
from functools import cache
from typing import Any

from configobj import ConfigObj

from .console import format_value
from .settings import NotifyReady

try:  # configobj >= 5.0.9 ships validate inside the package
    from configobj import validate
except ImportError:  # pragma: no cover - Debian bookworm's configobj 5.0.8
    import validate

SPEC_FILE = "configspec.ini"


class CheckError(ValueError):
    """A value does not pass its check; the message says why, without the key."""


def unquote(value: str) -> str:
    """Strip one pair of matching quotes around a whole value."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def split_list(value: str | list) -> list[str]:
    """Split a comma-separated config value (configobj keeps it raw for us)."""
    if isinstance(value, list):
        items = value
    else:
        items = value.split(",")
    return [unquote(item.strip()) for item in items if item.strip()]


def _seconds(value: Any, min: Any = None, max: Any = None) -> float:
    return validate.is_float(value, min=min, max=max)


BYTE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _bytes(value: Any, min: Any = None) -> int:
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (match := re.fullmatch(r"\s*(\d+)\s*([KMGT]?)B?\s*",
                                                           value, re.IGNORECASE)):
        number = int(match[1]) * BYTE_UNITS[match[2].upper()]
    else:
        raise CheckError(f"{value!r} is not a size (bytes, or a number with K, M, G or T)")
    if min is not None and number < int(min):
        raise CheckError(f"{value} is less than {min} bytes")
    return number


def _command(value: Any) -> list[str]:
    if not isinstance(value, str):
        raise validate.VdtTypeError(value)
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise CheckError(f"cannot split {value!r} into a command line: {exc}") from None
    if not argv:
        raise CheckError("empty command line")
    if "\0" in value:  # no argument of a program can hold one
        raise CheckError("NUL byte in command line")
    return argv


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise CheckError("empty path")
    if "\0" in value:
        raise CheckError("NUL byte in path")
    return value


def _string_list(value: Any) -> list[str]:
    if isinstance(value, (str, list)):
        return split_list(value)
    raise validate.VdtTypeError(value)


def _notify_ready(value: Any) -> str:
    if not isinstance(value, str):
        raise validate.VdtTypeError(value)
    try:
        NotifyReady.parse(value)
    except ValueError as exc:
        raise CheckError(str(exc)) from None
    return value


def _journal_url(value: Any) -> str:
    if not isinstance(value, str):
        raise validate.VdtTypeError(value)
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("postgresql", "postgres") or not rest:
        raise CheckError("not a postgresql://[user[:password]@]host[:port]/dbname URL")
    return value


CUSTOM_CHECKS = {
    "seconds": _seconds,
    "bytes": _bytes,
    "command": _command,
    "path": _path,
    "filename": _path,
    "string_list": _string_list,
    "notify_ready": _notify_ready,
    "journal_url": _journal_url,
}

# What each check is called in messages and docs.
TYPE_NAMES = {
    "seconds": "seconds",
    "bytes": "size",
    "integer": "integer",
    "float": "number",
    "boolean": "boolean",
    "string": "string",
    "command": "command line",
    "path": "path",
    "filename": "file name",
    "string_list": "comma-separated list",
    "notify_ready": "start, pass or task:NAME",
    "journal_url": "postgresql:// URL",
}


@dataclass(frozen=True)
class KeySpec:
    """One key of the configspec."""

    section: str
    name: str
    check: str
    func: str
    args: tuple
    kwargs: dict
    default: Any
    doc: tuple[str, ...]

    @property
    def summary(self) -> str:
        return self.doc[0] if self.doc else ""

    @property
    def base_type(self) -> str:
        if self.func == "option":
            return "one of " + ", ".join(self.args)
        return TYPE_NAMES.get(self.func, self.func)

    @property
    def type_name(self) -> str:
        """The type with its bounds, for the docs."""
        bounds = []
        if self.kwargs.get("min") is not None:
            bounds.append(f"≥ {self.kwargs['min']}")
        if self.kwargs.get("max") is not None:
            bounds.append(f"≤ {self.kwargs['max']}")
        return " ".join([self.base_type, *bounds])

    @property
    def default_text(self) -> str:
        """The default as it would be written in runner.cfg ('' when unset)."""
        return format_value(self.default) if self.default is not None else ""


class Spec:
    """The parsed configspec with a validator that knows runner's custom checks."""

    def __init__(self, text: list[str]) -> None:
        raw = ConfigObj(text, list_values=False, _inspec=True, interpolation=False)
        self.validator = validate.Validator(CUSTOM_CHECKS)
        self.sections: dict[str, dict[str, KeySpec]] = {}
        self.section_docs: dict[str, tuple[str, ...]] = {}
        for section in raw.sections:
            self.section_docs[section] = _doc(raw.comments.get(section, []))
            keys = {}
            for name in raw[section].scalars:
                if name == "__many__":
                    continue
                check = raw[section][name]
                func, args, kwargs, default = self.validator._parse_with_caching(check)
                default = self._typed_default(check, default)
                keys[name] = KeySpec(
                    section, name, check, func, tuple(args), dict(kwargs), default,
                    _doc(raw[section].comments.get(name, [])),
                )
            self.sections[section] = keys

    def _typed_default(self, check: str, default: Any) -> Any:
        if default is None:
            return None
        return self.validator.check(check, None, missing=True)

    def check(self, key: KeySpec, value: Any) -> Any:
        """Convert a raw value; raise CheckError with a message naming the value."""
        try:
            typed = self.validator.check(key.check, value)
        except CheckError:
            raise
        except validate.VdtValueTooSmallError:
            raise CheckError(f"{value!r} is less than {key.kwargs.get('min')}") from None
        except validate.VdtValueTooBigError:
            raise CheckError(f"{value!r} is greater than {key.kwargs.get('max')}") from None
        except validate.ValidateError:
            kind = key.base_type
            if key.func == "seconds":
                kind = "a number of seconds"
            elif key.func not in ("option", "notify_ready"):
                kind = ("an " if kind[0] in "aeiou" else "a ") + kind
            raise CheckError(f"{value!r} is not {kind}") from None
        # float() accepts nan and inf, which pass any bound and break every pause and limit.
        if isinstance(typed, float) and not math.isfinite(typed):
            raise CheckError(f"{value!r} is not a finite number")
        return typed


def _doc(comments: list[str]) -> tuple[str, ...]:
    lines = [c.strip() for c in comments if c.strip()]
    return tuple(line.lstrip("#").strip() for line in lines)


@cache
def load_spec() -> Spec:
    """The configspec shipped in the package (parsed once per process)."""
    # Beside this module in every way runner is installed (venv, .deb, .rpm): read as a
    # file, not through importlib.resources, which imports zipfile for every command.
    with open(os.path.join(os.path.dirname(__file__), SPEC_FILE), encoding="utf-8") as spec:
        text = spec.read()
    return Spec(text.splitlines())
