"""Checks of memory, node by node and against the model: nodes the cpuset hides, unequal free
memory, CPU nodes without memory, node totals that disagree with the system's, whether the
model's weights fit (`placements_that_fit`), and where its file's pages already sit in the
page cache.
"""
from __future__ import annotations

import os
from typing import Iterable

from ..capacity import HEADROOM_PERCENT, available_bytes, fits, with_headroom
from ..errors import NumatuneError
from ..pagecache import PageCacheReport, drop_command_for, page_cache_nodes
from ..sysfs import format_cpulist as _cpus
from ..topology.model import Topology
from .core import AuditContext, Evidence, Finding, gib, root_path
from .placement import replicates_weights, snc_packages


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
        evidence.append(Evidence("cgroup", t.allowed.cgroup_path, root_path(t, "proc/self/cgroup")))
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
        f"free memory differs across nodes: node {least.id} has {gib(least.memory_free_bytes)}, "
        f"node {most.id} {gib(most.memory_free_bytes)}",
        tuple(Evidence(f"node {n.id} MemFree", gib(n.memory_free_bytes),
                       root_path(t, f"sys/devices/system/node/node{n.id}/meminfo")) for n in nodes),
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
        tuple(Evidence(f"node {n.id} MemTotal", "0", root_path(t, f"sys/devices/system/node/node{n.id}/meminfo"))
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
        f"the nodes report {gib(node_total)} in all, the system {gib(system)}",
        (Evidence("sum of node MemTotal", gib(node_total), root_path(t, "sys/devices/system/node/node*/meminfo")),
         Evidence("MemTotal", gib(system), root_path(t, "proc/meminfo"))),
        "Per-node figures are what placement can rely on; memory the nodes do not account for "
        "(e.g. hot-plugged or hypervisor-ballooned) may not be placeable by node.",
        None)


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
                       f"({gib(int(need / len(nodes)))} per node)")
    elif len(nodes) > 1 and fits(weight_bytes, sum(free.values())):
        short = [n for n in nodes if not fits(weight_bytes // len(nodes), free[n])]
        options.append(f"one copy spread over nodes {nodes} by their free memory (numactl "
                       f"--weighted-interleave={_cpus(nodes)}, weights in /sys/kernel/mm/mempolicy/"
                       f"weighted_interleave/nodeN, Linux 6.9+), or free memory on node(s) {short} "
                       f"for an even interleave ({gib(int(need / len(nodes)))} per node)")
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
    evidence = tuple(Evidence(f"node {n}: free / a whole copy needs", f"{gib(free[n])} / {gib(need)}",
                              root_path(t, f"sys/devices/system/node/node{n}/meminfo")) for n in nodes)
    evidence += (Evidence(f"weights of {c.model.name}",
                          f"{gib(weights)} (+{HEADROOM_PERCENT}% working memory: {gib(need)})", c.model.source),)
    total = sum(free.values())
    holders = [n for n in nodes if fits(weights, free[n])]
    if not fits(weights, total):
        yield Finding("model-does-not-fit", "error",
                      f"{c.model.name} needs {gib(need)}, all allowed nodes hold {gib(total)} free",
                      evidence, "The weights do not fit in memory even once; loading will swap or fail.",
                      "use a smaller quantization or a machine with more memory")
        return
    if len(nodes) >= 2 and len(holders) < len(nodes):
        replicating = replicates_weights(c)
        fitting = placements_that_fit(t, weights, nodes)
        yield Finding(
            "model-no-replicas", "error" if replicating else "warning",
            f"{c.model.name} cannot be copied to every node ({len(nodes)} × {gib(need)})"
            + (f": {c.engine.engine} as installed copies it to each" if replicating else ""),
            evidence,
            "A copy of the weights per node (ktransformers USE_NUMA) needs the full weights free on "
            "each node; here loading would spill to remote memory or run out of memory"
            + (" — with sub-NUMA clustering there is a copy per cluster, not per socket" if snc_packages(t) else "")
            + ".",
            "; or ".join(fitting) if fitting else "use a smaller quantization")
    if holders:
        yield Finding("model-fits-one-node", "info",
                      f"{c.model.name} ({gib(weights)}) fits on node(s) {holders}",
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
    evidence = tuple(Evidence(f"node {n}: cached pages of the model", gib(b), f"mincore + move_pages on {report.path}")
                     for n, b in sorted(placed.items()))
    evidence += (Evidence("cached / file size", f"{gib(report.resident_bytes)} / {gib(report.size_bytes)}",
                          report.path),)
    mapped_reader = c.engine is None or c.engine.engine == "llama.cpp"
    title = (f"{gib(sum(elsewhere.values()))} of the model is cached on node(s) {sorted(elsewhere)}, "
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
