"""The engine's own thread-placement mode (llama.cpp --numa) as a search dimension: which modes
are tried on which configurations of generated multi-node machines (and why the others are not),
how the winning mode reaches the command `recommend`/`launch` build, and what the result records."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from numatune.command import build_command, parse_command
from numatune.config import Configuration
from numatune.errors import ProfileError
from numatune.profiles import PROFILES_DIR, find_engine_profile, parse_engine_profile, read_yaml
from numatune.recommend import recommend
from numatune.search import build_space, engine_numa_nodes, numa_mode_why_not, with_numa_modes
from numatune.stats import Measurement
from numatune.store import EngineBinary, TargetEngine, Trial, load_result
from numatune.trial import ModelChoice
from numatune.tune import tune
from test_schemas import validator as tune_validator
from treegen import FakeMachine, probe_tree


LLAMA = find_engine_profile("llama.cpp")
GIB = 1 << 30


def modes_of(topology, profile=LLAMA):
    space = with_numa_modes(topology, build_space(topology, GIB, profile), profile)
    return space, {m.mode: m for m in space.numa_modes}


def all_cpus(topology):
    return {c for n in topology.nodes for c in n.cpus}


@pytest.mark.parametrize("machine", [FakeMachine(sockets=2, cores_per_node=4),
                                     FakeMachine(sockets=2, nodes_per_socket=2, cores_per_node=2),
                                     FakeMachine(sockets=2, cores_per_node=4, threads_per_core=2)])
def test_distribute_is_tried_where_it_keeps_the_configuration_s_cpus(tmp_path, machine):
    t = probe_tree(tmp_path, machine)
    base = build_space(t, GIB, LLAMA)
    space, modes = modes_of(t)
    default = [c for c in space.candidates if c.numa_mode == "numactl"]
    distribute = [c for c in space.candidates if c.numa_mode == "distribute"]
    assert [replace(c, numa_mode=None) for c in default] == list(base.candidates)     # every one, once
    # only the configurations given every CPU of every node: one per multi-node policy
    assert distribute and all(set(c.cpus) == all_cpus(t) for c in distribute)
    assert sorted(c.policy.value for c in distribute) == sorted(
        c.policy.value for c in base.candidates if set(c.cpus) == all_cpus(t))
    assert len(space.candidates) == len(base.candidates) + len(distribute)
    assert modes["distribute"].tried == len(distribute)
    assert "every CPU of every node" in modes["distribute"].why_not
    # isolate is never tried: on one whole node it is numactl, elsewhere it leaves the CPUs given
    assert modes["isolate"].tried == 0 and "node it started on" in modes["isolate"].why_not
    assert modes["numactl"].tried == len(base.candidates) and modes["numactl"].why_not is None
    if machine.threads_per_core == 2:     # the cores-only configurations leave the SMT siblings out
        assert all(len(c.cpus) == machine.cpu_count for c in distribute)


def test_one_node_machine_tries_the_default_mode_only(tmp_path):
    t = probe_tree(tmp_path, FakeMachine(sockets=1, cores_per_node=8, threads_per_core=2))
    base = build_space(t, GIB, LLAMA)
    space, modes = modes_of(t)
    assert len(space.candidates) == len(base.candidates)
    assert {c.numa_mode for c in space.candidates} == {"numactl"}
    for mode in ("distribute", "isolate"):
        assert modes[mode].tried == 0 and "one NUMA node" in modes[mode].why_not


def test_a_node_without_cpus_or_unequal_nodes_keep_distribute_out(tmp_path):
    t = probe_tree(tmp_path, FakeMachine(sockets=2, cores_per_node=4, memory_only_nodes=1), "cxl")
    _, modes = modes_of(t)
    assert modes["distribute"].tried == 0 and "node 2 has no CPUs" in modes["distribute"].why_not
    t = probe_tree(tmp_path, FakeMachine(sockets=2, cores_per_node=4, cgroup_cpus="0-6"), "fenced")
    _, modes = modes_of(t)    # CPU 7 is not usable: no configuration gets every CPU of every node
    assert modes["distribute"].tried == 0


def test_profiles_without_modes_are_left_alone(tmp_path):
    t = probe_tree(tmp_path, FakeMachine(sockets=2, cores_per_node=4))
    profile = find_engine_profile("ktransformers")
    base = build_space(t, GIB, profile)
    assert with_numa_modes(t, base, profile) == base


def test_a_mode_placement_outside_the_vocabulary_is_refused():
    data = read_yaml(PROFILES_DIR / "engines" / "llama.cpp.yaml")
    data["threads"]["numa_flag"] = dict(data["threads"]["numa_flag"], modes={"distribute": "everywhere"})
    with pytest.raises(ProfileError, match=r"threads.numa_flag.modes.distribute.*everywhere"):
        parse_engine_profile(data, "x.yaml")


def test_the_command_builder_sets_the_mode_once_and_reads_it_back(tmp_path):
    t = probe_tree(tmp_path, FakeMachine(sockets=2, cores_per_node=4))
    config = Configuration(tuple(range(8)), "interleave", (0, 1), numa_mode="distribute")
    plan = build_command(config, LLAMA, t, ["llama-server", "-m", "m.gguf", "--numa", "isolate"], use_numactl=True)
    assert plan.argv.count("--numa") == 1 and plan.argv[plan.argv.index("--numa") + 1] == "distribute"
    assert parse_command(LLAMA, plan.argv).numa_mode == "distribute"
    plain = build_command(replace(config, numa_mode=None), LLAMA, t, ["llama-server"], use_numactl=True)
    assert plain.argv[plain.argv.index("--numa") + 1] == "numactl"
    # an engine without the flag ignores a mode chosen for another one
    kt = build_command(config, find_engine_profile("ktransformers"), t, ["python", "x.py"], use_numactl=True)
    assert "--numa" not in kt.argv


def test_tune_records_the_modes_and_recommend_emits_the_winning_one(tmp_path, monkeypatch):
    """A search on a 2-node machine whose measure finds distribute fastest: the result says which
    modes were tried where, validates against the schema, and the recommendation runs it."""
    t = probe_tree(tmp_path, FakeMachine(sockets=2, cores_per_node=4))
    model = tmp_path / "m.gguf"
    from numatune.synth import PRESETS, synthesize
    synthesize(model, replace(PRESETS["default"], layers=1, experts=8, hidden=256, intermediate=128), "Q8_0")
    measured = []

    def measure(config, model, stage_index, stage, target=None):
        measured.append(config)
        rate = 10.0 * config.threads + (50.0 if config.numa_mode == "distribute" else 0.0)
        return Trial(config, Measurement.of([rate, rate * 1.001, rate * 0.999], "tok/s"), None, 1 << 20, stage_index)

    engine = TargetEngine("llama.cpp", ("llama-bench", "-m", "{model}"), "llama-bench-json", None,
                          EngineBinary("/x/llama-bench", "0" * 64, "version: 1", ()))
    run = tune(t, ModelChoice(model, str(model)), 60, LLAMA, out=tmp_path / "r.json", measure=measure, engine=engine)
    assert {c.numa_mode for c in measured} == {"numactl", "distribute"}
    assert run.result.winner.config.numa_mode == "distribute"
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["winner"]["config"]["numa_mode"] == "distribute"
    assert {m["mode"]: m["tried"] for m in saved["numa_modes"]}["isolate"] == 0
    validator = tune_validator("tune")
    assert not list(validator.iter_errors(saved))
    drifted = json.loads(json.dumps(saved))
    drifted["winner"]["config"]["numa_mode"] = ""
    assert not validator.is_valid(drifted)
    chosen = recommend(t, "llama.cpp", None, load_result(tmp_path / "r.json"), user_argv=("llama-server",))
    assert chosen.plan.argv[chosen.plan.argv.index("--numa") + 1] == "distribute"
    assert "llama.cpp itself" in " ".join(chosen.reasons)


def test_one_instance_per_node_runs_the_default_mode_only_and_says_why_per_instance(tmp_path):
    """Throughput's configurations of one instance per node are in the space with numactl; the
    other modes are left out for what they would do inside an instance confined to its node."""
    t = probe_tree(tmp_path, FakeMachine(sockets=2, cores_per_node=4, threads_per_core=2))
    base = build_space(t, GIB, LLAMA, objective="throughput")
    space = with_numa_modes(t, base, LLAMA)
    instances = [c for c in base.candidates if c.instances > 1]
    assert instances
    assert [c for c in space.candidates if c.instances > 1] == [replace(c, numa_mode="numactl") for c in instances]
    whole_nodes = next(c for c in instances if set(c.cpus) == all_cpus(t))
    isolate = numa_mode_why_not(t, whole_nodes, LLAMA, "isolate")
    assert "each instance's threads run on every CPU of its node" in isolate
    distribute = numa_mode_why_not(t, whole_nodes, LLAMA, "distribute")
    assert "thread i of each instance runs on node i mod 2" in distribute and "out of the instance's node" in distribute
    assert numa_mode_why_not(t, whole_nodes, LLAMA, "numactl") is None
    # the same CPUs as one process are tried with distribute: the refusal is the instances'
    assert numa_mode_why_not(t, replace(whole_nodes, instances=1, policy="interleave"), LLAMA, "distribute") is None


def test_distribute_counts_the_nodes_ggml_counts(tmp_path):
    """ggml counts node0, node1, … up to 8 (GGML_NUMA_MAX_NODES) and stops at the first id missing:
    on 16 nodes thread i goes to node i mod 8, so the configuration of every CPU of the 16 nodes
    is not tried with distribute, while one of every CPU of nodes 0-7 would be."""
    t = probe_tree(tmp_path, FakeMachine(sockets=2, nodes_per_socket=8, cores_per_node=2))
    assert [n.id for n in engine_numa_nodes(t, LLAMA)] == list(range(8)) and len(t.nodes) == 16
    space, modes = modes_of(t)
    assert not [c for c in space.candidates if c.numa_mode == "distribute"]
    assert "counts nodes 0-7 only (at most 8)" in modes["distribute"].why_not
    assert "the other 8 nodes get none" in modes["distribute"].why_not
    everything = next(c for c in space.candidates if set(c.cpus) == all_cpus(t) and c.policy == "interleave")
    assert numa_mode_why_not(t, everything, LLAMA, "distribute") is not None
    first_eight = tuple(c for n in t.nodes[:8] for c in n.cpus)
    assert numa_mode_why_not(t, Configuration(first_eight, "interleave", tuple(range(8))), LLAMA, "distribute") is None
    # a profile without the limit counts every node
    unlimited = replace(LLAMA, numa_flag_max_nodes=None)
    assert len(engine_numa_nodes(t, unlimited)) == 16
    assert numa_mode_why_not(t, everything, unlimited, "distribute") is None


def test_node_ids_that_ggml_stops_counting_at_leave_every_mode_alike(tmp_path):
    t = probe_tree(tmp_path, FakeMachine(sockets=2, cores_per_node=4, node_ids=[0, 2]))
    assert [n.id for n in engine_numa_nodes(t, LLAMA)] == [0]
    _, modes = modes_of(t)
    for mode in ("distribute", "isolate"):
        assert modes[mode].tried == 0 and "llama.cpp counts 1 node(s) here" in modes[mode].why_not


def test_a_bad_max_nodes_is_refused():
    data = read_yaml(PROFILES_DIR / "engines" / "llama.cpp.yaml")
    data["threads"]["numa_flag"] = dict(data["threads"]["numa_flag"], max_nodes=0)
    with pytest.raises(ProfileError, match=r"threads.numa_flag.max_nodes.*>= 1"):
        parse_engine_profile(data, "x.yaml")
