"""The probe on real machines (hwloc's captures, read in place), on generated trees, and on "/".

expected.json (see the fixtures' README.md) holds the facts each capture must yield, in the
probe's own shape: a node's `cpus` is the kernel's (cpulist, else cpumap, else the node
directory's cpuN entries) and its `distances` are its whole row of the matrix.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import jsonschema
import pytest

import numatune
from numatune.errors import ProbeError
from numatune.sysfs import Root
from numatune.topology import SCHEMA_VERSION, Topology, probe
from treegen import hwloc_corpus, FakeMachine, write_tree

FIXTURES = hwloc_corpus()
SCHEMA_PATH = Path(numatune.__file__).parent / "schemas" / "probe-v1.schema.json"


def _load_expected() -> dict:
    # Collected at import so that a missing corpus is an error, never zero tests run.
    path = FIXTURES / "expected.json"
    if not path.is_file():
        raise FileNotFoundError(f"the hwloc capture corpus is missing: {path} not found")
    return json.loads(path.read_text())


EXPECTED = _load_expected()
CAPTURES = sorted(EXPECTED)


@functools.lru_cache(maxsize=None)
def probed(name: str) -> tuple[Root, Topology]:
    root = Root.open(str(FIXTURES / f"{name}.tar.bz2"))
    return root, probe(root)


@functools.lru_cache(maxsize=None)
def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# ---------------------------------------------------------------------------------------------
# The corpus, fact by fact


def test_every_capture_has_expectations():
    tarballs = {p.name[: -len(".tar.bz2")] for p in FIXTURES.glob("*.tar.bz2")}
    assert tarballs == set(EXPECTED) and len(tarballs) == 21


def _nodes_as_recorded(topology: Topology) -> list[dict]:
    return [{"id": node.id, "cpus": list(node.cpus), "memory_total_bytes": node.memory_total_bytes,
             "distances": list(node.distances) if node.distances is not None else None}
            for node in topology.nodes]


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_yields_the_expected_facts(name):
    expected = EXPECTED[name]
    skip = set(expected["skip"])
    _, t = probed(name)
    actual = {
        "packages": t.packages, "cores": t.cores, "pus": t.pus, "threads_per_core": t.threads_per_core,
        "online_cpus": list(t.online_cpus), "all_cpus": list(t.all_cpus),
        "allowed_cpus": list(t.allowed.cpus), "allowed_nodes": list(t.allowed.nodes),
        "nodes": _nodes_as_recorded(t),
    }
    if "nodes" in skip:
        # node ids are what allowed_nodes lists: when hwloc replaced broken nodes, neither compares
        skip.add("allowed_nodes")
    for fact, value in actual.items():
        if fact not in skip:
            assert value == expected[fact], f"{name}: {fact}"


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_is_internally_consistent(name):
    _, t = probed(name)
    online, every = set(t.online_cpus), set(t.all_cpus)
    assert online <= every and set(t.offline_cpus) == every - online
    assert set(t.allowed.cpus) <= online and set(t.allowed.nodes) <= {n.id for n in t.nodes}
    assert [c.id for c in t.cpus] == list(t.all_cpus)
    assert [n.id for n in t.nodes] == sorted(n.id for n in t.nodes)
    assert all(set(n.cpus) <= every and set(n.local_cpus) <= every for n in t.nodes)
    assert all(c.id in c.siblings for c in t.cpus)
    assert sum(len(g) for g in t.core_groups(t.online_cpus)) == t.pus
    if t.threads_per_core is not None:
        assert len(t.core_groups(t.online_cpus)) == t.cores


@pytest.mark.parametrize("name", CAPTURES)
def test_json_round_trips_exactly(name):
    _, t = probed(name)
    assert Topology.from_json(json.loads(json.dumps(t.to_json()))) == t


@pytest.mark.parametrize("name", CAPTURES)
def test_json_validates_against_the_schema(name):
    _, t = probed(name)
    data = json.loads(json.dumps(t.to_json()))
    schema_validator().validate(data)
    data["bandwidth"] = {"matrix": []}
    schema_validator().validate(data)


def test_schema_rejects_a_drifted_document():
    data = probed("16amd64-8n2c")[1].to_json()
    data["nodes"][0]["cpu_list"] = data["nodes"][0].pop("cpus")
    with pytest.raises(jsonschema.ValidationError):
        schema_validator().validate(data)


def test_from_json_refuses_another_schema_version():
    data = probed("16amd64-8n2c")[1].to_json()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ProbeError, match="schema_version"):
        Topology.from_json(data)


@pytest.mark.parametrize("name, reason", [
    ("8em64t-2s2ca2c-buggynuma", "listed by several nodes"),
    ("2ps3-2t", "packages: no physical_package_id"),
    ("2ps3-2t", "no sys/devices/system/node/nodeN"),
    ("4fake-4gr1nu1pu", "cores: no SMT sibling list"),
    ("256ppc-8n8s4t", "all CPUs taken as online"),
    ("8ia64-2n2s2c", "list no CPUs sharing them"),
    ("nvidia-dgx-gb10", "cgroup.controllers of /sys/fs/cgroup not in this root"),
    ("16amd64-8n2c", "no proc/meminfo"),
])
def test_odd_captures_say_what_they_could_not_read(name, reason):
    _, t = probed(name)
    assert any(reason in item for item in t.unknown), t.unknown


# ---------------------------------------------------------------------------------------------
# The corpus, detail by detail


def test_smt_machine_helpers():
    _, t = probed("32intel64-2p8co2t+8ve")
    assert t.packages == 2 and t.dies == 2 and t.threads_per_core == 2
    assert t.core_groups([17, 0, 16, 1]) == [(0, 16), (1, 17)]
    assert t.one_cpu_per_core(range(32)) == tuple(range(16))
    assert t.node_of_cpu(16) == 0 and t.node_of_cpu(999) is None
    assert t.usable_cpus_of_node(1) == tuple(range(8, 16)) + tuple(range(24, 32))
    assert t.cpu(16).siblings == (0, 16) and t.cpu(16).package == 0
    l3 = [c for c in t.caches if c.level == 3]
    assert [c.cpus for c in l3] == [tuple(range(0, 8)) + tuple(range(16, 24)),
                                    tuple(range(8, 16)) + tuple(range(24, 32))]
    assert l3[0].size_bytes == 11264 * 1024
    with pytest.raises(KeyError):
        t.node(5)


def test_offline_and_cpuset_restricted_cpus():
    _, t = probed("16amd64-8n2c-cpusets")
    assert t.offline_cpus == (4,) and not t.cpu(4).online
    assert t.node(2).cpus == (4, 5) and t.usable_cpus_of_node(2) == (5,)
    assert t.usable_cpus_of_node(4) == ()
    assert t.allowed.cpuset_cpus == (0, 1, 2, 3, 4, 5, 6, 12, 13, 14, 15)
    capture = str(FIXTURES / "16amd64-8n2c-cpusets.tar.bz2")
    assert t.allowed.sources == (f"{capture}/dev/cpuset/dummy/cpus", f"{capture}/dev/cpuset/dummy/mems")


def test_cpuset_in_a_cgroup_v1_hierarchy_beside_cgroup2():
    _, t = probed("16amd64-4n4c-cgroup-distance-merge")
    assert t.allowed.cgroup_version == 1 and t.allowed.cgroup_path == "/prout"
    assert t.allowed.cpuset_mems == (2, 3)


def test_cpuset_in_cgroup2():
    _, t = probed("fakeheteromemtiers")
    assert t.allowed.cgroup_version == 2
    assert t.allowed.sources[0] == f"{FIXTURES}/fakeheteromemtiers.tar.bz2/sys/fs/cgroup/cpuset.cpus.effective"


def test_memory_only_and_cpu_only_nodes():
    _, tiers = probed("fakeheteromemtiers")
    far = tiers.node(4)          # its firmware (HMAT) names node 1 as its best CPU initiator
    assert not far.has_cpus and far.has_memory and far.local_cpus == tiers.node(1).cpus == (2, 3)
    _, initiators = probed("fakememinitiators-1np2c+1npp+gi")
    assert initiators.node(0).has_cpus and not initiators.node(0).has_memory
    assert initiators.node(10).cpus == () and initiators.node(10).local_cpus == (2, 3, 6, 7)


def test_packages_from_sibling_sets_when_the_kernel_has_no_ids():
    _, t = probed("20s390-2g6s4c")
    assert [t.cpu(c).package for c in (0, 2, 3, 7)] == [0, 0, 1, 2]
    assert t.nodes[0].cpus == tuple(range(20)) and t.nodes[0].distances is None


def test_hybrid_cpu_isa_and_governor_through_a_symlinked_directory():
    _, t = probed("20em64t-hybrid-1p6c2t+2ca4co1t")
    assert t.isa.vendor == "GenuineIntel" and t.isa.has("avx2") and t.isa.has("avxvnni")
    assert not t.isa.has("avx512f")
    assert t.knobs.governors == (("powersave", tuple(range(20))),)
    assert t.cores == 14 and t.cpu(0).siblings == (0, 1) and t.cpu(19).siblings == (19,)


# ---------------------------------------------------------------------------------------------
# Generated trees


def test_generated_tree_with_cgroup_v2_limits_and_knobs(tmp_path):
    machine = FakeMachine(numa_balancing=1, thp_enabled="never", zone_reclaim_mode=1,
                          governor="powersave", cpu_max="200000 100000", memory_max="1073741824",
                          cgroup_cpus="0-5", cgroup_mems="0", threads_per_core=2)
    t = probe(Root.open(str(write_tree(tmp_path / "root", machine))))
    assert (t.knobs.numa_balancing, t.knobs.thp_enabled, t.knobs.thp_defrag) == (1, "never", "madvise")
    assert t.knobs.zone_reclaim_mode == 1
    assert t.knobs.governors == (("powersave", tuple(range(16))),)
    allowed = t.allowed
    assert allowed.cpu_quota == 2.0 and allowed.memory_limit_bytes == 1 << 30
    assert allowed.cpus == tuple(range(6)) and allowed.nodes == (0,)
    assert (allowed.cgroup_version, allowed.cgroup_path) == (2, "/numatune.slice")
    assert f"{tmp_path}/root/sys/fs/cgroup/numatune.slice/cpu.max" in allowed.sources
    assert f"{tmp_path}/root/proc/self/status" in allowed.sources
    assert t.threads_per_core == 2 and t.cores == 8 and t.packages == 2
    assert t.isa.has("avx512_vnni") and t.isa.has("avx512bf16")
    assert t.node(0).hugepages[0].size_bytes == 2 << 20
    assert not any("numa_balancing" in item or "governor" in item for item in t.unknown)


def test_generated_tree_takes_the_tightest_limit_of_the_ancestors(tmp_path):
    machine = FakeMachine(extra_files={
        "proc/self/cgroup": "0::/outer/inner\n",
        "sys/fs/cgroup/outer/cpu.max": "150000 100000\n",
        "sys/fs/cgroup/outer/memory.max": "max\n",
        "sys/fs/cgroup/outer/inner/cpu.max": "max 100000\n",
        "sys/fs/cgroup/outer/inner/memory.max": "2147483648\n",
        "sys/fs/cgroup/cpuset.cpus.effective": "0-3\n",
        "sys/fs/cgroup/cpuset.mems.effective": "1\n",
    })
    t = probe(Root.open(str(write_tree(tmp_path / "root", machine))))
    assert t.allowed.cpu_quota == 1.5 and t.allowed.memory_limit_bytes == 2 << 30
    # the cpuset controller is not enabled below the root: the root's cpuset applies
    assert t.allowed.cpuset_cpus == (0, 1, 2, 3) and t.allowed.cpuset_mems == (1,)
    assert t.allowed.cgroup_path == "/outer/inner"


def test_generated_tree_with_cgroup_v1(tmp_path):
    machine = FakeMachine(extra_files={
        "proc/mounts": ("cgroup /sys/fs/cgroup/cpuset cgroup rw,cpuset 0 0\n"
                        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
                        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"),
        "proc/self/cgroup": "3:memory:/job\n2:cpu,cpuacct:/job\n1:cpuset:/job\n",
        "sys/fs/cgroup/cpuset/job/cpuset.cpus": "2-3\n",
        "sys/fs/cgroup/cpuset/job/cpuset.mems": "1\n",
        "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us": "250000\n",
        "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/memory/job/memory.limit_in_bytes": "4294967296\n",
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
    })
    t = probe(Root.open(str(write_tree(tmp_path / "root", machine))))
    assert (t.allowed.cgroup_version, t.allowed.cgroup_path) == (1, "/job")
    assert t.allowed.cpus == (2, 3) and t.allowed.nodes == (1,)
    assert t.allowed.cpu_quota == 2.5 and t.allowed.memory_limit_bytes == 4 << 30


def test_generated_tree_isolated_cpus_and_memory_only_node(tmp_path):
    machine = FakeMachine(memory_only_nodes=1, extra_files={
        "proc/cmdline": "ro isolcpus=managed_irq,domain,6-7\n",
        "sys/devices/system/cpu/isolated": "5\n",
    })
    t = probe(Root.open(str(write_tree(tmp_path / "root", machine))))
    assert t.isolated_cpus == (5, 6, 7) and t.cpu(6).isolated and not t.cpu(4).isolated
    memory_only = t.node(2)
    assert memory_only.cpus == () and memory_only.has_memory
    assert memory_only.local_cpus == tuple(range(8))          # equally far from both sockets
    assert t.usable_cpus_of_node(2) == ()


def test_unparsable_files_are_noted_not_fatal(tmp_path):
    machine = FakeMachine(extra_files={
        "sys/devices/system/node/node1/distance": "10 twenty\n",
        "proc/sys/kernel/numa_balancing": "on\n",
        "sys/devices/system/cpu/cpu0/cache/index0/size": "huge\n",
    })
    t = probe(Root.open(str(write_tree(tmp_path / "root", machine))))
    assert t.knobs.numa_balancing is None and t.node(1).distances is None
    assert any("numa_balancing: cannot parse" in item for item in t.unknown)
    assert any("node1/distance: cannot parse" in item for item in t.unknown)
    assert t.caches[0].size_bytes is None


# ---------------------------------------------------------------------------------------------
# The live machine: only internal consistency, never its layout


def test_probe_of_the_live_root_is_consistent():
    t = probe(Root.open("/"))
    online = set(t.online_cpus)
    assert t.pus == len(online) > 0 and online <= set(t.all_cpus)
    assert set(t.allowed.cpus) <= online and set(t.allowed.cpus) <= os.sched_getaffinity(0)
    assert "sched_getaffinity(0)" in t.allowed.sources
    assert t.nodes and set(t.allowed.nodes) <= {n.id for n in t.nodes}
    assert Topology.from_json(json.loads(json.dumps(t.to_json()))) == t
    schema_validator().validate(t.to_json())
