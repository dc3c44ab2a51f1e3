"""Where the live status file is (runtime_dir/status.json) and reading it back: what
`runner status` needs of runner.livestatus, which writes it (and re-exports these).

Imports `os` only: the writer's threads, logging, masking and events are not the
reader's to pay for, nor json's `import re` (with the enum it imports, a third of the
interpreter's start). The file runner writes is read with the C scanner json.loads itself
runs; anything else it holds (or a Python without that scanner) goes to json.loads, so the
answer is json's either way.
"""

import os

FILE_NAME = "status.json"

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (its cost)
if TYPE_CHECKING:
    from typing import Any


def status_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, FILE_NAME)


def read_status(runtime_dir: str) -> "dict[str, Any] | None":
    """The live status, or None when there is none (or it cannot be read)."""
    try:
        with open(status_path(runtime_dir), "rb") as file:
            data = loads(file.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _Decoding:
    """What the C scanner asks of a json.JSONDecoder(): its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


def loads(data: bytes) -> "Any":
    """json.loads(data): a JSON object as runner writes it (UTF-8 text that starts with
    `{`) through json's own C scanner, without importing json; anything else, and
    whatever the scanner does not take, through json.loads (its answer or its error)."""
    if data.startswith(b"{") and b"\0" not in data:  # UTF-8 by json's rule too
        try:
            from _json import make_scanner

            text = data.decode("utf-8", "surrogatepass")
            value, end = make_scanner(_Decoding())(text, 0)  # type: ignore[arg-type]
            if not text[end:].strip(" \t\n\r"):
                return value
        except Exception:  # json.loads, below, says what is wrong with it
            pass
    import json

    return json.loads(data)
