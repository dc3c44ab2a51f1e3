"""The one rule for writing a name or a line of text where it must stay one line of valid
UTF-8: the log, the journal, status.json, metrics labels, hook JSON, error messages and
listings. A task file name may hold any byte but `/` and NUL; a task may print anything.

    \\            ->  \\\\
    newline, tab, carriage return  ->  \\n  \\t  \\r
    other ASCII control characters (0x00-0x1f, 0x7f)  ->  \\xNN
    a byte that is not UTF-8 (Python holds it as a surrogate escape)  ->  \\xNN (80-ff)
    C1 controls (U+0080-U+009F), U+2028, U+2029, other lone surrogates  ->  \\uNNNN
    everything else (printable ASCII, UTF-8 text in any script)  ->  itself

Every backslash the text held is doubled, so the mapping is reversible: `\\xNN` below 80
is that ASCII character, from 80 up that raw byte (a C1 character, which UTF-8 encodes as
two bytes, is `\\u00NN` instead), and a name that holds none of the above is unchanged.

runner-config uses it for its error lines: it imports only `re`, which runner-config
has imported already.
"""

import re

_SHORT = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
# What the rule changes; the rest is left to re's C loop (a coloured line of output with
# two escape sequences costs a few µs, not a lookup per character of the whole line).
_SPECIAL = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _one(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if code < 0x80:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode / surrogateescape: byte -> U+DC00+byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` under the rule above; `text` itself when nothing needs escaping."""
    if text.isprintable() and "\\" not in text:  # the common case, at C speed
        return text
    return _SPECIAL.sub(_one, text)


def escape_bytes(data: bytes) -> str:
    """Bytes (a line of output, a raw name) under the same rule."""
    return escape(data.decode("utf-8", "surrogateescape"))
