"""Fuzzing runner.cfg and -D: hypothesis writes config files (random sections, keys and
values, encodings, duplicate keys, unbalanced brackets, huge files) and -D overrides;
`runner` and `runner-config` must either work or print one clear line and exit 78 —
never a traceback, never exit 70 (internal error), never hang.

Two layers:
- in process (thousands of cases): `runner.cli.main` and `runner.getconf.main` called
  directly, with stdout/stderr redirected, in a scratch directory;
- out of process (tens of cases, hundreds with --slow): the installed `runner` and
  `runner-config` commands on a sample of the same inputs, proving the real entry points,
  logging and stdio behave too.

Sizes: `--slow` runs every in-process property 3000 times and the subprocess one 200
times. The number of cases tried is printed at the end of the module ("fuzz cases tried").
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RUNNER, RUNNER_CONFIG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import cli, getconf
from runner.config import load
from runner.spec import load_spec

EX_CONFIG, EX_SOFTWARE = 78, 70
SPEC = load_spec()
RUNNER_KEYS = tuple(SPEC.sections["runner"])
TASK_KEYS = tuple(SPEC.sections["task"])
# Short names of the tasks in the scratch task directory (halt is the halt task).
TASK_NAMES = ("alpha", "beta", "gamma", "halt")
SECTIONS = ("runner", "env", *TASK_NAMES, "hg", "task")
CASES: Counter[str] = Counter()  # examples run per property, reported at the end
CALLS: Counter[str] = Counter()  # commands run (in process / subprocess)
OUTCOMES: Counter[int] = Counter()  # exit statuses of `runner check` on fuzzed input


def examples(slow: bool, normal: int, full: int = 3000) -> int:
    return full if slow else normal


def fuzz_settings(slow: bool, normal: int, full: int = 3000) -> settings:
    return settings(
        max_examples=examples(slow, normal, full), deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


# -- generators ---------------------------------------------------------------------------

# Values that pass each check, so that a good share of the configs is valid and the
# success paths (typed values, per-task settings, runner-config output) run too.
GOOD_VALUES = {
    "seconds": ["0", "1", "2.5", "600", "1e3", "'5'", '"7"', "0.001"],
    "integer": ["1", "5", "30", "'3'", "12"],
    "float": ["1", "1.14", "2", "'1.5'"],
    "boolean": ["true", "false", "yes", "no", "on", "off", "0", "1"],
    "filename": ["halt.sh", "10-alpha.sh", "missing.sh", "sub/x.sh", "../halt.sh"],
    "path": ["frags", "./frags", "state", "/nonexistent/runner", "nothere"],
    "command": ["/bin/true", "true --flag", "/bin/echo 'a b'", "sh -c 'exit 0'", "no-such-cmd"],
    "string_list": ["alpha", "alpha, beta", "gamma,beta,", "10-alpha.sh", "nothing"],
    "notify_ready": ["start", "pass", "task:alpha", "task:nothing"],
    "journal_url": ["postgresql://u:p@db:5432/runner", "postgres://db/runner"],
    "string": ["x", "a value", "'quoted'", "é"],
}
# Values that break things: quotes, comments, escapes, lists, numbers out of range or not
# numbers at all, control characters and line separators, long strings.
WEIRD_VALUES = [
    "", " ", '"', "'", '"""', "'''", '"a', "a'", '"a"b', "'a' 'b'", "#", "# c", "a # c",
    "\\", "\\n", "a\\", "a,b,,c", ",", ", ,", "nan", "-nan", "NaN", "inf", "-inf",
    "infinity", "1e309", "-1e309", "1e300", "-1", "-0", "0x10", "1_000", "9" * 400,
    "1.5.3", "1,5", "None", "[x]", "[[x]]", "=", "a=b", "==", "${x}", "%(x)s", "x" * 5000,
    "é", "日本語", "\x00", "a\x00b", "\t", "a\tb", "\u2028", "\x85", "\x0c", "\x1b[31m",
    "\ufeff", "start,", "task:", "task: ", "postgresql://", "mysql://h/db", "true false",
    "'", '""""', "'''a'''", '"""a"""', '"a" # c', "list(1, 2)", "None,", "0.0", "1e-400",
    "/bin/tr\x00ue", "/bin/true \x00", "/nonexistent/x", "-", "--", "~", "$HOME",
]
# Every line break str.splitlines() knows: a message quoting one must stay one line.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# No "/" in random text: the only absolute paths are the few above, every other path a
# fuzzed value names stays inside the scratch directory (an include_dir of /proc would
# read /proc/kmsg and block, by design).
RANDOM_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"),
    max_size=40,
)
RANDOM_NAME = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/" + LINE_BREAKS),
    max_size=16,
)
IDENTIFIER = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,12}", fullmatch=True)
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


def good_value(key: str, section: str = "runner") -> st.SearchStrategy[str]:
    spec = SPEC.sections["task" if section in TASK_NAMES else "runner"].get(key)
    if spec is None:
        return st.sampled_from(GOOD_VALUES["string"])
    if spec.func == "option":
        return st.sampled_from(list(spec.args))
    return st.sampled_from(GOOD_VALUES.get(spec.func, GOOD_VALUES["string"]))


def any_value(key: str = "", section: str = "runner") -> st.SearchStrategy[str]:
    return st.one_of(
        good_value(key, section), st.sampled_from(WEIRD_VALUES), NUMBERS, RANDOM_TEXT,
    )


# What configobj takes as a value (no quotes to unbalance), for the value checks to see.
PARSEABLE = st.one_of(
    st.sampled_from([v for v in WEIRD_VALUES if not set(v) & set("\"'")]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                   blacklist_characters="/\"'\n\r"), max_size=30),
)


def typed_value(key: str, section: str) -> st.SearchStrategy[str]:
    return st.one_of(good_value(key, section), good_value(key, section), NUMBERS, PARSEABLE)


def key_for(section: str, plain: bool = False) -> st.SearchStrategy[str]:
    """A key for `section`: mostly one that means something there; `plain`: no odd ones."""
    if section == "runner":
        known = st.sampled_from(RUNNER_KEYS)
    elif section in TASK_NAMES:
        known = st.sampled_from(TASK_KEYS)
    elif section == "top":  # before any section: a key named like a section, too
        known = st.sampled_from([*SECTIONS, "remote"])
    else:
        known = st.sampled_from(["remote", "branch", "Mixed_Case", "NO_PROXY", "PATH"])
    if plain:
        return st.one_of(known, known, known, IDENTIFIER)
    return st.one_of(known, known, IDENTIFIER, RANDOM_NAME)


SECTION_NAME = st.one_of(
    st.sampled_from(SECTIONS), IDENTIFIER, RANDOM_NAME,
    st.sampled_from(["", " ", "[x]", "x]", "[x", "a b", '"runner"', "'env'", "runner ",
                     "#", "a#b", "=", "日本", "\ufeff"]),
)
INDENT = st.sampled_from(["", "", "", " ", "  ", "\t"])


@st.composite
def header_line(draw) -> tuple[str, str]:
    """A section header, usually balanced; the name it (probably) declares."""
    name = draw(SECTION_NAME)
    opening, closing = draw(st.one_of(
        st.just(("[", "]")),
        st.sampled_from([("[[", "]]"), ("[[[", "]]]"), ("[", ""), ("", "]"), ("[", "]]"),
                         ("[[", "]"), ("[ ", " ]"), ('["', '"]'), ("['", "]")]),
    ))
    trailer = draw(st.sampled_from(["", "", " # comment", " x", "  ", "#", " ]"]))
    return f"{draw(INDENT)}{opening}{name}{closing}{trailer}", name


@st.composite
def key_line(draw, section: str, mode: str) -> tuple[list[str], str]:
    """One `key = value` (a few lines for a triple-quoted value); the key.

    mode tidy: a known key with a good value; typed: well formed, any key and value;
    messy: anything, quoted keys, odd spacing, comments, multi-line values."""
    if mode == "tidy":
        key = draw(st.sampled_from(RUNNER_KEYS) if section == "runner" else
                   st.sampled_from(TASK_KEYS) if section in TASK_NAMES else IDENTIFIER)
        return [f"{key} = {draw(good_value(key, section))}"], key
    key = draw(key_for(section, plain=mode == "typed"))
    if mode == "typed":
        comment = draw(st.sampled_from(["", "", "", " # note"]))
        return [f"{key} = {draw(typed_value(key, section))}{comment}"], key
    value = draw(any_value(key, section))
    quote = draw(st.sampled_from(["", "", "", '"', "'"]))
    written = f"{quote}{key}{quote}" if quote else key
    left, right = draw(st.sampled_from([(" ", " "), ("", ""), ("  ", ""), ("", "\t")]))
    comment = draw(st.sampled_from(["", "", "", " # note", "#x", " ; semi"]))
    line = f"{draw(INDENT)}{written}{left}={right}{value}{comment}"
    if draw(st.integers(0, 9)) == 0:  # a triple-quoted value over several lines
        triple = draw(st.sampled_from(['"""', "'''"]))
        body = draw(st.lists(st.one_of(RANDOM_TEXT, st.sampled_from(WEIRD_VALUES)),
                             max_size=3))
        end = draw(st.sampled_from([triple, f"x{triple}", f"{triple} # c", ""]))
        return [f"{written} = {triple}{value}", *body, end], key
    return [line], key


NOISE_LINE = st.one_of(
    st.sampled_from(["", "   ", "# comment", "; not a comment", "no equals sign", "=",
                     "= value", "[", "]", "[]", "[[]]", "[[x]]", "[ ]", "key =", '"k" = v',
                     "'k' = v", '"unterminated = x', "\\", "\ufeff[runner]", "[runner",
                     # the original's RawConfigParser dialect (README: differences)
                     "; include_dir = frags", "  ; indented", "key: value", "k: a=b",
                     "    continued", "\tcontinued = too", "REM old comment", "rem = 1",
                     "Max_Tries = 2", "MAX_TIME: 5", "k:", "k = a ; b", "k = ;x"]),
    RANDOM_TEXT,
)


@st.composite
def config_document(draw, mode: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    """The text of a config file and the (section, key) pairs it writes (see key_line)."""
    mode = mode or draw(st.sampled_from(["tidy", "typed", "messy"]))
    lines: list[str] = []
    written: list[tuple[str, str]] = []
    if mode != "tidy" and draw(st.integers(0, 5)) == 0:  # keys before any section
        for _ in range(draw(st.integers(1, 2))):
            more, key = draw(key_line(draw(st.sampled_from(["", "top"])), mode))
            lines += more
            written.append(("", key))
    if mode == "messy":
        headers = [draw(header_line()) for _ in range(draw(st.integers(0, 6)))]
    else:
        names = st.sampled_from(SECTIONS) if mode == "tidy" else st.one_of(
            st.sampled_from(SECTIONS), st.sampled_from(SECTIONS), IDENTIFIER)
        headers = [(f"[{name}]", name)
                   for name in draw(st.lists(names, unique=True, max_size=5))]
    for header, name in headers:
        lines.append(header)
        keys_seen = set()
        for _ in range(draw(st.integers(0, 5))):
            more, key = draw(key_line(name, mode))
            if mode != "messy" and key in keys_seen:
                continue
            keys_seen.add(key)
            lines += more
            written.append((name, key))
            if mode == "messy" and draw(st.integers(0, 4)) == 0:
                lines.append(draw(NOISE_LINE))
        if mode == "typed" and draw(st.integers(0, 19)) == 0:  # a subsection
            lines += ["  [[sub]]", "  key = value"]
    if mode == "messy" and draw(st.integers(0, 5)) == 0 and lines:  # a duplicated line
        lines.append(draw(st.sampled_from(lines)))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"])), written


ENCODINGS = ["utf-8"] * 6 + ["utf-8-sig", "latin-1", "cp1252", "utf-16", "utf-16-le",
                             "utf-16-be", "utf-32", "ascii"]


@st.composite
def encoded(draw, text: str) -> bytes:
    """`text` as bytes: an encoding, line endings, and byte-level damage."""
    ending = draw(st.sampled_from(["\n", "\n", "\r\n", "\r", "mixed"]))
    if ending == "mixed":
        parts = text.split("\n")
        text = "".join(part + draw(st.sampled_from(["\n", "\r\n", "\r"]))
                       for part in parts[:-1]) + parts[-1]
    else:
        text = text.replace("\n", ending)
    data = text.encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
    for _ in range(draw(st.integers(0, 2))):
        damage = draw(st.sampled_from(["nul", "bytes", "truncate", "bom", "none"]))
        at = draw(st.integers(0, len(data)))
        if damage == "nul":
            data = data[:at] + b"\x00" + data[at:]
        elif damage == "bytes":
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        elif damage == "truncate":
            data = data[:at]
        elif damage == "bom":
            data = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"])) + data
    return data


@st.composite
def config_bytes(draw) -> tuple[bytes, list[tuple[str, str]]]:
    text, written = draw(config_document())
    if draw(st.integers(0, 3)) == 0:
        return draw(encoded(text)), written
    return text.encode("utf-8"), written


@st.composite
def override(draw) -> str:
    """One -D argument: usually section.key=value, sometimes malformed, sometimes with a
    line break somewhere (as a script's "$var" may hold)."""
    text = draw(_override())
    if draw(st.integers(0, 7)) == 0:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(LINE_BREAKS)) + text[at:]
    return text


@st.composite
def _override(draw) -> str:
    kind = draw(st.integers(0, 9))
    if kind <= 4:
        section = draw(st.one_of(st.sampled_from(SECTIONS), st.sampled_from(SECTIONS),
                                 IDENTIFIER, RANDOM_NAME))
        key = draw(key_for(section))
        value = draw(any_value(key, section))
        around = draw(st.sampled_from([("", ""), (" ", " "), ("", " "), ("  ", "")]))
        return f"{section}.{key}{around[0]}={around[1]}{value}"
    if kind <= 8:
        return draw(st.sampled_from([
            "", "=", ".", ".=", "runner", "runner.", "runner.=1", ".max_tries=1",
            "runner.max_tries", "runner max_tries=1", "runner.max_tries==1", "a.b.c=1",
            "runner.include_dir=", "runner.include_dir=.", "runner.include_dir=frags",
            "runner.include_dir=nothere", "runner.include_dir=\x00", "runner.task_dir=",
            "runner.max_tries=0", "runner.max_tries=1\n2", "runner.fo\no=1", "x\ny.k=v",
            "hg.k=line1\nline2", "env.A=\u2028", "日本.語=値", " . = ", "-x.y=z", "--x=y",
            "runner.sleep_time=nan", "runner.backoff=inf", "alpha.depends_on=alpha",
            "alpha.depends_on=beta", "beta.depends_on=alpha", "gamma.max_tries=-1",
            "runner.task_hook=\"unbalanced", "runner.interpreter=", "halt.x=1",
            "runner.task_hook=/bin/tr\x00ue", "runner.interpreter=/bin/sh \x00",
        ]))
    return draw(RANDOM_TEXT)


OVERRIDES = st.lists(override(), max_size=4)
GET_KEY = st.sampled_from([
    "nodot", ".key", "section.", ".", "", "a.b.c", "runner.max_tries", "runner.nokey",
    "env.PATH", "hg.remote", "日本.語", "runner.secret_keys", "alpha.max_tries", "x\ny.z",
])


@st.composite
def get_key(draw, written: list[tuple[str, str]]) -> str:
    if written and draw(st.integers(0, 2)) > 0:
        section, key = draw(st.sampled_from(written))
        return f"{section}.{key}"
    return draw(st.one_of(GET_KEY, RANDOM_TEXT))


# -- the scratch directory and calling the commands in process ---------------------------

class Scratch:
    """A config file, a fragments directory and a small task directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cfg = root / "runner.cfg"
        self.frags = root / "frags"
        self.tasks = root / "tasks.d"
        self.tasks.mkdir()
        for name, mode in (("10-alpha.sh", 0o755), ("20-beta.py", 0o755),
                           ("30-gamma.sh", 0o644), ("halt.sh", 0o755)):
            path = self.tasks / name
            path.write_text("#!/bin/sh\nexit 0\n")
            path.chmod(mode)

    def write(self, data: bytes, fragments: list[bytes] = ()) -> None:
        self.cfg.write_bytes(data)
        shutil.rmtree(self.frags, ignore_errors=True)
        if fragments:
            self.frags.mkdir()
            for number, fragment in enumerate(fragments):
                (self.frags / f"{number:02d}-frag.cfg").write_bytes(fragment)


# One pair of buffers for the whole module: some commands bind sys.stdout as a default
# argument when first imported, and must never find it closed.
_OUT, _ERR = io.StringIO(), io.StringIO()


def call(function, argv: list[str], where: Path) -> tuple[int, str]:
    """Run a command's main(argv) in process with cwd `where`: (status, stderr).

    Any exception escaping main is a failure naming the input."""
    for buffer in (_OUT, _ERR):
        buffer.seek(0)
        buffer.truncate()
    before = os.getcwd()
    os.chdir(where)
    try:
        with contextlib.redirect_stdout(_OUT), contextlib.redirect_stderr(_ERR):
            try:
                status = function(argv)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except Exception as exc:  # the property: nothing escapes main but an exit
                pytest.fail(f"{function.__module__}.main({argv!r}) raised "
                            f"{type(exc).__name__}: {exc}")
    finally:
        os.chdir(before)
    CALLS["in process"] += 1
    return int(status or 0), _ERR.getvalue()


def assert_outcome(argv: list, status: int, stderr: str, allowed: set[int],
                   needles: tuple[str, ...], prog: str) -> None:
    """Exit status allowed (never 70); on 78 exactly one line naming what is wrong."""
    context = f"argv={argv!r}\nstatus={status}\nstderr={stderr[-3000:]!r}"
    assert status != EX_SOFTWARE, "internal error:\n" + context
    assert status in allowed, context
    assert "Traceback" not in stderr, context
    if status == EX_CONFIG:
        lines = [line for line in stderr.split("\n") if line.strip()]
        assert len(lines) == 1, "not one line:\n" + context
        line = lines[0]
        assert "\r" not in line, context
        assert line.startswith((f"{prog}: ", f"<3>{prog}: ")), context
        assert any(needle and needle in line for needle in needles), (
            f"names none of {needles!r}:\n" + context)


def runner_check(scratch: Scratch, defines: list[str], form: int = 0) -> tuple[list, int, str]:
    argv = ["-c", str(scratch.cfg), *define_args(defines, form), "check", str(scratch.tasks)]
    status, err = call(cli.main, argv, scratch.root)
    assert_outcome(argv, status, err, {0, EX_CONFIG}, (str(scratch.root), "-D"), "runner")
    OUTCOMES[status] += 1
    return argv, status, err


def runner_config(scratch: Scratch, *args: str, defines: list[str] = (),
                  key: str | None = None) -> int:
    argv = ["-c", str(scratch.cfg), *define_args(defines, 1), *args]
    status, err = call(getconf.main, argv, scratch.root)
    # 1: -g names a missing key, or -l a missing section
    allowed = {0, 1, EX_CONFIG} if key is not None else {0, EX_CONFIG}
    needles = (str(scratch.root), "-D", "-g", "argument", key or "")
    assert_outcome(argv, status, err, allowed, needles, "runner-config")
    return status


def assert_usable(scratch: Scratch, defines: list[str]) -> None:
    """A config that runner check accepts is one runner can run with: no nan or inf
    (time.sleep(nan) and deadlines of inf crash the supervisor)."""
    with contextlib.chdir(scratch.root):
        config = load(str(scratch.cfg), defines)
    values = list(dataclasses.asdict(config.runner).items())
    for name in TASK_NAMES:
        values += dataclasses.asdict(config.task_settings(name)).items()
    for key, value in values:
        assert not isinstance(value, float) or math.isfinite(value), (key, value, defines)


def define_args(defines: list[str], form: int) -> list[str]:
    """-D in one of the accepted spellings: `-D VALUE`, `-DVALUE`, `--define=VALUE`."""
    args: list[str] = []
    for number, value in enumerate(defines):
        spelling = (form + number) % 3
        if spelling == 0 and not value.startswith("-"):
            args += ["-D", value]
        elif spelling == 2 and form != 1:  # runner-config knows -D only
            args.append(f"--define={value}")
        else:
            args.append(f"-D{value}")
    return args


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Scratch:
    return Scratch(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module", autouse=True)
def _isolated_logging_and_report(request: pytest.FixtureRequest) -> Iterator[None]:
    """cli.main configures the `runner` logger on every call (replacing its handler);
    restore it afterwards, and print how many cases ran."""
    logger = logging.getLogger("runner")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
    total = sum(CASES.values())
    detail = ", ".join(f"{name} {count}" for name, count in sorted(CASES.items()))
    calls = ", ".join(f"{name} {count}" for name, count in sorted(CALLS.items()))
    checks = ", ".join(f"exit {status}: {count}" for status, count in sorted(OUTCOMES.items()))
    line = (f"fuzz cases tried: {total} ({detail}); commands run: {calls}; "
            f"runner check {checks}")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(line)


# -- in process: thousands of cases ------------------------------------------------------

@pytest.mark.slow
def test_fuzz_config_files(scratch: Scratch, slow: bool) -> None:
    """Random files (sections, keys, values, structure, encodings) through every reader."""

    @fuzz_settings(slow, 400)
    @given(config=config_bytes(), data=st.data())
    def case(config: tuple[bytes, list[tuple[str, str]]], data: st.DataObject) -> None:
        CASES["files"] += 1
        raw, written = config
        scratch.write(raw)
        _argv, check_status, _err = runner_check(scratch, [])
        list_status = runner_config(scratch, "-l")
        # One loader: a file that passes runner check is one runner-config can read.
        assert list_status == 0 or check_status == EX_CONFIG, raw[:2000]
        if check_status == 0:
            assert_usable(scratch, [])
        key = data.draw(get_key(written))
        json_flag = ["--json"] if data.draw(st.booleans()) else []
        status = runner_config(scratch, "-g", key, *json_flag, key=key)
        if list_status == 0 and status == EX_CONFIG:  # only a key that is no section.key
            assert "section.key" in _ERR.getvalue(), (key, _ERR.getvalue())
        section = data.draw(st.one_of(st.sampled_from(SECTIONS), RANDOM_NAME))
        runner_config(scratch, "-l", section, *json_flag, key=section)
        argv = ["-c", str(scratch.cfg), "-g", key]
        status, err = call(cli.main, argv, scratch.root)
        assert_outcome(argv, status, err, {0, 1, EX_CONFIG},
                       (str(scratch.root), "-g", key), "runner")

    case()


@pytest.mark.slow
def test_fuzz_overrides(scratch: Scratch, slow: bool) -> None:
    """Random -D arguments on top of a mostly valid file."""

    @fuzz_settings(slow, 400)
    @given(document=config_document("tidy"), defines=OVERRIDES,
           form=st.integers(0, 2), data=st.data())
    def case(document: tuple[str, list[tuple[str, str]]], defines: list[str], form: int,
             data: st.DataObject) -> None:
        CASES["-D overrides"] += 1
        text, written = document
        scratch.write(text.encode())
        if runner_check(scratch, defines, form)[1] == 0:
            assert_usable(scratch, defines)
        runner_config(scratch, "-l", defines=defines)
        key = data.draw(get_key(written))
        runner_config(scratch, "-g", key, "--json", defines=defines, key=key)

    case()


@pytest.mark.slow
def test_fuzz_files_and_overrides(scratch: Scratch, slow: bool) -> None:
    """Both at once: random files, random fragments in include_dir, random -D."""

    @fuzz_settings(slow, 300)
    @given(config=config_bytes(), fragments=st.lists(config_bytes(), max_size=2),
           include=st.sampled_from(["", "", "frags", "./frags", "nothere", "runner.cfg", "."]),
           defines=OVERRIDES, form=st.integers(0, 2))
    def case(config: tuple[bytes, list], fragments: list[tuple[bytes, list]], include: str,
             defines: list[str], form: int) -> None:
        CASES["files + fragments + -D"] += 1
        raw = config[0]
        if include:
            raw = f"[runner]\ninclude_dir = {include}\n".encode() + raw
        scratch.write(raw, [fragment for fragment, _ in fragments])
        runner_check(scratch, defines, form)
        runner_config(scratch, "-l", "--json", defines=defines)

    case()


# -- huge files: generated once ----------------------------------------------------------

@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Scratch:
    """About 3 MB: a valid [runner], 12000 sections of 5 keys, one 1 MB value."""
    scratch = Scratch(tmp_path_factory.mktemp("huge"))
    parts = ["[runner]\nmax_tries = 3\nsleep_time = 0\n[alpha]\nmax_tries = 2\n"]
    parts += [f"[hg{n}]\n" + "".join(f"key{k} = value {n} {k} # comment\n" for k in range(5))
              for n in range(12000)]
    parts.append("[big]\nvalue = " + "x" * 1_000_000 + "\n")
    scratch.write("".join(parts).encode())
    return scratch


@pytest.mark.slow
def test_huge_file_works_in_reasonable_time(huge: Scratch) -> None:
    CASES["huge files"] += 1
    # CPU time of this process (the commands run in it): what a quadratic parse would
    # blow up, and unlike the wall clock not doubled by whatever else the machine runs.
    started = time.process_time()
    _argv, status, _err = runner_check(huge, [])
    assert status == 0, _err
    assert runner_config(huge, "-g", "hg11999.key4") == 0
    assert runner_config(huge, "-g", "big.value", "--json") == 0
    assert runner_config(huge, "-l", "hg7") == 0
    assert time.process_time() - started < 60


@pytest.mark.slow
def test_huge_file_with_errors_reports_one_line(huge: Scratch) -> None:
    good = huge.cfg.read_bytes()
    for tail, fragment in (
        (b"[hg5]\nkey = again\n", "duplicate key or section"),  # a duplicate section
        (b"[unclosed\n", "cannot parse"),
        (b"[runner2]\n[[nested]]\n", "nested sections"),
        (b"\xff\xfe", "not valid UTF-8"),
    ):
        CASES["huge files"] += 1
        huge.write(good + tail)
        started = time.monotonic()
        _argv, status, err = runner_check(huge, [])
        assert status == EX_CONFIG and fragment in err, err[:500]
        assert time.monotonic() - started < 60
    huge.write(good)


# -- out of process: the real commands ---------------------------------------------------

def run_real(argv: list, scratch: Scratch) -> subprocess.CompletedProcess:
    """The installed command, as a task or an operator would run it. PYTHONIOENCODING=utf-8
    makes stdout strict, as under a UTF-8 locale such as en_US.UTF-8."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONIOENCODING"] = "utf-8"
    CALLS["subprocess"] += 1
    return subprocess.run([os.fsencode(a) for a in argv], capture_output=True, timeout=120,
                          cwd=scratch.root, env=env)


def assert_real(argv: list, proc: subprocess.CompletedProcess, allowed: set[int],
                needles: tuple[str, ...], prog: str) -> None:
    stderr = proc.stderr.decode("utf-8", "backslashreplace")
    assert_outcome(argv, proc.returncode, stderr, allowed, needles, prog)
    # A missing key: one line too, the warning (exit 0) or the strict error (exit 1).
    if proc.returncode in (0, 1) and prog == "runner-config" and stderr.strip():
        assert len(stderr.strip().split("\n")) == 1, stderr


@pytest.mark.slow
def test_fuzz_real_commands(scratch: Scratch, slow: bool) -> None:

    @fuzz_settings(slow, 20, 200)
    @given(config=config_bytes(), defines=OVERRIDES, data=st.data())
    def case(config: tuple[bytes, list], defines: list[str], data: st.DataObject) -> None:
        CASES["real commands"] += 1
        raw, written = config
        scratch.write(raw)
        # Arguments as a shell passes them: bytes, maybe not UTF-8 (\udcff is byte 0xff),
        # never a NUL (exec cannot pass one).
        defines = [d.replace("\x00", "") + ("\udcff" if data.draw(st.integers(0, 4)) == 0 else "")
                   for d in defines]
        needles = (str(scratch.root), "-D", "-g")
        argv = [RUNNER, "-c", str(scratch.cfg), *define_args(defines, 0), "check",
                str(scratch.tasks)]
        assert_real(argv, run_real(argv, scratch), {0, EX_CONFIG}, needles, "runner")
        key = data.draw(get_key(written)).replace("\x00", "")
        argv = [RUNNER_CONFIG, "-c", str(scratch.cfg), *define_args(defines, 1), "-g", key]
        argv += ["--json"] if data.draw(st.booleans()) else []
        assert_real(argv, run_real(argv, scratch), {0, 1, EX_CONFIG}, (*needles, key),
                    "runner-config")
        argv = [RUNNER_CONFIG, "-c", str(scratch.cfg), *define_args(defines, 1), "-l"]
        assert_real(argv, run_real(argv, scratch), {0, EX_CONFIG}, needles, "runner-config")
        argv = [RUNNER, "-c", str(scratch.cfg), *define_args(defines, 2), "-g", key]
        assert_real(argv, run_real(argv, scratch), {0, 1, EX_CONFIG}, (*needles, key),
                    "runner")

    case()


@pytest.mark.slow
def test_huge_file_real_commands(huge: Scratch) -> None:
    CASES["huge files"] += 1
    argv = [RUNNER, "-c", str(huge.cfg), "check", str(huge.tasks)]
    proc = run_real(argv, huge)
    assert proc.returncode == 0, proc.stderr
    argv = [RUNNER_CONFIG, "-c", str(huge.cfg), "-g", "hg11999.key4"]
    proc = run_real(argv, huge)
    assert (proc.returncode, proc.stdout) == (0, b"value 11999 4\n"), proc.stderr


# -- what the fuzzing found: each was a traceback, exit 70, a multi-line message or a hang -

@pytest.mark.parametrize(("config", "defines", "fragment"), [
    # A top-level `runner = x` key: AttributeError, exit 70.
    (b"runner = x\n", [], "runner: key outside of any [section]"),
    # A NUL byte in a command line passed the check, then os.access raised: exit 70.
    (b"[runner]\ntask_hook = /bin/tr\x00ue\n", [], "NUL byte in command line"),
    (b"[alpha]\ninterpreter = sh\x00\n", [], "[alpha] interpreter: NUL byte"),
    # nan and inf passed every bound; the first retry pause then crashed runner (exit 70).
    (b"[runner]\nsleep_time = nan\n", [], "sleep_time: 'nan' is not a finite number"),
    (b"[runner]\nbackoff = inf\n", [], "backoff: 'inf' is not a finite number"),
    (b"[runner]\n", ["alpha.max_time=inf"], "max_time: 'inf' is not a finite number"),
    # A line break in -D came out as a message of two lines.
    (b"[runner]\n", ["runner.max_tries=1\n2"], "-D runner.max_tries=1\\n2"),
    (b"[runner]\n", ["runner.fo\u2028o=1"], "fo\\u2028o: unknown key"),
], ids=["top-level-runner-key", "nul-in-hook", "nul-in-interpreter", "nan", "inf",
        "inf-by-D", "newline-in-D", "line-separator-in-D"])
def test_found_by_fuzzing(scratch: Scratch, config: bytes, defines: list[str],
                          fragment: str) -> None:
    scratch.write(config)
    _argv, status, err = runner_check(scratch, defines)
    assert status == EX_CONFIG and fragment in err, err


def test_empty_get_key_is_an_error_and_runs_nothing(tmp_path: Path) -> None:
    """`runner -g ''` was taken for no -g at all and ran the chain."""
    (tmp_path / "tasks.d").mkdir()
    task = tmp_path / "tasks.d" / "10-mark.sh"
    task.write_text(f"#!/bin/sh\ntouch {tmp_path}/ran\n")
    task.chmod(0o755)
    cfg = tmp_path / "runner.cfg"
    cfg.write_text(f"[runner]\ntask_dir = tasks.d\nstate_dir = {tmp_path}/state\n"
                   f"runtime_dir = {tmp_path}/run\n")
    argv = ["-c", str(cfg), "-n", "1", "-g", ""]
    status, err = call(cli.main, argv, tmp_path)
    assert_outcome(argv, status, err, {EX_CONFIG}, ("-g",), "runner")
    assert "expected section.key" in err
    assert not (tmp_path / "ran").exists()


def test_long_lines_in_a_multi_line_value_are_read_in_linear_time(scratch: Scratch) -> None:
    """Scanning the lines for their numbers backtracked: a 4 KB line `[    x` of a
    multi-line value took minutes, one of 40 KB spaces more than a second."""
    value = ["[" + " " * 50_000 + "x", "[" + "]" * 50_000 + "x", "a" + " " * 50_000 + "b"]
    scratch.write(('[hg]\nk = """\n' + "\n".join(value) + '\n"""\n').encode())
    started = time.monotonic()
    _argv, status, err = runner_check(scratch, [])
    assert status == 0, err
    assert time.monotonic() - started < 10


def test_values_that_are_not_utf8_are_printed_back_as_bytes(scratch: Scratch) -> None:
    """-D values from the shell may hold bytes that are not UTF-8: -g printed them with a
    traceback (runner-config) or exit 70 (runner -g) under a UTF-8 locale."""
    scratch.write(b"[hg]\n")
    for argv in ([RUNNER_CONFIG, "-c", str(scratch.cfg), "-D", "hg.a=x\udcff", "-g", "hg.a"],
                 [RUNNER, "-c", str(scratch.cfg), "-D", "hg.a=x\udcff", "-g", "hg.a"]):
        proc = run_real(argv, scratch)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"x\xff\n", b""), argv
