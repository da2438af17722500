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
    from numatune.policy import NAMES as POLICIES
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


def test_one_instance_per_node_trial_runs_both_children_placed(two_nodes, topology, models, tmp_path):
    """`--objective throughput`'s candidate: one child per node at once. The children started the
    way a trial starts them report worker CPUs on their own node only and every weight page on it;
    the trial itself succeeds, sums its children, and holds exactly two copies of the weights."""
    from numatune.config import Configuration
    from numatune.search import Stage
    from numatune.profiles import find_engine_profile
    from numatune.trial import ModelChoice, _finish_json, _start, run_trial
    nodes = tuple(cpu_nodes(topology))
    cpus = tuple(c for n in nodes for c in topology.usable_cpus_of_node(n))
    pair = Configuration(cpus, "bind", nodes, instances=2)
    parts = pair.split(topology.node_of_cpu)
    assert [p.nodes for p in parts] == [(n,) for n in nodes]
    model = ModelChoice.from_label(models["tiny"])
    stage = Stage(tokens=8, repeats=2)

    topology_file = tmp_path / "topology.json"       # trials hand the children the probe as JSON
    topology_file.write_text(json.dumps(topology.to_json()))
    children = [_start(part, model, stage, find_engine_profile("numatune"), topology_file) for part in parts]
    assert not any(isinstance(child, str) for child in children), children
    reports = [_finish_json(child, 600) for child in children]
    for part, report in zip(parts, reports):
        assert isinstance(report, dict), report
        (node,) = part.nodes
        placed = report["placement"]
        assert {topology.node_of_cpu(c) for c in placed["worker_cpus"]} == {node}, placed["worker_cpus"]
        for group, pages in placed["pages"].items():
            assert set(pages) == {str(node)}, (node, group, pages)

    both = run_trial(pair, model, 0, stage, topology=topology)
    assert both.error is None, both.error
    copies = [report["resident_bytes"] for report in reports]
    assert copies[0] == copies[1] > 0 and both.resident_bytes == sum(copies), (both.resident_bytes, copies)
    assert len(both.tokens_per_s.samples) == stage.repeats
    assert all(v > 0 for v in both.tokens_per_s.samples), both.tokens_per_s
