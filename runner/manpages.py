"""The man pages runner(8), runner-config(1) and runner.cfg(5), in roff.

runner.cfg(5) is generated from the configspec and the option lists from the
command-line parsers, so the pages cannot drift from what runner does. The
rendered pages are committed under man/; a test regenerates and compares them.

    python3 -m runner.manpages man/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .getconf import OPTIONS
from .spec import KeySpec, load_spec

DATE = "2026-11-23"  # bump with the text of the pages, not with every build


def esc(text: str) -> str:
    """Escape text for roff: backslashes, hyphens and leading dots/quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)
    if text[:1] in (".", "'"):
        text = "\\&" + text
    return text


def _header(name: str, section: int, title: str) -> list[str]:
    return [
        f'.TH {name.upper()} {section} "{DATE}" "runner {__version__}" "{title}"',
        ".SH NAME",
        f"{esc(name)} \\- {esc(_SUMMARY[name])}",
    ]


_SUMMARY = {
    "runner": "bring a machine from booted to ready for work, and keep it there",
    "runner-config": "print values of runner's configuration",
    "runner.cfg": "configuration file of runner",
}


def _options(parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> list[str]:
    lines = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if skip.intersection(action.option_strings):
            continue
        flags = ", ".join(f"\\fB{esc(flag)}\\fR" for flag in action.option_strings)
        if action.nargs != 0:
            flags += f" \\fI{esc(_metavar(action))}\\fR"
        lines += [".TP", flags, esc(action.help or "")]
    return lines


def _key(key: KeySpec) -> list[str]:
    default = key.default_text or "unset"
    return [
        ".TP",
        f"\\fB{esc(key.name)}\\fR = \\fI{esc(key.type_name)}\\fR (default: {esc(default)})",
        esc(" ".join(key.doc)),
    ]


def _positionals(parser: argparse.ArgumentParser, command: str) -> list[str]:
    """A command's own positional arguments (TASKDIR is in the synopsis already)."""
    lines = []
    for action in parser._actions:
        if action.option_strings or action.dest == "taskdir":
            continue
        lines += [".TP", f"\\fI{esc(_metavar(action))}\\fR", esc(action.help or "")]
    return lines


def _metavar(action: argparse.Action) -> str:
    """How help names the action's value (a tuple metavar names each of nargs values)."""
    metavar = action.metavar or action.dest.upper()
    return " ".join(metavar) if isinstance(metavar, tuple) else metavar


def runner_8() -> str:
    from .arguments import COMMANDS, build_parser

    lines = _header("runner", 8, "System Administration")
    lines += [
        ".SH SYNOPSIS",
        "\\fBrunner\\fR [\\fIoptions\\fR] "
        "[\\fBrun\\fR|\\fBcheck\\fR|\\fBlist\\fR] [\\fITASKDIR\\fR]",
        ".br",
        "\\fBrunner\\fR [\\fIoptions\\fR] "
        "\\fBstatus\\fR|\\fBhistory\\fR|\\fBlog\\fR \\fITASK\\fR|\\fBblame\\fR|\\fBplot\\fR "
        "[\\fIjournal options\\fR]",
        ".SH DESCRIPTION",
        esc("runner reads its configuration (runner.cfg(5)), runs the executables of the task "
            "directory in byte order of their names (adjusted for depends_on), retries the "
            "chain with backoff and jitter when a task fails, and runs the halt task when a "
            "task exits 2 or the tries run out. Each task runs in its own session and process "
            "group with stdin from /dev/null; its output is logged line by line."),
        ".SH COMMANDS",
    ]
    for name, text in COMMANDS.items():
        lines += [".TP", f"\\fB{name}\\fR", esc(text)]
    base = build_parser("list")
    lines += [".SH OPTIONS", *_options(base)]
    common = frozenset(flag for action in base._actions for flag in action.option_strings)
    lines += [
        ".SH COMMAND OPTIONS",
        esc("status, history, log, blame and plot read the journal named by the "
            "configuration: the fleet journal at journal_url when it is set (--local for the "
            "local one), else state_dir/journal.sqlite; status always reads this machine's. "
            "They exit 0 with an answer, 1 when there is nothing to show or no journal, 78 on "
            "bad arguments. plot writes an SVG timeline (a bar per task run, coloured by its "
            "result; tries, backoff pauses, reboots; the halt task apart) to standard output "
            "or -o FILE. run draws a live progress line on stderr when it is a terminal "
            "(--no-progress: none). ctl talks to the running runner over "
            "runtime_dir/control.sock."),
    ]
    for name in COMMANDS:
        parser = build_parser(name)
        options = _options(parser, common) + _positionals(parser, name)
        if options:
            lines += [".SS", f"\\fB{name}\\fR", *options]
    lines += [".SH TASK RESULTS"]
    for code, text in (
        ("0", "OK: the next task runs."),
        ("2", "HALT: the halt task runs, runner exits 2."),
        ("3", "EXIT: runner exits 3; the halt task does not run."),
        ("other", "RETRY (also a death by signal, or a task that cannot start): pause "
                  "sleep_time * backoff**n + uniform(0, retry_jitter), then try the chain again."),
        ("timeout", "TIMEOUT after max_time: SIGTERM to the group, SIGKILL after kill_grace; "
                    "handled as RETRY."),
    ):
        lines += [".TP", f"\\fB{esc(code)}\\fR", esc(text)]
    lines += [".SH EXIT STATUS"]
    for code, text in (
        ("0", "every iteration passed"), ("1", "a task failed on its last try"),
        ("2", "a task asked for a halt"), ("3", "a task asked runner to exit"),
        ("70", "internal error"), ("75", "another runner already runs on this state_dir (it holds "
                     "state_dir/runner.lock), or with --daemon a live runner wrote the pidfile"),
        ("78", "configuration or command-line error"),
        ("130, 143", "stopped by SIGINT or SIGTERM"),
    ):
        lines += [".TP", f"\\fB{esc(code)}\\fR", esc(text)]
    lines += [
        ".SH SIGNALS",
        esc("SIGTERM and SIGINT stop the running task's process group (SIGKILL after "
            "kill_grace) and exit 143 or 130; a second signal kills at once. SIGHUP reloads "
            "the configuration before the next task; an invalid one is reported and the old "
            "one kept."),
        ".SH SECRETS",
        esc("Values of keys matching secret_keys and the passwords of journal_url (as "
            "written and percent-decoded, in the userinfo or a password= parameter) are "
            "replaced by ******** in the log, the journal, status.json, the metrics file, "
            "the hook's JSON and the output of check, list, plan and graph; --show-secrets "
            "(root only) shows them there. Tasks still get the values themselves."),
        ".SH ENVIRONMENT",
        esc("Tasks and hooks get [env] of runner.cfg and RUNNER_CONFIG_CMD, RUNNER_TASK, "
            "RUNNER_TRY, RUNNER_ITERATION, RUNNER_STATE_DIR, RUNNER_RUN_ID. NOTIFY_SOCKET, "
            "WATCHDOG_USEC and JOURNAL_STREAM are honoured under systemd."),
        ".TP", "\\fBRUNNER_CACHE_DIR\\fR",
        esc("runner check [-c CONFIG] [TASKDIR] answers from its last answer while "
            "everything that check looked at is as it was: every file it read (content "
            "included), every file and directory it examined (type, mode, owner, "
            "identity), the task directory's names, every executable test, the "
            "environment variables it read, the file descriptor limit, the cgroup it "
            "probed, whether psycopg imports, the arguments, the user, and the files of "
            "runner and of the libraries it loaded. A failing check (exit 78) is kept "
            "too; with -D, -v, --show-secrets or any other option the check always runs. "
            "The cache lives where runner-config's does (/var/cache/runner for root, "
            "$XDG_CACHE_HOME/runner otherwise); this variable names another directory, "
            "or, empty, turns the cache off."),
        ".SH FILES",
        ".TP", "\\fI/etc/runner/runner.cfg\\fR", "configuration",
        ".TP", "\\fI/etc/runner/tasks.d/\\fR", "task directory",
        ".TP", "\\fI/var/lib/runner/\\fR", "state directory",
        ".TP", "\\fI/var/lib/runner/runner.lock\\fR",
        "held (flock) by the one runner of this state directory; names its pid",
        ".TP", "\\fI/var/lib/runner/journal.sqlite\\fR", "the local journal (SQLite, WAL mode)",
        ".TP", "\\fI/var/lib/runner/journal.sqlite\\-starts\\fR",
        "task starts written before their process starts, committed to the journal while it "
        "runs; what a killed runner left there goes into the journal at the next start",
        ".TP", "\\fI/var/lib/runner/stamps/\\fR", "stamps of once/per\\-boot/per\\-instance tasks",
        ".TP", "\\fI/var/lib/runner/resume.json\\fR", "where a rebooting chain resumes",
        ".TP", "\\fI/var/lib/runner/boot\\-tries.json\\fR", "failed tries for max_boot_tries",
        ".TP", "\\fI/run/runner/status.json\\fR", "live status, read by runner status",
        ".TP", "\\fI/run/runner/control.sock\\fR", "control socket of runner ctl",
        ".SH SEE ALSO",
        "\\fBrunner\\-config\\fR(1), \\fBrunner.cfg\\fR(5), \\fBsystemd.service\\fR(5)",
    ]
    return "\n".join(lines) + "\n"


def runner_config_1() -> str:
    lines = _header("runner-config", 1, "User Commands")
    lines += [
        ".SH SYNOPSIS",
        "\\fBrunner\\-config\\fR [\\fB\\-c\\fR \\fICONFIG\\fR] [\\fB\\-D\\fR "
        "\\fIsection.key=value\\fR]... \\fB\\-g\\fR \\fIsection.key\\fR "
        "[\\fB\\-\\-default\\fR \\fIVALUE\\fR] [\\fB\\-\\-strict\\fR] [\\fB\\-\\-json\\fR]",
        ".br",
        "\\fBrunner\\-config\\fR [\\fB\\-c\\fR \\fICONFIG\\fR] \\fB\\-l\\fR [\\fISECTION\\fR] "
        "[\\fB\\-\\-json\\fR] [\\fB\\-\\-show\\-secrets\\fR]",
        ".SH DESCRIPTION",
        esc("Prints values of runner's effective configuration: the file, its include_dir "
            "fragments, -D overrides and the defaults of [runner]. Inside a task, "
            "$RUNNER_CONFIG_CMD -g section.key answers from a snapshot of the configuration "
            "runner is using, including its -D overrides and reloads."),
        esc("Listings (-l, also with --json) print ******** for the value of every key "
            "that matches secret_keys, for the passwords in journal_url and for a secret "
            "value quoted inside any other value; -g prints the value itself, to the task "
            "that asks for it by name. --show-secrets lists them in clear, for root only."),
        esc("A key or section that is not set prints nothing and exits 0, as the original "
            "runner did (tasks under set -e read optional keys), with one warning line on "
            "stderr naming the key; --strict, or [runner] config_get_strict = true for "
            "every call, makes it exit 1. --default VALUE prints VALUE, with no warning."),
        esc("A task that switched to another user (sudo -E -u builder, runuser, setpriv) "
            "still reads $RUNNER_CONFIG_CMD: the snapshot is a world-readable file without "
            "the secret values and a root-only file with them. Such a user gets the other "
            "values, ******** for secret ones in listings, and for -g of a secret key one "
            "line on stderr and exit 1: read it before dropping privileges, pass it in the "
            "environment ([env]), or change secret_keys if it is not secret."),
        ".SH OPTIONS",
    ]
    for flags, text in OPTIONS:
        lines += [".TP", f"\\fB{esc(flags)}\\fR", esc(text)]
    lines += [
        ".SH ENVIRONMENT",
        ".TP", "\\fBRUNNER_CONFIG_SNAPSHOT\\fR",
        esc("Set by runner for its tasks: the snapshot of the configuration it runs with. "
            "runner-config -g section.key in a task answers from it, importing "
            "nothing, when the call names no other config file (no -c, or -c naming the "
            "file runner read) and no -D; such a call then prints what $RUNNER_CONFIG_CMD "
            "prints, -D overrides and reloads included."),
        ".TP", "\\fBRUNNER_CACHE_DIR\\fR",
        esc("Outside a task, -g answers from a cache of the validated configuration while "
            "every file it came from (the config file, include_dir and its fragments, the "
            "directories above them) is as it was, content included. The cache lives in "
            "/var/cache/runner for root, $XDG_CACHE_HOME/runner (~/.cache/runner) for "
            "another user; this variable names another directory, or, empty, turns the "
            "cache off. A directory or file that is not the user's own and private "
            "(0700, 0600) is ignored."),
        ".SH EXIT STATUS",
        ".TP", "\\fB0\\fR", esc("the value was printed; or the key or section is not set "
                                "and strict mode is off (nothing printed, a warning on "
                                "stderr)"),
        ".TP", "\\fB1\\fR", esc("the key or section is not set in strict mode, or the key "
                                "is secret and the user is not root (one line on stderr)"),
        ".TP", "\\fB78\\fR", esc("bad configuration or command line, or --show-secrets "
                                "by a user other than root"),
        ".SH SEE ALSO", "\\fBrunner\\fR(8), \\fBrunner.cfg\\fR(5)",
    ]
    return "\n".join(lines) + "\n"


def runner_cfg_5() -> str:
    spec = load_spec()
    lines = _header("runner.cfg", 5, "File Formats")
    lines += [
        ".SH SYNOPSIS", "\\fI/etc/runner/runner.cfg\\fR",
        ".SH DESCRIPTION",
        esc("An INI file parsed by configobj. Values are kept as written; one pair of quotes "
            "around a whole value is removed and # starts a comment. Errors name the file, "
            "the line, the section and the key; runner then exits 78. The dialect of the "
            "original runner's RawConfigParser is read too: ; and REM comment lines, "
            "key: value, an inline comment after whitespace and ;, continuation lines "
            "indented deeper than their key, and [runner] and per-task keys in any case."),
        ".SH [runner]",
        esc("runner's own settings. An unknown key is an error."),
    ]
    for key in spec.sections["runner"].values():
        lines += _key(key)
    ignored = ", ".join(spec.sections["ignored"])
    lines += [".SH IGNORED [runner] KEYS",
              esc(f"{ignored}: {' '.join(spec.section_docs.get('ignored', ()))}")]
    lines += [".SH PER-TASK SECTIONS", esc(" ".join(spec.section_docs.get("task", ())))]
    for key in spec.sections["task"].values():
        lines += _key(key)
    lines += [
        ".SH [env]", esc(" ".join(spec.section_docs.get("env", ()))),
        ".SH OTHER SECTIONS",
        esc("Free-form configuration for tasks, read with runner-config(1)."),
        ".SH SEE ALSO", "\\fBrunner\\fR(8), \\fBrunner\\-config\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


PAGES = {"runner.8": runner_8, "runner-config.1": runner_config_1, "runner.cfg.5": runner_cfg_5}


def main(argv: list[str] | None = None) -> int:
    target = Path((argv if argv is not None else sys.argv[1:] or ["man"])[0])
    target.mkdir(parents=True, exist_ok=True)
    for name, render in PAGES.items():
        (target / name).write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
