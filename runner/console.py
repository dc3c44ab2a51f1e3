"""What both command-line programs (`runner` and `runner-config`) print for people: an
error is one line, whatever it quotes; a configuration value is written as in runner.cfg;
bytes of arguments that were not UTF-8 are written back as they came.

Only `sys` at import time: runner-config, which a task may call many times, imports it
(so the spec, which formats its defaults here too, is not imported for that).
"""

import sys  # and no `from __future__ import annotations`: importing __future__ costs too

EX_CONFIG = 78  # sysexits(3): bad configuration or input (runner.states.ExitStatus.CONFIG)

# Every line break str.splitlines() knows, escaped: a message must stay one line even
# when it quotes a -D value or key that holds one.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: str) -> str:
    """`text` with its line breaks escaped (a newline becomes `\\n`)."""
    return text.translate(_LINE_BREAKS)


def format_value(value: object) -> str:
    """Render a typed value the way it is written in runner.cfg."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    return str(value)


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
