"""Checks of thread counts: how many busy threads the user's engine runs (`busy_threads`), how
it spreads them over the nodes (`thread_spread`), and what that meets: the cgroup CPU quota,
node oversubscription, more threads than CPUs, SMT siblings counted as cores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..command import EngineCommand, parse_command
from ..errors import NumatuneError
from ..sysfs import format_cpulist as _cpus
from ..topology.model import Topology
from .core import AuditContext, Evidence, Finding, root_path, usable_cores
from .fixes import fewer_threads


def smt_counted_as_cores(t: Topology, c: AuditContext) -> Iterable[Finding]:
    if not t.threads_per_core or t.threads_per_core < 2:
        return
    usable = [cpu for n in t.nodes for cpu in t.usable_cpus_of_node(n.id)]
    cores = len(t.core_groups(usable))
    evidence = (Evidence("hardware threads per core", str(t.threads_per_core),
                         root_path(t, "sys/devices/system/cpu/cpu0/topology/thread_siblings_list")),
                Evidence("usable physical cores / hardware threads", f"{cores} / {len(usable)}",
                         root_path(t, "sys/devices/system/cpu")))
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
        flag = fewer_threads(t, c, command_pool(t, c), limit) if c.engine_profile() else \
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


def command_pool(t: Topology, c: AuditContext) -> tuple[int, ...]:
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
    pool = command_pool(t, c)
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
            tuple(Evidence(f"node {node} CPUs usable", "none", root_path(t, f"sys/devices/system/node/node{node}/cpulist"))
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
                         root_path(t, f"sys/devices/system/node/node{node}/cpulist")) for node, n in spread.bound]
    evidence.append(Evidence("threads", f"{compute} compute + {spread.busy - compute} spinning", where))
    worst = over_cpus or over_cores
    better = next((w for w in range(compute - 1, 0, -1)
                   if _fits_per_node(t, thread_spread(t, c, w))), None)
    fix = fewer_threads(t, c, spread.pool, better + reserved) if better and c.engine_profile() else (
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
                  ", ".join(t.allowed.sources) or root_path(t, "sys/devices/system/cpu/online"))),
        "Busy-waiting threads beyond the CPUs take turns on them; every step of the decode then waits "
        "for a thread that is not running.",
        fewer_threads(t, c, spread.pool, cores) if c.engine_profile() else f"use at most {limit} threads")
