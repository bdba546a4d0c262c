"""Output for people at a terminal: tables on stdout, progress on stderr, JSON for scripts.

The command line's subcommands (commands.py) print through here. Rules:
- stdout carries the result only: a table and a few lines, or with --json one JSON document and nothing else;
- progress bars and spinners go to stderr, and only when stderr is a terminal (quiet when piped or logged);
- memory text is data, never markup or terminal control: rich markup is off, and control characters (an
  escape sequence a web page slipped into a memory could otherwise move the cursor or retitle the window;
  C0 and C1 controls, \r and backspace that overwrite what was printed, bidi overrides that reorder it) are
  shown as visible escapes. Every way out of here applies `safe` itself, to every cell, field, line and
  progress label, so no caller can forget it; JSON escapes them too (`\u009b`), so it is the same data.

rich is imported only here and only when a subcommand runs, so serving never pays for it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.console import Console


class ProgressUpdate(Protocol):
    def __call__(
        self, completed: int | None = None, total: int | None = None, *, description: str | None = None
    ) -> None:
        """Move the bar to `completed`; a `total` or `description` given replaces the one shown."""


_BIDI_CONTROLS = {0x061C, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069}
_UNSAFE_CATEGORIES = {"Cc", "Zl", "Zp"}  # controls; U+2028 and U+2029 break lines in some terminals
_UNSAFE_IN_JSON = re.compile(
    "[\u007f-\u009f\u2028\u2029" + "".join(chr(c) for c in sorted(_BIDI_CONTROLS)) + "]"
)
"""What json.dumps leaves unescaped (it escapes C0 controls) that a terminal could act on."""


def stderr_is_tty() -> bool:
    return _isatty(sys.stderr)


def stdout_is_tty() -> bool:
    return _isatty(sys.stdout)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def safe(text: str, *, multiline: bool = False) -> str:
    """Text fit to print on a terminal: control characters (and bidi overrides) become visible escapes
    (ESC -> \\x1b); with multiline, newlines and tabs are kept."""
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if multiline and ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in _UNSAFE_CATEGORIES or code in _BIDI_CONTROLS:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def shorten(text: str, width: int = 70) -> str:
    """One line of at most `width` characters: whitespace folded, cut with an ellipsis, made safe."""
    flat = safe(" ".join(text.split()))
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


def when(value: float | str | None) -> str:
    """A time for a table: '2026-01-31 12:00' (UTC); '-' for none. Takes epoch seconds or ISO 8601."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M")


def emit_json(data: Any) -> None:
    """One JSON document on stdout, UTF-8 where stdout is UTF-8, else ASCII with \\u escapes (valid either way)."""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "").replace("_", "")
    text = json.dumps(data, indent=2, ensure_ascii=encoding != "utf8")
    text = _UNSAFE_IN_JSON.sub(lambda found: f"\\u{ord(found.group()):04x}", text)  # only inside strings
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def say(line: str = "") -> None:
    """A plain line on stdout, made safe (it may quote stored text or an argument)."""
    sys.stdout.write(safe(line, multiline=True) + "\n")


def note(line: str) -> None:
    """A line for the person on stderr (never mixed into stdout's data), made safe."""
    sys.stderr.write(safe(line, multiline=True) + "\n")
    sys.stderr.flush()


PIPED_WIDTH = 250
"""Line width of tables written to a pipe or a file: wide enough that a row stays on one line (for grep)."""


def _console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    tty = stderr_is_tty() if stderr else stdout_is_tty()
    width = None if tty or os.environ.get("COLUMNS") else PIPED_WIDTH
    # markup, emoji and highlighting off: memory text is printed as it is, never interpreted
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False, width=width)


WHOLE: dict[str, Any] = {"whole": True}
"""Column option of a value a person copies into another command (an id, a score, a namespace): never cut."""
MIN_TEXT_WIDTH = 40
"""The fewest columns a table's text may have beside its other columns; with fewer (an 80- or 100-column
terminal), each row takes two lines: its other columns, then its text, indented, on a line of its own."""
_GAP = 3  # between two columns of a rich SIMPLE_HEAD table without edge padding
_INDENT = 4


def table(
    columns: Sequence[str | tuple[str, dict[str, Any]]],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
) -> None:
    """A table on stdout. A column is a header, or (header, options): rich's `justify`, and `whole` (WHOLE) for
    a value that is never cut. Every column but the last keeps to one line (cut with an ellipsis unless
    whole); the last one (the text) wraps, beside the others if it has MIN_TEXT_WIDTH columns there, else
    below them (`_two_line_rows`). Every cell is made safe."""
    from rich import box
    from rich.cells import cell_len
    from rich.table import Table

    specs = [(column, {}) if isinstance(column, str) else (column[0], dict(column[1])) for column in columns]
    cells = [[safe(cell) for cell in row] for row in rows]
    widths = [max([cell_len(header), *(cell_len(row[n]) for row in cells)]) for n, (header, _) in enumerate(specs)]
    out = _console()
    beside = sum(widths[:-1]) + _GAP * (len(specs) - 1)
    if len(specs) > 1 and out.width - beside < MIN_TEXT_WIDTH:
        _two_line_rows(specs, cells, widths, title)
        return
    grid = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, show_edge=False)
    for n, (header, options) in enumerate(specs, start=1):
        whole = options.pop("whole", False)
        one_line: dict[str, Any] = {"no_wrap": True, "overflow": "ellipsis"} if n < len(specs) else {}
        if whole:
            one_line["min_width"] = widths[n - 1]
        grid.add_column(header, **{**one_line, **options})
    for row in cells:
        grid.add_row(*row)
    out.print(grid)
    sys.stdout.flush()


def _two_line_rows(
    specs: Sequence[tuple[str, dict[str, Any]]], cells: Sequence[Sequence[str]], widths: Sequence[int], title: str | None
) -> None:
    """A table too narrow for its text beside the other columns: per row, one line of the other columns (the
    last of them cut to the width unless whole; whole values are never cut, even past the width), then the
    text, indented and wrapped."""
    from rich.cells import cell_len, set_cell_size
    from rich.padding import Padding
    from rich.text import Text

    out = _console()
    others = specs[:-1]

    def line(values: Sequence[str]) -> str:
        parts: list[str] = []
        used = 0
        for n, ((_, options), value) in enumerate(zip(others, values, strict=True)):
            if n == len(others) - 1:
                room = out.width - used
                if not options.get("whole") and cell_len(value) > room:
                    value = set_cell_size(value, max(room - 1, 0)) + "…"
                parts.append(value)
            else:
                pad = " " * (widths[n] - cell_len(value))
                parts.append(pad + value if options.get("justify") == "right" else value + pad)
                used += widths[n] + 2
        return "  ".join(parts).rstrip()

    if title:
        out.print(Text(title), soft_wrap=True)
    out.print(Text(line([header for header, _ in others])), soft_wrap=True)
    out.print(Text(" " * _INDENT + specs[-1][0]), soft_wrap=True)
    out.print(Text("─" * out.width), soft_wrap=True)
    for row in cells:
        out.print(Text(line(row[:-1])), soft_wrap=True)  # soft_wrap: never cut or folded by rich
        if row[-1]:
            out.print(Padding(Text(row[-1]), (0, 0, 0, _INDENT), expand=False))
    sys.stdout.flush()


def fields(pairs: Sequence[tuple[str, str]]) -> None:
    """Name / value lines on stdout, values wrapped under their own column."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in pairs:
        grid.add_row(safe(name), safe(value, multiline=True))
    _console().print(grid)
    sys.stdout.flush()


@contextmanager
def progress(
    description: str, total: int | None = None, *, unit: str = "", enabled: bool = True
) -> Iterator[ProgressUpdate]:
    """A progress bar on stderr while the block runs, if stderr is a terminal (and `enabled`); else a silent
    update()."""
    if not enabled or not stderr_is_tty():

        def quiet(completed: int | None = None, total: int | None = None, *, description: str | None = None) -> None:
            pass

        yield quiet
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console(stderr=True),
        transient=True,
        # stdout may be carrying the data (export): never capture it into the bar's display
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with bar:
        task = bar.add_task(safe(description), total=total)

        def update(completed: int | None = None, total: int | None = None, *, description: str | None = None) -> None:
            changes: dict[str, Any] = {}
            if completed is not None:
                changes["completed"] = completed
            if total is not None:
                changes["total"] = total
            if description is not None:
                changes["description"] = safe(description)
            bar.update(task, **changes)

        yield update


@contextmanager
def spinner(description: str) -> Iterator[None]:
    """A spinner on stderr while the block runs (loading a model), if stderr is a terminal."""
    if not stderr_is_tty():
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        TimeElapsedColumn(),
        console=_console(stderr=True),
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    ) as live:
        live.add_task(safe(description), total=None)
        yield
