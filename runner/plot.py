"""`runner plot`'s drawing: the journal's rows of some runs in, a self-contained SVG
timeline out. Pure (no file, no journal, no clock but the `now` it is given) and
standard library only, so tests can draw any shape of run without running one.

What it draws, on one time axis:
- one row per task (the halt and reboot tasks set apart below), a bar per task run,
  coloured by its result, its try and exit code in the bar's `<title>`; overlapping runs
  of one row (several hosts' runs) get lanes of their own;
- a strip of the chain's tries, with the backoff pause between two tries shaded across
  every row;
- with several tasks running at once (max_parallel > 1), how many ran at each moment;
- each run (runner process) is a segment of the axis; between two, a fixed-width break
  says what lay between: a reboot (another boot id), or runner started again;
- a legend, the time scale (ms, s, min or h, whichever gives ticks about 70 px apart)
  and, right of each row, how many runs the task had and the time they took.

Every bar carries its journal record in data-* attributes (task, result, try, times as
the journal wrote them), which is what tests read back.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from .escape import escape

Row = dict[str, Any]

# Results as the journal writes them (runner.states.TaskState's values) and their colours.
COLOURS = {
    "OK": "#2e9d4a",
    "RETRY": "#e67e22",
    "TIMEOUT": "#b03a2e",
    "HALT": "#7b1fa2",
    "EXIT": "#5d6d7e",
    "SKIPPED": "#b8c0c8",
    "STOPPED": "#2c3e50",
    "INTERRUPTED": "#8d6e63",
    "REBOOT": "#1f6fb2",
    "RUNNING": "#5dade2",
}
OTHER_COLOUR = "#999999"  # a result this runner does not know (a newer runner's)
BACKOFF_COLOUR = "#f5c27a"
BREAK_COLOUR = "#d6dbe0"

FONT = "DejaVu Sans, Liberation Sans, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Liberation Mono, monospace"
NAME_FONT_PX = 12
CHAR_PX = NAME_FONT_PX * 0.6  # a monospace character's advance, for fitting names
MARGIN = 16
NAME_W = 264  # the task name column
PLOT_W = 1000  # the time axis
SUMMARY_W = 120  # right of each row: runs and time
ROW_H = 18
BAR_H = 12
MIN_BAR_PX = 2.0  # a 1 ms task stays visible on an axis of hours
BREAK_PX = 64  # between two runs
TICK_MIN_PX = 70
# Tick steps in seconds: 1-2-5 below a minute, then the clock's own divisions.
STEPS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30,
    60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
    172800, 604800,
)
# XML 1.0 forbids these characters even escaped; a journal written by runner holds none
# (runner.escape), but a fleet journal may hold what any writer wrote.
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Timeline:
    """What to draw: rows of the journal's runs, tries and task_runs tables (as
    runner.history reads them), `live`: the run ids whose runner still runs (their open
    bars end `now`; other open bars were INTERRUPTED)."""

    runs: list[Row]
    tries: list[Row]
    task_runs: list[Row]
    now: datetime
    live: frozenset[str] = frozenset()
    source: str = ""


# -- text -------------------------------------------------------------------------------


def xml(text: object) -> str:
    """Text for an XML attribute or element: characters XML forbids under runner.escape's
    rule (the journal's names are escaped already: backslashes stay as they are), then
    the five markup characters."""
    value = _XML_BAD.sub(_bad_char, str(text))
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))


def _bad_char(match: re.Match[str]) -> str:
    char = match.group()
    shown = escape(char)
    return shown if shown != char else f"\\u{ord(char):04x}"


def text_width(text: str) -> int:
    """Columns `text` takes in a monospace font (East Asian wide characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def ellipsize(text: str, columns: int) -> str:
    """`text` cut in the middle to fit `columns` (a task's number and extension are what
    tell names apart, so both ends stay)."""
    if text_width(text) <= columns:
        return text
    room = max(columns - 1, 2)  # the ellipsis takes one
    head: list[str] = []
    tail: list[str] = []
    widths = {"head": 0, "tail": 0}
    left, right = 0, len(text) - 1
    while left <= right:
        side = "head" if widths["head"] <= widths["tail"] else "tail"
        char = text[left] if side == "head" else text[right]
        width = text_width(char)
        if widths["head"] + widths["tail"] + width > room:
            break
        widths[side] += width
        if side == "head":
            head.append(char)
            left += 1
        else:
            tail.insert(0, char)
            right -= 1
    return "".join(head) + "…" + "".join(tail)


def duration(seconds: float) -> str:
    """`12ms`, `1.23s`, `12.3s`, `4min 05s`, `2h 05min`."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}min {rest:02d}s"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"{hours}h {rest:02d}min"


def tick_label(offset: float, step: float) -> str:
    """A tick at `offset` seconds, in the unit its step counts in."""
    if step < 1:
        return f"{offset * 1000:.0f}ms" if offset < 1 else f"{offset:g}s"
    if step < 60:
        return f"{offset:.0f}s"
    if step < 3600:
        minutes, rest = divmod(round(offset), 60)
        return f"{minutes}min" if not rest else f"{minutes}min{rest:02d}"
    hours, rest = divmod(round(offset) // 60, 60)
    return f"{hours}h" if not rest else f"{hours}h{rest:02d}"


def tick_step(px_per_s: float) -> float:
    """The smallest step whose ticks are at least TICK_MIN_PX apart."""
    for step in STEPS:
        if step * px_per_s >= TICK_MIN_PX:
            return step
    return STEPS[-1]


def moment(text: str | None) -> float | None:
    """A journal time (ISO 8601) as seconds since the epoch."""
    if not text:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def local_time(seconds: float, with_date: bool = False) -> str:
    shown = datetime.fromtimestamp(seconds, UTC).astimezone()
    return shown.strftime("%Y-%m-%d %H:%M:%S %Z" if with_date else "%H:%M:%S.%f")[
        : None if with_date else -3]


# -- what is drawn ----------------------------------------------------------------------


@dataclass
class Bar:
    """One task run, placed: start and end in epoch seconds."""

    row: Row
    start: float
    end: float
    result: str
    lane: int = 0


@dataclass
class Segment:
    """One run (runner process) on the axis: [start, end] drawn from x."""

    run: Row
    start: float
    end: float
    x: float = 0.0


@dataclass
class TaskRow:
    key: tuple[str, str]  # (kind, task)
    bars: list[Bar] = field(default_factory=list)
    lanes: int = 1
    y: float = 0.0

    @property
    def height(self) -> float:
        return ROW_H * self.lanes


class Axis:
    """Maps a moment to x: each run's segment in order, BREAK_PX between two."""

    def __init__(self, segments: list[Segment], left: float) -> None:
        self.segments = segments
        spans = sum(max(s.end - s.start, 0.001) for s in segments)
        self.px_per_s = (PLOT_W - BREAK_PX * (len(segments) - 1)) / spans
        x = left
        for segment in segments:
            segment.x = x
            x += max(segment.end - segment.start, 0.001) * self.px_per_s + BREAK_PX
        self.right = x - BREAK_PX

    def segment_of(self, run_id: str) -> Segment:
        return next(s for s in self.segments if s.run["run_id"] == run_id)

    def x(self, run_id: str, seconds: float) -> float:
        segment = self.segment_of(run_id)
        offset = min(max(seconds, segment.start), segment.end) - segment.start
        return segment.x + offset * self.px_per_s


def result_of(row: Row, live: frozenset[str]) -> str:
    """The result to show: a run still open in a gone runner's run was INTERRUPTED (as
    `runner status` and the next start say)."""
    result = str(row["result"])
    if result == "RUNNING" and row["run_id"] not in live:
        return "INTERRUPTED"
    return result


def placed(rows: list[Row], segments: dict[str, Segment]
           ) -> Iterable[tuple[Row, Segment, float, float | None]]:
    """(row, its run's segment, start, end or None while open) of rows of these runs."""
    for row in rows:
        segment = segments.get(row["run_id"])
        start = moment(row["started_at"])
        if segment is not None and start is not None:
            yield row, segment, start, moment(row.get("ended_at"))


def bars_of(timeline: Timeline, segments: dict[str, Segment]) -> list[Bar]:
    bars = []
    for row, segment, start, end in placed(timeline.task_runs, segments):
        if end is None:
            end = segment.end if row["result"] == "RUNNING" else start + (
                row.get("duration_s") or 0.0)
        bars.append(Bar(row, start, max(end, start), result_of(row, timeline.live)))
    return bars


def segments_of(timeline: Timeline) -> list[Segment]:
    """Each run's span: from its start (or its first record) to its end, else its last
    record, else `now` when its runner still runs."""
    now = timeline.now.timestamp()
    known: dict[str, list[float]] = {}
    for row in [*timeline.task_runs, *timeline.tries]:
        times = known.setdefault(row["run_id"], [])
        times.extend(t for t in (moment(row["started_at"]), moment(row.get("ended_at")))
                     if t is not None)
    segments = []
    for run in timeline.runs:
        times = known.get(run["run_id"], [])
        start = min([t for t in (moment(run["started_at"]),) if t is not None] + times)
        end = moment(run.get("ended_at"))
        if end is None:
            end = now if run["run_id"] in timeline.live else max(times, default=start)
        segments.append(Segment(run, start, max(end, *times, start)))
    segments.sort(key=lambda s: s.start)
    return segments


def task_rows(bars: list[Bar]) -> tuple[list[TaskRow], list[TaskRow]]:
    """The chain's rows in the order their tasks first started, and the halt and reboot
    tasks' rows; overlapping bars of one row get lanes."""
    rows: dict[tuple[str, str], TaskRow] = {}
    for bar in sorted(bars, key=lambda b: (b.start, b.row.get("seq") or 0)):
        key = (str(bar.row.get("kind") or "task"), str(bar.row["task"]))
        rows.setdefault(key, TaskRow(key)).bars.append(bar)
    for row in rows.values():
        row.lanes = assign_lanes(row.bars)
    chain = [r for r in rows.values() if r.key[0] == "task"]
    special = [r for r in rows.values() if r.key[0] != "task"]
    return chain, special


def assign_lanes(bars: list[Bar]) -> int:
    """Greedy interval partitioning (bars sorted by start): the lanes needed."""
    ends: list[float] = []
    for bar in bars:
        for lane, end in enumerate(ends):
            if bar.start >= end:
                bar.lane, ends[lane] = lane, bar.end
                break
        else:
            bar.lane = len(ends)
            ends.append(bar.end)
    return max(len(ends), 1)


def concurrency(bars: Iterable[Bar]) -> list[tuple[float, int]]:
    """(moment, tasks running from then on), at every change."""
    events: list[tuple[float, int]] = []
    for bar in bars:
        if bar.end > bar.start:
            events += [(bar.start, 1), (bar.end, -1)]
    events.sort()
    steps: list[tuple[float, int]] = []
    running = 0
    for when, change in events:
        running += change
        if steps and steps[-1][0] == when:
            steps[-1] = (when, running)
        else:
            steps.append((when, running))
    return steps


# -- drawing ----------------------------------------------------------------------------


class Canvas:
    """SVG elements as text, in drawing order."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, tag: str, attrs: dict[str, object], text: str | None = None,
            title: str | None = None) -> None:
        attributes = "".join(f' {k.rstrip("_").replace("_", "-")}="{_value(v)}"'
                             for k, v in attrs.items() if v is not None)
        inner = (f"<title>{xml(title)}</title>" if title is not None else "") + (
            xml(text) if text is not None else "")
        self.parts.append(f"<{tag}{attributes}>{inner}</{tag}>" if inner
                          else f"<{tag}{attributes}/>")

    def raw(self, text: str) -> None:
        self.parts.append(text)


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return xml(value)


@dataclass
class Layout:
    """Where things go, top to bottom."""

    left: float = MARGIN + NAME_W
    header: float = 64
    axis_y: float = 0.0
    tries_y: float = 0.0
    parallel_y: float = 0.0
    rows_y: float = 0.0
    bottom: float = 0.0


def render(timeline: Timeline) -> str:
    """The SVG document of `timeline` (at least one run)."""
    if not timeline.runs:
        raise ValueError("nothing to draw: no runs")
    segments = segments_of(timeline)
    axis = Axis(segments, MARGIN + NAME_W)
    by_run = {s.run["run_id"]: s for s in segments}
    bars = bars_of(timeline, by_run)
    chain, special = task_rows(bars)
    steps = concurrency(b for b in bars if b.row.get("kind", "task") == "task")
    parallel = max((n for _, n in steps), default=0) > 1
    layout = Layout()
    layout.axis_y = layout.header + 26
    layout.tries_y = layout.axis_y + 8
    layout.parallel_y = layout.tries_y + ROW_H + 6
    layout.rows_y = layout.parallel_y + (40 if parallel else 0) + 6
    y = layout.rows_y
    for row in chain:
        row.y, y = y, y + row.height
    special_y = y + 24
    y = special_y
    for row in special:
        row.y, y = y, y + row.height
    layout.bottom = y if special else special_y - 24
    width = axis.right + SUMMARY_W + MARGIN
    height = layout.bottom + 80
    canvas = Canvas()
    # Back to front: backgrounds, the grid, the bands between tries and runs, the bars.
    _frame(canvas, timeline, segments, bars, width, height)
    _stripes(canvas, chain, axis)
    if special:
        _special_heading(canvas, special, special_y, axis)
    _grid(canvas, axis, layout)
    _breaks(canvas, axis, layout, {b.row["run_id"] for b in bars if b.row.get("kind") == "reboot"})
    _backoffs(canvas, timeline, axis, layout, by_run)
    _tries(canvas, timeline, axis, layout, by_run)
    if parallel:
        _parallel(canvas, steps, axis, layout)
    _rows(canvas, chain, axis)
    _rows(canvas, special, axis)
    _legend(canvas, layout.bottom + 40)
    return _document(canvas, width, height)


def _document(canvas: Canvas, width: float, height: float) -> str:
    style = (
        f"text{{font-family:{FONT};font-size:11px;fill:#222}}"
        f".name{{font-family:{MONO};font-size:{NAME_FONT_PX}px}}"
        ".title{font-size:15px;font-weight:bold}.small{font-size:10px;fill:#555}"
        ".in{font-size:10px;fill:#fff}.tick{stroke:#e3e6ea;stroke-width:1}"
        ".run{stroke:#0003;stroke-width:0.5}"
    )
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_value(width)}" '
            f'height="{_value(height)}" viewBox="0 0 {_value(width)} {_value(height)}">'
            f"<style>{style}</style>")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + head + "\n".join(
        canvas.parts) + "\n</svg>\n"


def _frame(canvas: Canvas, timeline: Timeline, segments: list[Segment], bars: list[Bar],
           width: float, height: float) -> None:
    canvas.add("rect", {"x": 0, "y": 0, "width": width, "height": height, "fill": "#fff"})
    hosts = sorted({str(s.run["host"]) for s in segments})
    start, end = segments[0].start, segments[-1].end
    runs = f"{len(segments)} runs" if len(segments) > 1 else f"run {segments[0].run['run_id']}"
    canvas.add("text", {"x": MARGIN, "y": 24, "class": "title"},
               f"runner plot · {', '.join(hosts)} · {runs}")
    results = ", ".join(f"{s.run['result']}" for s in segments)
    failed = sum(1 for b in bars if b.result not in ("OK", "SKIPPED", "RUNNING"))
    canvas.add("text", {"x": MARGIN, "y": 44, "class": "small"},
               f"{local_time(start, True)} → {local_time(end, True)} ({duration(end - start)})"
               f" · {len(bars)} task runs, {failed} not OK · ended {results}"
               + (f" · {timeline.source}" if timeline.source else ""))


def _grid(canvas: Canvas, axis: Axis, layout: Layout) -> None:
    step = tick_step(axis.px_per_s)
    for segment in axis.segments:
        span = segment.end - segment.start
        count = math.floor(span / step + 1e-9)
        for index in range(count + 1):
            offset = index * step
            x = segment.x + offset * axis.px_per_s
            canvas.add("line", {"x1": x, "y1": layout.axis_y, "x2": x, "y2": layout.bottom,
                                "class": "tick"})
            canvas.add("text", {"x": x, "y": layout.axis_y - 4, "text_anchor": "middle",
                                "class": "small"}, tick_label(offset, step))
        canvas.add("text", {"x": segment.x, "y": layout.header + 4, "class": "small"},
                   f"run {str(segment.run['run_id'])[:8]} · boot "
                   f"{str(segment.run.get('boot_id') or '?')[:8]} · "
                   f"{local_time(segment.start, True)}")


def _breaks(canvas: Canvas, axis: Axis, layout: Layout, rebooting: set[str]) -> None:
    """Between two runs: a reboot (another boot, or the run before ran the reboot task
    and waited for it), else a restart of runner."""
    for before, after in pairwise(axis.segments):
        x = before.x + (before.end - before.start) * axis.px_per_s
        reboot = (before.run.get("boot_id") != after.run.get("boot_id")
                  or before.run["run_id"] in rebooting)
        what = "reboot" if reboot else "restart"
        gap = max(after.start - before.end, 0.0)
        canvas.add("rect", {"x": x + 4, "y": layout.axis_y, "width": BREAK_PX - 8,
                            "height": layout.bottom - layout.axis_y, "fill": BREAK_COLOUR,
                            "class": f"break {what}"},
                   title=f"{what}: runner not running for {duration(gap)} "
                   f"(run {before.run['run_id']} ended {before.run.get('result')})")
        canvas.add("text", {"x": x + BREAK_PX / 2, "y": layout.axis_y - 4,
                            "text_anchor": "middle", "class": "small"},
                   f"{what} {duration(gap)}")


def _try_spans(timeline: Timeline, by_run: dict[str, Segment]) -> list[tuple[Row, float, float]]:
    spans = [(row, start, segment.end if end is None else end)
             for row, segment, start, end in placed(timeline.tries, by_run)]
    spans.sort(key=lambda s: (s[0]["run_id"], s[0]["iteration"], s[0]["try_num"]))
    return spans


def _backoffs(canvas: Canvas, timeline: Timeline, axis: Axis, layout: Layout,
              by_run: dict[str, Segment]) -> None:
    """The pause between a try's end and the next try of the same iteration."""
    spans = _try_spans(timeline, by_run)
    for (row, _, end), (after, start, _) in pairwise(spans):
        if (row["run_id"], row["iteration"]) != (after["run_id"], after["iteration"]):
            continue
        if start <= end:
            continue
        x1, x2 = axis.x(row["run_id"], end), axis.x(row["run_id"], start)
        cause = f", {row['failed_task']}" if row.get("failed_task") else ""
        title = (f"backoff {duration(start - end)} after try {row['try_num']} "
                 f"({row['result']}{cause})")
        canvas.add("rect", {"x": x1, "y": layout.tries_y, "width": max(x2 - x1, 1.0),
                            "height": layout.bottom - layout.tries_y, "fill": BACKOFF_COLOUR,
                            "fill_opacity": 0.35, "class": "backoff",
                            "data_seconds": f"{start - end:.3f}"}, title=title)
        if x2 - x1 > 60:
            canvas.add("text", {"x": (x1 + x2) / 2, "y": layout.tries_y + 12,
                                "text_anchor": "middle", "class": "small"},
                       f"backoff {duration(start - end)}")


def _tries(canvas: Canvas, timeline: Timeline, axis: Axis, layout: Layout,
           by_run: dict[str, Segment]) -> None:
    canvas.add("text", {"x": MARGIN, "y": layout.tries_y + 13, "class": "name"},
               "chain tries")
    for row, start, end in _try_spans(timeline, by_run):
        x1, x2 = axis.x(row["run_id"], start), axis.x(row["run_id"], end)
        result = result_of(row, timeline.live)
        label = f"iteration {row['iteration']} try {row['try_num']}"
        canvas.add("rect", {"x": x1, "y": layout.tries_y + 2, "width": max(x2 - x1, MIN_BAR_PX),
                            "height": ROW_H - 4, "rx": 3,
                            "fill": COLOURS.get(result, OTHER_COLOUR), "fill_opacity": 0.25,
                            "class": "try", "data_result": result},
                   title=f"{label}: {result}, {duration(max(end - start, 0))}")
        if x2 - x1 > 8 * len(label):
            canvas.add("text", {"x": x1 + 4, "y": layout.tries_y + 13, "class": "small"}, label)


def _parallel(canvas: Canvas, steps: list[tuple[float, int]], axis: Axis,
              layout: Layout) -> None:
    """How many tasks ran at once: a step line 34 px high."""
    peak = max(n for _, n in steps)
    top, height = layout.parallel_y, 34.0
    canvas.add("text", {"x": MARGIN, "y": top + 22, "class": "name"},
               f"running at once (≤{peak})")
    points: list[str] = []
    level: float | None = None  # the y of the step before: a step is across, then up/down
    for when, count in steps:
        run_id = _run_at(axis, when)
        if run_id is None:
            continue
        x = axis.x(run_id, when)
        if level is not None:
            points.append(f"{x:.1f},{level:.1f}")
        level = top + height - height * count / peak
        points.append(f"{x:.1f},{level:.1f}")
    canvas.add("polyline", {"points": " ".join(points), "fill": "none", "stroke": "#1f6fb2",
                            "stroke_width": 1.5, "class": "parallel", "data_peak": peak})


def _run_at(axis: Axis, when: float) -> str | None:
    """The run whose segment holds `when`."""
    for segment in axis.segments:
        if segment.start <= when <= segment.end:
            return str(segment.run["run_id"])
    return None


def _stripes(canvas: Canvas, rows: list[TaskRow], axis: Axis) -> None:
    for row in rows[1::2]:
        canvas.add("rect", {"x": MARGIN, "y": row.y, "width": axis.right - MARGIN,
                            "height": row.height, "fill": "#f3f4f7"})


def _rows(canvas: Canvas, rows: list[TaskRow], axis: Axis) -> None:
    columns = int((NAME_W - 8) / CHAR_PX)
    for row in rows:
        kind, name = row.key
        canvas.add("text", {"x": MARGIN, "y": row.y + 13, "class": "name", "data_task": name},
                   ellipsize(name, columns),
                   title=name if kind == "task" else f"{kind} task {name}")
        for bar in row.bars:
            _bar(canvas, bar, row, axis)
        total = sum(max(b.end - b.start, 0.0) for b in row.bars)
        canvas.add("text", {"x": axis.right + 8, "y": row.y + 13, "class": "small"},
                   f"{len(row.bars)}× {duration(total)}" if len(row.bars) > 1
                   else duration(total))


def _bar(canvas: Canvas, bar: Bar, row: TaskRow, axis: Axis) -> None:
    record = bar.row
    x1 = axis.x(record["run_id"], bar.start)
    x2 = max(axis.x(record["run_id"], bar.end), x1 + MIN_BAR_PX)
    y = row.y + bar.lane * ROW_H + (ROW_H - BAR_H) / 2
    colour = COLOURS.get(bar.result, OTHER_COLOUR)
    hollow = bar.result == "SKIPPED"
    canvas.add("rect", {
        "x": x1, "y": y, "width": x2 - x1, "height": BAR_H, "rx": 2,
        "fill": "#fff" if hollow else colour, "stroke": colour if hollow else None,
        "class": "run", "data_task": record["task"], "data_kind": record.get("kind") or "task",
        "data_result": bar.result, "data_try": record["try_num"],
        "data_iteration": record["iteration"], "data_run": record["run_id"],
        "data_start": record["started_at"], "data_end": record.get("ended_at") or "",
        "data_exit": "" if record.get("exit_code") is None else record["exit_code"],
    }, title=_bar_title(bar))
    label = duration(bar.end - bar.start)
    if x2 - x1 > len(label) * 6.5 + 6 and not hollow:
        canvas.add("text", {"x": x1 + 3, "y": y + BAR_H - 3, "class": "in"}, label)


def _bar_title(bar: Bar) -> str:
    record = bar.row
    ended = "still running" if bar.result == "RUNNING" else _ended(record)
    tries = f"try {record['try_num']}" + (
        f"/{record['max_tries']}" if record.get("max_tries") else "")
    kind = record.get("kind") or "task"
    name = record["task"] if kind == "task" else f"{kind} task {record['task']}"
    lines = [
        f"{name}: {bar.result} ({ended})",
        f"{tries}, iteration {record['iteration']}, run {str(record['run_id'])[:8]}",
        f"started {local_time(bar.start)}, took {duration(bar.end - bar.start)}",
    ]
    if record.get("error"):
        lines.append(str(record["error"]))
    return "\n".join(lines)


def _ended(record: Row) -> str:
    if record.get("signal") is not None:
        return f"signal {record['signal']}"
    if record.get("exit_code") is not None:
        return f"exit code {record['exit_code']}"
    return "no exit code"


def _special_heading(canvas: Canvas, rows: list[TaskRow], y: float, axis: Axis) -> None:
    top, bottom = y - 6, rows[-1].y + rows[-1].height
    canvas.add("rect", {"x": MARGIN, "y": top, "width": axis.right - MARGIN,
                        "height": bottom - top + 2, "fill": "#fbeff2", "class": "special"})
    canvas.add("line", {"x1": MARGIN, "y1": top, "x2": axis.right, "y2": top,
                        "stroke": "#7b1fa2", "stroke_dasharray": "4 3"})
    canvas.add("text", {"x": MARGIN, "y": top - 4, "class": "small"},
                "halt and reboot tasks (not part of the chain)")


def _legend(canvas: Canvas, y: float) -> None:
    x = float(MARGIN)
    entries = [(name, colour, name == "SKIPPED") for name, colour in COLOURS.items()]
    for name, colour, hollow in entries:
        canvas.add("rect", {"x": x, "y": y - 10, "width": 14, "height": 10, "rx": 2,
                            "fill": "#fff" if hollow else colour,
                            "stroke": colour if hollow else None, "class": "legend"})
        canvas.add("text", {"x": x + 18, "y": y}, name)
        x += 26 + len(name) * 7
    y += 20
    x = float(MARGIN)
    for label, colour, opacity in (("backoff between tries", BACKOFF_COLOUR, 0.35),
                                   ("reboot / restart of runner", BREAK_COLOUR, 1.0)):
        canvas.add("rect", {"x": x, "y": y - 10, "width": 14, "height": 10, "fill": colour,
                            "fill_opacity": opacity, "class": "legend"})
        canvas.add("text", {"x": x + 18, "y": y}, label)
        x += 34 + len(label) * 6.5
    canvas.add("text", {"x": x, "y": y, "class": "small"},
               "hover a bar for its try, exit code and times")
