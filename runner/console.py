"""What both command-line programs (`runner` and `runner-config`) print for people: an
error is one line, whatever it quotes (runner.escape's rule); a configuration value is
written as in runner.cfg; bytes of arguments that were not UTF-8 are written back as they
came (runner-config's values are data, which a task reads back byte for byte).

Only `sys` at import time: runner-config, which a task may call many times, and
`runner status` import it (so the spec, which formats its defaults here too, is not
imported for that, nor runner.escape and its `re` before there is an error to show).
"""

import sys  # and no `from __future__ import annotations`: importing __future__ costs too

EX_CONFIG = 78  # sysexits(3): bad configuration or input (runner.states.ExitStatus.CONFIG)


def one_line(text: str) -> str:
    """`text` as one line (a message may quote a -D value, key or file name that holds a
    line break or a byte that is not UTF-8): runner.escape's rule, as in the log."""
    from .escape import escape

    return escape(text)


def format_value(value: object) -> str:
    """Render a typed value the way it is written in runner.cfg."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def flat_values(sections, exclude=frozenset()):
    """{"section.key": value as runner.cfg writes it} for every value a plain `-g` can be
    answered with from a file without parsing (runner.lookup, runner.confcache): not the
    (section, key) pairs in `exclude`, nor a value holding a NUL (the separator) or a
    character UTF-8 cannot encode (those stay to the full answer), nor a section name
    with a dot, which `-g` (split at the first dot) could not name."""
    flat = {}
    for section, values in sections.items():
        if "." in section:
            continue
        for key, value in values.items():
            text = format_value(value)
            name = f"{section}.{key}"
            if (section, key) in exclude or "\0" in name + text:
                continue
            try:
                (name + text).encode("utf-8")
            except UnicodeEncodeError:
                continue
            flat[name] = text
    return flat


def keep_undecodable_bytes() -> None:
    """Let stdout write back the bytes of arguments that were not UTF-8 (Python holds them
    as surrogates) instead of failing with UnicodeEncodeError under a UTF-8 locale."""
    if hasattr(sys.stdout, "reconfigure"):  # not on a replaced stdout
        sys.stdout.reconfigure(errors="surrogateescape")


def fail(message: str, status: int = EX_CONFIG) -> int:
    """Report bad input as one line on stderr (with a journal priority under systemd);
    return `status` (exit 78 by default)."""
    from .logs import stderr_is_journal  # only on this error path: logging is not cheap

    prefix = "<3>" if stderr_is_journal() else ""
    print(f"{prefix}runner: {one_line(message)}", file=sys.stderr)
    return status
