"""One policy vocabulary: numatune.policy.Policy and the C++ engine's Placement agree, and every
place that takes a policy takes it from there."""
from __future__ import annotations

import json
import os

import pytest

from numatune import _kernels
from numatune.config import Configuration
from numatune.engine import Engine
from numatune.policy import NAMES, Policy
from numatune.sysfs import Root
from numatune.topology import probe


def cpp_name(policy: Policy) -> str:
    return policy.name.lower()           # FIRST_TOUCH ↔ first_touch


def test_every_python_policy_is_the_same_cpp_placement():
    for policy in Policy:
        placement = _kernels.Placement(policy.code)
        assert placement.name == cpp_name(policy) and int(placement) == policy.code


def test_every_cpp_placement_is_the_same_python_policy():
    cpp = {name: int(value) for name, value in _kernels.Placement.__members__.items()}
    assert cpp == {cpp_name(policy): policy.code for policy in Policy}


def test_the_user_words_are_the_values():
    assert NAMES == ("first-touch", "interleave", "bind", "replicate", "partition")
    assert [Policy(name) for name in NAMES] == list(Policy)
    assert f"{Policy.FIRST_TOUCH}" == str(Policy.FIRST_TOUCH) == "first-touch"
    assert json.dumps({"policy": Policy.BIND}) == '{"policy": "bind"}'


def test_a_configuration_holds_a_policy_and_refuses_other_words():
    config = Configuration((0,), "replicate", (0,))
    assert config.policy is Policy.REPLICATE
    assert Configuration.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(ValueError, match="unknown policy 'spread'.*first-touch, interleave"):
        Configuration((0,), "spread", (0,))


def test_the_engine_loads_with_every_policy_by_its_name(small_gguf):
    """The name → Policy → _kernels.Placement path of Engine.load, for each policy."""
    host = probe(Root.open("/"))
    cpu = sorted(os.sched_getaffinity(0))[0]
    for policy in Policy:
        nodes = [host.node_of_cpu(cpu)] if policy in (Policy.BIND, Policy.INTERLEAVE) else None
        engine = Engine.load(small_gguf, [cpu], policy.value, nodes, topology=host)
        assert engine.plan.policy is policy and engine.placement(64)["policy"] == policy.value
