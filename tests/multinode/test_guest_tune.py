"""`numatune tune` in a 2-node guest: the search space spans each node alone and both together
with every policy, and a small budget's search finishes, every trial decoding in a child placed
as launch would place it, and saves a winner.

Speeds under the emulator mean nothing; what is checked is that the search runs across nodes
and policies without a failed trial, within its budget."""
from __future__ import annotations

import json
import time

import pytest

from guestlib import cpu_nodes

pytestmark = pytest.mark.multinode

BUDGET_S = 30
# A trial already started when the budget ends runs to completion: a child process decoding
# ~100 tokens of the tiny model, which under the emulator is mostly Python's start (30-90 s).
OVERRUN_S = 240


@pytest.fixture
def two_nodes(layout):
    if len(layout.cpu_nodes()) != 2:
        pytest.skip(f"layout {layout.name}: the tune check is for a machine with two CPU nodes")


def test_space_spans_both_nodes_and_every_policy(two_nodes, topology, models):
    from numatune.config import POLICIES
    from numatune.gguf_moe import read_moe_model
    from numatune.search import build_space
    space = build_space(topology, read_moe_model(models["tiny"]).expert_bytes)
    assert not space.pruned, space.pruned
    nodes = tuple(cpu_nodes(topology))
    node_sets = {c.nodes for c in space.candidates}
    assert node_sets == {(nodes[0],), (nodes[1],), nodes}, node_sets
    both = {c.policy for c in space.candidates if c.nodes == nodes}
    assert both == set(POLICIES) - {"bind"}, both
    alone = {c.policy for c in space.candidates if len(c.nodes) == 1}
    assert alone == {"bind"}, alone
    # Workers of a two-node candidate are on both nodes.
    for config in space.candidates:
        assert {topology.node_of_cpu(cpu) for cpu in config.cpus} == set(config.nodes), config


def test_tune_with_a_small_budget_finishes(two_nodes, layout, models, tmp_path, capsys):
    """`numatune tune` through its main() in this process (its trials are child processes)."""
    from numatune.cli import main
    out = tmp_path / "tune.json"
    capsys.readouterr()
    started = time.monotonic()
    status = main(["tune", "--model", models["tiny"], "--budget", str(BUDGET_S), "--out", str(out), "--json"])
    seconds = time.monotonic() - started
    printed = capsys.readouterr()
    assert status == 0, printed.err
    data = json.loads(printed.out)
    assert json.loads(out.read_text()) == data, "the saved result differs from the printed one"
    trials = data["trials"]
    failed = [(t["config"], t["error"]) for t in trials if t.get("error")]
    assert not failed, f"trials failed in placed children: {failed}"
    assert data["winner"] is not None and data["winner"]["tokens_per_s"]["median"] > 0, data["winner"]
    # The most promising candidates come first: with any budget, one spanning both nodes ran.
    both = layout.cpu_nodes()
    assert any(tuple(t["config"]["nodes"]) == both for t in trials), [t["config"] for t in trials]
    assert seconds <= BUDGET_S + OVERRUN_S, f"{seconds:.0f} s for a {BUDGET_S} s budget"
