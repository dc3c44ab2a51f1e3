"""`runner plot`: the SVG timeline of real runs of the `runner` binary, read back bar by
bar against the journal those runs wrote (results, tries, times, the backoff between
tries, the halt task, tasks side by side, odd names), drawn by a real browser (headless
Chromium) to a PNG that must not be blank, and the errors when there is nothing to draw.
The drawing's own rules (ticks, names that fit, a minimum bar width, reboots between
runs, 200 tasks x 5 tries over hours) are checked on runner.plot directly."""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
import zlib
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import LogWatcher, Workspace, assert_one_line_error, journal_rows, skip_unless

from runner import plot
from runner.clock import iso

SVG = "{http://www.w3.org/2000/svg}"
ROOT = Path(__file__).resolve().parent.parent

FLAKY = """
    if [ -e "$RUNNER_STATE_DIR/flaky-ran" ]; then exit 0; fi
    touch "$RUNNER_STATE_DIR/flaky-ran"
    exit 1
"""
# Names that are not plain text, and the five characters XML must escape.
ODD_NAMES = ["10-bad\udcff.sh", "20-new\nline.sh", "30-\x1b[31mred.sh", "40-a&b<c>\"q'.sh",
             "50-ünï-任务.sh", "60-back\\slash.sh"]


# -- helpers --------------------------------------------------------------------------


def plot_svg(ws: Workspace, *args: str) -> ET.Element:
    """`runner plot ARGS -o FILE`, parsed."""
    out = ws.root / "plot.svg"
    proc = ws.run("plot", *args, "-o", str(out), tasks=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    return ET.parse(out).getroot()


def bars(root: ET.Element) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}rect") if e.get("class") == "run"]


def journal(ws: Workspace, table: str) -> list[dict]:
    return journal_rows(ws.state / "journal.sqlite", f"SELECT * FROM {table}")


def seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def assert_bars_are_the_journal(root: ET.Element, ws: Workspace) -> list[ET.Element]:
    """One bar per task run, with its task, kind, result, try, iteration and times."""
    drawn = bars(root)
    rows = journal(ws, "task_runs")
    assert len(drawn) == len(rows)
    want = sorted((r["task"], r["kind"], r["result"], str(r["try_num"]), str(r["iteration"]),
                   r["started_at"], r["ended_at"]) for r in rows)
    got = sorted((b.get("data-task"), b.get("data-kind"), b.get("data-result"),
                  b.get("data-try"), b.get("data-iteration"), b.get("data-start"),
                  b.get("data-end")) for b in drawn)
    assert got == want
    for bar in drawn:  # a bar's title says its try and how it ended
        title = bar.find(f"{SVG}title")
        assert title is not None and f"try {bar.get('data-try')}/" in title.text
        assert "exit code" in title.text or "signal" in title.text or "SKIPPED" in title.text
    return drawn


def x_span(bar: ET.Element) -> tuple[float, float]:
    x = float(bar.get("x"))
    return x, x + float(bar.get("width"))


# -- real runs --------------------------------------------------------------------------


def test_retries_backoff_and_a_halt_are_drawn_as_the_journal_recorded_them(ws):
    ws.task("10-first.sh", "sleep 0.1")
    ws.task("20-flaky.sh", FLAKY)
    ws.task("30-halter.sh", "exit 2")  # reached on try 2 only
    ws.task("halt.sh", "exit 0")
    ws.config(sleep_time="0.4", max_tries="3")
    proc = ws.run("-n", "1")
    assert proc.returncode == 2, proc.stderr
    root = plot_svg(ws)
    drawn = assert_bars_are_the_journal(root, ws)
    results = {(b.get("data-task"), b.get("data-try")): b.get("data-result") for b in drawn}
    assert results[("20-flaky.sh", "1")] == "RETRY"
    assert results[("30-halter.sh", "2")] == "HALT"
    assert results[("halt.sh", "2")] == "OK"
    # The halt task is set apart: below every row of the chain.
    halt = next(b for b in drawn if b.get("data-kind") == "halt")
    assert all(float(halt.get("y")) > float(b.get("y")) + 10 for b in drawn if b is not halt)
    # The backoff between try 1 and try 2, as long as the gap the journal's tries show.
    tries = sorted(journal(ws, "tries"), key=lambda t: t["try_num"])
    gap = seconds(tries[1]["started_at"]) - seconds(tries[0]["ended_at"])
    backoffs = [e for e in root.iter(f"{SVG}rect") if e.get("class") == "backoff"]
    assert len(backoffs) == 1
    assert float(backoffs[0].get("data-seconds")) == pytest.approx(gap, abs=0.002)
    assert gap >= 0.4
    # ...drawn between the failed try's last bar and the next try's first.
    flaky1 = next(b for b in drawn if b.get("data-task") == "20-flaky.sh"
                  and b.get("data-try") == "1")
    first2 = next(b for b in drawn if b.get("data-task") == "10-first.sh"
                  and b.get("data-try") == "2")
    band = x_span(backoffs[0])
    assert x_span(flaky1)[1] <= band[0] + 0.5 and band[1] <= x_span(first2)[0] + 0.5
    # Times on one axis: later starts are further right.
    by_start = sorted(drawn, key=lambda b: b.get("data-start"))
    xs = [float(b.get("x")) for b in by_start]
    assert xs == sorted(xs)
    # Legend and scale.
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    for result in ("OK", "RETRY", "TIMEOUT", "HALT", "SKIPPED", "STOPPED", "INTERRUPTED"):
        assert result in texts
    assert any(t.endswith("ms") or t.endswith("s") for t in texts if t[:1].isdigit())


@pytest.mark.slow
def test_timeout_skipped_and_stopped_runs_have_their_result_and_colour(ws):
    go = ws.root / "go"
    ws.task("10-once.sh", "exit 0")
    ws.task("20-slow-first.sh", """
        if [ -e "$RUNNER_STATE_DIR/slow-ran" ]; then exit 0; fi
        touch "$RUNNER_STATE_DIR/slow-ran"
        sleep 5
    """)
    ws.task("30-waits.sh", f"[ -e '{go}' ] && exit 0; sleep 30")
    ws.config("[once]\nfrequency = once\n[slow-first]\nmax_time = 0.5\n", max_tries="3")
    go.touch()
    assert ws.run("-n", "1").returncode == 0  # TIMEOUT, then 10-once SKIPPED on try 2
    go.unlink()
    with LogWatcher(ws.start("-n", "1")) as watcher:
        watcher.wait_for(r"30-waits\.sh: starting")
        watcher.proc.terminate()
        watcher.finish()
        assert watcher.proc.returncode == 143
    root = plot_svg(ws, "--since", "1h")
    drawn = assert_bars_are_the_journal(root, ws)
    results = {b.get("data-result") for b in drawn}
    assert {"OK", "TIMEOUT", "SKIPPED", "STOPPED"} <= results, results
    for bar in drawn:
        colour = plot.COLOURS[bar.get("data-result")]
        assert colour in (bar.get("fill"), bar.get("stroke")), bar.attrib


def test_tasks_run_side_by_side_overlap_on_the_axis_and_in_the_parallel_strip(ws):
    for name in ("10-a.sh", "20-b.sh", "30-c.sh"):
        ws.task(name, "sleep 0.4")
    ws.config(max_parallel="3")
    assert ws.run("-n", "1").returncode == 0
    root = plot_svg(ws)
    drawn = assert_bars_are_the_journal(root, ws)
    spans = [x_span(b) for b in drawn]
    assert max(s[0] for s in spans) < min(s[1] for s in spans)  # all three at one moment
    assert len({b.get("y") for b in drawn}) == 3  # each its own row
    strip = next(e for e in root.iter(f"{SVG}polyline") if e.get("class") == "parallel")
    assert strip.get("data-peak") == "3"


def test_odd_task_names_are_escaped_and_the_svg_still_parses(ws):
    for name in ODD_NAMES:
        ws.task(name, "exit 0")
    assert ws.run("-n", "1").returncode == 0
    out = ws.run("plot", tasks=False)  # to standard output
    assert out.returncode == 0, out.stderr
    root = ET.fromstring(out.stdout.encode())
    drawn = assert_bars_are_the_journal(root, ws)
    names = {b.get("data-task") for b in drawn}
    assert "40-a&b<c>\"q'.sh" in names and "20-new\\nline.sh" in names
    assert "\x1b" not in out.stdout and "\udcff" not in out.stdout


def test_run_picks_one_run_by_id_or_by_its_start(ws):
    ws.task("10-one.sh", "exit 0")
    assert ws.run("-n", "1").returncode == 0
    assert ws.run("-n", "1").returncode == 0
    runs = journal(ws, "runs")
    assert len(runs) == 2
    for run_id in (runs[0]["run_id"], runs[0]["run_id"][:8]):
        drawn = bars(plot_svg(ws, "--run", run_id))
        assert {b.get("data-run") for b in drawn} == {runs[0]["run_id"]}
    # By default the newest run; --since both, with a break (a restart) between them.
    assert {b.get("data-run") for b in bars(plot_svg(ws))} == {runs[1]["run_id"]}
    root = plot_svg(ws, "--since", "1h")
    assert {b.get("data-run") for b in bars(root)} == {r["run_id"] for r in runs}
    breaks = [e for e in root.iter(f"{SVG}rect") if (e.get("class") or "").startswith("break")]
    assert [b.get("class") for b in breaks] == ["break restart"]


def test_a_reboot_asked_by_a_task_joins_both_runs_in_the_default_plot(ws):
    ws.task("10-a.sh", "exit 0")
    ws.task("20-asks.sh", """
        [ -e "$RUNNER_STATE_DIR/asked" ] && exit 0
        touch "$RUNNER_STATE_DIR/asked"
        exit 4
    """)
    ws.task("30-c.sh", "exit 0")
    ws.task("reboot.sh", "exit 0")
    ws.config(reboot_task="reboot.sh")
    with LogWatcher(ws.start("-n", "1")) as watcher:
        watcher.wait_for(r"waiting for the reboot")
        watcher.proc.kill()  # the machine goes down
        watcher.finish()
    assert ws.run("-n", "1").returncode == 0  # the next boot resumes
    root = plot_svg(ws)
    drawn = assert_bars_are_the_journal(root, ws)  # both runs
    assert len({b.get("data-run") for b in drawn}) == 2
    kinds = {b.get("data-task"): (b.get("data-kind"), b.get("data-result")) for b in drawn}
    assert kinds["20-asks.sh"] == ("task", "REBOOT") and kinds["reboot.sh"] == ("reboot", "OK")
    breaks = [e for e in root.iter(f"{SVG}rect") if (e.get("class") or "").startswith("break")]
    assert [b.get("class") for b in breaks] == ["break reboot"]
    reboot_bar = next(b for b in drawn if b.get("data-kind") == "reboot")
    c_bar = next(b for b in drawn if b.get("data-task") == "30-c.sh")
    assert x_span(reboot_bar)[1] <= x_span(breaks[0])[0] + 0.5 <= x_span(c_bar)[0]
    # --run draws one of them.
    assert len({b.get("data-run") for b in bars(plot_svg(ws, "--run", c_bar.get("data-run")))}) == 1


def test_a_task_running_now_is_drawn_up_to_now_and_interrupted_once_runner_died(ws):
    go = ws.root / "go"
    ws.task("10-waits.sh", f"while [ ! -e '{go}' ]; do sleep 0.02; done")
    with LogWatcher(ws.start("-n", "1")) as watcher:
        watcher.wait_for(r"10-waits\.sh: starting")
        time.sleep(0.3)
        [bar] = bars(plot_svg(ws))
        assert bar.get("data-result") == "RUNNING" and bar.get("data-end") == ""
        assert float(bar.get("width")) > plot.MIN_BAR_PX
        watcher.proc.kill()  # runner dies; its task record stays open in the journal
        watcher.finish()
    go.touch()
    [bar] = bars(plot_svg(ws))
    assert bar.get("data-result") == "INTERRUPTED"


@pytest.mark.slow
def test_the_fleet_journal_is_plotted_for_this_host_or_the_one_asked(ws, pg_url, tmp_path):
    import psycopg

    ws.config(journal_url=pg_url)
    ws.task("10-mine.sh", "exit 0")
    assert ws.run("-n", "1").returncode == 0
    (tmp_path / "other").mkdir()
    other = Workspace(tmp_path / "other")
    other.config(journal_url=pg_url)
    other.task("10-theirs.sh", "exit 0")
    assert other.run("-n", "1").returncode == 0
    [theirs] = journal(other, "runs")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table in ("runner_runs", "runner_tries", "runner_task_runs"):
            conn.execute(f"UPDATE {table} SET host = 'other-host' WHERE run_id = %s",
                         (theirs["run_id"],))
    assert {b.get("data-task") for b in bars(plot_svg(ws))} == {"10-mine.sh"}
    assert {b.get("data-task") for b in bars(plot_svg(ws, "--host", "other-host"))} == {
        "10-theirs.sh"}
    root = plot_svg(ws, "--local")
    assert {b.get("data-task") for b in bars(root)} == {"10-mine.sh"}
    # The same questions in PostgreSQL's SQL: a run by the start of its id, and --since.
    mine = {b.get("data-run") for b in bars(root)}.pop()
    assert {b.get("data-run") for b in bars(plot_svg(ws, "--run", mine[:6]))} == {mine}
    assert {b.get("data-task") for b in bars(plot_svg(ws, "--since", "1h", "--host",
                                                      "other-host"))} == {"10-theirs.sh"}


def test_an_unknown_run_is_one_line_and_status_1(ws):
    ws.task("10-one.sh", "exit 0")
    assert ws.run("-n", "1").returncode == 0
    proc = ws.run("plot", "--run", "feedface", tasks=False)
    assert_one_line_error(proc, "--run feedface", "no such run", status=1)
    assert proc.stdout == ""


def test_without_a_journal_plot_is_one_line_and_status_1(ws):
    proc = ws.run("plot", tasks=False)
    assert_one_line_error(proc, "no journal", status=1)


def test_a_journal_without_runs_is_one_line_and_status_1(ws):
    ws.task("10-one.sh", "exit 0")
    assert ws.run("-n", "1").returncode == 0
    conn = sqlite3.connect(ws.state / "journal.sqlite")
    with conn:
        for table in ("task_runs", "tries", "runs"):
            conn.execute(f"DELETE FROM {table}")
    conn.close()
    proc = ws.run("plot", tasks=False)
    assert_one_line_error(proc, "no runs recorded in the journal", status=1)


def test_since_with_nothing_after_it_is_one_line_and_status_1(ws):
    ws.task("10-one.sh", "exit 0")
    assert ws.run("-n", "1").returncode == 0
    proc = ws.run("plot", "--since", "2999-01-01", tasks=False)
    assert_one_line_error(proc, "no runs since 2999-01-01", status=1)


@pytest.mark.parametrize(("args", "fragment"), [
    (("--since", "soon"), "--since"),
    (("--run", "x", "--since", "1h"), "not allowed with"),
    (("-o", "/nonexistent/dir/out.svg"), "-o /nonexistent/dir/out.svg"),
])
def test_bad_arguments_are_one_line_and_status_78(ws, args, fragment):
    proc = ws.run("plot", *args, tasks=False)
    assert_one_line_error(proc, fragment)


# -- the drawing's rules, on runner.plot -------------------------------------------------


def synthetic(tasks: int = 200, tries: int = 5, *, runs: int = 1) -> plot.Timeline:
    """`tasks` tasks of 1 ms to 90 s, `tries` tries (each failing further on), a backoff
    growing by the minute, the halt task; `runs` runs of it, each on a boot of its own."""
    t = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
    run_rows, try_rows, task_runs = [], [], []
    for r in range(runs):
        run_id, run_start = f"{r:032x}", t
        for try_num in range(1, tries + 1):
            try_start, failed = t, None
            for i in range(tasks):
                length = (0.001, 0.05, 2.0, 30.0, 90.0)[i % 5]
                fails = try_num < tries and i == (tasks * try_num) // tries
                name = (f"{i:03d}-a-task-name-much-longer-than-the-column-{i}.sh" if i % 9 == 0
                        else f"{i:03d}-t.sh")
                task_runs.append({
                    "run_id": run_id, "seq": len(task_runs), "task": name, "kind": "task",
                    "result": "RETRY" if fails else "OK", "try_num": try_num,
                    "max_tries": tries, "iteration": 1, "started_at": iso(t),
                    "ended_at": iso(t + timedelta(seconds=length)), "duration_s": length,
                    "exit_code": 1 if fails else 0, "signal": None, "error": None})
                t += timedelta(seconds=length)
                if fails:
                    failed = name
                    break
            try_rows.append({"run_id": run_id, "iteration": 1, "try_num": try_num,
                             "started_at": iso(try_start), "ended_at": iso(t),
                             "result": "RETRY" if failed else "OK", "failed_task": failed})
            t += timedelta(seconds=60 * try_num)
        task_runs.append({
            "run_id": run_id, "seq": len(task_runs), "task": "halt.sh", "kind": "halt",
            "result": "OK", "try_num": tries, "max_tries": tries, "iteration": 1,
            "started_at": iso(t), "ended_at": iso(t + timedelta(seconds=2)),
            "duration_s": 2.0, "exit_code": 0, "signal": None, "error": None})
        t += timedelta(seconds=3)
        run_rows.append({"run_id": run_id, "host": "h", "boot_id": f"boot{r}",
                         "started_at": iso(run_start), "ended_at": iso(t), "result": "DONE"})
        t += timedelta(seconds=45)  # the reboot
    return plot.Timeline(run_rows, try_rows, task_runs, now=t)


def test_two_hundred_tasks_five_tries_and_hours_stay_legible():
    timeline = synthetic()
    root = ET.fromstring(plot.render(timeline).encode())
    drawn = bars(root)
    assert len(drawn) == len(timeline.task_runs)
    assert min(float(b.get("width")) for b in drawn) >= plot.MIN_BAR_PX  # 1 ms shows
    # Names: one row each, never closer than a row, and cut to fit their column.
    names = [t for t in root.iter(f"{SVG}text") if t.get("class") == "name"
             and t.get("data-task")]
    ys = sorted(float(t.get("y")) for t in names)
    assert len(ys) == 201 and min(b - a for a, b in pairwise(ys)) >= 18
    columns = int((plot.NAME_W - 8) / plot.CHAR_PX)
    for text in names:
        title = text.find(f"{SVG}title")
        shown = title.tail  # the text after the tooltip
        assert plot.text_width(shown) <= columns
        if shown != text.get("data-task"):  # cut: the whole name is in its title
            assert "…" in shown and title.text == text.get("data-task")
    # The scale counts in minutes or hours, ticks far enough apart to read.
    ticks = [t for t in root.iter(f"{SVG}text") if t.get("text-anchor") == "middle"
             and t.get("class") == "small" and (t.text or "")[:1].isdigit()]
    assert len(ticks) >= 5 and all("min" in t.text or "h" in t.text for t in ticks)
    xs = [float(t.get("x")) for t in ticks]
    assert min(b - a for a, b in pairwise(xs)) >= plot.TICK_MIN_PX - 0.01


def test_runs_on_two_boots_are_separated_by_a_reboot():
    timeline = synthetic(tasks=5, tries=2, runs=2)
    root = ET.fromstring(plot.render(timeline).encode())
    breaks = [e for e in root.iter(f"{SVG}rect") if (e.get("class") or "").startswith("break")]
    assert [b.get("class") for b in breaks] == ["break reboot"]
    first, second = (sorted(x_span(b)[0] for b in bars(root) if b.get("data-run") == r["run_id"])
                     for r in timeline.runs)
    assert first[-1] < x_span(breaks[0])[0] and x_span(breaks[0])[1] <= second[0]


def test_runs_of_one_row_that_overlap_get_lanes_of_their_own():
    def bar(start: float, end: float) -> plot.Bar:
        return plot.Bar({}, start, end, "OK")

    bars = [bar(0, 10), bar(2, 4), bar(5, 12), bar(10, 11)]
    assert plot.assign_lanes(bars) == 2
    assert [b.lane for b in bars] == [0, 1, 1, 0]
    assert plot.concurrency(bars) == [(0, 1), (2, 2), (4, 1), (5, 2), (10, 2), (11, 1), (12, 0)]


@pytest.mark.parametrize(("px_per_s", "label"), [
    (200000, "1ms"), (2000, "50ms"), (20, "5s"), (0.5, "5min"), (0.01, "2h"),
])
def test_the_tick_step_adapts_to_the_scale(px_per_s, label):
    step = plot.tick_step(px_per_s)
    assert step * px_per_s >= plot.TICK_MIN_PX
    assert plot.tick_label(step, step) == label


def test_text_xml_forbids_is_escaped_and_markup_is_quoted():
    assert plot.xml("a\x01b\ufffe<&>\"'") == "a\\x01b\\ufffe&lt;&amp;&gt;&quot;&#39;"
    assert plot.xml("back\\slash") == "back\\slash"  # the journal's text, as it is
    timeline = synthetic(tasks=2, tries=1)
    timeline.task_runs[0]["task"] = "10-\x00\x07\ud800\uffff.sh"
    ET.fromstring(plot.render(timeline).encode())  # parses


def test_ellipsize_keeps_both_ends_and_counts_wide_characters_twice():
    assert plot.ellipsize("010-short.sh", 20) == "010-short.sh"
    cut = plot.ellipsize("010-a-very-long-task-name-indeed.sh", 20)
    assert cut.startswith("010-") and cut.endswith(".sh") and plot.text_width(cut) <= 20
    wide = plot.ellipsize("20-" + "任务" * 20 + ".sh", 20)
    assert plot.text_width(wide) <= 20 and wide.endswith(".sh")


# -- a real browser --------------------------------------------------------------------


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(svg: Path, png: Path, width: int, height: int) -> None:
    browser = chromium()
    skip_unless(browser is not None, "needs chromium (Debian package chromium)")
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={png}", f"--window-size={width},{height}", svg.as_uri()],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HOME": str(png.parent)},  # its profile: not root's home
    )
    assert proc.returncode == 0 and png.exists(), proc.stderr


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) pixel bytes) of an 8-bit RGB or RGBA PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(chunks)
    stride = width * channels
    rows, previous = [], bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        unfilter(kind, line, previous, channels)
        rows.append(bytes(line))
        previous = bytes(line)
    return width, height, rows


def unfilter(kind: int, line: bytearray, up: bytes, bpp: int) -> None:
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = up[i]
        c = up[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + a) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + b) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (a + b) // 2) & 0xFF
        elif kind == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF


def inked(rows: list[bytes], channels: int) -> tuple[int, int]:
    """(pixels that are not white, pixels of a saturated colour: the bars)."""
    ink = colour = 0
    for row in rows:
        for i in range(0, len(row), channels):
            r, g, b = row[i], row[i + 1], row[i + 2]
            if min(r, g, b) < 235:
                ink += 1
            if max(r, g, b) - min(r, g, b) > 60:
                colour += 1
    return ink, colour


@pytest.mark.slow
def test_chromium_draws_the_plot_of_a_real_run(ws, tmp_path):
    ws.task("10-first.sh", "sleep 0.2")
    ws.task("20-flaky.sh", FLAKY)
    ws.task("30-last.sh", "sleep 0.1")
    ws.config(sleep_time="0.3")
    assert ws.run("-n", "1").returncode == 0
    root = plot_svg(ws)
    width, height = round(float(root.get("width"))), round(float(root.get("height")))
    png = tmp_path / "plot.png"
    screenshot(ws.root / "plot.svg", png, width, height)
    got_w, got_h, rows = read_png(png)
    assert (got_w, got_h) == (width, height)
    channels = len(rows[0]) // got_w
    ink, colour = inked(rows, channels)
    assert ink > 0.02 * width * height, ink  # text, grid, bars: not a blank page
    assert colour > 1000, colour  # the coloured bars and legend were drawn


def test_the_committed_demo_png_is_a_real_picture():
    png = ROOT / "docs" / "plot-demo.png"
    width, height, rows = read_png(png)
    assert width >= 1000 and height >= 200
    ink, colour = inked(rows, len(rows[0]) // width)
    assert ink > 0.02 * width * height and colour > 1000
    assert "docs/plot-demo.png" in (ROOT / "README.md").read_text()
