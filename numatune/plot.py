"""Plots as SVG, written by hand: the sweep (decode tok/s against threads, one series per memory
policy and node set, the median with its spread as error bars) and a bandwidth matrix as a heat
map. Pure functions from values to SVG text; `write_plot` saves one as .svg, or as .png through
Debian's `rsvg-convert` (librsvg2-bin) when it is installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Optional, Sequence

from .errors import NumatuneError
from .store import Trial, TuneResult
from .sysfs import format_cpulist

# One colour per policy (the report's screenshot test looks for them); node sets of one policy
# differ by dash pattern.
POLICY_COLOURS = {"first-touch": "#1f77b4", "interleave": "#ff7f0e", "bind": "#2ca02c",
                  "replicate": "#d62728", "partition": "#9467bd"}
_DASHES = ("", "6 3", "2 3", "8 3 2 3")
PLOT_SUFFIXES = (".svg", ".png")
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@dataclass(frozen=True)
class Point:
    threads: int
    median: float
    spread: float
    samples: int
    trial: Trial


@dataclass(frozen=True)
class Series:
    """One line of the sweep: a policy on a node set (and instance count), over thread counts."""

    label: str
    policy: str
    points: tuple[Point, ...]


def sweep_series(result: TuneResult) -> tuple[Series, ...]:
    """The trials as lines: per (policy, nodes, instances) and thread count the trial of the
    latest stage (measured longest), the fastest of those when several CPU sets share a count.
    Failed trials are left out."""
    best: dict[tuple, dict[int, Trial]] = {}
    for trial in result.trials:
        if trial.error:
            continue
        c = trial.config
        key = (c.policy, c.nodes, c.instances)
        held = best.setdefault(key, {}).get(c.threads)
        if held is None or (trial.stage, trial.tokens_per_s.median) > (held.stage, held.tokens_per_s.median):
            best[key][c.threads] = trial
    series = []
    for (policy, nodes, instances), by_threads in sorted(best.items(), key=lambda i: (i[0][0], i[0][1], i[0][2])):
        label = f"{policy} nodes {format_cpulist(nodes)}" + (f" ×{instances}" if instances > 1 else "")
        points = tuple(Point(threads, t.tokens_per_s.median, t.tokens_per_s.spread, t.tokens_per_s.n, t)
                       for threads, t in sorted(by_threads.items()))
        series.append(Series(label, policy, points))
    return tuple(series)


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round axis ticks from 0 to at least `top`: steps of 1, 2 or 5 × a power of ten."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** _floor_log10(raw)
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < top:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _floor_log10(value: float) -> int:
    exponent = 0
    while value >= 10:
        value /= 10
        exponent += 1
    while value < 1:
        value *= 10
        exponent -= 1
    return exponent


def _number(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"


def _svg_open(width: int, height: int, title: str, standalone: bool) -> list[str]:
    ns = f' xmlns="{SVG_NAMESPACE}"' if standalone else ""
    return [f'<svg{ns} width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'font-family="sans-serif" font-size="12">',
            f"<title>{escape(title)}</title>",
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>']


def sweep_svg(series: Sequence[Series], title: str, winner: Optional[Trial] = None,
              standalone: bool = True, width: int = 940, height: int = 440) -> str:
    """tok/s against threads, a line per series, error bars of ± the spread, the winner ringed.
    `standalone` adds the XML namespace a .svg file needs (inline in HTML it is implied)."""
    left, right, top, bottom = 64, 190, 36, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [p for s in series for p in s.points]
    max_threads = max((p.threads for p in points), default=1)
    y_ticks = nice_ticks(max((p.median + p.spread for p in points), default=1.0))
    x_ticks = sorted({p.threads for p in points}) or [1]
    x_of = lambda threads: left + plot_w * threads / max_threads  # noqa: E731
    y_of = lambda value: top + plot_h * (1 - value / y_ticks[-1])  # noqa: E731
    out = _svg_open(width, height, title, standalone)
    out.append(f'<text x="{left}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>')
    for tick in y_ticks:
        y = y_of(tick)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_number(tick)}</text>')
    for threads in _thinned(x_ticks, plot_w):
        x = x_of(threads)
        out.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#444"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{threads}</text>')
    out.append(f'<path d="M{left} {top} V{top + plot_h} H{left + plot_w}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 10}" text-anchor="middle">threads</text>')
    out.append(f'<text transform="translate(16 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle">'
               "decode tok/s (median ± spread)</text>")
    dash_of: dict[str, int] = {}
    for index, s in enumerate(series):
        colour = POLICY_COLOURS.get(s.policy, "#555555")
        dash = _DASHES[dash_of.setdefault(s.policy, 0) % len(_DASHES)]
        dash_of[s.policy] += 1
        out.append(f'<g class="series" data-label="{escape(s.label)}" stroke="{colour}" fill="{colour}">')
        path = " ".join(f"{'M' if i == 0 else 'L'}{x_of(p.threads):.1f} {y_of(p.median):.1f}"
                        for i, p in enumerate(s.points))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<path d="{path}" fill="none" stroke-width="2.5"{dash_attr}/>')
        for p in s.points:
            x, y = x_of(p.threads), y_of(p.median)
            if p.spread > 0:
                low, high = y_of(max(p.median - p.spread, 0.0)), y_of(p.median + p.spread)
                out.append(f'<path d="M{x:.1f} {low:.1f} V{high:.1f} M{x - 4:.1f} {low:.1f} h8 '
                           f'M{x - 4:.1f} {high:.1f} h8" fill="none" stroke-width="1.5"/>')
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" stroke="none">'
                       f"<title>{escape(s.label)}, {p.threads} threads: {p.median:.2f} ± {p.spread:.2f} tok/s "
                       f"(n={p.samples})</title></circle>")
            if winner is not None and p.trial == winner:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="9" fill="none" stroke="#111" stroke-width="2"/>')
        out.append("</g>")
        legend_y = top + 8 + 20 * index
        legend_x = left + plot_w + 16
        out.append(f'<line x1="{legend_x}" y1="{legend_y}" x2="{legend_x + 24}" y2="{legend_y}" '
                   f'stroke="{colour}" stroke-width="2.5"{dash_attr}/>')
        out.append(f'<text x="{legend_x + 30}" y="{legend_y + 4}">{escape(s.label)}</text>')
    if winner is not None:
        legend_y = top + 8 + 20 * len(series)
        out.append(f'<circle cx="{left + plot_w + 28}" cy="{legend_y}" r="7" fill="none" stroke="#111" '
                   f'stroke-width="2"/><text x="{left + plot_w + 46}" y="{legend_y + 4}">winner</text>')
    if not points:
        out.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle">'
                   "no trial completed</text>")
    out.append("</svg>")
    return "\n".join(out)


def _thinned(ticks: list[int], plot_w: float) -> list[int]:
    """Tick labels far enough apart not to overlap (always the first and the last)."""
    kept: list[int] = []
    for tick in ticks:
        if not kept or (tick - kept[-1]) / ticks[-1] * plot_w >= 28:
            kept.append(tick)
    if kept[-1] != ticks[-1]:
        kept[-1] = ticks[-1]
    return kept


# Heat map ramp: light to dark slate, away from the sweep's policy colours.
_LOW, _HIGH = (238, 243, 248), (27, 58, 92)


def _ramp(share: float) -> str:
    share = min(max(share, 0.0), 1.0)
    r, g, b = (round(lo + (hi - lo) * share) for lo, hi in zip(_LOW, _HIGH))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap_svg(matrix, kernel: str, standalone: bool = True) -> str:
    """One kernel of a bandwidth matrix: rows are CPU nodes, columns memory nodes, GB/s in cells."""
    cells = [c for c in matrix.cells if c.result.kernel == kernel]
    cpu_nodes = sorted({c.cpu_node for c in cells})
    memory_nodes = sorted({c.result.memory_node for c in cells})
    size, left, top = 76, 92, 56
    width = left + size * len(memory_nodes) + 20
    height = top + size * len(cpu_nodes) + 20
    values = [c.result.gbps.median for c in cells]
    low, high = min(values, default=0.0), max(values, default=1.0)
    title = f"{kernel} bandwidth, GB/s (median ± spread)"
    out = _svg_open(width, height, title, standalone)
    out.append(f'<text x="8" y="18" font-size="13" font-weight="bold">{escape(kernel)} GB/s</text>')
    out.append(f'<text x="{left + size * len(memory_nodes) / 2:.0f}" y="{top - 22}" text-anchor="middle">'
               "memory node</text>")
    out.append(f'<text x="8" y="{top - 6}">CPU node</text>')
    for j, mem in enumerate(memory_nodes):
        out.append(f'<text x="{left + size * j + size / 2:.0f}" y="{top - 6}" text-anchor="middle">{mem}</text>')
    for i, cpu_node in enumerate(cpu_nodes):
        out.append(f'<text x="{left - 10}" y="{top + size * i + size / 2 + 4:.0f}" text-anchor="end">{cpu_node}</text>')
        for j, mem in enumerate(memory_nodes):
            m = matrix.gbps(cpu_node, mem, kernel)
            share = (m.median - low) / (high - low) if high > low else 1.0
            ink = "#ffffff" if share > 0.5 else "#111111"
            x, y = left + size * j, top + size * i
            out.append(f'<rect x="{x}" y="{y}" width="{size - 2}" height="{size - 2}" fill="{_ramp(share)}">'
                       f"<title>CPUs of node {cpu_node}, memory of node {mem}: {m.describe(1)}</title></rect>")
            out.append(f'<text x="{x + size / 2 - 1:.0f}" y="{y + size / 2 - 2:.0f}" text-anchor="middle" '
                       f'font-weight="bold" fill="{ink}">{m.median:.1f}</text>')
            out.append(f'<text x="{x + size / 2 - 1:.0f}" y="{y + size / 2 + 14:.0f}" text-anchor="middle" '
                       f'font-size="10" fill="{ink}">± {m.spread:.1f}</text>')
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Files


def check_plot_path(path: Path) -> None:
    """Before any long work: the suffix is one we write, its directory exists, and a PNG can be
    made (rsvg-convert installed). NumatuneError (one line) otherwise."""
    suffix = path.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise NumatuneError(f"--plot: {path}: write .svg or .png (got '{suffix or 'no suffix'}')")
    check_parent(path, "--plot")
    if suffix == ".png" and shutil.which("rsvg-convert") is None:
        raise NumatuneError("--plot: a .png is rendered by rsvg-convert, which is not installed "
                            "(Debian/Ubuntu: apt-get install librsvg2-bin); or write a .svg")


def check_parent(path: Path, flag: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise NumatuneError(f"{flag}: {path}: directory {parent} does not exist")


def write_atomically(path: Path, data: bytes) -> None:
    """A temporary file in the same directory, renamed into place: never a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)           # as open() would make it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_plot(path: Path, svg: str) -> None:
    """The SVG as it is, or rendered to PNG by rsvg-convert (argv only, no shell)."""
    if path.suffix.lower() == ".svg":
        write_atomically(path, svg.encode())
        return
    try:
        done = subprocess.run(["rsvg-convert", "--format", "png", "--background-color", "white"],
                              input=svg.encode(), capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NumatuneError(f"--plot: {path}: rsvg-convert failed ({exc})") from None
    if done.returncode != 0 or not done.stdout.startswith(b"\x89PNG"):
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise NumatuneError(f"--plot: {path}: rsvg-convert failed ({reason[-1] if reason else done.returncode})")
    write_atomically(path, done.stdout)
