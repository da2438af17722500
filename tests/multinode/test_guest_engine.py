"""The bundled engine in a multi-node guest: where every policy really puts the weight pages
(move_pages on sampled pages, via Engine.placement()), where its workers really ran, that every
policy computes what one node computes, and how a memory-only node is handled.

Placement is read right after load, before any forward pass: automatic NUMA balancing is on in
the guest's kernel and may move first-touch pages once threads start reading them.
"""
from __future__ import annotations

import numpy as np
import pytest

from guestlib import all_cpus, assert_pages_only_on, cpu_nodes, memory_nodes, node_cpus, pages_by_node

pytestmark = pytest.mark.multinode


def load(path, cpus, policy, nodes=None, topology=None):
    from numatune.engine import Engine
    return Engine.load(path, list(cpus), policy, nodes, topology=topology)


def check_workers(engine, topology, cpus) -> None:
    """Each worker ran on its own CPU, hence on that CPU's node (after a forward pass)."""
    engine.moe_forward(0, np.ones(engine.model.hidden, np.float32))
    observed = engine.placement()["worker_cpus"]
    assert observed == list(cpus), f"workers asked for CPUs {list(cpus)} ran on {observed}"
    assert [topology.node_of_cpu(c) for c in observed] == [topology.node_of_cpu(c) for c in cpus]


# ---------------------------------------------------------------------------------------------
# Page by page


def test_bind_puts_every_page_on_the_node(models, topology, memory_node):
    if not topology.node(memory_node).has_memory:
        pytest.skip(f"node {memory_node} has no memory")
    for cpus in (node_cpus(topology, cpu_nodes(topology)[0]), all_cpus(topology)):
        engine = load(models["tiny"], cpus, "bind", [memory_node], topology)
        placement = engine.placement()
        assert placement["nodes"] == [memory_node]
        assert pages_by_node(placement).keys() == {memory_node}, placement["pages"]
        check_workers(engine, topology, cpus)


def test_first_touch_follows_the_touching_threads(models, topology, cpu_node):
    cpus = node_cpus(topology, cpu_node)
    engine = load(models["tiny"], cpus, "first-touch", None, topology)
    placement = engine.placement()
    assert pages_by_node(placement).keys() == {cpu_node}, \
        f"workers only on node {cpu_node} (CPUs {cpus}), pages: {placement['pages']}"
    check_workers(engine, topology, cpus)


def test_first_touch_with_workers_everywhere_stays_on_their_nodes(models, topology):
    """Each worker copies an equal share, but not in equal shares per node: with transparent
    huge pages the first worker to touch a 2 MiB page gets all of it (seen: 83 % on node 0
    with a 1 MiB tensor). So only: every page is on a node that has workers."""
    cpus = all_cpus(topology)
    engine = load(models["tiny"], cpus, "first-touch", None, topology)
    assert_pages_only_on(engine.placement(), cpu_nodes(topology))
    check_workers(engine, topology, cpus)


HUGE_PAGE_PAGES = 512          # 4 KiB pages in a 2 MiB transparent huge page


def test_interleave_spreads_pages_evenly(models, topology):
    """Over every memory node (the default set), on the wide model: each tensor's pages are
    spread evenly, each node within one huge page of an even share. The engine asks for
    transparent huge pages, which interleave whole; with 4 KiB pages the spread is exact."""
    cpus = all_cpus(topology)
    nodes = memory_nodes(topology)
    engine = load(models["wide"], cpus, "interleave", None, topology)
    placement = engine.placement()
    assert placement["nodes"] == nodes
    assert set(placement["pages"]) == {"gate", "up", "down"}, placement["pages"]
    for group, counts in placement["pages"].items():
        found = {int(node): pages for node, pages in counts.items()}
        assert set(found) <= set(nodes), f"{group}: pages outside {nodes}: {found}"
        even = sum(found.values()) / len(nodes)
        assert even >= HUGE_PAGE_PAGES, f"{group}: {sum(found.values())} pages, too few to show a spread"
        for node in nodes:
            assert abs(found.get(node, 0) - even) <= HUGE_PAGE_PAGES, \
                f"{group}: node {node} has {found.get(node, 0)} pages, even would be {even:.0f}: {found}"
    check_workers(engine, topology, cpus)


def test_interleave_stays_in_its_node_set(models, topology):
    nodes = memory_nodes(topology)
    subset = [nodes[0], nodes[-1]]
    engine = load(models["tiny"], all_cpus(topology), "interleave", subset, topology)
    placement = engine.placement()
    assert placement["nodes"] == subset
    assert_pages_only_on(placement, subset)


def _grouped(policy: str, placement: dict, nodes) -> None:
    kind = "copy" if policy == "replicate" else "slice"
    groups = placement["pages"]
    expected = {f"{tensor}/{kind}@node{n}" for tensor in ("gate", "up", "down") for n in nodes}
    assert set(groups) == expected, sorted(groups)
    for group, counts in groups.items():
        node = int(group.rsplit("@node", 1)[1])
        assert {int(k) for k in counts} == {node}, f"{group}: pages on {counts}, all should be on node {node}"


@pytest.mark.parametrize("policy", ["replicate", "partition"])
def test_each_node_holds_its_own_copy_or_slice(models, topology, policy):
    cpus = all_cpus(topology)
    engine = load(models["tiny"], cpus, policy, None, topology)
    placement = engine.placement()
    assert placement["nodes"] == cpu_nodes(topology)
    _grouped(policy, placement, cpu_nodes(topology))
    copies = len(cpu_nodes(topology)) if policy == "replicate" else 1
    assert placement["resident_bytes"] >= copies * engine.model.expert_bytes
    check_workers(engine, topology, cpus)


@pytest.mark.parametrize("policy", ["replicate", "partition"])
def test_copy_or_slice_on_some_nodes_only(models, topology, policy):
    """Workers on the first and the last node with CPUs: two copies or slices, one on each."""
    nodes = [cpu_nodes(topology)[0], cpu_nodes(topology)[-1]]
    cpus = [c for n in nodes for c in node_cpus(topology, n)]
    engine = load(models["tiny"], cpus, policy, None, topology)
    _grouped(policy, engine.placement(), nodes)
    check_workers(engine, topology, cpus)


# ---------------------------------------------------------------------------------------------
# Same outputs everywhere


def _run(engine, inputs):
    return [engine.route_and_forward(0, x) for x in inputs]


def test_every_policy_computes_what_one_node_computes(models, topology):
    rng = np.random.default_rng(7)
    from numatune.gguf_moe import read_moe_model
    hidden = read_moe_model(models["tiny"]).hidden
    inputs = [rng.standard_normal(hidden).astype(np.float32) for _ in range(3)]
    first = cpu_nodes(topology)[0]
    one_node = load(models["tiny"], node_cpus(topology, first), "bind", [first], topology)
    reference = _run(one_node, inputs)
    chosen = np.arange(one_node.model.top_k, dtype=np.int32)
    halves = np.full(one_node.model.top_k, 0.5, np.float32)
    chosen_ref = one_node.experts_forward(0, inputs[0], chosen, halves)
    del one_node
    everywhere = all_cpus(topology)
    last_memory = memory_nodes(topology)[-1]
    cases = [
        ("first-touch", everywhere, None),
        ("first-touch", node_cpus(topology, cpu_nodes(topology)[-1]), None),
        ("interleave", everywhere, None),
        ("bind", everywhere, [last_memory]),
        ("replicate", everywhere, None),
        ("partition", everywhere, None),
    ]
    for policy, cpus, nodes in cases:
        engine = load(models["tiny"], cpus, policy, nodes, topology)
        for (y_ref, ids_ref, w_ref), (y, ids, w) in zip(reference, _run(engine, inputs)):
            where = f"{policy} on CPUs {cpus}, nodes {engine.plan.nodes}"
            assert list(ids) == list(ids_ref), f"{where}: routed to {list(ids)}, one node to {list(ids_ref)}"
            np.testing.assert_allclose(w, w_ref, rtol=1e-6, err_msg=where)
            scale = float(np.max(np.abs(y_ref)))
            # Partition adds the nodes' partial sums in another order: rounding, nothing more.
            np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5 * scale, err_msg=where)
        np.testing.assert_allclose(engine.experts_forward(0, inputs[0], chosen, halves), chosen_ref,
                                   rtol=1e-5, atol=1e-5 * float(np.max(np.abs(chosen_ref))), err_msg=where)


# ---------------------------------------------------------------------------------------------
# A node with memory and no CPUs


@pytest.fixture
def memory_only(layout, topology) -> int:
    if not layout.memory_only_nodes():
        pytest.skip(f"layout {layout.name} has no memory-only node")
    node = layout.memory_only_nodes()[0]
    assert not topology.node(node).has_cpus and topology.node(node).has_memory
    return node


def test_memory_only_node_takes_bind_and_interleave(models, topology, memory_only):
    cpus = all_cpus(topology)
    engine = load(models["tiny"], cpus, "bind", [memory_only], topology)
    assert pages_by_node(engine.placement()).keys() == {memory_only}
    pair = [cpu_nodes(topology)[0], memory_only]
    engine = load(models["tiny"], cpus, "interleave", pair, topology)
    assert_pages_only_on(engine.placement(), pair)
    assert memory_only in pages_by_node(engine.placement())


@pytest.mark.parametrize("policy", ["replicate", "partition"])
def test_memory_only_node_refused_for_copies_and_slices(models, topology, memory_only, policy):
    """A copy or slice is read by its node's own workers; a node without CPUs has none."""
    from numatune.errors import PlacementError
    nodes = cpu_nodes(topology) + [memory_only]
    with pytest.raises(PlacementError) as refused:
        load(models["tiny"], all_cpus(topology), policy, nodes, topology)
    message = str(refused.value)
    assert str(memory_only) in message and "\n" not in message, message
    assert "no worker" in message, message


def test_memory_only_node_never_touched_first(models, topology, memory_only):
    """first-touch follows the workers, which cannot run on a node without CPUs."""
    engine = load(models["tiny"], all_cpus(topology), "first-touch", None, topology)
    assert memory_only not in pages_by_node(engine.placement())
