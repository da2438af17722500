"""One capacity rule: audit, recommend, search, plan and the engine's placement agree on what fits."""
from __future__ import annotations

import pytest

from numatune.audit import AuditContext, run_audit
from numatune.capacity import HEADROOM_PERCENT, fits, with_headroom
from numatune.engine import plan_placement
from numatune.errors import PlacementError
from numatune.models import ModelFootprint
from numatune.plan import (DEFAULT_LINE_TRANSFER_NS, Machine, MachineNode, PlanConfig, prune_reason,
                           traits_of)
from numatune.recommend import recommend
from numatune.search import build_space
from treegen import GIB, FakeMachine, ids, probe_tree

WEIGHTS = 20 * GIB                      # with 5% headroom exactly 21 GiB
EXACT = 21 * GIB
JUST_UNDER = EXACT - (1 << 20)          # meminfo counts kB: one MiB under is as close as a tree gets


def test_headroom_is_exact_integer_arithmetic():
    assert HEADROOM_PERCENT == 5 and with_headroom(WEIGHTS) == EXACT
    assert fits(WEIGHTS, EXACT) and not fits(WEIGHTS, EXACT - 1)
    assert with_headroom(1) == 2 and fits(0, 0)         # any weight needs some headroom


def _machine(free: int) -> Machine:
    nodes = tuple(MachineNode(n, n, 4, 1, free) for n in (0, 1))
    return Machine(name="boundary", description="", nodes=nodes, read_gbps=((100.0, 50.0), (50.0, 100.0)),
                   per_core_read_gbps=10.0, link_gbps=50.0, line_transfer_ns=DEFAULT_LINE_TRANSFER_NS,
                   bandwidth_kind="estimated", observations=(), source="test")


def _verdicts(tmp_path, free: int) -> dict[str, bool]:
    """Whether a whole copy of the weights fits one node, as each part of numatune decides it."""
    t = probe_tree(tmp_path, FakeMachine(memory_per_node=32 * GIB, free_per_node=[free, free]), f"free{free}")
    model = ModelFootprint("boundary", "test", WEIGHTS, None)
    findings = ids(run_audit(t, AuditContext(model=model)))
    bind = recommend(t, "llama.cpp", model).config.policy == "bind"
    replicate = recommend(t, "ktransformers", model).config.policy == "replicate"
    kept = {(c.policy, c.nodes) for c in build_space(t, WEIGHTS).candidates}
    planned = prune_reason(_machine(free), PlanConfig("bind", ((0, 4),), (0,)), WEIGHTS, traits_of(None)) is None
    try:
        plan_placement(t, [0], "bind", [0], WEIGHTS)
        placed = True
    except PlacementError:
        placed = False
    return {"audit": "model-fits-one-node" in findings and "model-no-replicas" not in findings,
            "recommend bind": bind, "recommend replicate": replicate, "search": ("bind", (0,)) in kept,
            "plan": planned, "engine placement": placed}


@pytest.mark.parametrize("free,expected", [(EXACT, True), (JUST_UNDER, False)])
def test_every_part_agrees_at_the_boundary(tmp_path, free, expected):
    verdicts = _verdicts(tmp_path, free)
    assert verdicts == {name: expected for name in verdicts}
