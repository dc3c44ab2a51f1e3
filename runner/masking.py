"""Secret values never leave runner: task and hook output is masked before it is logged
or kept in the journal.

A value is secret when its key matches a `secret_keys` pattern (case-insensitive, shell
style: `*PASSWORD*`), in [env] or any other section, plus the password of journal_url.
Values shorter than MIN_LENGTH are not masked: replacing every "1" or "on" in the output
would destroy it and protect nothing.
"""

from __future__ import annotations

import fnmatch
from urllib.parse import urlsplit

from .config import Config

MASK = "********"
MIN_LENGTH = 4


def secret_values(config: Config) -> list[str]:
    patterns = [p.upper() for p in config.runner["secret_keys"]]
    values = set()
    for keys in config.sections.values():
        for key, value in keys.items():
            if isinstance(value, str) and any(fnmatch.fnmatchcase(key.upper(), p)
                                              for p in patterns):
                values.add(value)
    url = config.runner.get("journal_url")
    if url:
        try:
            if urlsplit(url).password:
                values.add(urlsplit(url).password)
        except ValueError:
            pass
    return sorted((v for v in values if len(v) >= MIN_LENGTH), key=len, reverse=True)


class Masker:
    """Replaces every secret value in text and bytes (longest first, so a secret that
    contains another is masked whole)."""

    def __init__(self, values: list[str]) -> None:
        self.values = values
        self.encoded = [v.encode() for v in values]

    @classmethod
    def from_config(cls, config: Config) -> Masker:
        return cls(secret_values(config))

    def text(self, line: str) -> str:
        for value in self.values:
            if value in line:
                line = line.replace(value, MASK)
        return line

    def data(self, data: bytes) -> bytes:
        for value in self.encoded:
            if value in data:
                data = data.replace(value, MASK.encode())
        return data
