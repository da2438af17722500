"""`numatune verify`: is a running engine placed the way it was meant to be?

It reads, through the probe's root, what the kernel says about one process:
`/proc/PID/numa_maps` (resident pages per node, and the memory policy of each mapping),
`/proc/PID/status` (Cpus_allowed_list, Mems_allowed_list) and `/proc/PID/task/*/stat` (the CPU
each thread last ran on, and its CPU time), and compares them with an intended placement:
`--expect POLICY --nodes LIST`, or what the engine's build implies (a NUMA build of
ktransformers keeps a copy of the experts on every memory node).

Given a command instead of a PID, it checks the command line first (thread count against the
nodes' cores and the CPU quota), starts it, lets it settle, inspects it, then stops it (SIGTERM,
then SIGKILL after 10 s) unless told to keep it running.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

from .audit.core import AuditContext, Evidence, Finding
from .audit.threads import cpu_quota, node_oversubscribed, threads_exceed_cpus
from .command import parse_command
from .policy import Policy
from .errors import NumatuneError
from .sysfs import Root, format_cpulist, parse_status
from .topology.model import Topology

GIB = 1 << 30
STOP_GRACE_S = 10.0


# ---------------------------------------------------------------------------------------------
# Parsers of /proc/PID files


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/numa_maps."""
    address: int
    policy: str                        # "default", "bind:0-1", "interleave:0,1", "prefer:0", "local", ...
    pages_by_node: tuple[tuple[int, int], ...]
    page_bytes: int
    file: Optional[str]
    anonymous: bool

    def bytes_by_node(self) -> dict[int, int]:
        return {node: pages * self.page_bytes for node, pages in self.pages_by_node}


def parse_numa_maps(text: str) -> list[Mapping]:
    """/proc/PID/numa_maps -> mappings; lines that are not "ADDRESS POLICY …" raise ValueError."""
    mappings = []
    for line in text.replace("\x00", "").splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) < 2 or not re.fullmatch(r"[0-9a-fA-F]+", words[0]):
            raise ValueError(f"not a numa_maps line: {line.strip()[:80]!r}")
        pages, page_kb, file, anonymous = {}, 4, None, False
        for word in words[2:]:
            key, _, value = word.partition("=")
            if re.fullmatch(r"N\d+", key) and value.isdigit():
                pages[int(key[1:])] = int(value)
            elif key == "kernelpagesize_kB" and value.isdigit():
                page_kb = int(value)
            elif key == "file":
                file = value
            elif key == "anon":
                anonymous = True
        mappings.append(Mapping(int(words[0], 16), words[1], tuple(sorted(pages.items())), page_kb * 1024,
                                file, anonymous))
    return mappings


@dataclass(frozen=True)
class TaskStat:
    tid: int
    state: str
    cpu: int                 # the CPU it last ran on
    cpu_ticks: int           # utime + stime


def parse_task_stat(text: str) -> TaskStat:
    """/proc/PID/task/TID/stat: the name may hold spaces and parentheses, so fields are counted
    from the last ')'."""
    head, sep, tail = text.replace("\x00", "").strip().rpartition(")")
    fields = tail.split()
    if not sep or len(fields) < 37 or not head.split("(")[0].strip().isdigit():
        raise ValueError(f"not a stat line: {text.strip()[:80]!r}")
    # after the name: state is field 3 of proc(5); utime 14, stime 15, processor 39
    return TaskStat(int(head.split("(")[0]), fields[0], int(fields[36]), int(fields[11]) + int(fields[12]))


# ---------------------------------------------------------------------------------------------
# What a process looks like


@dataclass(frozen=True)
class ProcessView:
    pid: int
    name: str
    cpus_allowed: Optional[tuple[int, ...]]
    mems_allowed: Optional[tuple[int, ...]]
    resident_by_node: tuple[tuple[int, int], ...]        # bytes
    anonymous_by_node: tuple[tuple[int, int], ...]
    file_by_node: tuple[tuple[int, int], ...]
    bytes_by_policy: tuple[tuple[str, int], ...]
    threads: tuple[TaskStat, ...]
    busy_tids: tuple[int, ...]                           # threads that used a CPU while sampled
    sources: tuple[str, ...]

    @property
    def resident_bytes(self) -> int:
        return sum(b for _, b in self.resident_by_node)

    def resident_on(self, node: int) -> int:
        return dict(self.resident_by_node).get(node, 0)

    def bound_bytes(self, node: int) -> int:
        """Bytes in mappings whose policy binds (or prefers) exactly this one node."""
        return sum(b for policy, b in self.bytes_by_policy
                   if re.fullmatch(rf"(bind|prefer|preferred):{node}", policy))

    def to_json(self) -> dict:
        return {"pid": self.pid, "name": self.name,
                "cpus_allowed": list(self.cpus_allowed) if self.cpus_allowed is not None else None,
                "mems_allowed": list(self.mems_allowed) if self.mems_allowed is not None else None,
                "resident_bytes_by_node": {str(n): b for n, b in self.resident_by_node},
                "anonymous_bytes_by_node": {str(n): b for n, b in self.anonymous_by_node},
                "file_bytes_by_node": {str(n): b for n, b in self.file_by_node},
                "bytes_by_policy": dict(self.bytes_by_policy),
                "threads": [{"tid": s.tid, "state": s.state, "last_cpu": s.cpu, "busy": s.tid in self.busy_tids}
                            for s in self.threads],
                "sources": list(self.sources)}


def _add(into: dict, key, value: int) -> None:
    into[key] = into.get(key, 0) + value


def _tasks(root: Root, pid: int) -> dict[int, TaskStat]:
    stats = {}
    for name in root.listdir(f"proc/{pid}/task"):
        text = root.read_text(f"proc/{pid}/task/{name}/stat") if name.isdigit() else None
        if text:
            try:
                stat = parse_task_stat(text)
            except ValueError:
                continue     # a thread that exited between listing and reading
            stats[stat.tid] = stat
    return stats


def read_process(root: Root, pid: int, sample_s: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep) -> ProcessView:
    """Reads one process under `root`. With sample_s > 0 the threads are read twice, that far
    apart, and a thread is busy when it used at least half of that time; otherwise (and in a
    captured tree) a thread is busy when its state is R (running)."""
    base = f"proc/{pid}"
    status_text = root.read_text(f"{base}/status")
    maps_text = root.read_text(f"{base}/numa_maps")
    if status_text is None:
        raise NumatuneError(f"--pid {pid}: no such process under {root.describe()}")
    if maps_text is None:
        raise NumatuneError(f"--pid {pid}: /{base}/numa_maps cannot be read (another user's process "
                            "needs root, and the kernel needs CONFIG_NUMA)")
    try:
        mappings = parse_numa_maps(maps_text)
    except ValueError as exc:
        raise NumatuneError(f"/{base}/numa_maps: {exc}") from None
    status = parse_status(status_text)
    name = next((line.split(":", 1)[1].strip() for line in status_text.splitlines()
                 if line.startswith("Name:")), "?")
    resident, anonymous, files, policies = {}, {}, {}, {}
    for mapping in mappings:
        for node, size in mapping.bytes_by_node().items():
            _add(resident, node, size)
            _add(files if mapping.file else anonymous, node, size)
            _add(policies, mapping.policy, size)
    first = _tasks(root, pid)
    if sample_s > 0:
        sleep(sample_s)
        second = _tasks(root, pid)
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy = tuple(sorted(tid for tid, s in second.items()
                            if tid in first and (s.cpu_ticks - first[tid].cpu_ticks) / ticks >= sample_s / 2))
        threads = second
    else:
        threads = first
        busy = tuple(sorted(tid for tid, s in first.items() if s.state == "R"))
    return ProcessView(pid, name, status.cpus_allowed, status.mems_allowed, tuple(sorted(resident.items())),
                       tuple(sorted(anonymous.items())), tuple(sorted(files.items())),
                       tuple(sorted(policies.items(), key=lambda item: -item[1])),
                       tuple(threads[tid] for tid in sorted(threads)), busy,
                       (f"/{base}/numa_maps", f"/{base}/status", f"/{base}/task/*/stat"))


# ---------------------------------------------------------------------------------------------
# The intended placement and the checks


@dataclass(frozen=True)
class Expectation:
    policy: Policy                       # a policy name is accepted and turned into its Policy
    nodes: tuple[int, ...]
    weight_bytes: Optional[int]          # one copy of the weights, when a model was named
    why: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", Policy(self.policy))


def expectation_for(topology: Topology, policy: Optional[str], nodes: Optional[tuple[int, ...]],
                    engine=None, weight_bytes: Optional[int] = None) -> Expectation:
    """--expect/--nodes when given, else what the engine's build implies."""
    memory_nodes = tuple(n.id for n in topology.nodes if n.has_memory)
    if policy is not None:
        try:
            policy = Policy.parse(policy, "--expect")
        except ValueError as exc:
            raise NumatuneError(str(exc)) from None
        chosen = nodes or memory_nodes
        unknown = sorted(set(chosen) - {n.id for n in topology.nodes})
        if unknown:
            raise NumatuneError(f"--nodes: no NUMA node {unknown[0]} on this machine")
        if policy is Policy.BIND and len(chosen) != 1:
            raise NumatuneError("--nodes: bind expects exactly one node")
        if policy is Policy.REPLICATE and len(chosen) < 2:
            raise NumatuneError("--nodes: replicate expects at least two nodes (a copy on each)")
        return Expectation(policy, tuple(chosen), weight_bytes, "as --expect says")
    if engine is not None and engine.engine == "ktransformers" and engine.numa_aware:
        if len(memory_nodes) < 2:
            return Expectation(Policy.BIND, memory_nodes, weight_bytes, "one memory node: the NUMA build makes one copy")
        return Expectation(Policy.REPLICATE, memory_nodes, weight_bytes,
                           "ktransformers' NUMA build copies the experts to every memory node")
    if engine is not None and engine.engine == "ktransformers" and engine.numa_aware is None:
        raise NumatuneError("--engine ktransformers: cannot tell whether the build is NUMA-aware "
                            "(give --engine-bin, or --expect replicate|interleave|bind --nodes LIST)")
    if nodes:
        return Expectation(Policy.INTERLEAVE if len(nodes) > 1 else Policy.BIND, tuple(nodes), weight_bytes,
                           "as --nodes implies")
    raise NumatuneError("say what to expect: --expect POLICY [--nodes LIST], or --engine with a build "
                        "that implies it")


@dataclass(frozen=True)
class Check:
    id: str
    passed: bool
    title: str
    evidence: tuple[Evidence, ...]
    explanation: str
    fix: Optional[str] = None

    def to_json(self) -> dict:
        return {"id": self.id, "passed": self.passed, "title": self.title,
                "evidence": [e.__dict__ for e in self.evidence], "explanation": self.explanation, "fix": self.fix}


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _share(view: ProcessView, nodes) -> float:
    total = view.resident_bytes
    return sum(view.resident_on(n) for n in nodes) / total if total else 0.0


def _memory_evidence(view: ProcessView, where: str) -> tuple[Evidence, ...]:
    rows = [Evidence(f"node {node} resident (anonymous / file)",
                     f"{_gib(size)} ({_gib(dict(view.anonymous_by_node).get(node, 0))} / "
                     f"{_gib(dict(view.file_by_node).get(node, 0))})", where)
            for node, size in view.resident_by_node]
    top = ", ".join(f"{policy} {_gib(size)}" for policy, size in view.bytes_by_policy[:4])
    return tuple(rows) + (Evidence("memory policies of the mappings (largest first)", top or "none", where),)


def check_memory(view: ProcessView, expect: Expectation) -> Check:
    where = view.sources[0]
    nodes = expect.nodes
    resident = {n: view.resident_on(n) for n in nodes}
    total = view.resident_bytes
    evidence = _memory_evidence(view, where)
    if total == 0:
        return Check("memory-placement", False, "the process has no resident memory yet", evidence,
                     "Nothing is loaded: wait longer (--after) before inspecting.")
    if expect.policy is Policy.REPLICATE:
        return _check_replicate(view, expect, resident, evidence)
    inside = _share(view, nodes)
    if expect.policy is Policy.BIND:
        ok = inside >= 0.9
        title = f"{inside:.0%} of the resident memory is on node {nodes[0]}"
        why = "Bound memory should all be on its node; the rest came from another policy or an earlier run."
        fix = f"numactl --membind={nodes[0]} --cpunodebind={nodes[0]} <command>"
    elif expect.policy in (Policy.INTERLEAVE, Policy.PARTITION):
        fair = total / len(nodes)
        low = [n for n in nodes if resident[n] < 0.6 * fair]
        ok = inside >= 0.9 and not low
        title = (f"memory spread over nodes {list(nodes)}: " +
                 ", ".join(f"node {n} {resident[n] / total:.0%}" for n in nodes))
        why = (f"{expect.policy} should put about 1/{len(nodes)} of the memory on each node"
               + (f"; node(s) {low} hold far less" if low else "") + ".")
        fix = f"numactl --interleave={format_cpulist(nodes)} <command>" if expect.policy is Policy.INTERLEAVE else None
    else:   # first-touch: memory should follow the threads
        ok = inside >= 0.8
        title = f"{inside:.0%} of the resident memory is on the nodes of the threads {list(nodes)}"
        why = ("First touch places each page on the node of the thread that first wrote (or read, for a "
               "mapped file) it; pages elsewhere were touched by a loader thread or are an earlier run's page cache.")
        fix = "drop the model's pages from the page cache before the run (numatune pagecache FILE --drop)"
    return Check("memory-placement", ok, title, evidence, why, None if ok else fix)


def _check_replicate(view: ProcessView, expect: Expectation, resident: dict, evidence) -> Check:
    nodes = expect.nodes
    if expect.weight_bytes:
        short = [n for n in nodes if resident[n] < 0.8 * expect.weight_bytes]
        title = ("a copy of the weights on every node: " if not short else "not a copy per node: ") + \
            ", ".join(f"node {n} {_gib(resident[n])}" for n in nodes) + f" for {_gib(expect.weight_bytes)} of weights"
        evidence = evidence + (Evidence("one copy of the weights", _gib(expect.weight_bytes), "--model"),)
    else:
        bound = {n: view.bound_bytes(n) for n in nodes}
        largest = max(bound.values())
        short = [n for n in nodes if bound[n] < 0.5 * largest or bound[n] == 0]
        if not short and sum(bound.values()) < 0.5 * view.resident_bytes:
            short = list(nodes)
        title = ("memory bound node by node, a similar amount on each: " if not short else
                 "no per-node copies: ") + ", ".join(f"node {n} {_gib(bound[n])} bound" for n in nodes)
    explanation = (f"A copy per node ({expect.why}): each of nodes {list(nodes)} should hold a whole copy "
                   f"(the memory used grows about {len(nodes)}×). "
                   + ("It did not: the build in use is not the NUMA one, or the copies were never made "
                      "(ktransformers #634, #796: memory split evenly over the nodes instead of doubled)."
                      if short else "It did."))
    fix = ("ktransformers: rebuild with USE_NUMA=1 after removing the old install (pip uninstall ktransformers; "
           "cd ktransformers && USE_NUMA=1 bash install.sh), then check again; another engine: turn on its "
           "per-node copies" if short else None)
    return Check("memory-placement", not short, title, evidence, explanation, fix)


def check_cpus(topology: Topology, view: ProcessView, expect: Expectation) -> tuple[Check, ...]:
    where = view.sources[2]
    by_node: dict[Optional[int], list[int]] = {}
    busy_by_node: dict[Optional[int], int] = {}
    for stat in view.threads:
        node = topology.node_of_cpu(stat.cpu)
        by_node.setdefault(node, []).append(stat.tid)
        if stat.tid in view.busy_tids:
            _add(busy_by_node, node, 1)
    evidence = tuple(Evidence(f"node {node}: threads last seen there / busy / physical cores",
                              f"{len(tids)} / {busy_by_node.get(node, 0)} / "
                              f"{len(topology.core_groups(topology.node(node).cpus)) if node is not None else '?'}",
                              where) for node, tids in sorted(by_node.items(), key=lambda kv: (kv[0] is None, kv[0])))
    if view.cpus_allowed is not None:
        evidence += (Evidence("Cpus_allowed_list", format_cpulist(view.cpus_allowed), view.sources[1]),)
    if view.mems_allowed is not None:
        evidence += (Evidence("Mems_allowed_list", format_cpulist(view.mems_allowed), view.sources[1]),)
    checks = []
    busy_nodes = {n for n, count in busy_by_node.items() if count}
    if expect.policy is Policy.BIND:
        outside = sorted(n for n in by_node if n not in expect.nodes)
        ok = not outside
        checks.append(Check("cpu-placement", ok,
                            f"threads ran on node(s) {sorted(by_node, key=str)}, expected node {expect.nodes[0]} only",
                            evidence, "Threads outside the bound node read its memory remotely.",
                            None if ok else f"numactl --cpunodebind={expect.nodes[0]} --membind={expect.nodes[0]} <command>"))
    else:
        missing = [n for n in expect.nodes if topology.node(n).has_cpus and n not in (busy_nodes or set(by_node))]
        ok = not missing
        checks.append(Check("cpu-placement", ok,
                            f"working threads on node(s) {sorted(busy_nodes or set(by_node), key=str)}; "
                            f"expected on {list(expect.nodes)}", evidence,
                            "Every node that holds a copy or a share of the weights needs threads reading it; "
                            + (f"node(s) {missing} have none, so their memory bandwidth is unused."
                               if missing else "each has some."),
                            None if ok else "give the engine threads on every node (ktransformers NUMA build: "
                                            "--cpu_infer at least the number of nodes + 1)"))
    over = [(n, busy_by_node[n]) for n in sorted(busy_nodes, key=str)
            if n is not None and busy_by_node[n] > len(topology.core_groups(topology.usable_cpus_of_node(n)))]
    if over:
        node, count = over[0]
        checks.append(Check("busy-threads-per-node", False,
                            f"node {node} runs {count} busy threads on "
                            f"{len(topology.core_groups(topology.usable_cpus_of_node(node)))} physical cores",
                            evidence, "More busy threads than cores on a node share cores and stall every "
                                      "step of the decode (ktransformers PR #685).",
                            "lower the thread count (numatune audit --engine E --threads N shows a count that fits)"))
    if view.mems_allowed is not None:
        hidden = sorted(set(expect.nodes) - set(view.mems_allowed))
        if hidden:
            checks.append(Check("mems-allowed", False, f"the process may not allocate on node(s) {hidden}",
                                evidence, "A cpuset or numactl --membind keeps it off nodes the placement needs.",
                                "widen the cpuset / drop --membind for those nodes"))
    return tuple(checks)


@dataclass(frozen=True)
class VerifyReport:
    view: ProcessView
    expectation: Expectation
    checks: tuple[Check, ...]
    preflight: tuple[Finding, ...] = ()
    command: tuple[str, ...] = ()
    stopped: Optional[bool] = None           # with a command: whether numatune stopped it afterwards
    exit_status: Optional[int] = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict:
        return {"schema_version": 1, "passed": self.passed, "process": self.view.to_json(),
                "expected": {"policy": self.expectation.policy.value, "nodes": list(self.expectation.nodes),
                             "weight_bytes": self.expectation.weight_bytes, "why": self.expectation.why},
                "checks": [c.to_json() for c in self.checks],
                "preflight": [f.to_json() for f in self.preflight],
                "command": list(self.command) or None, "stopped": self.stopped, "exit_status": self.exit_status}


def verify_process(topology: Topology, root: Root, pid: int, expect: Expectation, sample_s: float = 0.0,
                   **extra) -> VerifyReport:
    view = read_process(root, pid, sample_s)
    checks = (check_memory(view, expect),) + check_cpus(topology, view, expect)
    return VerifyReport(view, expect, checks, **extra)


# ---------------------------------------------------------------------------------------------
# Starting a command


def preflight(topology: Topology, engine, argv: tuple[str, ...]) -> tuple[Finding, ...]:
    """What the command line alone says: too many threads for a node, the CPUs or the quota."""
    context = AuditContext(engine=engine, command=parse_command(engine.engine if engine else None, argv))
    return tuple(f for rule in (node_oversubscribed, threads_exceed_cpus, cpu_quota)
                 for f in rule(topology, context) if f.id != "cpu-quota-below-cpuset")


def _stop(process: subprocess.Popen) -> int:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def run_and_verify(topology: Topology, argv: tuple[str, ...], expect: Expectation, after_s: float,
                   keep: bool, engine=None, sample_s: float = 1.0) -> VerifyReport:
    """Starts `argv` in its own process group, waits `after_s`, inspects it, stops it unless `keep`."""
    checked = preflight(topology, engine, argv)
    try:
        process = subprocess.Popen(list(argv), start_new_session=True)
    except OSError as exc:
        raise NumatuneError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    try:
        deadline = time.monotonic() + after_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise NumatuneError(f"{argv[0]} exited with status {process.returncode} before "
                                    f"--after {after_s:g} s; nothing to inspect")
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        report = verify_process(topology, Root.open("/"), process.pid, expect, sample_s,
                                preflight=checked, command=tuple(argv))
    except BaseException:
        _stop(process)
        raise
    if keep:
        return replace(report, stopped=False)
    return replace(report, stopped=True, exit_status=_stop(process))


# ---------------------------------------------------------------------------------------------
# The command


def verify_command(pid: Optional[int], command: tuple[str, ...], expect: Optional[str], nodes: Optional[str],
                   engine: Optional[str], engine_bin, model: Optional[str], after_s: float, keep: bool,
                   sample_s: float, root: str, as_json: bool) -> int:
    """`numatune verify`: exit 0 when every check passes, 1 when one fails, 2 on bad input."""
    import json
    import sys

    from . import render
    from .engines import inspect_engine
    from .models import resolve_model
    from .sysfs import parse_cpulist
    from .topology.probing import probe
    if (pid is None) == (not command):
        raise NumatuneError("give exactly one of --pid PID and -- COMMAND ...")
    if command and root != "/":
        raise NumatuneError("--root: a command can only be started on the live machine ('/')")
    if after_s < 0 or sample_s < 0:
        raise NumatuneError("--after and --sample take seconds ≥ 0")
    machine = Root.open(root)
    topology = probe(machine)
    try:
        node_list = tuple(parse_cpulist(nodes)) if nodes is not None else None
    except ValueError:
        raise NumatuneError(f"--nodes: '{nodes}' is not a node list like 0,1 or 0-3") from None
    install = inspect_engine(engine, engine_bin) if engine else None
    weights = resolve_model(model).weight_bytes if model else None
    expectation = expectation_for(topology, expect, node_list or None, install, weights)
    if command:
        report = run_and_verify(topology, tuple(command), expectation, after_s, keep, install, sample_s)
    else:
        report = verify_process(topology, machine, pid, expectation, sample_s if machine.is_live else 0.0)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        render.verify_report(report)
    return 0 if report.passed else 1
