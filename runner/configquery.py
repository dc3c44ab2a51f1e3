"""Answering `-g section.key` and `-l [SECTION]` from the effective configuration's
{section: {key: value}}: shared by runner-config (runner.getconf, from a snapshot or the
config file) and `runner -g` (runner.cli).

Only `json` and `sys` at import time (runner-config's start-up); -l loads the masking.
"""

import json
import sys  # and no `from __future__ import annotations`: importing __future__ costs too

from .console import format_value, one_line

TYPE_CHECKING = False  # typing's own, without importing typing: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from typing import Any, TextIO

EX_OK, EX_MISSING = 0, 1
STRICT_KEY = "config_get_strict"  # the [runner] key that makes --strict the default


class InputError(Exception):
    """Bad command line or configuration: one line, exit 78."""


def check_show_secrets(wanted: bool) -> None:
    """Only root may list secret values: the config file is root's (mode 0640), and a
    task that switched to another user must not read them through runner-config."""
    import os

    if wanted and os.geteuid() != 0:
        raise InputError("--show-secrets: only root may see secret values")


def split_key(name: str) -> tuple[str, str]:
    section, dot, key = name.partition(".")
    if not dot or not section or not key:
        raise InputError(f"-g {name!r}: expected section.key")
    return section, key


def answer(sections: "Mapping[str, Mapping[str, Any]]", opts: "Mapping[str, Any]",
           out: "TextIO" = sys.stdout, err: "TextIO" = sys.stderr, prog: str = "runner-config",
           hidden: "Collection[tuple[str, str]]" = frozenset()) -> int:
    """Print what opts ask for from {section: {key: value}}; return the exit status.
    `hidden`: (section, key) pairs whose values this user may not read (masked in
    `sections`)."""
    if opts["get"]:
        section, key = split_key(opts["get"])
        values = sections.get(section)
        key = _key_in_any_case(values, key) if values is not None else key
        if values is None or key not in values:
            return _missing(sections, opts, out, err, prog)
        if (section, key) in hidden:
            print(one_line(secret_refusal(prog, opts["get"], opts.get("unreadable"))),
                  file=err)
            return EX_MISSING
        value = values[key]
        print(json.dumps(value) if opts["json"] else format_value(value), file=out)
        return EX_OK
    # Listings mask secret values (-g prints one: a task asked for it by name).
    from .masking import display_sections

    if opts["section"] is not None and opts["section"] not in sections:
        print(one_line(f"{prog}: no section [{opts['section']}]"), file=err)
        return EX_MISSING
    # Only the section asked for is masked for display: masking every value of a
    # configuration of 60,000 took 40 s for `-l` of one section.
    selected = display_sections(sections, opts.get("show_secrets", False), opts["section"])
    if opts["json"]:
        data = selected[opts["section"]] if opts["section"] is not None else selected
        print(json.dumps(data, indent=2, sort_keys=True), file=out)
        return EX_OK
    for section in sorted(selected):
        for key in sorted(selected[section]):
            print(f"{section}.{key} = {format_value(selected[section][key])}", file=out)
    return EX_OK


def _key_in_any_case(values: "Mapping[str, Any]", key: str) -> str:
    """`key` as written in the file: the original's RawConfigParser lowercased option
    names, so `-g hg.remote` found `Remote = x`; an exact match wins, and a name that
    several spellings share is not guessed."""
    if key in values:
        return key
    matches = [name for name in values if name.lower() == key.lower()]
    return matches[0] if len(matches) == 1 else key


def _missing(sections: "Mapping[str, Mapping[str, Any]]", opts: "Mapping[str, Any]",
             out: "TextIO", err: "TextIO", prog: str) -> int:
    """A key or section that is not set: --default's value; else, as the original runner,
    nothing and exit 0 (tasks under `set -e` read optional keys), with a warning that
    lands in the task's log; exit 1 in strict mode."""
    if opts["default"] is not None:
        print(opts["default"], file=out)
        return EX_OK
    section, key = split_key(opts["get"])
    where = (f"no section [{section}]" if section not in sections
             else f"no key {key!r} in [{section}]")
    if opts.get("strict") or sections.get("runner", {}).get(STRICT_KEY) is True:
        print(one_line(f"{prog}: {opts['get']}: {where}"), file=err)
        return EX_MISSING
    print(one_line(f"{prog}: warning: {opts['get']}: {where}; printed nothing (--default "
                   f"VALUE prints a value; --strict or [runner] {STRICT_KEY} = true "
                   "make this an error)"), file=err)
    return EX_OK


def secret_refusal(prog: str, name: str, unreadable: str | None = None) -> str:
    """Why a user other than root does not get a secret value, and what to do instead.
    `unreadable`: why the root-only snapshot could not be read."""
    import os

    if os.geteuid() == 0:  # a copy of the public file alone, or a damaged directory
        return (f"{prog}: {name}: the value is secret and is not in the public snapshot; "
                f"{unreadable}")
    return (f"{prog}: {name}: the value is secret (the key matches [runner] secret_keys, "
            "or the value holds a password or quotes a secret) and only root may read it, "
            f"not uid {os.geteuid()}; to give it to "
            "this task, read it before dropping privileges, pass it in the environment "
            "(an [env] key is exported to every task), or take the key out of secret_keys "
            "if it is not secret")
