"""Memories per day per namespace as a stacked bar chart: the geometry, computed here, drawn by a template as
inline SVG (no script, no style attributes: the page's CSP allows neither)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

SERIES_SHOWN = 8
"""Namespaces drawn in their own colour; the rest are summed as 'other namespaces'."""
OTHER = "other namespaces"

WIDTH, HEIGHT = 960, 280
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 36


@dataclass(slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: int
    label: str


@dataclass(slots=True)
class Chart:
    days: list[str]
    series: list[str]
    totals: dict[str, int]
    """Memories per series over the window."""
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[tuple[float, int]] = field(default_factory=list)
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    peak: int = 0
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = HEIGHT - BOTTOM
    right: int = WIDTH - RIGHT


def day_range(days: int, now: float) -> list[str]:
    today = datetime.fromtimestamp(now, UTC).date()
    return [(today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def build_chart(counts: list[tuple[str, str, int]], days: list[str]) -> Chart:
    """`counts`: (namespace, day, memories) as MemoryService.created_per_day gives them."""
    per_namespace: dict[str, int] = {}
    for namespace, _, n in counts:
        per_namespace[namespace] = per_namespace.get(namespace, 0) + n
    ranked = sorted(per_namespace, key=lambda ns: (-per_namespace[ns], ns))
    shown = ranked if len(ranked) <= SERIES_SHOWN else ranked[: SERIES_SHOWN - 1]
    series = shown + ([OTHER] if len(ranked) > len(shown) else [])
    index = {ns: i for i, ns in enumerate(shown)}
    grid: dict[str, list[int]] = {day: [0] * len(series) for day in days}
    for namespace, day, n in counts:
        if day in grid:
            grid[day][index.get(namespace, len(series) - 1)] += n
    totals = {s: sum(grid[d][i] for d in days) for i, s in enumerate(series)}
    chart = Chart(days=days, series=series, totals=totals)
    chart.peak = max((sum(v) for v in grid.values()), default=0)
    top = _nice_ceiling(chart.peak)
    plot_h = chart.bottom - TOP
    slot = (chart.right - chart.left) / max(len(days), 1)
    gap = min(2.0, slot * 0.2)
    for d, day in enumerate(days):
        y = float(chart.bottom)
        for i, n in enumerate(grid[day]):
            if not n:
                continue
            h = plot_h * n / top
            y -= h
            chart.bars.append(
                Bar(
                    x=round(chart.left + d * slot + gap / 2, 2),
                    y=round(y, 2),
                    width=round(max(slot - gap, 0.5), 2),
                    height=round(h, 2),
                    series=i,
                    label=f"{day} · {series[i]}: {n}",
                )
            )
    chart.y_ticks = [(round(chart.bottom - plot_h * v / top, 2), v) for v in _ticks(top)]
    step = max(1, round(len(days) / 8))
    chart.x_labels = [
        (round(chart.left + d * slot + slot / 2, 2), _short(day)) for d, day in enumerate(days) if d % step == 0
    ]
    return chart


def _nice_ceiling(peak: int) -> int:
    """The top of the y axis: the smallest 1, 2 or 5 x 10^k at or above the peak (at least 4, so an almost
    empty chart is not drawn as a wall of full-height bars)."""
    target = max(peak, 4)
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale >= target:
                return m * scale
        scale *= 10


def _ticks(top: int) -> list[int]:
    return [0, top // 2, top] if top % 2 == 0 else [0, top]


def _short(day: str) -> str:
    d = date.fromisoformat(day)
    return f"{d.strftime('%b')} {d.day}"
