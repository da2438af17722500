"""Checks of where an engine's threads and weights go across nodes: a non-NUMA-aware engine
spanning nodes, ktransformers built without USE_NUMA, and sub-NUMA clustering (`snc_packages`),
where a copy of the weights per node becomes several per socket.
"""
from __future__ import annotations

from typing import Iterable

from ..config import Configuration
from ..sysfs import format_cpulist as _cpus
from ..topology.model import Topology
from .core import AuditContext, Evidence, Finding, root_path, usable_cores, usable_nodes
from .fixes import suggested_command
from .threads import busy_threads, command_pool


def engine_spans_nodes(t: Topology, c: AuditContext) -> Iterable[Finding]:
    """The seed's failure: threads on several nodes reading weights that live on one."""
    # Nodes with memory of their own: CPUs on memoryless nodes read remotely wherever they run.
    nodes = sorted(n for n in {t.node_of_cpu(cpu) for cpu in command_pool(t, c)} - {None} if t.node(n).has_memory)
    if c.engine is None or len(nodes) < 2 or c.engine.numa_aware:
        return
    largest = max(nodes, key=lambda n: usable_cores(t, n))
    node_cores = usable_cores(t, largest)
    asked = busy_threads(c)
    threads = asked[0] if asked else None
    if threads is not None and threads <= node_cores:
        return
    evidence = [Evidence("nodes with usable CPUs", str(nodes), root_path(t, "sys/devices/system/node")),
                Evidence(f"physical cores on node {largest}", str(node_cores),
                         root_path(t, f"sys/devices/system/node/node{largest}/cpulist")),
                Evidence(f"{c.engine.engine} build", c.engine.evidence, c.engine.location or "-")]
    if asked is not None:
        evidence.append(Evidence("threads asked", str(threads), asked[2]))
    node_cpus = t.one_cpu_per_core(t.usable_cpus_of_node(largest))
    confined = suggested_command(t, c, Configuration(tuple(node_cpus), "bind", (largest,)))
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


def replicates_weights(c: AuditContext) -> bool | None:
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
                                 root_path(t, f"sys/devices/system/node/node{nodes[0]}/distance")))
    per = max(len(n) for n in split.values())
    total = len([n for n in t.nodes if n.has_memory])
    replicating = replicates_weights(c)
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
