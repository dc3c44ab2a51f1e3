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

It imports nothing: runner-config, which a task may call many times, uses it for its
error lines, and the table is built on first need.
"""

_SHORT = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_table: dict[int, str] = {}


def _build() -> dict[int, str]:
    table = {ord(c): escaped for c, escaped in _SHORT.items()}
    for code in [*range(0x20), 0x7F]:
        table.setdefault(code, f"\\x{code:02x}")
    for code in [*range(0x80, 0xA0), 0x2028, 0x2029, *range(0xD800, 0xE000)]:
        table[code] = f"\\u{code:04x}"
    for byte in range(0x80, 0x100):  # os.fsdecode / surrogateescape: byte -> U+DC00+byte
        table[0xDC00 + byte] = f"\\x{byte:02x}"
    return table


def escape(text: str) -> str:
    """`text` under the rule above; `text` itself when nothing needs escaping."""
    if text.isprintable() and "\\" not in text:  # the common case, at C speed
        return text
    if not _table:
        _table.update(_build())
    return text.translate(_table)


def escape_bytes(data: bytes) -> str:
    """Bytes (a line of output, a raw name) under the same rule."""
    return escape(data.decode("utf-8", "surrogateescape"))
