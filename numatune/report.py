"""`--report FILE.html` and `numatune report`: one self-contained HTML page of a tuning run — the
machine, the bandwidth matrix as heat maps, the sweep as a plot, the audit's findings and the
commands to run — that a user can attach to an issue. Inline CSS and inline SVG only: the page
fetches nothing (no scripts, fonts, images or links to other places).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Optional

from . import plot
from .errors import NumatuneError
from .store import Fingerprint, TuneResult
from .sysfs import format_cpulist

GIB = 1 << 30
REPORT_SUFFIXES = (".html", ".htm")


@dataclass(frozen=True)
class ReportInput:
    """Everything a report shows; all but the result are optional."""

    result: TuneResult
    topology: object = None                 # Topology of the machine measured, when at hand
    bandwidth: object = None                # BandwidthMatrix, when measured
    findings: tuple = ()                    # audit Findings
    recommendations: tuple = ()             # Recommendations, one per target engine
    saved_to: Optional[str] = None
    note: Optional[str] = None              # e.g. why the machine tree is the fingerprint only


def check_report_path(path: Path) -> None:
    """Before any long work: an .html name in an existing directory."""
    if path.suffix.lower() not in REPORT_SUFFIXES:
        raise NumatuneError(f"--report: {path}: the report is an .html file")
    plot.check_parent(path, "--report")


def write_report(path: Path, report: ReportInput) -> None:
    plot.write_atomically(path, html_report(report).encode())


def sweep_title(result: TuneResult) -> str:
    return f"Decode speed by threads — {result.model}"


def sweep_plot(result: TuneResult, standalone: bool = True) -> str:
    return plot.sweep_svg(plot.sweep_series(result), sweep_title(result), result.winner, standalone)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2125;
       background: #f6f7f9; line-height: 1.45; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 10px; }
.sub { color: #5a6470; margin: 0 0 16px; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 14px 18px; margin: 14px 0; }
.winner { font-size: 16px; } .winner b { color: #1a6b2d; }
pre { background: #f1f3f5; border-radius: 6px; padding: 8px 10px; white-space: pre-wrap;
      word-break: break-all; font-size: 12.5px; margin: 6px 0; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eceef1; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.sev { font-weight: bold; text-transform: uppercase; font-size: 12px; }
.error { color: #b3261e; } .warning { color: #9a5b00; } .info { color: #1d5f8a; } .failed { color: #b3261e; }
.finding { border-left: 4px solid #ccd; padding: 4px 10px; margin: 10px 0; }
.finding.error { border-color: #b3261e; } .finding.warning { border-color: #d08a00; }
.finding.info { border-color: #5b8db8; } .finding p, .finding ul { margin: 4px 0; color: #1d2125; }
.evidence { font-size: 13px; color: #444; } .evidence code { color: #1d2125; }
ul.tree, ul.tree ul { list-style: none; margin: 0; padding-left: 18px; }
ul.tree { padding-left: 0; } ul.tree li { margin: 2px 0; }
.pkg { font-weight: bold; } .node { font-weight: bold; color: #0b5e75; } .pu { color: #5a6470; }
.cores { display: flex; flex-wrap: wrap; gap: 4px; margin: 4px 0 8px 18px; }
.core { font-size: 12px; border: 1px solid #dde1e6; border-radius: 4px; padding: 1px 6px; background: #fafbfc; }
.heatmaps { display: flex; flex-wrap: wrap; gap: 18px; }
.muted { color: #5a6470; font-size: 13px; }
"""


def html_report(report: ReportInput) -> str:
    result = report.result
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>numatune — {escape(result.model)}</title>", f"<style>{_CSS}</style></head><body><main>",
             "<h1>numatune tuning report</h1>",
             f'<p class="sub">{escape(_machine_line(report))}<br>model {escape(result.model)}; measured '
             f"{escape(result.created)}{'' if result.complete else ' (interrupted: incomplete)'}; "
             f"host id {escape(result.fingerprint.host_id)}</p>",
             _winner_section(result), _commands_section(report.recommendations), _sweep_section(result),
             _bandwidth_section(report.bandwidth), _findings_section(report.findings), _machine_section(report),
             f'<p class="muted">Written by numatune on {escape(_now())}'
             + (f"; result saved to {escape(report.saved_to)}" if report.saved_to else "") + ".</p>",
             "</main></body></html>"]
    return "\n".join(p for p in parts if p)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _machine_line(report: ReportInput) -> str:
    fp = report.result.fingerprint
    return (f"{fp.cpu_model}: {fp.packages} package(s), {len(fp.nodes)} NUMA node(s), {fp.cores} cores, "
            f"{fp.pus} hardware threads, {fp.memory_gib} GiB; kernel {fp.kernel}")


def _winner_section(result: TuneResult) -> str:
    if result.winner is None:
        return '<section class="winner"><b class="failed">No configuration completed a trial.</b></section>'
    w = result.winner
    text = (f'<section class="winner">Winner: <b>{escape(w.config.label())}</b> — '
            f"{escape(w.tokens_per_s.describe(2))} decode tok/s")
    if result.runner_up is not None:
        r = result.runner_up
        verdict = "ties with (within the noise)" if r.tokens_per_s.ties_with(w.tokens_per_s) else "runner-up"
        text += (f'<br><span class="muted">{verdict}: {escape(r.config.label())} — '
                 f"{escape(r.tokens_per_s.describe(2))}</span>")
    return text + "</section>"


def _commands_section(recommendations) -> str:
    if not recommendations:
        return ""
    rows = ["<h2>Commands to run</h2><section>"]
    for r in recommendations:
        source = "from this tuning result" if r.source == "saved" else "from the topology"
        rows.append(f"<h3>{escape(r.engine)} <span class='muted'>({escape(r.config.label())}, {source})</span></h3>")
        for plan in r.plans:
            rows.append(f"<pre>{escape(plan.shell())}</pre>")
        for warning in r.warnings:
            rows.append(f'<p class="warning">warning: {escape(warning)}</p>')
    rows.append("</section>")
    return "\n".join(rows)


def _sweep_section(result: TuneResult) -> str:
    rows = ["<h2>The sweep</h2><section>", f'<div class="plot sweep">{sweep_plot(result, standalone=False)}</div>',
            '<p class="muted">Each point: the median decode speed of a configuration at its longest stage of '
            "successive halving; error bars: ± the spread (half the interquartile range). The table lists every "
            "trial.</p>", "<table><tr><th>stage</th><th>configuration</th><th>tok/s</th><th>spread</th>"
            "<th>n</th><th>weight GB/s</th><th>placed</th></tr>"]
    for t in sorted(result.trials, key=lambda t: (-t.stage, -t.tokens_per_s.median)):
        if t.error:
            speed = f'<td colspan="3" class="failed">failed: {escape(t.error)}</td>'
        else:
            m = t.tokens_per_s
            speed = f'<td class="num">{m.median:.2f}</td><td class="num">± {m.spread:.2f}</td><td class="num">{m.n}</td>'
        gbps = f"{t.weight_gb_per_s.median:.1f}" if t.weight_gb_per_s else "–"
        rows.append(f'<tr><td class="num">{t.stage}</td><td>{escape(t.config.label())}</td>{speed}'
                    f'<td class="num">{gbps}</td><td class="num">{t.resident_bytes / GIB:.2f} GiB</td></tr>')
    rows.append("</table></section>")
    return "\n".join(rows)


def _bandwidth_section(matrix) -> str:
    if matrix is None:
        return ("<h2>Memory bandwidth</h2><section><p class='muted'>Not measured for this report "
                "(<code>--bandwidth</code> measures it).</p></section>")
    kernels = [k for k in ("read", "copy", "triad") if any(c.result.kernel == k for c in matrix.cells)]
    maps = "".join(f'<div class="plot heatmap">{plot.heatmap_svg(matrix, k, standalone=False)}</div>'
                   for k in kernels)
    return ("<h2>Memory bandwidth, node × node</h2><section>"
            "<p class='muted'>Rows: threads on all cores of a CPU node; columns: the memory node read. "
            f"Darker is faster.</p><div class='heatmaps'>{maps}</div></section>")


def _findings_section(findings) -> str:
    if not findings:
        return "<h2>Audit</h2><section><p>No findings: nothing to fix for NUMA inference.</p></section>"
    rows = ["<h2>Audit</h2><section>"]
    for f in findings:
        rows.append(f'<div class="finding {escape(f.severity)}"><span class="sev {escape(f.severity)}">'
                    f"{escape(f.severity)}</span> <b>{escape(f.id)}</b>: {escape(f.title)}")
        rows.append('<ul class="evidence">' + "".join(
            f"<li><code>{escape(e.what)} = {escape(str(e.value))}</code> ({escape(e.where)})</li>"
            for e in f.evidence) + "</ul>")
        rows.append(f"<p>{escape(f.explanation)}</p>")
        if f.fix:
            rows.append(f"<p>fix:</p><pre>{escape(f.fix)}</pre>")
        rows.append("</div>")
    counts = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "info")}
    rows.append(f"<p class='muted'>{counts['error']} error(s), {counts['warning']} warning(s), "
                f"{counts['info']} note(s)</p></section>")
    return "\n".join(rows)


def _machine_section(report: ReportInput) -> str:
    body = _topology_tree(report.topology) if report.topology is not None \
        else _fingerprint_tree(report.result.fingerprint)
    note = f"<p class='muted'>{escape(report.note)}</p>" if report.note else ""
    return f"<h2>The machine</h2><section>{note}{body}</section>"


def _topology_tree(t) -> str:
    """Machine → package → NUMA node (memory, huge pages) → core → PUs."""
    by_package: dict[object, list] = {}
    for node in t.nodes:
        packages = t.packages_of_node(node.id)
        key = packages[0] if len(packages) == 1 else (tuple(packages) or None)
        by_package.setdefault(key, []).append(node)
    items = []
    for package, nodes in sorted(by_package.items(), key=lambda i: str(i[0])):
        name = ("package " + (", ".join(map(str, package)) if isinstance(package, tuple) else str(package))
                if package is not None else "no package (memory only or unknown)")
        items.append(f'<li><span class="pkg">{escape(name)}</span><ul>{"".join(_node_item(t, n) for n in nodes)}'
                     "</ul></li>")
    memory = f"{t.memory_total_bytes / GIB:.1f} GiB" if t.memory_total_bytes else "memory unknown"
    head = (f"Machine {t.isa.model_name or ''} — {t.packages} package(s), {t.cores} cores, {t.pus} PUs "
            f"({t.threads_per_core or '?'} per core), {memory}")
    return f'<ul class="tree"><li><b>{escape(head)}</b><ul>{"".join(items)}</ul></li></ul>'


def _node_item(t, node) -> str:
    free = f", {node.memory_free_bytes / GIB:.1f} GiB free" if node.memory_free_bytes is not None else ""
    pages = ", ".join(f"{p.total} × {p.size_bytes >> 10} KiB huge pages ({p.free} free)"
                      for p in node.hugepages if p.total) or "no huge pages"
    distances = f"; distances {' '.join(map(str, node.distances))}" if node.distances else ""
    cores = []
    for core in t.core_groups(node.cpus):
        first = t.cpu(core[0])
        pus = ", ".join(f"PU {cpu}" + ("" if t.cpu(cpu).online else " (offline)") for cpu in core)
        cores.append(f"<span class='core'>core {first.core if first.core is not None else '?'}: "
                     f"<span class='pu'>{pus}</span></span>")
    detail = f" — {node.memory_total_bytes / GIB:.1f} GiB{free}, {pages}{distances}"
    return (f'<li><span class="node">NUMA node {node.id}</span>{escape(detail)}'
            f'<div class="cores">{"".join(cores)}</div></li>')


def _fingerprint_tree(fp: Fingerprint) -> str:
    nodes = "".join(f'<li><span class="node">NUMA node {n}</span> — CPUs {escape(format_cpulist(cpus))} '
                    f"({len(cpus)} PUs)</li>" for n, cpus in fp.nodes)
    head = (f"Machine {fp.cpu_model} — {fp.packages} package(s), {fp.cores} cores, {fp.pus} PUs, "
            f"{fp.memory_gib} GiB")
    return f'<ul class="tree"><li><b>{escape(head)}</b><ul>{nodes}</ul></li></ul>'


def report_for_saved(result_path: Path, bandwidth_path: Optional[Path], topology) -> ReportInput:
    """A saved result with what can be known besides it: the machine probed now (its tree, the
    audit and the commands) when it is the machine the result was measured on, else the
    result's own fingerprint of it; the bandwidth of a saved `probe --bandwidth --json`."""
    from . import store
    from .audit import AuditContext, run_audit
    from .recommend import recommend_all
    result = store.load_result(result_path)
    matrix = load_bandwidth(bandwidth_path) if bandwidth_path is not None else None
    differences = [d for d in store.fingerprint(topology).differences(result.fingerprint)
                   if not d.startswith("kernel:")]
    if differences:
        note = (f"Measured on another machine than {topology.root} ({'; '.join(differences)}): the machine "
                "is shown as the result recorded it; no audit or commands.")
        return ReportInput(result, None, matrix, saved_to=str(result_path), note=note)
    return ReportInput(result, topology, matrix, tuple(run_audit(topology, AuditContext())),
                       tuple(recommend_all(topology, None, result).values()), str(result_path))


def load_bandwidth(path: Path):
    """The matrix of `numatune probe --bandwidth --json` (or of its "bandwidth" part)."""
    import json

    from .bandwidth import BandwidthMatrix
    try:
        data = json.loads(Path(path).read_text())
        part = data.get("bandwidth", data)
        matrix = BandwidthMatrix.from_json(part.get("matrix", part))
        if not matrix.cells:
            raise ValueError("no cells")
        for cell in matrix.cells:
            matrix.gbps(cell.cpu_node, cell.result.memory_node, cell.result.kernel)
        return matrix
    except OSError as exc:
        raise NumatuneError(f"--bandwidth: {path}: cannot read ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NumatuneError(f"--bandwidth: {path}: not the output of `numatune probe --bandwidth --json` "
                            f"({' '.join(str(exc).split())[:120]})") from None
