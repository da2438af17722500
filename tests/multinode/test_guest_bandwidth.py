"""The bandwidth matrix in a multi-node guest: one entry per (CPU node, memory node) pair and
kernel, with the arrays really on the memory node. Speeds under the emulator mean nothing, so
arrays are tiny and each measurement runs once."""
from __future__ import annotations

import pytest

from guestlib import MiB, cpu_nodes, memory_nodes

pytestmark = pytest.mark.multinode


def test_matrix_has_every_pair(topology):
    from numatune.bandwidth import KERNELS, measure_matrix
    node_cpus = {n: topology.one_cpu_per_core(topology.usable_cpus_of_node(n)) for n in cpu_nodes(topology)}
    mems = memory_nodes(topology)
    matrix = measure_matrix(node_cpus, mems, KERNELS, array_bytes=4 * MiB, repeats=1)
    keys = [(c.cpu_node, c.result.memory_node, c.result.kernel) for c in matrix.cells]
    assert sorted(keys) == sorted((c, m, k) for c in node_cpus for m in mems for k in KERNELS)
    for cell in matrix.cells:
        result = cell.result
        assert result.cpus == tuple(node_cpus[cell.cpu_node])
        assert result.gbps.median > 0
        # The arrays were bound to the memory node: (nearly) every sampled page is there.
        assert result.fraction_on(result.memory_node) >= 0.99, \
            f"CPUs of node {cell.cpu_node}, memory node {result.memory_node}: pages {result.pages_on_node}"
        matrix.gbps(cell.cpu_node, result.memory_node, result.kernel)   # every pair can be looked up


def test_measure_topology_covers_every_pair(topology, monkeypatch):
    """What `numatune probe --bandwidth` runs, with its array sizes shrunk to 4 MiB."""
    from numatune import bandwidth
    monkeypatch.setattr(bandwidth, "MIN_ARRAY_BYTES", 4 * MiB)
    monkeypatch.setattr(bandwidth, "LLC_MULTIPLE", 0)
    measured = bandwidth.measure_topology(topology, repeats=1, kernels=("read",))
    pairs = sorted((c.cpu_node, c.result.memory_node) for c in measured.matrix.cells)
    assert pairs == sorted((c, m) for c in cpu_nodes(topology) for m in memory_nodes(topology))
    assert all(c.result.array_bytes == 4 * MiB for c in measured.matrix.cells)
    # One thread-count curve per node with CPUs, on its own memory.
    assert sorted(node for node, _ in measured.curves) == cpu_nodes(topology)
    for node, curve in measured.curves:
        assert [len(r.cpus) for r in curve] == list(bandwidth.thread_counts(len(topology.one_cpu_per_core(topology.usable_cpus_of_node(node)))))
        assert all(r.memory_node == node and r.fraction_on(node) >= 0.99 for r in curve)
    # The JSON form round-trips with every cell.
    again = bandwidth.BandwidthMatrix.from_json(measured.matrix.to_json())
    assert len(again.cells) == len(measured.matrix.cells)
