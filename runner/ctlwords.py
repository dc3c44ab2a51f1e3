"""The words of `runner ctl`: the actions, what each takes, and where the control socket
is. The client checks a command with these before it connects, the server
(runner.ctlsocket) again when it arrives. `runner ctl` must start fast: this imports
`os` only, which the interpreter has loaded anyway."""

import os

SOCKET_NAME = "control.sock"
# action -> its arguments (names for messages); the order is the order of the help text.
ACTIONS: dict[str, tuple[str, ...]] = {
    "retry-now": (),
    "skip": ("TASK",),
    "pause": (),
    "resume": (),
    "halt": (),
}


class ControlError(Exception):
    """A refused or invalid command; str() is the one-line reply."""


def socket_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, SOCKET_NAME)


def usage(action: str) -> str:
    return " ".join((action, *ACTIONS[action]))


def valid_actions() -> str:
    return ", ".join(usage(action) for action in ACTIONS)


def check_words(words: object) -> list[str]:
    """The command as a list of words, or ControlError saying what is wrong with it."""
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ControlError("malformed request: command must be a list of strings")
    if not words:
        raise ControlError(f"no action given (valid: {valid_actions()})")
    action, args = words[0], words[1:]
    if action not in ACTIONS:
        raise ControlError(f"unknown action {action!r} (valid: {valid_actions()})")
    wanted = ACTIONS[action]
    if len(args) != len(wanted):
        if wanted:
            raise ControlError(f"{action} takes {len(wanted)} argument(s): {usage(action)}")
        raise ControlError(f"{action} takes no arguments")
    if any(not arg.strip() for arg in args):
        raise ControlError(f"{action}: empty argument")
    return words
