"""Audit rules: small functions from a Topology (and what the user runs) to Findings.

Each finding carries the values read and where they were read, a short explanation, and the
command or configuration line that fixes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from .capacity import available_bytes
from .engines import EngineInstall
from .models import ModelFootprint
from .sysfs import format_cpulist as _cpus
from .topology import Topology

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
    nodes = usable_nodes(t)
    if c.engine is None or len(nodes) < 2 or c.engine.numa_aware:
        return
    largest = max(nodes, key=lambda n: usable_cores(t, n))
    node_cores = usable_cores(t, largest)
    threads = c.threads
    if threads is not None and threads <= node_cores:
        return
    evidence = [Evidence("nodes with usable CPUs", str(nodes), _path(t, "sys/devices/system/node")),
                Evidence(f"physical cores on node {largest}", str(node_cores),
                         _path(t, f"sys/devices/system/node/node{largest}/cpulist")),
                Evidence(f"{c.engine.engine} build", c.engine.evidence, c.engine.location or "-")]
    if threads is not None:
        evidence.append(Evidence("threads asked", str(threads), "--threads"))
    confined = (f"numactl --cpunodebind={largest} --membind={largest} "
                f"{_thread_flag(c.engine.engine, node_cores)}")
    fix = confined if c.engine.fix is None else f"{c.engine.fix}   (or, as built: {confined})"
    severity = "error" if threads is not None or c.engine.numa_aware is False else "warning"
    yield Finding(
        "engine-spans-nodes", severity,
        f"{c.engine.engine} is not NUMA-aware but its threads would span {len(nodes)} nodes",
        tuple(evidence),
        "Threads on one node then read weights held on another node across the socket "
        "interconnect; decode slows down instead of speeding up (ktransformers on a dual-socket "
        "Xeon: 5.24 tok/s on one socket, 0.51 on both).",
        fix)


def _thread_flag(engine: str, threads: int) -> str:
    return {
        # --cpu_infer counts the compute workers plus the submitting thread (profiles/engines).
        "ktransformers": f"ktransformers ... --cpu_infer {threads + 1}",
        "llama.cpp": f"llama-server ... -t {threads} --numa numactl",
        "vllm-cpu": f"VLLM_CPU_OMP_THREADS_BIND=<{threads} cpus of that node> vllm serve ...",
        "sglang-cpu": f"SGLANG_CPU_OMP_THREADS_BIND=<{threads} cpus of that node> python -m sglang.launch_server ...",
    }.get(engine, f"<engine> with {threads} threads")


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


def cpu_quota(t: Topology, c: AuditContext) -> Iterable[Finding]:
    quota = t.allowed.cpu_quota_cpus
    if quota is None or quota >= len(t.allowed.cpus):
        return
    yield Finding(
        "cpu-quota-below-cpuset", "warning",
        f"the CPU quota allows {quota:g} CPUs' worth of time but {len(t.allowed.cpus)} CPUs are visible",
        (Evidence("cgroup CPU quota", f"{quota:g} CPUs", "cpu.max / cpu.cfs_quota_us"),
         Evidence("allowed CPUs", _cpus(t.allowed.cpus), ", ".join(t.allowed.sources))),
        "Engines size their thread pool from the visible CPUs; more busy threads than the quota "
        "can run get throttled every period, and spinning workers collapse throughput.",
        f"use at most {int(quota)} threads")


def model_fit(t: Topology, c: AuditContext) -> Iterable[Finding]:
    if c.model is None:
        return
    nodes = [n for n in t.nodes if n.has_memory and n.id in t.allowed.nodes]
    if not nodes:
        return
    weights = c.model.weight_bytes

    def available(n) -> int:
        return available_bytes(t, n.id)

    evidence = tuple(Evidence(f"node {n.id} free memory", _gib(available(n)),
                              _path(t, f"sys/devices/system/node/node{n.id}/meminfo")) for n in nodes)
    evidence += (Evidence(f"weights of {c.model.name}", _gib(weights), c.model.source),)
    total = sum(available(n) for n in nodes)
    fits_one = [n.id for n in nodes if available(n) >= weights]
    fits_everywhere = len(fits_one) == len(nodes)
    if weights > total:
        yield Finding("model-does-not-fit", "error",
                      f"{c.model.name} needs {_gib(weights)}, all allowed nodes hold {_gib(total)} free",
                      evidence, "The weights do not fit in memory even once; loading will swap or fail.",
                      "use a smaller quantization or a machine with more memory")
    elif len(nodes) >= 2 and not fits_everywhere:
        yield Finding("model-no-replicas", "warning",
                      f"{c.model.name} cannot be copied to every node ({len(nodes)} × {_gib(weights)})",
                      evidence,
                      "A copy of the weights per node (ktransformers USE_NUMA) needs the full "
                      "weights free on each node; here it would spill to remote memory or fail.",
                      "partition the experts across nodes, or interleave one copy over all nodes")
    if fits_one and weights <= total:
        yield Finding("model-fits-one-node", "info",
                      f"{c.model.name} ({_gib(weights)}) fits on node(s) {fits_one}",
                      evidence,
                      "One node can hold the whole model: binding threads and memory to it avoids "
                      "remote reads entirely; a copy per node doubles memory for the bandwidth of both.",
                      f"numactl --cpunodebind={fits_one[0]} --membind={fits_one[0]} <engine> ...")


RULES: tuple[Rule, ...] = (
    engine_spans_nodes, ktransformers_without_numa, numa_balancing_on, transparent_huge_pages,
    zone_reclaim, cpu_governor, smt_counted_as_cores, cpuset_hides_nodes, unequal_free_memory,
    memoryless_cpu_nodes, node_memory_mismatch, cpu_quota, model_fit,
)
