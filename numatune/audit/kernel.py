"""Checks of the kernel's settings: automatic NUMA balancing, transparent huge pages, zone
reclaim and the CPU frequency governor. Each reads only `Topology.knobs`.
"""
from __future__ import annotations

from typing import Iterable

from ..sysfs import format_cpulist as _cpus
from ..topology.model import Topology
from .core import AuditContext, Evidence, Finding, root_path


def numa_balancing_on(t: Topology, c: AuditContext) -> Iterable[Finding]:
    if t.knobs.numa_balancing in (None, 0) or len([n for n in t.nodes if n.has_memory]) < 2:
        return
    yield Finding(
        "numa-balancing-on", "warning", "automatic NUMA balancing is on",
        (Evidence("kernel.numa_balancing", str(t.knobs.numa_balancing),
                  root_path(t, "proc/sys/kernel/numa_balancing")),),
        "The kernel unmaps pages to sample accesses and migrates them between nodes; with threads "
        "pinned and weights placed on purpose this only costs page faults and can move weights "
        "away from the threads that read them.",
        "sysctl -w kernel.numa_balancing=0")


def transparent_huge_pages(t: Topology, c: AuditContext) -> Iterable[Finding]:
    where = root_path(t, "sys/kernel/mm/transparent_hugepage/enabled")
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
                      root_path(t, "sys/kernel/mm/transparent_hugepage/defrag")),),
            "Loading a large model then stalls in direct compaction; 'defer+madvise' keeps huge "
            "pages without the stalls.",
            "echo defer+madvise > /sys/kernel/mm/transparent_hugepage/defrag")


def zone_reclaim(t: Topology, c: AuditContext) -> Iterable[Finding]:
    if t.knobs.zone_reclaim_mode in (None, 0):
        return
    yield Finding(
        "zone-reclaim-on", "warning", "vm.zone_reclaim_mode is on",
        (Evidence("vm.zone_reclaim_mode", str(t.knobs.zone_reclaim_mode),
                  root_path(t, "proc/sys/vm/zone_reclaim_mode")),),
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
                       root_path(t, "sys/devices/system/cpu/cpuN/cpufreq/scaling_governor"))
              for gov, cpus in slow),
        "Memory-bound decode leaves cores waiting on memory, which on-demand governors read as "
        "idle and clock down; latency and throughput then vary from run to run.",
        "cpupower frequency-set -g performance")
