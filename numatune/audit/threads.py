"""Audit rules: small functions from a Topology (and what the user runs) to Findings.

Each finding carries the values read and where they were read, a short explanation, and the
command or configuration line that fixes it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable

from ..capacity import HEADROOM_PERCENT, available_bytes, fits, with_headroom
from ..command import EngineCommand, build_command, parse_command
from ..config import Configuration
from ..engines import EngineInstall
from ..errors import NumatuneError
from ..models import ModelFootprint
from ..pagecache import PageCacheReport, drop_command_for, page_cache_nodes
from ..profiles import EngineProfile, find_engine_profile
from ..sysfs import format_cpulist as _cpus
from ..topology.model import Topology

SEVERITIES = ("info", "warning", "error")
GIB = 1 << 30


@dataclass(frozen=True)
class Evidence:
    what: str
    value: str
    where: str


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    title: str
    evidence: tuple[Evidence, ...]
    explanation: str
    fix: str | None

    def to_json(self) -> dict:
        return {"id": self.id, "severity": self.severity, "title": self.title,
                "evidence": [e.__dict__ for e in self.evidence],
                "explanation": self.explanation, "fix": self.fix}


@dataclass(frozen=True)
class AuditContext:
    """What the user intends to run, as far as they told us."""

    engine: EngineInstall | None = None
    model: ModelFootprint | None = None
    threads: int | None = None
    command: EngineCommand | None = None
    page_cache: PageCacheReport | None = None     # where the model file's cached pages are
    profile: EngineProfile | None = None          # the engine's profile (default: the installed engine's)

    def engine_profile(self) -> EngineProfile | None:
        if self.profile is not None:
            return self.profile
        return find_engine_profile(self.engine.engine) if self.engine is not None else None


Rule = Callable[[Topology, AuditContext], Iterable[Finding]]

def run_audit(topology: Topology, context: AuditContext = AuditContext()) -> tuple[Finding, ...]:
    findings = [finding for rule in RULES for finding in rule(topology, context)]
    return tuple(sorted(findings, key=lambda f: -SEVERITIES.index(f.severity)))


def worst_severity(findings: Iterable[Finding]) -> str | None:
    levels = [SEVERITIES.index(f.severity) for f in findings]
    return SEVERITIES[max(levels)] if levels else None


# ---------------------------------------------------------------------------------------------
# What the process can use, node by node


def usable_nodes(topology: Topology) -> list[int]:
    """Nodes with at least one CPU this process may run on."""
    return [n.id for n in topology.nodes if topology.usable_cpus_of_node(n.id)]


def usable_cores(topology: Topology, node: int) -> int:
    return len(topology.core_groups(topology.usable_cpus_of_node(node)))


def _path(topology: Topology, rel: str) -> str:
    root = topology.root.rstrip("/")
    return f"{root}/{rel}" if root else f"/{rel}"


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / GIB:.1f} GiB"


# ---------------------------------------------------------------------------------------------
# Rules


def engine_spans_nodes(t: Topology, c: AuditContext) -> Iterable[Finding]:
    """The seed's failure: threads on several nodes reading weights that live on one."""
    # Nodes with memory of their own: CPUs on memoryless nodes read remotely wherever they run.
    nodes = sorted(n for n in {t.node_of_cpu(cpu) for cpu in _command_pool(t, c)} - {None} if t.node(n).has_memory)
    if c.engine is None or len(nodes) < 2 or c.engine.numa_aware:
        return
    largest = max(nodes, key=lambda n: usable_cores(t, n))
    node_cores = usable_cores(t, largest)
    asked = busy_threads(c)
    threads = asked[0] if asked else None
    if threads is not None and threads <= node_cores:
        return
    evidence = [Evidence("nodes with usable CPUs", str(nodes), _path(t, "sys/devices/system/node")),
                Evidence(f"physical cores on node {largest}", str(node_cores),
                         _path(t, f"sys/devices/system/node/node{largest}/cpulist")),
                Evidence(f"{c.engine.engine} build", c.engine.evidence, c.engine.location or "-")]
    if asked is not None:
        evidence.append(Evidence("threads asked", str(threads), asked[2]))
    node_cpus = t.one_cpu_per_core(t.usable_cpus_of_node(largest))
    confined = _suggested_command(t, c, Configuration(tuple(node_cpus), "bind", (largest,)))
    fix = confined if c.engine.fix is None else f"{c.engine.fix}   (or, as built: {confined})"
    # An uninspected build may be the NUMA one (what recommend assumes, with a warning): a warning.
    severity = "error" if c.engine.numa_aware is False else "warning"
    yield Finding(
        "engine-spans-nodes", severity,
        f"{c.engine.engine} is not NUMA-aware but its threads would span {len(nodes)} nodes",
        tuple(evidence),
        "Threads on one node then read weights held on another node across the socket "
        "interconnect; decode slows down instead of speeding up (ktransformers on a dual-socket "
        "Xeon: 5.24 tok/s on one socket, 0.51 on both).",
        fix)


def _suggested_command(t: Topology, c: AuditContext, config: Configuration) -> str:
    """The engine's command for `config`, as numatune's command builder makes it (the user's own
    program and flags kept), for a finding's fix."""
    profile = c.engine_profile()
    if profile is None:
        return f"use at most {config.threads} threads"
    program = c.command.program if c.command is not None else ()
    try:
        return build_command(config, profile, t, program, use_numactl=True).shell()
    except NumatuneError as exc:
        return str(exc)


def _spread_cpus(t: Topology, pool: Iterable[int], count: int) -> tuple[int, ...]:
    """`count` CPUs of the pool, one per physical core, taken from its nodes in turn."""
    by_node: dict[int, list[int]] = {}
    for cpu in t.one_cpu_per_core(sorted(pool)):
        by_node.setdefault(t.node_of_cpu(cpu), []).append(cpu)
    queues = [cpus for _, cpus in sorted(by_node.items())]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        chosen += [q.pop(0) for q in queues if q][:count - len(chosen)]
    return tuple(sorted(chosen))


def _with_cpus(t: Topology, c: AuditContext, cpus: tuple[int, ...]) -> Configuration:
    """The configuration the user's command asks for, on `cpus` instead of its own."""
    profile = c.engine_profile()
    command = c.command
    if c.engine is not None and c.engine.numa_aware and profile is not None and profile.numa_aware == "build-flag":
        return Configuration(cpus, "replicate", tuple(n.id for n in t.nodes if n.has_memory))
    if command is not None and command.memory_mode in ("bind", "interleave") and command.memory_nodes:
        policy = "bind" if command.memory_mode == "bind" and len(command.memory_nodes) == 1 else "interleave"
        return Configuration(cpus, policy, command.memory_nodes)
    return Configuration(cpus, "first-touch", tuple(sorted({t.node_of_cpu(cpu) for cpu in cpus})))


def _fewer_threads(t: Topology, c: AuditContext, pool: Iterable[int], cpus_given: int) -> str:
    """The fix that gives the engine `cpus_given` CPUs of the pool (its compute threads are those
    less the ones it reserves)."""
    if cpus_given < 1:
        return "use fewer threads"
    return _suggested_command(t, c, _with_cpus(t, c, _spread_cpus(t, pool, cpus_given)))


def ktransformers_without_numa(t: Topology, c: AuditContext) -> Iterable[Finding]:
    if c.engine is None or c.engine.engine != "ktransformers" or c.engine.numa_aware is not False:
        return
    multi = len(usable_nodes(t)) >= 2
    yield Finding(
        "ktransformers-no-numa-build", "error" if multi else "info",
        "ktransformers is built without NUMA support (USE_NUMA)",
        (Evidence("cpuinfer_ext", c.engine.evidence, c.engine.location or "-"),),
        "Without USE_NUMA the experts live once in memory and every socket's threads read them "
        "there; the NUMA build keeps a copy per node so that each socket reads locally."
        + ("" if multi else " This machine has one usable node, so it does not matter here."),
        c.engine.fix)


def numa_balancing_on(t: Topology, c: AuditContext) -> Iterable[Finding]:
    if t.knobs.numa_balancing in (None, 0) or len([n for n in t.nodes if n.has_memory]) < 2:
        return
    yield Finding(
        "numa-balancing-on", "warning", "automatic NUMA balancing is on",
        (Evidence("kernel.numa_balancing", str(t.knobs.numa_balancing),
                  _path(t, "proc/sys/kernel/numa_balancing")),),
        "The kernel unmaps pages to sample accesses and migrates them between nodes; with threads "
        "pinned and weights placed on purpose this only costs page faults and can move weights "
        "away from the threads that read them.",
        "sysctl -w kernel.numa_balancing=0")


def transparent_huge_pages(t: Topology, c: AuditContext) -> Iterable[Finding]:
    where = _path(t, "sys/kernel/mm/transparent_hugepage/enabled")
    if t.knobs.thp_enabled == "never":
        yield Finding(
            "thp-off", "warning", "transparent huge pages are off",
            (Evidence("transparent_hugepage/enabled", "never", where),),
            "Hundreds of GB of weights read at random expert offsets in 4 KiB pages miss the TLB "
            "constantly; 2 MiB pages cut the page-walk cost of a memory-bound decode.",
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled")
    if t.knobs.thp_enabled == "always" and t.knobs.thp_defrag == "always":
        yield Finding(
            "thp-defrag-always", "info", "THP defragmentation runs synchronously on every fault",
            (Evidence("transparent_hugepage/defrag", "always",
                      _path(t, "sys/kernel/mm/transparent_hugepage/defrag")),),
            "Loading a large model then stalls in direct compaction; 'defer+madvise' keeps huge "
            "pages without the stalls.",
            "echo defer+madvise > /sys/kernel/mm/transparent_hugepage/defrag")


def zone_reclaim(t: Topology, c: AuditContext) -> Iterable[Finding]:
    if t.knobs.zone_reclaim_mode in (None, 0):
        return
    yield Finding(
        "zone-reclaim-on", "warning", "vm.zone_reclaim_mode is on",
        (Evidence("vm.zone_reclaim_mode", str(t.knobs.zone_reclaim_mode),
                  _path(t, "proc/sys/vm/zone_reclaim_mode")),),
        "When a node fills up, the kernel reclaims page cache on that node (dropping a memory-"
        "mapped model's pages) instead of allocating on a neighbour; loads stall and re-read.",
        "sysctl -w vm.zone_reclaim_mode=0")


_SLOW_GOVERNORS = {"powersave", "ondemand", "conservative", "schedutil", "userspace"}


def cpu_governor(t: Topology, c: AuditContext) -> Iterable[Finding]:
    slow = [(gov, cpus) for gov, cpus in t.knobs.governors if gov in _SLOW_GOVERNORS]
    if not slow:
        return
    yield Finding(
        "governor-not-performance", "warning", "CPU frequency governor is not 'performance'",
        tuple(Evidence(f"scaling_governor of CPUs {_cpus(cpus)}", gov,
                       _path(t, "sys/devices/system/cpu/cpuN/cpufreq/scaling_governor"))
              for gov, cpus in slow),
        "Memory-bound decode leaves cores waiting on memory, which on-demand governors read as "
        "idle and clock down; latency and throughput then vary from run to run.",
        "cpupower frequency-set -g performance")


def smt_counted_as_cores(t: Topology, c: AuditContext) -> Iterable[Finding]:
    if not t.threads_per_core or t.threads_per_core < 2:
        return
    usable = [cpu for n in t.nodes for cpu in t.usable_cpus_of_node(n.id)]
    cores = len(t.core_groups(usable))
    evidence = (Evidence("hardware threads per core", str(t.threads_per_core),
                         _path(t, "sys/devices/system/cpu/cpu0/topology/thread_siblings_list")),
                Evidence("usable physical cores / hardware threads", f"{cores} / {len(usable)}",
                         _path(t, "sys/devices/system/cpu")))
    if c.threads is not None and c.threads > cores:
        yield Finding(
            "smt-counted-as-cores", "warning",
            f"{c.threads} threads asked but only {cores} physical cores are usable",
            evidence + (Evidence("threads asked", str(c.threads), "--threads"),),
            "SMT siblings share a core's load units and its share of memory bandwidth; in a "
            "memory-bound decode the extra threads add contention and synchronisation, not speed.",
            f"use at most {cores} threads, one per physical core")
    elif c.threads is None:
        yield Finding(
            "smt-present", "info", f"SMT: {len(usable)} hardware threads on {cores} physical cores",
            evidence,
            "Engines that default to the number of hardware threads count SMT siblings as cores; "
            "for memory-bound decode give thread counts in physical cores.",
            f"pass a thread count of at most {cores} (e.g. --cpu_infer / -t)")


def cpuset_hides_nodes(t: Topology, c: AuditContext) -> Iterable[Finding]:
    memory_nodes = [n.id for n in t.nodes if n.has_memory]
    cpu_nodes = [n.id for n in t.nodes if n.has_cpus]
    hidden_mem = sorted(set(memory_nodes) - set(t.allowed.nodes))
    hidden_cpu = sorted(n for n in cpu_nodes if not t.usable_cpus_of_node(n))
    if not hidden_mem and not hidden_cpu:
        return
    sources = ", ".join(t.allowed.sources) or "Cpus_allowed/Mems_allowed"
    evidence = [Evidence("allowed CPUs", _cpus(t.allowed.cpus), sources),
                Evidence("allowed memory nodes", str(list(t.allowed.nodes)), sources)]
    if t.allowed.cgroup_path:
        evidence.append(Evidence("cgroup", t.allowed.cgroup_path, _path(t, "proc/self/cgroup")))
    what = []
    if hidden_cpu:
        what.append(f"the CPUs of node(s) {hidden_cpu}")
    if hidden_mem:
        what.append(f"the memory of node(s) {hidden_mem}")
    yield Finding(
        "cpuset-hides-nodes", "warning", f"this process may not use {' and '.join(what)}",
        tuple(evidence),
        "A container or cgroup cpuset restricts where threads run and memory is allocated; "
        "tuning here only sees part of the machine, and placements on hidden nodes will fail.",
        "widen the cpuset (e.g. docker run --cpuset-cpus/--cpuset-mems, or the cgroup's "
        "cpuset.cpus/cpuset.mems) if the whole machine is meant to be used")


def unequal_free_memory(t: Topology, c: AuditContext) -> Iterable[Finding]:
    nodes = [n for n in t.nodes if n.has_memory and n.memory_free_bytes is not None
             and n.id in t.allowed.nodes]
    if len(nodes) < 2:
        return
    most = max(nodes, key=lambda n: n.memory_free_bytes)
    least = min(nodes, key=lambda n: n.memory_free_bytes)
    if most.memory_free_bytes == 0 or least.memory_free_bytes >= 0.8 * most.memory_free_bytes:
        return
    yield Finding(
        "unequal-free-memory", "warning",
        f"free memory differs across nodes: node {least.id} has {_gib(least.memory_free_bytes)}, "
        f"node {most.id} {_gib(most.memory_free_bytes)}",
        tuple(Evidence(f"node {n.id} MemFree", _gib(n.memory_free_bytes),
                       _path(t, f"sys/devices/system/node/node{n.id}/meminfo")) for n in nodes),
        "Page cache or another process fills one node; weights placed there spill to other nodes "
        "(remote reads) or a per-node copy does not fit.",
        "sync; echo 3 > /proc/sys/vm/drop_caches   # then check numastat -m for other users")


def memoryless_cpu_nodes(t: Topology, c: AuditContext) -> Iterable[Finding]:
    bare = [n for n in t.nodes if n.has_cpus and not n.has_memory]
    if not bare:
        return
    yield Finding(
        "cpu-nodes-without-memory", "warning",
        f"node(s) {[n.id for n in bare]} have CPUs but no memory",
        tuple(Evidence(f"node {n.id} MemTotal", "0", _path(t, f"sys/devices/system/node/node{n.id}/meminfo"))
              for n in bare),
        "Every access from these CPUs is remote; count them with the nearest memory node, and do "
        "not expect a local copy of the weights for them.",
        None)


def node_memory_mismatch(t: Topology, c: AuditContext) -> Iterable[Finding]:
    node_total = sum(n.memory_total_bytes for n in t.nodes)
    system = t.memory_total_bytes
    if not system or not node_total or abs(node_total - system) <= 0.1 * system:
        return
    yield Finding(
        "node-memory-mismatch", "info",
        f"the nodes report {_gib(node_total)} in all, the system {_gib(system)}",
        (Evidence("sum of node MemTotal", _gib(node_total), _path(t, "sys/devices/system/node/node*/meminfo")),
         Evidence("MemTotal", _gib(system), _path(t, "proc/meminfo"))),
        "Per-node figures are what placement can rely on; memory the nodes do not account for "
        "(e.g. hot-plugged or hypervisor-ballooned) may not be placeable by node.",
        None)


# ---------------------------------------------------------------------------------------------
# Thread counts: the CPU quota, and how an engine spreads its busy threads over the nodes


def busy_threads(c: AuditContext) -> tuple[int, int, str] | None:
    """(compute threads, extra busy threads, where the count came from) of what the user runs;
    None when no thread count was given. The extra ones are the engine's `reserved_threads`
    (ktransformers' submitting thread spins while its workers run; vLLM's front end, per rank)."""
    profile = c.engine_profile()
    if c.threads is not None:
        command, where = EngineCommand((), threads=c.threads), "--threads"
    elif c.command is not None and c.command.threads is not None:
        command, where = c.command, c.command.thread_flag or "command line"
    else:
        return None
    return command.threads, command.busy_threads(profile) - command.threads, where


def _default_threads(t: Topology, c: AuditContext) -> tuple[int, str] | None:
    """What the engine runs when not told: (busy threads, why). Both known defaults count the
    whole machine's physical cores, whatever the cgroup allows (ollama #17916 for llama.cpp's)."""
    profile = c.engine_profile()
    if profile is None or profile.default_cores_less is None or not profile.threads_flag:
        return None
    value = max(1, t.cores - profile.default_cores_less)
    try:
        busy = parse_command(profile, (profile.threads_flag, str(value))).busy_threads(profile)
    except NumatuneError:          # a default that leaves no compute thread: nothing runs
        return None
    less = f" - {profile.default_cores_less}" if profile.default_cores_less else ""
    return busy, (f"{profile.name}'s default {profile.threads_flag} {value} (the machine's physical cores{less}: "
                  f"{t.cores}{less})")


def cpu_quota(t: Topology, c: AuditContext) -> Iterable[Finding]:
    quota, limit = t.allowed.cpu_quota, t.quota_threads()
    if quota is None or limit is None:
        return
    quota_evidence = Evidence("cgroup CPU quota", f"{quota:g} CPUs' worth of time per period",
                              _sources(t, ("cpu.max", "cfs_quota_us")) or "cpu.max / cpu.cfs_quota_us")
    asked = busy_threads(c)
    if asked is not None:
        compute, reserved, where = asked
        busy, why = compute + reserved, f"{compute} asked ({where})" + (f" + {reserved} spinning" if reserved else "")
    else:
        default = _default_threads(t, c)
        busy, why = default if default else (None, "")
    if busy is not None and busy > limit:
        flag = _fewer_threads(t, c, _command_pool(t, c), limit) if c.engine_profile() else \
            f"<engine> with {limit} threads"
        yield Finding(
            "threads-exceed-cpu-quota", "error",
            f"{busy} busy threads but the CPU quota runs only {limit} at once",
            (quota_evidence, Evidence("busy threads", str(busy), why),
             Evidence("allowed CPUs", _cpus(t.allowed.cpus), ", ".join(t.allowed.sources) or "-")),
            "The quota is CPU time, not CPUs: every thread still sees all the allowed CPUs, and once the "
            "group has used its time the kernel stops all of it until the next period. Decode threads "
            "wait for each other at every layer, so one throttled thread stalls the rest; a llama.cpp "
            "container with a 4-CPU quota ran about 45 times slower with 8 threads than with 4 "
            "(ollama #17916).",
            f"{flag}   (or raise the quota: docker run --cpus {busy})")
        return
    if quota >= len(t.allowed.cpus):
        return
    yield Finding(
        "cpu-quota-below-cpuset", "warning",
        f"the CPU quota allows {quota:g} CPUs' worth of time but {len(t.allowed.cpus)} CPUs are visible",
        (quota_evidence, Evidence("allowed CPUs", _cpus(t.allowed.cpus), ", ".join(t.allowed.sources))),
        "Engines size their thread pool from the visible CPUs; more busy threads than the quota "
        "can run get throttled every period, and spinning workers collapse throughput.",
        f"use at most {limit} threads")


def _sources(t: Topology, suffixes: tuple[str, ...]) -> str:
    return ", ".join(s for s in t.allowed.sources if s.endswith(suffixes))


@dataclass(frozen=True)
class ThreadSpread:
    """Where an engine's busy threads would run: some bound to nodes, the rest placed by the scheduler."""

    busy: int
    bound: tuple[tuple[int, int], ...]    # (node, threads the engine binds to it)
    floating: int                         # threads the scheduler places anywhere in `pool`
    pool: tuple[int, ...]                 # CPUs the process's threads may run on
    how: str                              # how the engine spreads them, in one sentence


def _evenly_by_index(workers: int, nodes: list[int]) -> dict[int, int]:
    """by-index (ktransformers' NUMA build): worker i of W goes to node floor(i * M / W)."""
    counts = {n: 0 for n in nodes}
    for i in range(workers):
        counts[nodes[i * len(nodes) // workers]] += 1
    return counts


def _round_robin(workers: int, nodes: list[int]) -> dict[int, int]:
    """round-robin (llama.cpp --numa distribute): thread i runs on node i mod N."""
    counts = {n: 0 for n in nodes}
    for i in range(workers):
        counts[nodes[i % len(nodes)]] += 1
    return counts


def _command_pool(t: Topology, c: AuditContext) -> tuple[int, ...]:
    pool = set(t.usable_cpus())
    if c.command is not None and c.command.cpus is not None:
        pool &= set(c.command.cpus)
    if c.command is not None and c.command.cpu_nodes is not None:
        pool &= {cpu for n in c.command.cpu_nodes if n in {m.id for m in t.nodes} for cpu in t.node(n).cpus}
    return tuple(sorted(pool))


def thread_spread(t: Topology, c: AuditContext, compute: int | None = None) -> ThreadSpread | None:
    """How the given engine places `compute` threads (default: the count the user gave)."""
    asked = busy_threads(c)
    if asked is None:
        return None
    compute = asked[0] if compute is None else compute
    reserved = asked[1]
    pool = _command_pool(t, c)
    profile = c.engine_profile()
    memory_nodes = [n.id for n in t.nodes if n.has_memory]
    numa_build = c.engine is not None and c.engine.numa_aware and profile.numa_aware == "build-flag"
    if numa_build and profile.build_flag_spread == "by-index" and compute > 0 and memory_nodes:
        nodes = memory_nodes
        return ThreadSpread(compute + reserved, tuple(sorted(_evenly_by_index(compute, nodes).items())), reserved,
                            tuple(t.usable_cpus()),
                            f"{profile.name}'s {profile.build_flag} build binds worker i of {compute} to node "
                            f"⌊i·{len(nodes)}/{compute}⌋ of all {len(nodes)} memory nodes (whatever numactl says); "
                            "its reserved thread spins unbound")
    numa_mode = c.command.numa_mode if c.command is not None else None
    if profile is not None and dict(profile.numa_flag_spreads).get(numa_mode) == "round-robin":
        nodes = [n.id for n in t.nodes if n.has_cpus]
        return ThreadSpread(compute + reserved, tuple(sorted(_round_robin(compute, nodes).items())), reserved, pool,
                            f"{profile.name} {profile.numa_flag} {numa_mode} runs thread i on node i mod {len(nodes)}")
    return ThreadSpread(compute + reserved, (), compute + reserved, pool,
                        "the scheduler places the threads on the CPUs the process may use")


def _fits_per_node(t: Topology, spread: ThreadSpread) -> bool:
    return all(n <= usable_cores(t, node) for node, n in spread.bound) and spread.busy <= len(
        t.core_groups(spread.pool))


def node_oversubscribed(t: Topology, c: AuditContext) -> Iterable[Finding]:
    """ktransformers PR #685: one socket got more workers than cores and decode fell to ~1 tok/s."""
    spread = thread_spread(t, c)
    if spread is None or not spread.bound:
        return
    cpuless = [node for node, n in spread.bound if n and not t.usable_cpus_of_node(node)]
    if cpuless:
        yield Finding(
            "workers-bound-to-cpuless-nodes", "error",
            f"the engine would bind workers to node(s) {cpuless}, which have no usable CPUs",
            tuple(Evidence(f"node {node} CPUs usable", "none", _path(t, f"sys/devices/system/node/node{node}/cpulist"))
                  for node in cpuless),
            f"How the threads are spread: {spread.how}. Memory-only nodes (CXL, HBM, GPU memory) count as "
            "nodes there, and a worker bound to one has no CPU to run on (ktransformers #1136: EINVAL from "
            "numa_sched_setaffinity on an 8-node machine); no thread count avoids it.",
            "run a build without USE_NUMA under numactl on the CPU nodes, or keep the memory-only nodes out "
            "of the process's cpuset.mems")
        return
    over_cpus = [(node, n) for node, n in spread.bound if n > len(t.usable_cpus_of_node(node))]
    over_cores = [(node, n) for node, n in spread.bound if n > usable_cores(t, node)]
    if not over_cores:
        return
    compute, reserved, where = busy_threads(c)
    evidence = [Evidence(f"node {node}: threads bound / usable physical cores / usable hardware threads",
                         f"{n} / {usable_cores(t, node)} / {len(t.usable_cpus_of_node(node))}",
                         _path(t, f"sys/devices/system/node/node{node}/cpulist")) for node, n in spread.bound]
    evidence.append(Evidence("threads", f"{compute} compute + {spread.busy - compute} spinning", where))
    worst = over_cpus or over_cores
    better = next((w for w in range(compute - 1, 0, -1)
                   if _fits_per_node(t, thread_spread(t, c, w))), None)
    fix = _fewer_threads(t, c, spread.pool, better + reserved) if better and c.engine_profile() else (
        f"use at most {better} threads" if better else "use fewer threads")
    if over_cpus:
        explanation = ("More threads are bound to the node than it has hardware threads: they take turns on "
                       "its CPUs while the other nodes' cores idle. Decode threads meet at a barrier after "
                       "every expert, so each step waits for the slowest, time-sliced one (ktransformers "
                       "PR #685: 2 × 24 cores, --cpu_infer 41 ran well, 42 fell to about 1 tok/s).")
    else:
        explanation = ("More threads are bound to the node than it has physical cores: some share a core "
                       "with their SMT sibling and run at about half speed, and every step waits for them.")
    yield Finding(
        "node-oversubscribed", "error" if over_cpus else "warning",
        f"node {worst[0][0]} would get {worst[0][1]} busy threads"
        + (f" but has {len(t.usable_cpus_of_node(worst[0][0]))} usable hardware threads" if over_cpus
           else f" but {usable_cores(t, worst[0][0])} usable physical cores"),
        tuple(evidence), f"{explanation} How the threads are spread: {spread.how}.", fix)


def threads_exceed_cpus(t: Topology, c: AuditContext) -> Iterable[Finding]:
    spread = thread_spread(t, c)
    if spread is None or spread.busy <= len(spread.pool):
        return
    compute, reserved, where = busy_threads(c)
    cores = len(t.core_groups(spread.pool))
    limit = max(1, cores - reserved)
    yield Finding(
        "threads-exceed-cpus", "error",
        f"{spread.busy} busy threads on {len(spread.pool)} CPUs",
        (Evidence("busy threads", f"{compute} compute + {reserved} spinning", where),
         Evidence("CPUs the threads may run on", _cpus(spread.pool) or "none",
                  ", ".join(t.allowed.sources) or _path(t, "sys/devices/system/cpu/online"))),
        "Busy-waiting threads beyond the CPUs take turns on them; every step of the decode then waits "
        "for a thread that is not running.",
        _fewer_threads(t, c, spread.pool, cores) if c.engine_profile() else f"use at most {limit} threads")


# ---------------------------------------------------------------------------------------------
# Sub-NUMA clustering and memory fit


def snc_packages(t: Topology) -> dict[int, tuple[int, ...]]:
    """package → its nodes, for packages split into several NUMA nodes (Intel SNC, AMD NPS>1,
    several dies per package). A node whose CPUs span packages (broken firmware tables) is left out."""
    nodes_of: dict[int, list[int]] = {}
    for node in t.nodes:
        packages = t.packages_of_node(node.id)
        if len(packages) == 1 and node.has_cpus:
            nodes_of.setdefault(packages[0], []).append(node.id)
    return {p: tuple(nodes) for p, nodes in sorted(nodes_of.items()) if len(nodes) > 1}


def _distance(t: Topology, a: int, b: int) -> int | None:
    row = t.node(a).distances
    ids = [n.id for n in t.nodes]
    return row[ids.index(b)] if row and b in ids and len(row) == len(ids) else None


def _replicating(c: AuditContext) -> bool | None:
    """Whether the engine keeps a copy of the weights per node: True, False, None (unknown build);
    per the profile, a build-flag engine whose several-node mode is a copy per node."""
    profile = c.engine_profile()
    if c.engine is None or profile is None or (profile.numa_aware, profile.multi_node) != ("build-flag", "replicate"):
        return False
    return c.engine.numa_aware


def sub_numa_clustering(t: Topology, c: AuditContext) -> Iterable[Finding]:
    split = snc_packages(t)
    if not split:
        return
    evidence = []
    for package, nodes in split.items():
        inside = _distance(t, nodes[0], nodes[1])
        others = [n.id for n in t.nodes if n.has_cpus and n.id not in nodes]
        across = _distance(t, nodes[0], others[0]) if others else None
        text = f"nodes {list(nodes)}; distance within {inside if inside is not None else '?'}" + (
            f", to node {others[0]} {across}" if across is not None else "")
        evidence.append(Evidence(f"package {package}", text,
                                 _path(t, f"sys/devices/system/node/node{nodes[0]}/distance")))
    per = max(len(n) for n in split.values())
    total = len([n for n in t.nodes if n.has_memory])
    replicating = _replicating(c)
    copies = (f" A per-node engine (ktransformers' NUMA build) keeps {total} copies of the weights here, "
              f"{per} per socket" + (": " + c.engine.engine + " as installed does." if replicating else "."))
    first = next(iter(split.values()))
    yield Finding(
        "sub-numa-clustering", "warning" if replicating is not False else "info",
        f"sub-NUMA clustering: {len(split)} package(s) split into {per} NUMA nodes each",
        tuple(evidence),
        "The firmware splits each socket into clusters (Intel SNC, AMD NPS) with their own memory "
        "controllers; a node then has only part of the socket's memory bandwidth and memory, and "
        "the socket's other nodes are near (small distance) but not local." + copies +
        " One copy per socket interleaved over that socket's nodes, or partitioned experts, use "
        "the whole socket's bandwidth without the extra copies (ktransformers #1147: 4 nodes on "
        "two sockets, the per-node copies ran out of memory).",
        f"one copy per socket: numactl --cpunodebind={_cpus(first)} --interleave={_cpus(first)} <engine> ... "
        "(one instance per socket, each on its socket's nodes); or partition the experts over all nodes; "
        "or one node per socket in the firmware (SNC off / NPS1)")


def placements_that_fit(t: Topology, weight_bytes: int, nodes: list[int]) -> list[str]:
    """The placements whose per-node share (with working memory) fits each node's free memory."""
    need = with_headroom(weight_bytes)
    free = {n: available_bytes(t, n) for n in nodes}
    options = []
    holders = [n for n in nodes if fits(weight_bytes, free[n])]
    if len(holders) >= 2:
        options.append(f"one copy on each of nodes {holders} only (fewer copies)")
    if holders:
        options.append(f"bind to one node: numactl --cpunodebind={holders[0]} --membind={holders[0]} <engine> ...")
    groups = [[n for n in group if n in free] for group in snc_packages(t).values()]
    if groups and all(len(g) > 1 and all(fits(weight_bytes // len(g), free[n]) for n in g) for g in groups):
        per_socket = "; ".join(f"numactl --cpunodebind={_cpus(g)} --interleave={_cpus(g)} <engine> ..." for g in groups)
        options.append(f"one copy per socket interleaved over its nodes, one instance per socket ({per_socket})")
    if len(nodes) > 1 and all(fits(weight_bytes // len(nodes), free[n]) for n in nodes):
        options.append(f"one copy interleaved or partitioned over nodes {nodes} "
                       f"({_gib(int(need / len(nodes)))} per node)")
    elif len(nodes) > 1 and fits(weight_bytes, sum(free.values())):
        short = [n for n in nodes if not fits(weight_bytes // len(nodes), free[n])]
        options.append(f"one copy spread over nodes {nodes} by their free memory (numactl "
                       f"--weighted-interleave={_cpus(nodes)}, weights in /sys/kernel/mm/mempolicy/"
                       f"weighted_interleave/nodeN, Linux 6.9+), or free memory on node(s) {short} "
                       f"for an even interleave ({_gib(int(need / len(nodes)))} per node)")
    return options


def model_fit(t: Topology, c: AuditContext) -> Iterable[Finding]:
    if c.model is None:
        return
    nodes = [n.id for n in t.nodes if n.has_memory and n.id in t.allowed.nodes]
    if not nodes:
        return
    weights = c.model.weight_bytes
    need = with_headroom(weights)
    free = {n: available_bytes(t, n) for n in nodes}
    evidence = tuple(Evidence(f"node {n}: free / a whole copy needs", f"{_gib(free[n])} / {_gib(need)}",
                              _path(t, f"sys/devices/system/node/node{n}/meminfo")) for n in nodes)
    evidence += (Evidence(f"weights of {c.model.name}",
                          f"{_gib(weights)} (+{HEADROOM_PERCENT}% working memory: {_gib(need)})", c.model.source),)
    total = sum(free.values())
    holders = [n for n in nodes if fits(weights, free[n])]
    if not fits(weights, total):
        yield Finding("model-does-not-fit", "error",
                      f"{c.model.name} needs {_gib(need)}, all allowed nodes hold {_gib(total)} free",
                      evidence, "The weights do not fit in memory even once; loading will swap or fail.",
                      "use a smaller quantization or a machine with more memory")
        return
    if len(nodes) >= 2 and len(holders) < len(nodes):
        replicating = _replicating(c)
        fitting = placements_that_fit(t, weights, nodes)
        yield Finding(
            "model-no-replicas", "error" if replicating else "warning",
            f"{c.model.name} cannot be copied to every node ({len(nodes)} × {_gib(need)})"
            + (f": {c.engine.engine} as installed copies it to each" if replicating else ""),
            evidence,
            "A copy of the weights per node (ktransformers USE_NUMA) needs the full weights free on "
            "each node; here loading would spill to remote memory or run out of memory"
            + (" — with sub-NUMA clustering there is a copy per cluster, not per socket" if snc_packages(t) else "")
            + ".",
            "; or ".join(fitting) if fitting else "use a smaller quantization")
    if holders:
        yield Finding("model-fits-one-node", "info",
                      f"{c.model.name} ({_gib(weights)}) fits on node(s) {holders}",
                      evidence,
                      "One node can hold the whole model: binding threads and memory to it avoids "
                      "remote reads entirely; a copy per node doubles memory for the bandwidth of both.",
                      f"numactl --cpunodebind={holders[0]} --membind={holders[0]} <engine> ...")



def _model_page_cache(t: Topology, c: AuditContext) -> PageCacheReport | None:
    """The context's page-cache report; else, on the live machine with a model file, measured now
    (mincore and move_pages on this host: a captured tree has no page cache to ask)."""
    if c.page_cache is not None:
        return c.page_cache
    if c.model is None or c.model.profile is not None or os.path.realpath(t.root) != "/":
        return None
    try:
        return page_cache_nodes(c.model.source)
    except NumatuneError:
        return None


def model_page_cache(t: Topology, c: AuditContext) -> Iterable[Finding]:
    """llama.cpp #1437: a mapped model's pages stay on the node where an earlier run read them."""
    memory_nodes = [n.id for n in t.nodes if n.has_memory]
    report = _model_page_cache(t, c) if len(memory_nodes) >= 2 else None
    if report is None or report.pages == 0 or report.resident_pages < 0.05 * report.pages:
        return
    placed = report.bytes_by_node()
    planned = None
    if c.command is not None:
        planned = c.command.memory_nodes or c.command.cpu_nodes
    elsewhere = {n: b for n, b in placed.items() if planned is not None and n not in planned}
    if planned is not None and not elsewhere:
        return
    evidence = tuple(Evidence(f"node {n}: cached pages of the model", _gib(b), f"mincore + move_pages on {report.path}")
                     for n, b in sorted(placed.items()))
    evidence += (Evidence("cached / file size", f"{_gib(report.resident_bytes)} / {_gib(report.size_bytes)}",
                          report.path),)
    mapped_reader = c.engine is None or c.engine.engine == "llama.cpp"
    title = (f"{_gib(sum(elsewhere.values()))} of the model is cached on node(s) {sorted(elsewhere)}, "
             f"outside the planned node(s) {list(planned)}" if elsewhere else
             f"{report.resident_pages / report.pages:.0%} of the model is already in the page cache, on node(s) "
             f"{sorted(placed)}")
    yield Finding(
        "model-in-page-cache", "warning" if (elsewhere or mapped_reader) else "info", title, evidence,
        "A memory-mapped model is read straight from the page cache, and cached pages stay on the node "
        "where they were first read, across runs: a NUMA-aware run (first touch, --numa, a bound node) "
        "then reads these pages from wherever an earlier run, a copy or a checksum left them. Dropping "
        "them first lets the run place the weights itself (llama.cpp #1437 and its --numa help say the same).",
        drop_command_for(report.path))


RULES: tuple[Rule, ...] = (
    engine_spans_nodes, ktransformers_without_numa, numa_balancing_on, transparent_huge_pages,
    zone_reclaim, cpu_governor, smt_counted_as_cores, cpuset_hides_nodes, unequal_free_memory,
    memoryless_cpu_nodes, node_memory_mismatch, cpu_quota, node_oversubscribed, threads_exceed_cpus,
    sub_numa_clustering, model_fit, model_page_cache,
)
