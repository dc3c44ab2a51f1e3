"""Secret values never leave runner: the one module that decides what is secret and how
it is hidden, for every channel runner writes to.

A value is secret when its key matches a `secret_keys` pattern (case-insensitive, shell
style: `*PASSWORD*`), in [env] or any other section, plus the passwords in journal_url:
the userinfo password and the `password`/`sslpassword` query parameters, each both as
written (percent-encoded) and decoded, since a task may print either form.
Values shorter than MIN_LENGTH are not masked in free text: replacing every "1" or "on"
in the output would destroy it and protect nothing (listings and URLs still hide them).

Channels and where they are masked:
- task, check, hook and halt output: a StreamMasker in runner.process, before the output
  is cut into logged pieces or kept as the journal's tail;
- every log line (warnings about the database included): logs.mask_logs;
- a run's error text, before any listener (journal, status, metrics, hooks) sees it:
  events.Dispatcher;
- status.json and `runner status`: mask_url and Masker.text on the forwarder's health;
- listings (`runner-config -l/--json`, `runner list/plan/check/graph`): display_sections
  and MaskedWriter, unless root asks for --show-secrets;
- the world-readable config snapshot that RUNNER_CONFIG_CMD reads for a task that
  switched to another user: public_snapshot (private keys go to a root-only file).

This module imports only the standard library: runner-config loads it for -l.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO, cast
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from .config import Config

MASK = "********"
MIN_LENGTH = 4
# Query parameters of a libpq URL that carry a password (libpq's own names).
URL_SECRET_PARAMS = frozenset({"password", "sslpassword"})
# Keys that match a pattern by name but hold no secret: the patterns themselves.
NOT_SECRET = frozenset({("runner", "secret_keys")})
UNPARSABLE_URL = "(unparsable journal_url)"


# -- what is secret ---------------------------------------------------------------------

def _both_forms(raw: str) -> set[str]:
    """A value as written in the URL and as libpq decodes it (%XX only, no `+`)."""
    try:
        return {raw, unquote(raw, errors="strict")}
    except UnicodeDecodeError:  # not UTF-8 once decoded: only the written form is text
        return {raw}


def url_secrets(url: str | None) -> set[str]:
    """Every password in a postgresql:// URL, encoded and decoded."""
    if not url:
        return set()
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()
    found = _both_forms(parts.password) if parts.password else set()
    for name, _eq, value in (p.partition("=") for p in parts.query.split("&")):
        if unquote(name).lower() in URL_SECRET_PARAMS and value:
            found |= _both_forms(value)
    return found


def secret_patterns(sections: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The secret_keys patterns, upper-cased (a list in a typed config, text in a raw one)."""
    patterns = sections.get("runner", {}).get("secret_keys", ())
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    return [p.strip().upper() for p in patterns if p.strip()]


def is_secret(section: str, key: str, patterns: list[str]) -> bool:
    if (section, key) in NOT_SECRET:
        return False
    upper = key.upper()
    return any(fnmatch.fnmatchcase(upper, p) for p in patterns)


def secret_values(sections: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every secret value of a configuration ({section: {key: value}}), longest first."""
    patterns = secret_patterns(sections)
    values = {
        value
        for section, keys in sections.items()
        for key, value in keys.items()
        if isinstance(value, str) and is_secret(section, key, patterns)
    }
    values |= url_secrets(sections.get("runner", {}).get("journal_url"))
    return sorted((v for v in values if len(v) >= MIN_LENGTH), key=len, reverse=True)


# -- hiding it ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Secrets:
    """What a Masker looks for, swapped whole on a reload (a reader never sees half)."""

    values: list[str]
    encoded: list[bytes]
    longest: int  # bytes
    text: re.Pattern | None
    data: re.Pattern | None

    @classmethod
    def of(cls, values: Iterable[str]) -> _Secrets:
        ordered = sorted({v for v in values if v}, key=len, reverse=True)
        encoded = [v.encode("utf-8", "surrogateescape") for v in ordered]
        return cls(ordered, encoded, max(map(len, encoded), default=0),
                   _alternation(ordered), _alternation(encoded))


class Masker:
    """Replaces every secret value in text and bytes.

    One compiled alternation, longest value first, so a secret that contains another is
    masked whole. Most text holds no secret: a substring test per value (about 2.5 times
    faster than the regex, measured) decides whether the regex runs at all. One Masker
    serves a whole run; a SIGHUP gives it the new values (`replace`), so every channel
    that holds it masks with them from then on.
    """

    def __init__(self, values: Iterable[str]) -> None:
        self._secrets = _Secrets.of(values)

    def replace(self, values: Iterable[str]) -> None:
        self._secrets = _Secrets.of(values)

    @property
    def values(self) -> list[str]:
        return self._secrets.values

    @property
    def longest(self) -> int:
        return self._secrets.longest

    @classmethod
    def from_sections(cls, sections: Mapping[str, Mapping[str, Any]]) -> Masker:
        return cls(secret_values(sections))

    @classmethod
    def for_url(cls, url: str) -> Masker:
        """A masker of the passwords in `url` alone (where no configuration is at hand)."""
        return cls(v for v in url_secrets(url) if len(v) >= MIN_LENGTH)

    @classmethod
    def from_config(cls, config: Config) -> Masker:
        return cls.from_sections(config.snapshot()["sections"])

    def text(self, line: str) -> str:
        secrets = self._secrets
        if secrets.text is None or not any(v in line for v in secrets.values):
            return line
        return secrets.text.sub(MASK, line)

    def data(self, data: bytes) -> bytes:
        secrets = self._secrets
        if secrets.data is None or not any(v in data for v in secrets.encoded):
            return data
        return secrets.data.sub(MASK.encode(), data)

    def data_before(self, data: bytes, limit: int) -> tuple[bytes, int]:
        """Mask the matches that start before `limit`; the masked bytes of data[:end] and
        `end`: `limit`, or the end of a match that runs past it (never cut inside one)."""
        secrets = self._secrets
        if secrets.data is None or not any(v in data for v in secrets.encoded):
            return data[:limit], limit
        out, pos = [], 0
        for match in secrets.data.finditer(data):
            if match.start() >= limit:
                break
            out += [data[pos:match.start()], MASK.encode()]
            pos = match.end()
        end = max(limit, pos)
        out.append(data[pos:end])
        return b"".join(out), end

    def stream(self) -> StreamMasker:
        return StreamMasker(self)


def _alternation(values: list) -> re.Pattern | None:
    if not values:
        return None
    separator = b"|" if isinstance(values[0], bytes) else "|"
    return re.compile(separator.join(re.escape(v) for v in values))


class StreamMasker:
    """Masks a byte stream that arrives in pieces cut anywhere (a 64 KiB piece of a long
    line), so a secret split between two pieces is still masked.

    A piece that does not end a line is passed on without its last len(longest secret)-1
    bytes, which may be the start of a secret; they are put in front of the next piece.
    A match is never cut: a secret that starts before the held bytes goes out masked.
    So memory grows by less than the longest secret, and whole lines pass at once.
    """

    def __init__(self, masker: Masker) -> None:
        self.masker = masker
        self.hold = max(masker.longest - 1, 0)
        self.carry = b""

    def feed(self, piece: bytes, final: bool = False) -> bytes:
        """The masked bytes that can go out now; `final` at the end of the stream."""
        data = self.carry + piece if self.carry else piece
        if final or data.endswith(b"\n") or not self.hold:
            self.carry = b""
            return self.masker.data(data)
        masked, end = self.masker.data_before(data, max(len(data) - self.hold, 0))
        self.carry = data[end:]
        return masked


def masked_json(value: Any, mask: Callable[[str], str]) -> Any:
    """JSON-able data with every string in it masked (the keys are runner's own)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {key: masked_json(item, mask) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked_json(item, mask) for item in value]
    return value


def mask_url(url: str) -> str:
    """The URL with every password in it replaced by MASK, fit for logs and status."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _at, host = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
        query = "&".join(_mask_param(p) for p in parts.query.split("&")) if parts.query else ""
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return UNPARSABLE_URL


def _mask_param(param: str) -> str:
    name, eq, _value = param.partition("=")
    return f"{name}={MASK}" if eq and unquote(name).lower() in URL_SECRET_PARAMS else param


# -- listings -----------------------------------------------------------------------------

def display_sections(sections: Mapping[str, Mapping[str, Any]],
                     show_secrets: bool = False,
                     only: str | None = None) -> dict[str, dict[str, Any]]:
    """Config values as listings show them: a secret key's value is MASK, journal_url
    has its passwords masked, and a secret inside any other value is masked too.
    `only`: that section alone (masked with the secrets of all of them)."""
    shown = sections if only is None else {only: sections[only]}
    if show_secrets:
        return {s: dict(keys) for s, keys in shown.items()}
    patterns = secret_patterns(sections)
    masker = Masker.from_sections(sections)
    return {
        section: {key: _display(section, key, value, patterns, masker)
                  for key, value in keys.items()}
        for section, keys in shown.items()
    }


def private_keys(sections: Mapping[str, Mapping[str, Any]]) -> set[tuple[str, str]]:
    """(section, key) of every value a user other than root may not read: the values that
    a listing would not show as they are (a secret key's, journal_url with a password, a
    value quoting a secret), so what is secret is decided in one place."""
    shown = display_sections(sections)
    return {(section, key) for section, keys in sections.items()
            for key, value in keys.items() if shown[section][key] != value}


def public_snapshot(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A config snapshot fit for a world-readable file: private values masked as listings
    show them, and their names under "private", so that a lookup can tell "secret" from
    "missing"."""
    sections = snapshot["sections"]
    hidden = private_keys(sections)
    return {**snapshot, "sections": display_sections(sections),
            "private": sorted([section, key] for section, key in hidden)}


def _display(section: str, key: str, value: Any, patterns: list[str], masker: Masker) -> Any:
    if is_secret(section, key, patterns) and value not in (None, ""):
        return MASK
    if (section, key) == ("runner", "journal_url") and isinstance(value, str):
        return masker.text(mask_url(value))
    if isinstance(value, str):
        return masker.text(value)
    if isinstance(value, list):
        return [masker.text(v) if isinstance(v, str) else v for v in value]
    return value


def listing_output(out: TextIO, config: Config, show_secrets: bool = False) -> TextIO:
    """Where a listing command prints: `out` itself only for root's --show-secrets."""
    return listing_outputs(config, show_secrets, out)[0]


def listing_outputs(config: Config, show_secrets: bool, *streams: TextIO
                    ) -> tuple[TextIO, ...]:
    """listing_output of each stream, with one Masker (building it compiles a pattern
    of every secret value: seconds for a configuration of 60,000 values)."""
    if show_secrets:
        return streams
    masker = Masker.from_config(config)
    # A MaskedWriter is a TextIO by duck typing: __getattr__ hands it all but write/flush.
    return tuple(cast(TextIO, MaskedWriter(out, masker)) for out in streams)


class MaskedWriter:
    """A text stream that masks what is written to it: commands that print the
    configuration's effects (`runner list`, `plan`, `check`) print through one."""

    def __init__(self, out: TextIO, masker: Masker) -> None:
        self.out = out
        self.masker = masker

    def mask(self, text: str) -> str:
        return self.masker.text(text)

    def write(self, text: str) -> int:
        return self.out.write(self.masker.text(text))

    def flush(self) -> None:
        self.out.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding...
        return getattr(self.out, name)
