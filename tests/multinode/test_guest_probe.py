"""probe in a multi-node guest: nodes, CPUs, memory, distances and the memory-only node, as
`numatune probe --json` reports them, against numactl, hwloc and the layout the guest was booted
with."""
from __future__ import annotations

import json
import os

import pytest

from guestlib import MiB, numactl_now, probe_now

pytestmark = pytest.mark.multinode


def probed_nodes(probe_json) -> dict[int, dict]:
    return {n["id"]: n for n in probe_json["nodes"]}


def test_node_ids_agree(probe_json, numactl_view, hwloc_view, layout):
    expected = set(range(layout.nodes))
    assert set(probed_nodes(probe_json)) == expected
    assert set(numactl_view.nodes) == expected
    assert set(hwloc_view.nodes) == expected


def test_cpus_per_node_agree(probe_json, numactl_view, hwloc_view, layout):
    for node, data in probed_nodes(probe_json).items():
        probed = tuple(data["cpus"])
        assert probed == layout.node_cpus(node), f"node {node}: probe says {probed}"
        assert probed == numactl_view.nodes[node].cpus, f"node {node}: numactl -H says {numactl_view.nodes[node].cpus}"
        assert probed == hwloc_view.nodes[node].cpus, f"node {node}: lstopo says {hwloc_view.nodes[node].cpus}"
    assert probe_json["pus"] == layout.total_cpus


def test_cpu_records_name_their_node(topology, layout):
    for node in range(layout.nodes):
        for cpu in layout.node_cpus(node):
            assert topology.node_of_cpu(cpu) == node
    assert topology.online_cpus == tuple(range(layout.total_cpus))
    assert set(topology.allowed.cpus) == set(range(layout.total_cpus))
    assert set(topology.allowed.nodes) == set(range(layout.nodes))


def test_memory_per_node_agrees(probe_json, numactl_view, hwloc_view, layout):
    for node, data in probed_nodes(probe_json).items():
        total = data["memory_total_bytes"]
        # numactl prints MemTotal in whole MiB ("MB"); hwloc's local_memory is MemTotal in bytes.
        assert abs(total / MiB - numactl_view.nodes[node].size_mib) <= 1, \
            f"node {node}: probe {total / MiB:.1f} MiB, numactl -H {numactl_view.nodes[node].size_mib} MB"
        assert abs(total - hwloc_view.nodes[node].memory_bytes) <= 2 * MiB, \
            f"node {node}: probe {total} bytes, lstopo {hwloc_view.nodes[node].memory_bytes}"
        # The firmware and kernel keep some of each node's memory: at most a quarter here.
        booted = layout.memory_mib[node]
        assert 0.75 * booted <= total / MiB <= booted, f"node {node}: {total / MiB:.0f} MiB of {booted} MiB booted"


def test_free_memory_agrees_with_numactl():
    topology = probe_now()           # both read at (nearly) the same moment
    view = numactl_now()
    for node in topology.nodes:
        free = node.memory_free_bytes
        assert free is not None and 0 < free <= node.memory_total_bytes
        assert abs(free / MiB - view.nodes[node.id].free_mib) <= 16, \
            f"node {node.id}: probe {free / MiB:.0f} MiB free, numactl -H {view.nodes[node.id].free_mib} MB"


def test_distances_agree(probe_json, numactl_view, hwloc_view, layout):
    expected = layout.distance_matrix()
    probed = {n["id"]: tuple(n["distances"]) for n in probe_json["nodes"]}
    for node in range(layout.nodes):
        assert probed[node] == expected[node], f"row {node} (from node {node}): probe {probed[node]}"
        assert numactl_view.distances[node] == expected[node], f"row {node}: numactl -H {numactl_view.distances[node]}"
    assert hwloc_view.distances is not None, "lstopo --of xml gave no NUMA distance matrix"
    for node in range(layout.nodes):
        assert hwloc_view.distances[node] == expected[node], f"row {node}: lstopo {hwloc_view.distances[node]}"


def test_memory_only_node(probe_json, numactl_view, hwloc_view, layout, topology):
    if not layout.memory_only_nodes():
        pytest.skip(f"layout {layout.name} has no memory-only node")
    matrix = layout.distance_matrix()
    for node in layout.memory_only_nodes():
        data = probed_nodes(probe_json)[node]
        assert data["cpus"] == [] and data["memory_total_bytes"] > 0
        assert numactl_view.nodes[node].cpus == () and numactl_view.nodes[node].size_mib > 0
        assert hwloc_view.nodes[node].cpuset == () and hwloc_view.nodes[node].memory_bytes > 0
        n = topology.node(node)
        assert n.has_memory and not n.has_cpus
        # Its local CPUs: those of the nearest nodes with CPUs, by the distance matrix.
        least = min(matrix[node][other] for other in layout.cpu_nodes())
        nearest = [other for other in layout.cpu_nodes() if matrix[node][other] == least]
        assert n.local_cpus == tuple(cpu for other in nearest for cpu in layout.node_cpus(other))
        assert node not in [topology.node_of_cpu(cpu) for cpu in topology.online_cpus]


def test_probe_json_follows_its_schema(probe_json):
    jsonschema = pytest.importorskip("jsonschema")
    import numatune
    schema_path = os.path.join(os.path.dirname(numatune.__file__), "schemas", "probe-v1.schema.json")
    with open(schema_path, encoding="utf-8") as f:
        jsonschema.validate(probe_json, json.load(f))


def test_nothing_unknown_about_nodes(probe_json):
    """A real multi-node kernel gives every node fact the probe reads; none may be missing."""
    unknown = [u for u in probe_json.get("unknown", []) if "node" in u.lower() or "distance" in u.lower()]
    assert not unknown, unknown
