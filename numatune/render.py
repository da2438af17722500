"""Human output with rich: the topology as a tree much like lstopo, tables, findings."""
from __future__ import annotations

from typing import Iterable

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .sysfs import format_cpulist

console = Console()
GIB = 1 << 30


def gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def cpulist(cpus: Iterable[int]) -> str:
    return format_cpulist(cpus) or "none"


def topology(t, measured=None) -> None:
    console.print(_machine_tree(t))
    if any(node.distances for node in t.nodes):
        console.print(_distance_table(t))
    console.print(_cache_table(t))
    console.print(_context_table(t))
    if t.unknown:
        console.print("[yellow]Not known from this root:[/]")
        for item in t.unknown:
            console.print(f"  · {item}")
    if measured is not None:
        bandwidth(measured)


def _machine_tree(t) -> Tree:
    smt = f"{t.threads_per_core} threads/core" if t.threads_per_core else "threads/core unknown"
    title = (f"[bold]Machine[/] {t.isa.model_name or ''} — {t.packages} package(s), "
             f"{t.cores} cores, {t.pus} PUs ({smt}), {gib(t.memory_total_bytes)}  [dim]{t.root}[/]")
    tree = Tree(title)
    for node in t.nodes:
        pages = ", ".join(f"{size(p.size_bytes)} pages {p.free}/{p.total} free" for p in node.hugepages
                          if p.total) or "no huge pages"
        label = (f"[bold cyan]NUMA node {node.id}[/] {gib(node.memory_total_bytes)} "
                 f"({gib(node.memory_free_bytes)} free), {pages}")
        if not node.has_cpus:
            label += " [yellow]memory only[/]"
        if not node.has_memory:
            label += " [yellow]no memory[/]"
        branch = tree.add(label)
        for core in t.core_groups(node.cpus):
            marks = []
            for cpu in core:
                info = t.cpu(cpu)
                tag = f"PU {cpu}"
                if not info.online:
                    tag += " [red](offline)[/]"
                elif cpu not in t.allowed.cpus:
                    tag += " [dim](not allowed)[/]"
                if info.isolated:
                    tag += " [magenta](isolated)[/]"
                marks.append(tag)
            first = t.cpu(core[0])
            where = f"P{first.package}" if first.package is not None else "P?"
            branch.add(f"Core {first.core if first.core is not None else '?'} ({where}): " + ", ".join(marks))
    return tree


def _distance_table(t) -> Table:
    table = Table(title="Node distances", show_edge=False)
    table.add_column("node")
    for node in t.nodes:
        table.add_column(str(node.id), justify="right")
    for node in t.nodes:
        row = [str(d) for d in node.distances] if node.distances else ["?"] * len(t.nodes)
        table.add_row(str(node.id), *row)
    return table


def _cache_table(t) -> Table:
    table = Table(title="Caches", show_edge=False)
    for col in ("level", "type", "size", "shared by CPUs"):
        table.add_column(col)
    seen = set()
    for cache in sorted(t.caches, key=lambda c: (c.level, c.type, c.cpus)):
        key = (cache.level, cache.type, cache.size_bytes, len(cache.cpus))
        count = sum(1 for c in t.caches if (c.level, c.type, c.size_bytes, len(c.cpus)) == key)
        if key in seen:
            continue
        seen.add(key)
        shared = (f"{len(cache.cpus)} CPU(s) each, ×{count}" if count > 1 else cpulist(cache.cpus))
        table.add_row(f"L{cache.level}", cache.type, size(cache.size_bytes), shared)
    return table


def _context_table(t) -> Table:
    table = Table(title="What this process may use, and kernel knobs", show_edge=False, show_header=False)
    table.add_column("what")
    table.add_column("value")
    a, k = t.allowed, t.knobs
    table.add_row("online / all CPUs", f"{cpulist(t.online_cpus)} / {cpulist(t.all_cpus)}")
    if t.isolated_cpus:
        table.add_row("isolated CPUs", cpulist(t.isolated_cpus))
    table.add_row("allowed CPUs", cpulist(a.cpus))
    table.add_row("allowed memory nodes", cpulist(a.nodes))
    if a.cgroup_version:
        table.add_row("cgroup", f"v{a.cgroup_version} {a.cgroup_path or ''}")
    table.add_row("memory limit", gib(a.memory_limit_bytes) if a.memory_limit_bytes else "none")
    table.add_row("CPU quota", f"{a.cpu_quota:g} CPUs" if a.cpu_quota else "none")
    table.add_row("ISA", " ".join(t.isa.flags) or "?")
    table.add_row("kernel.numa_balancing", _known(k.numa_balancing))
    table.add_row("transparent huge pages", f"enabled={_known(k.thp_enabled)} defrag={_known(k.thp_defrag)}")
    table.add_row("vm.zone_reclaim_mode", _known(k.zone_reclaim_mode))
    table.add_row("CPU governor", ", ".join(f"{g} ({cpulist(c)})" for g, c in k.governors) or "?")
    table.add_row("numactl / lstopo", _tools(t))
    return table


def _tools(t) -> str:
    """The live PATH's tools; a captured root has no PATH to look in."""
    if t.root != "/" and t.tools.numactl is None and t.tools.lstopo is None:
        return "not known (a captured root, not this machine)"
    return f"{t.tools.numactl or 'absent'} / {t.tools.lstopo or 'absent'}"


def _known(value) -> str:
    return "?" if value is None else str(value)


def bandwidth(probed) -> None:
    cells = probed.matrix.cells
    kernels = sorted({c.result.kernel for c in cells}, key=("read", "copy", "triad").index)
    cpu_nodes = sorted({c.cpu_node for c in cells})
    memory_nodes = sorted({c.result.memory_node for c in cells})
    table = Table(title="Memory bandwidth GB/s", caption="median ± spread; rows: all cores of a node",
                  show_edge=False)
    table.add_column("CPU node")
    table.add_column("kernel")
    for mem in memory_nodes:
        table.add_column(f"mem {mem}", justify="right")
    for cpu_node in cpu_nodes:
        for kernel in kernels:
            row = []
            for mem in memory_nodes:
                m = probed.matrix.gbps(cpu_node, mem, kernel)
                row.append(f"{m.median:.1f} ± {m.spread:.1f}")
            table.add_row(str(cpu_node), kernel, *row)
    console.print(table)
    for node, curve in probed.curves:
        points = "   ".join(f"{len(r.cpus)} thr: {r.gbps.median:.1f}" for r in curve)
        console.print(f"node {node}, read GB/s by threads (local memory): {points}")


_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _evidence_and_fix(item) -> None:
    """The indented lines under an audit finding or a verify check: evidence, why, fix."""
    for e in item.evidence:
        console.print(f"          {e.what} = {e.value}  [dim]({e.where})[/]")
    console.print(f"          {item.explanation}")
    if item.fix:
        console.print(f"          [green]fix:[/] {item.fix}")


def findings(items) -> None:
    if not items:
        console.print("[green]No findings: nothing to fix for NUMA inference on this machine.[/]")
        return
    for f in items:
        console.print(f"[{_SEVERITY_STYLE[f.severity]}]{f.severity.upper():7}[/] [bold]{f.id}[/]: {f.title}")
        _evidence_and_fix(f)
    counts = {s: sum(1 for f in items if f.severity == s) for s in ("error", "warning", "info")}
    console.print(f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} note(s)")


def bench(result) -> None:
    table = Table(title=f"numatune bench — {result.policy} on nodes {list(result.nodes)}, "
                  f"{len(result.cpus)} threads (CPUs {cpulist(result.cpus)}), {result.isa}", show_edge=False)
    table.add_column("measure")
    table.add_column("median ± spread", justify="right")
    table.add_column("n, min…max", justify="right")
    for label, m in (("decode tok/s", result.tokens_per_s), ("weight GB/s", result.weight_gb_per_s),
                     ("read GB/s (probe, same CPUs+memory)", result.read_gb_per_s)):
        if m is not None:
            table.add_row(label, f"{m.median:.2f} ± {m.spread:.2f}", f"{m.n}, {m.minimum:.2f}…{m.maximum:.2f}")
    console.print(table)
    if result.fraction_of_read is not None:
        console.print(f"weight traffic = {result.fraction_of_read:.2f} of the read bandwidth")
    console.print(f"weights read per token: {result.bytes_per_token / 1e6:.1f} MB; placed weights "
                  f"{gib(result.resident_bytes)}, process RSS {gib(result.rss_bytes)}")
    console.print(executed_share_line(result.executed_share, result.step_bytes_per_token))


def executed_share_line(share: float, step_bytes: int) -> str:
    return (f"the engine executes {share:.1%} of the {step_bytes / 1e6:.1f} MB of weights a decode step of this "
            f"file reads (attention, embeddings and the output head are not run): compare tok/s with a "
            f"runtime's at this share")


def recommendation(r) -> None:
    console.print(f"[bold]{r.engine}[/] ({'from the saved tuning result' if r.source == 'saved' else 'from the topology'}):")
    for i, plan in enumerate(r.plans):
        prefix = f"instance {i} (node {r.config.nodes[i]}): " if len(r.plans) > 1 else ""
        console.print(f"  {prefix}[green]{escape(plan.shell())}[/]", soft_wrap=True)
    for reason in r.reasons:
        console.print(f"  · {reason}")
    for warning in r.warnings:
        console.print(f"  [yellow]warning:[/] {warning}")


class TuneProgress:
    """A search's progress: the space on stdout, then a bar (trials done, best so far, time left)
    on stderr when it is a terminal (see numatune.progress)."""

    def __init__(self, budget_s: float) -> None:
        from .progress import Steps, wanted
        self.budget_s = budget_s
        self.steps = Steps("tune", wanted(), counter=False)

    def __enter__(self) -> "TuneProgress":
        self.steps.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.steps.__exit__(*exc)

    def start(self, space) -> None:
        console.print(f"search space: {len(space.candidates)} configurations "
                      f"({len(space.pruned)} pruned); budget {self.budget_s:.0f} s")
        for choice in space.numa_modes:
            console.print(f"  {choice.flag} {choice.mode}: tried on {choice.tried}"
                          + (f"; not elsewhere: {choice.why_not}" if choice.why_not else ""))
        self.steps.start(self.budget_s)

    def trial(self, state, trial, left_s: float) -> None:
        ranked = state.final()
        best = f"best {ranked[0].tokens_per_s.median:.1f} tok/s ({ranked[0].config.label()})" if ranked else "no winner yet"
        last = ("failed: " + trial.error) if trial.error else f"{trial.tokens_per_s.median:.1f} tok/s"
        self.steps.update(min(self.budget_s, self.budget_s - max(left_s, 0.0)),
                          f"{len(state.trials)} trials, stage {state.stage}; last {last}; "
                          f"{best}; {max(left_s, 0):.0f} s left")


def tune_result(run) -> None:
    result = run.result
    table = Table(title=f"Trials ({result.model})", show_lines=False)
    for column in ("stage", "configuration", "tok/s (median ± spread, n)", "weight GB/s", "placed"):
        table.add_column(column)
    for t in sorted(result.trials, key=lambda t: (-t.stage, -t.tokens_per_s.median)):
        table.add_row(str(t.stage), t.config.label(),
                      f"[red]{t.error}[/]" if t.error else t.tokens_per_s.describe(1),
                      f"{t.weight_gb_per_s.median:.1f}" if t.weight_gb_per_s else "-", gib(t.resident_bytes))
    console.print(table)
    if result.winner:
        console.print(f"[bold green]winner:[/] {result.winner.config.label()} — "
                      f"{result.winner.tokens_per_s.describe(1)}")
        if result.runner_up and result.runner_up.tokens_per_s.ties_with(result.winner.tokens_per_s):
            console.print(f"  tie with {result.runner_up.config.label()} "
                          f"({result.runner_up.tokens_per_s.describe(1)}): within the noise, the one with fewer "
                          "threads / less memory wins")
    else:
        console.print("[red]no configuration completed a trial[/]")
    if result.executed_share is not None:
        console.print(executed_share_line(result.executed_share, result.step_bytes_per_token))
    console.print(f"saved to {run.path}")


def check_outcome(outcome, path) -> None:
    verdict = "[red]REGRESSION[/]" if outcome.regressed else "[green]ok[/]"
    console.print(f"{verdict}: {outcome.baseline.config.label()}")
    console.print(f"  baseline {outcome.baseline.tokens_per_s.describe(1)}")
    console.print(f"  now      {outcome.current.tokens_per_s.describe(1)}"
                  + (f" [red]({outcome.current.error})[/]" if outcome.current.error else ""))
    console.print(f"  ratio {outcome.ratio:.3f}, tolerance {outcome.tolerance:.0%} (baseline {path})")
    if outcome.runner_up_now is not None:
        console.print(f"  runner-up {outcome.runner_up.config.label()}: baseline "
                      f"{outcome.runner_up.tokens_per_s.describe(1)}, now "
                      + (outcome.runner_up_now.error or outcome.runner_up_now.tokens_per_s.describe(1)))


def topology_summary(t) -> None:
    console.print(f"[bold]{t.isa.model_name or 'unknown CPU'}[/]: {t.packages} package(s), {len(t.nodes)} NUMA "
                  f"node(s), {t.cores} cores, {t.pus} hardware threads")
    for node in t.nodes:
        console.print(f"  node {node.id}: CPUs {cpulist(node.cpus)}, memory {gib(node.memory_total_bytes)}")


def commands_table(recommendations) -> None:
    table = Table(title="Recommended commands", show_lines=True)
    for column in ("engine", "configuration", "command"):
        table.add_column(column, overflow="fold")
    for r in recommendations.values():
        table.add_row(r.engine, r.config.label() + ("\n(saved result)" if r.source == "saved" else ""),
                      Text("\n".join(plan.shell() for plan in r.plans)))
    console.print(table)
    for r in recommendations.values():
        for warning in r.warnings:
            console.print(f"  [yellow]{r.engine}:[/] {warning}")


def plan(result, top=None, engine=None) -> None:
    """`numatune plan`: ranked predictions, then predicted vs measured where someone measured."""
    from .plan import threads_argument
    m = result.machine
    console.print(f"[bold]{m.name}[/]: {m.description} — {len(m.nodes)} node(s), bandwidth "
                  f"{m.bandwidth_kind} [dim]({m.source})[/]")
    console.print(f"{result.model} on {result.engine}: {result.bytes_per_token / 1e9:.2f} GB read per token "
                  f"({result.traits.reads}), {gib(result.weight_bytes)} per copy")
    ranked = result.ranked[:top] if top else result.ranked
    if not ranked:
        console.print("[red]no configuration can run: every one was left out[/]")
    table = Table(title="Predicted decode (roofline)", show_edge=False)
    for column in ("#", "configuration", "threads", "tok/s", "bottleneck", "measured", "eff."):
        table.add_column(column, justify="right" if column in ("#", "tok/s", "measured", "eff.") else "left")
    for i, p in enumerate(ranked, 1):
        measured = f"{p.measured.tokens_per_s:.2f}" if p.measured else ""
        efficiency = f"{p.efficiency:.2f}" if p.measured else ""
        table.add_row(str(i), p.config.label(), threads_argument(engine, p.config) or "",
                      f"{p.tokens_per_s:.2f}", p.bottleneck, measured, efficiency)
    console.print(table)
    if result.pruned:
        console.print(f"[dim]{len(result.pruned)} configuration(s) left out, e.g. {result.pruned[0][0]}: "
                      f"{result.pruned[0][1]}[/]")
    if result.observed:
        seen = Table(title="Measured on this machine vs predicted", show_edge=False)
        for column in ("configuration", "predicted", "measured", "efficiency", "source"):
            seen.add_column(column, overflow="fold")
        for p in result.observed:
            seen.add_row(f"{p.measured.label}\n[dim]{p.config.label()}[/]", f"{p.tokens_per_s:.2f}",
                         f"{p.measured.tokens_per_s:.2f}", f"{p.efficiency:.3f}", p.measured.source)
        console.print(seen)
    notes = sorted({n for p in list(ranked) + list(result.observed) for n in p.notes})
    for note in notes:
        console.print(f"  · {note}")


def _check_line(passed: bool) -> str:
    return "[green]PASS[/]" if passed else "[bold red]FAIL[/]"


def verify_report(report) -> None:
    """`numatune verify`: what the process looks like, then each check against the intent."""
    view, expect = report.view, report.expectation
    if report.preflight:
        console.print("[bold]The command line, before it ran:[/]")
        findings(report.preflight)
    console.print(f"[bold]process {view.pid}[/] ({view.name}): {gib(view.resident_bytes)} resident, "
                  f"{len(view.threads)} threads ({len(view.busy_tids)} busy)")
    table = Table(title="Resident memory by node", show_edge=False)
    for column in ("node", "resident", "anonymous", "file-backed"):
        table.add_column(column, justify="right")
    anonymous, files = dict(view.anonymous_by_node), dict(view.file_by_node)
    for node, resident in view.resident_by_node:
        table.add_row(str(node), size(resident), size(anonymous.get(node, 0)), size(files.get(node, 0)))
    console.print(table)
    console.print(f"expected: {expect.policy} on node(s) {cpulist(expect.nodes)} [dim]({expect.why})[/]")
    for check in report.checks:
        console.print(f"{_check_line(check.passed)} [bold]{check.id}[/]: {check.title}")
        _evidence_and_fix(check)
    if report.command:
        state = ("stopped" + (f", exit status {report.exit_status}" if report.exit_status is not None else "")
                 if report.stopped else "left running")
        console.print(f"command {' '.join(report.command)}: {state}")
    console.print("placement matches" if report.passed else "[red]placement does not match the intent[/]")


def page_cache(report, after=None) -> None:
    """`numatune pagecache FILE`: cached bytes of the file per node (and after --drop)."""
    share = report.resident_pages / report.pages if report.pages else 0.0
    console.print(f"[bold]{report.path}[/]: {size(report.size_bytes)}, {size(report.resident_bytes)} in the page "
                  f"cache ({share:.0%})")
    for node, cached in sorted(report.bytes_by_node().items()):
        console.print(f"  node {node}: {size(cached)}")
    if report.unplaced_pages:
        console.print(f"  [yellow]{report.unplaced_pages} cached page(s) whose node the kernel did not report[/]")
    if after is not None:
        console.print(f"after dropping: {size(after.resident_bytes)} cached "
                      f"({after.resident_pages} of {after.pages} pages; pages mapped by a running process stay)")
    elif len(report.bytes_by_node()) and report.resident_pages:
        console.print("before a NUMA-aware run, drop them: numatune pagecache "
                      f"{report.path} --drop")
