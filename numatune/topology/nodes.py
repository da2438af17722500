"""The NUMA nodes: their CPUs, memory, huge-page pools, distances and memory tiers.

A CPU-less node (CXL, HBM, GPU memory) gets as `local_cpus` those of its nearest nodes, by
the firmware's HMAT initiators or else the distance matrix; a kernel without NUMA gets one
node 0 holding the whole machine. Which node each CPU is on is decided here as well.
"""
from __future__ import annotations

import re
from typing import Optional

from ..sysfs import format_cpulist, parse_cpulist, parse_cpumask, parse_distances, parse_int, parse_meminfo
from .model import HugePagePool, MemoryTier, Node
from .reader import SYS_CPU, Reader

SYS_NODE = "sys/devices/system/node"
SYS_TIERS = "sys/devices/virtual/memory_tiering"


def _node_cpus(reader: Reader, node: int) -> tuple[int, ...]:
    base = f"{SYS_NODE}/node{node}"
    listed = reader.value(f"{base}/cpulist", parse_cpulist)
    if listed is None:
        # Old kernels have no cpulist; the node directory links its CPUs as cpuN.
        listed = reader.numbered(base, "cpu") or reader.value(f"{base}/cpumap", parse_cpumask)
    if listed is None:
        reader.note(f"node {node} CPUs: no cpulist, cpuN entries nor cpumap in {base}")
    return tuple(listed or ())


def _node_memory(reader: Reader, node: int) -> tuple[int, Optional[int]]:
    """(MemTotal, MemFree) of a node in bytes; (0, None) when its meminfo cannot be read."""
    rel = f"{SYS_NODE}/node{node}/meminfo"
    info = reader.value(rel, parse_meminfo) or {}
    if "MemTotal" not in info:
        reader.note(f"node {node} memory: no MemTotal in {rel}; counted as 0")
        return 0, None
    return info["MemTotal"], info.get("MemFree")


def _hugepage_pools(reader: Reader, directory: str) -> tuple[HugePagePool, ...]:
    pools = []
    for name in reader.root.listdir(directory):
        match = re.fullmatch(r"hugepages-(\d+)kB", name)
        if not match:
            continue
        total = reader.value(f"{directory}/{name}/nr_hugepages", parse_int)
        free = reader.value(f"{directory}/{name}/free_hugepages", parse_int)
        if total is None or free is None:
            reader.note(f"{directory}/{name}: nr_hugepages or free_hugepages unreadable")
            continue
        pools.append(HugePagePool(int(match.group(1)) * 1024, total, free))
    return tuple(sorted(pools, key=lambda pool: pool.size_bytes))


def _distance_rows(reader: Reader, ids: list[int]) -> dict[int, Optional[tuple[int, ...]]]:
    """Each node's row of the distance matrix, or None.

    None everywhere on a single node (a 1x1 matrix says nothing), and for a row that is missing
    or does not hold one distance per node.
    """
    if len(ids) < 2:
        return {node: None for node in ids}
    rows: dict[int, Optional[tuple[int, ...]]] = {}
    for node in ids:
        rel = f"{SYS_NODE}/node{node}/distance"
        row = reader.value(rel, parse_distances)
        if row is not None and len(row) != len(ids):
            reader.note(f"node {node} distances: {rel} has {len(row)} values for {len(ids)} nodes; ignored")
            row = None
        rows[node] = tuple(row) if row is not None else None
    missing = [node for node in ids if not reader.root.exists(f"{SYS_NODE}/node{node}/distance")]
    if missing:
        reader.note(f"node distances: no nodeN/distance in this root for node(s) {format_cpulist(missing)}")
    return rows


def _local_cpus(reader: Reader, node: int, cpus_of: dict[int, tuple[int, ...]],
                rows: dict[int, Optional[tuple[int, ...]]]) -> tuple[int, ...]:
    """A node's CPUs; for a CPU-less node, those of its nearest nodes with CPUs.

    Nearest by the firmware's own statement when there is one (HMAT: the best CPU initiators
    listed in nodeN/access1/initiators), else by the distance matrix (all nodes at the least
    distance). Empty when neither says.
    """
    if cpus_of[node]:
        return cpus_of[node]
    initiators = reader.numbered(f"{SYS_NODE}/node{node}/access1/initiators", "node")
    nearest = [n for n in initiators if cpus_of.get(n)]
    row = rows.get(node)
    if not nearest and row is not None:
        with_cpus = {other: distance for other, distance in zip(sorted(cpus_of), row) if cpus_of[other]}
        least = min(with_cpus.values(), default=None)
        nearest = [other for other, distance in with_cpus.items() if distance == least]
    return tuple(sorted({cpu for n in nearest for cpu in cpus_of[n]}))


def _whole_machine_node(reader: Reader, cpu_ids: list[int]) -> Node:
    """Node 0 of a kernel built without NUMA: every CPU, and the memory of proc/meminfo."""
    info = reader.value("proc/meminfo", parse_meminfo) or {}
    if "MemTotal" not in info:
        reader.note("node 0 memory: no MemTotal in proc/meminfo; counted as 0")
    pools = _hugepage_pools(reader, "sys/kernel/mm/hugepages")
    return Node(0, tuple(cpu_ids), info.get("MemTotal", 0), info.get("MemFree"), pools, None, tuple(cpu_ids))


def read_nodes(reader: Reader, cpu_ids: list[int]) -> tuple[Node, ...]:
    ids = reader.numbered(SYS_NODE, "node")
    if not ids:
        reader.note(f"NUMA nodes: no {SYS_NODE}/nodeN (kernel without NUMA); "
                    "one node 0 holds all CPUs and memory")
        return (_whole_machine_node(reader, cpu_ids),)
    cpus_of = {node: _node_cpus(reader, node) for node in ids}
    rows = _distance_rows(reader, ids)
    nodes = []
    for node in ids:
        total, free = _node_memory(reader, node)
        pools = _hugepage_pools(reader, f"{SYS_NODE}/node{node}/hugepages")
        nodes.append(Node(node, cpus_of[node], total, free, pools, rows[node],
                          _local_cpus(reader, node, cpus_of, rows)))
    return tuple(nodes)


def node_of_cpus(reader: Reader, nodes: tuple[Node, ...], cpu_ids: list[int]) -> dict[int, int]:
    owners: dict[int, list[int]] = {}
    for node in nodes:
        for cpu in node.cpus:
            owners.setdefault(cpu, []).append(node.id)
    shared = [cpu for cpu, ids in owners.items() if len(ids) > 1]
    if shared:
        reader.note(f"CPUs {format_cpulist(shared)}: listed by several nodes (broken firmware NUMA "
                    "information?); each is counted in the lowest")
    node_of = {cpu: ids[0] for cpu, ids in owners.items()}
    for cpu in cpu_ids:
        linked = reader.numbered(f"{SYS_CPU}/cpu{cpu}", "node") if cpu not in node_of else []
        if linked:
            node_of[cpu] = linked[0]
    return node_of


def read_memory_tiers(reader: Reader) -> tuple[MemoryTier, ...]:
    tiers = []
    for tier in reader.numbered(SYS_TIERS, "memory_tier"):
        nodes = reader.value(f"{SYS_TIERS}/memory_tier{tier}/nodelist", parse_cpulist)
        if nodes is not None:
            tiers.append(MemoryTier(tier, tuple(nodes)))
    return tuple(tiers)
