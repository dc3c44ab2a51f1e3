"""Load runner.cfg, its fragments and -D overrides, and validate them against the configspec.

Every problem becomes a ConfigError whose message is one line naming the file,
the line (when known), the section and key, and what is wrong.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from configobj import ConfigObj, ConfigObjError, DuplicateError, NestingError

from . import dialect, permissions
from .errors import ConfigError
from .names import name_is_candidate
from .settings import RunnerSettings, TaskSettings
from .spec import CheckError, KeySpec, Spec, load_spec, unquote

DEFAULT_CONFIG = "/etc/runner/runner.cfg"
RUNNER, ENV = "runner", "env"
# Keys of a per-task section that override [runner]; other keys belong to the task.
TASK_SPEC = "task"
# [runner] keys the original accepted and ignored: a warning, not an error.
IGNORED_SPEC = "ignored"
STRICT = "strict_permissions"


@dataclass(frozen=True)
class Origin:
    """Where a value came from, for error messages and relative paths."""

    source: str  # a file path, or "-D section.key=value"
    line: int | None = None

    @property
    def base_dir(self) -> str:
        if self.source.startswith("-D "):
            return os.getcwd()
        return os.path.dirname(os.path.abspath(self.source))

    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass(frozen=True)
class Config:
    """A validated configuration.

    `runner` holds the typed [runner] settings (defaults filled in), `env` the
    [env] exports, `sections` every section's values as written (unquoted).
    """

    path: str | None
    files: tuple[str, ...]
    runner: RunnerSettings
    env: dict[str, str]
    sections: dict[str, dict[str, str]]
    origins: dict[tuple[str, str], Origin]
    overrides: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # The bytes read from each of `files` (runner.confcache keeps answers for them).
    contents: tuple[bytes, ...] = field(default=(), repr=False, compare=False)
    # The settings of every task without a section of its own: the same for all of them,
    # worked out once (no setting is ever changed in place: TaskSettings is frozen).
    _plain_task: list[TaskSettings] = field(default_factory=list, repr=False, compare=False)

    def task_settings(self, short_name: str) -> TaskSettings:
        """Effective settings of a task: its section's overrides on top of [runner]."""
        if short_name in self.sections:
            return self._task_settings(short_name)
        if not self._plain_task:
            self._plain_task.append(self._task_settings(short_name))
        return self._plain_task[0]

    def _task_settings(self, short_name: str) -> TaskSettings:
        spec = load_spec()
        section = self.sections.get(short_name, {})
        values: dict[str, Any] = {}
        for name, key in spec.sections[TASK_SPEC].items():
            if name in section:
                values[name] = _check(spec, key, section[name], self.origins, short_name)
            elif hasattr(self.runner, name):
                values[name] = getattr(self.runner, name)
            else:  # a key only tasks have (depends_on, check, frequency)
                default = key.default
                values[name] = list(default) if isinstance(default, list) else default
        return TaskSettings.from_values(values)

    def snapshot(self) -> dict[str, Any]:
        """The effective config as JSON-able data, for runner-config in tasks."""
        sections = {name: dict(values) for name, values in self.sections.items()}
        sections[RUNNER] = {k: v for k, v in self.runner.values().items() if v is not None}
        return {"config": self.path, "sections": sections}


def load(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load and validate a configuration.

    `path` None means the default file, which may be absent (defaults apply);
    a file named explicitly must exist.
    """
    spec = load_spec()
    explicit = path is not None
    path = path or DEFAULT_CONFIG
    origins: dict[tuple[str, str], Origin] = {}
    files: list[str] = []
    contents: list[bytes] = []
    if explicit or os.path.lexists(path):
        merged = _read_file(path, origins, contents)
        files.append(path)
    else:
        merged = ConfigObj(list_values=False, interpolation=False)
    parsed_overrides = [(o, *parse_override(o)) for o in overrides]
    runner_section = merged.get(RUNNER)
    # A top-level `runner = x` key is no section: _plain_sections reports it below.
    include = (runner_section.get("include_dir") if isinstance(runner_section, dict)
               else None)
    for override, section, key, value in parsed_overrides:
        # -D decides which fragments are read
        if (section, folded_key(section, key)) == (RUNNER, "include_dir"):
            include = value
            origins[(RUNNER, "include_dir")] = Origin(f"-D {override}")
    if include:
        include_key = spec.sections[RUNNER]["include_dir"]
        include_dir = _check(spec, include_key, include, origins, RUNNER)
        for fragment in _fragments(include_dir, origins[(RUNNER, "include_dir")]):
            part = _read_file(fragment, origins, contents)
            _refuse_strictness_in(part, origins)
            merged.merge(part)
            files.append(fragment)
    for override, section, key, value in parsed_overrides:
        key = folded_key(section, key)
        merged.setdefault(section, {})
        if not isinstance(merged[section], dict):
            raise ConfigError(f"-D {override}: {section!r} is a key, not a section")
        merged[section][key] = value
        origins[(section, key)] = Origin(f"-D {override}")
    sections = _plain_sections(merged, origins)
    warnings: list[str] = []
    runner = _validate_runner(spec, sections.get(RUNNER, {}), origins, warnings)
    if permissions.applies(runner.strict_permissions):
        trusted = [(f, "config file") for f in files]
        if include:
            trusted.insert(1, (include_dir, "include_dir"))
        permissions.check(trusted)
    env = dict(sections.get(ENV, {}))
    return Config(
        path=os.path.abspath(path) if files else None,
        files=tuple(files),
        runner=runner,
        env=env,
        sections=sections,
        origins=origins,
        overrides=tuple(overrides),
        warnings=tuple(warnings),
        contents=tuple(contents),
    )


def _known_keys(section: str) -> set[str]:
    """The keys runner reads from `section` in any case (RawConfigParser lowercased every
    key): [runner]'s own and the per-task overrides. [env] names keep their case."""
    spec = load_spec()
    if section == RUNNER:
        return set(spec.sections[RUNNER]) | set(spec.sections[IGNORED_SPEC])
    return set() if section == ENV else set(spec.sections[TASK_SPEC])


def folded_key(section: str, key: str) -> str:
    """`key` as runner reads it: a known key in another case becomes that key."""
    return key.lower() if key.lower() in _known_keys(section) else key


def _refuse_spellings(
    section: str, key: str, other: str, origins: dict[tuple[str, str], Origin]
) -> None:
    """Two spellings of one key: name the later line, as configobj does for a duplicate."""
    def line(name: str) -> int:
        return origins.get((section, name), Origin("config")).line or 0

    first, second = sorted((key, other), key=line)
    origin = origins.get((section, second), Origin("config"))
    raise ConfigError(
        f"{origin.where()}: [{section}] {second}: duplicate key ({first} is the same key: "
        "its case does not matter): remove one of them"
    )


def _fold_case(parsed: ConfigObj, origins: dict[tuple[str, str], Origin]) -> None:
    """Rename keys of one file to folded_key(), before files are merged (so a fragment's
    max_tries overrides the main file's Max_Tries); two spellings in one section of one
    file are a duplicate, as configobj reports for one spelling."""
    for section in parsed.sections:
        values = parsed[section]
        for key in list(values.scalars):
            name = folded_key(section, key)
            if name == key:
                continue
            if name in values:
                _refuse_spellings(section, key, name, origins)
            values.rename(key, name)
            if (section, key) in origins:
                origins[(section, name)] = origins[(section, key)]


def _refuse_strictness_in(fragment: ConfigObj, origins: dict[tuple[str, str], Origin]) -> None:
    """strict_permissions guards the fragments, so only the main file and -D (root's own
    input) may decide it: a fragment that sets it is an error, whatever the value."""
    section = fragment.get(RUNNER)
    if isinstance(section, dict) and STRICT in section:
        origin = origins.get((RUNNER, STRICT), Origin("config"))
        raise ConfigError(
            f"{origin.where()}: [runner] {STRICT}: may only be set in the main config file "
            "or with -D, not in an include_dir fragment (remove it from this file)"
        )


def parse_override(text: str) -> tuple[str, str, str]:
    """Split `section.key=value`; the value is kept as written (like in a file)."""
    target, sep, value = text.partition("=")
    section, dot, key = target.strip().partition(".")
    if not sep or not dot or not section or not key.strip():
        raise ConfigError(f"-D {text}: expected section.key=value")
    return section, key.strip(), value.strip()


def _read_file(path: str, origins: dict[tuple[str, str], Origin],
               contents: list[bytes]) -> ConfigObj:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    contents.append(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})"
        ) from None
    lines = config_lines(text)
    try:
        translated = dialect.translate(lines)
    except dialect.DialectError as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc}: {lines[exc.line - 1].strip()!r}") from None
    try:
        parsed = ConfigObj(
            translated.lines, list_values=False, interpolation=False, raise_errors=True,
        )
    except ConfigObjError as exc:
        raise ConfigError(_parse_error(path, lines, exc)) from None
    dialect.restore(parsed, translated)
    _record_origins(path, translated.lines, parsed, origins)
    _fold_case(parsed, origins)
    return parsed


def config_lines(text: str) -> list[str]:
    """The lines of a config file as the original's readline() saw them: split on \n
    (a \r before it goes too), never on a form feed, \x1c-\x1e, U+0085 or U+2028,
    which str.splitlines() would break a value at, shifting every line number after it."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _parse_error(path: str, lines: list[str], exc: ConfigObjError) -> str:
    number = getattr(exc, "line_number", None)
    if isinstance(exc, DuplicateError):
        what = "duplicate key or section"
    elif isinstance(exc, NestingError):
        what = "section brackets do not match"
    else:
        what = "cannot parse this line"
    if number and 0 < number <= len(lines):
        return f"{path}:{number}: {what}: {lines[number - 1].strip()!r}"
    return f"{path}: {what}: {exc}"


# A header is `^\s*\[+\s*(.*?)\s*\]+\s*(#.*)?$`, matched in two linear steps: that regex
# backtracks cubically, and the lines of a multi-line value are scanned too (a 4 KB line
# `[      x` took minutes). The end is matched on the reversed line, so the first `#` that
# follows the brackets wins, as the lazy name makes it.
_SECTION_START = re.compile(r"\s*\[+\s*")
_SECTION_END_REVERSED = re.compile(r"(?:.*#)?\s*\]+\s*")
_KEY = re.compile(r"""^\s*(?:"([^"]*)"\s*=|'([^']*)'\s*=|([^=#\s][^=]*)=)""")


def _section_name(line: str) -> str | None:
    """The name in a `[name]` header line, or None when the line is no header."""
    start = _SECTION_START.match(line)
    if not start:
        return None
    rest = line[start.end():]
    end = _SECTION_END_REVERSED.match(rest[::-1])
    return rest[:len(rest) - end.end()] if end else None


def _record_origins(
    path: str, lines: list[str], parsed: ConfigObj, origins: dict[tuple[str, str], Origin]
) -> None:
    """Remember the line of every key, since configobj keeps none after parsing."""
    section = ""
    for number, line in enumerate(lines, start=1):
        header = _section_name(line)
        if header is not None:
            section = header.strip("\"'")
            origins[(section, "")] = Origin(path, number)
            continue
        key = _KEY.match(line)
        if key:
            name = next(g for g in key.groups() if g is not None).strip()
            origins[(section, name)] = Origin(path, number)
    # Keys configobj accepted that the scan could not place still name the file.
    for name in parsed.sections:
        for key in parsed[name].scalars:
            origins.setdefault((name, key), Origin(path))
    for key in parsed.scalars:
        origins.setdefault(("", key), Origin(path))


def _fragments(directory: str, origin: Origin) -> list[str]:
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise ConfigError(
            f"{origin.where()}: [runner] include_dir: cannot read {directory}: {exc.strerror}"
        ) from None
    paths = [os.path.join(directory, n) for n in names if name_is_candidate(n)]
    return sorted((p for p in paths if os.path.isfile(p)), key=os.fsencode)


def _plain_sections(
    merged: ConfigObj, origins: dict[tuple[str, str], Origin]
) -> dict[str, dict[str, str]]:
    """Flatten configobj's tree into {section: {key: value}}, rejecting what runner cannot use."""
    for key in merged.scalars:
        origin = origins.get(("", key), Origin("config"))
        raise ConfigError(f"{origin.where()}: {key}: key outside of any [section]")
    sections: dict[str, dict[str, str]] = {}
    for name in merged.sections:
        section = merged[name]
        for sub in section.sections:
            origin = origins.get((sub, ""), origins.get((name, ""), Origin("config")))
            raise ConfigError(
                f"{origin.where()}: [{name}] [[{sub}]]: nested sections are not supported"
            )
        sections[name] = {key: unquote(section[key]) for key in section.scalars}
    return sections


def _validate_runner(
    spec: Spec, values: dict[str, str], origins: dict[tuple[str, str], Origin],
    warnings: list[str],
) -> RunnerSettings:
    keys, ignored = spec.sections[RUNNER], spec.sections[IGNORED_SPEC]
    for name in values:
        if name in ignored:
            origin = origins.get((RUNNER, name), Origin("config"))
            warnings.append(f"{origin.where()}: [runner] {name}: ignored "
                            f"({ignored[name].summary}); remove it")
        elif name not in keys:
            origin = origins.get((RUNNER, name), Origin("config"))
            hint = difflib.get_close_matches(name.lower(), list(keys), n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            raise ConfigError(f"{origin.where()}: [runner] {name}: unknown key{suggestion}")
    typed: dict[str, Any] = {}
    for name, key in keys.items():
        if name in values:
            typed[name] = _check(spec, key, values[name], origins, RUNNER)
        else:
            typed[name] = key.default
    return RunnerSettings.from_values(typed)


def _check(
    spec: Spec, key: KeySpec, value: Any, origins: dict[tuple[str, str], Origin], section: str
) -> Any:
    origin = origins.get((section, key.name), Origin("config"))
    try:
        typed = spec.check(key, value)
    except CheckError as exc:
        raise ConfigError(f"{origin.where()}: [{section}] {key.name}: {exc}") from None
    if key.func == "path" and typed and not os.path.isabs(typed):
        typed = os.path.normpath(os.path.join(origin.base_dir, typed))
    return typed
