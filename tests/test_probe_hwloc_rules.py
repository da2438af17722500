"""Classes of real machines the captured corpus lacks, generated, against what hwloc says of them.

Each tree is also readable by hwloc: the `HWLOC` facts below are what hwloc 2.9.0 reports for the
same generated tree (`lstopo-no-graphics --input DIR --input-format fsroot --of xml -`, with
`--whole-system` for packages, cores and PUs, without it for what is allowed). The rules behind
them are those of hwloc's Linux discovery (hwloc/topology-linux.c):
- the cpuset hierarchy is a standard mount point holding cpuset files (hwloc 2.11 on), else the
  first cpuset mount of /proc/mounts; the group is /proc/self/cpuset, else the cpuset (or unified) line of
  /proc/self/cgroup; on cgroup v1 its `cpuset.cpus`/`cpuset.mems` (not the `effective_` files)
  are intersected with the online CPUs and the nodes;
- on AMD families 0x15 and 0x16 (cpuinfo "cpu family" 21 or 22) the first online CPU with an
  online thread sibling decides: a sibling with another core_id makes every CPU a core of its own;
- one package per package sibling set (`package_cpus`, else `core_siblings`), opened by the set's
  first online CPU; the ids are only labels, and a set that contradicts an earlier one is dropped.
"""
from __future__ import annotations

import pytest

from treegen import FakeMachine, _cpumask, probe_tree


def _facts(t) -> dict:
    return {"packages": t.packages, "cores": t.cores, "pus": t.pus, "threads_per_core": t.threads_per_core,
            "allowed_cpus": list(t.allowed.cpus), "allowed_nodes": list(t.allowed.nodes),
            "node_ids": [node.id for node in t.nodes]}


def _hwloc(packages, cores, pus, threads_per_core, allowed_cpus, allowed_nodes, node_ids) -> dict:
    return {"packages": packages, "cores": cores, "pus": pus, "threads_per_core": threads_per_core,
            "allowed_cpus": list(allowed_cpus), "allowed_nodes": list(allowed_nodes),
            "node_ids": list(node_ids)}


# ---------------------------------------------------------------------------------------------
# cgroup v1 cpuset on a machine with GPU memory nodes numbered far above its CPU nodes

GPU_NODES = list(range(16, 24))


def _gpu_machine_in_a_v1_cpuset(**changes) -> FakeMachine:
    """Two CPU nodes (0 and 8) and eight memory-only GPU nodes (16-23); CPUs 5 and 21 (one core)
    offline; the process in cpuset /job of a cgroup v1 hierarchy whose stale effective_ files
    say less than its cpus/mems."""
    spec = dict(sockets=2, cores_per_node=8, threads_per_core=2, memory_only_nodes=len(GPU_NODES),
                node_ids=[0, 8] + GPU_NODES, remote_distance=80, offline_cpus=(5, 21), extra_files={
                    "proc/mounts": ("tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0\n"
                                    "cgroup /sys/fs/cgroup/cpuset cgroup rw,nosuid,nodev,noexec,cpuset 0 0\n"),
                    "proc/self/cgroup": "9:cpu,cpuacct:/\n7:cpuset:/job\n",
                    "sys/fs/cgroup/cpuset/cpuset.cpus": "0-31\n",
                    "sys/fs/cgroup/cpuset/cpuset.mems": "0,8,16-23\n",
                    "sys/fs/cgroup/cpuset/job/cpuset.cpus": "0-11,16-27\n",
                    "sys/fs/cgroup/cpuset/job/cpuset.mems": "0,16-19\n",
                    "sys/fs/cgroup/cpuset/job/cpuset.effective_cpus": "0-3\n",
                    "sys/fs/cgroup/cpuset/job/cpuset.effective_mems": "0\n"})
    spec.update(changes)
    return FakeMachine(**spec)


def test_cgroup_v1_cpuset_with_gpu_memory_nodes(tmp_path):
    t = probe_tree(tmp_path, _gpu_machine_in_a_v1_cpuset())
    assert _facts(t) == _hwloc(
        2, 15, 30, 2,
        allowed_cpus=[0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 27],
        allowed_nodes=[0, 16, 17, 18, 19], node_ids=[0, 8] + GPU_NODES)
    assert (t.allowed.cgroup_version, t.allowed.cgroup_path) == (1, "/job")
    assert t.allowed.sources[:2] == (f"{tmp_path}/root/sys/fs/cgroup/cpuset/job/cpuset.cpus",
                                     f"{tmp_path}/root/sys/fs/cgroup/cpuset/job/cpuset.mems")
    gpu = t.node(23)
    assert not gpu.has_cpus and gpu.has_memory and gpu.distances == (80,) * 9 + (10,)
    assert gpu.local_cpus == tuple(range(32))        # equally far from both CPU nodes
    assert t.node(8).distances == (80, 10) + (80,) * 8
    assert t.usable_cpus_of_node(8) == (8, 9, 10, 11, 24, 25, 26, 27)


def test_cgroup_v1_cpuset_found_through_proc_mounts_alone(tmp_path):
    # not at a standard mount point: the first cpuset mount of proc/mounts, named by proc/self/cpuset
    machine = _gpu_machine_in_a_v1_cpuset()
    files = {rel.replace("sys/fs/cgroup/cpuset/", "cg/cpuset/"): text for rel, text in machine.extra_files.items()}
    files["proc/mounts"] = ("cgroup2 /cg/unified cgroup2 rw 0 0\n"
                            "cgroup /cg/cpuset cgroup rw,cpuset 0 0\n")
    files["cg/unified/cgroup.controllers"] = "\n"
    files["proc/self/cpuset"] = "/job\n"
    files["proc/self/cgroup"] = "7:cpuset:/elsewhere\n0::/\n"
    t = probe_tree(tmp_path, _gpu_machine_in_a_v1_cpuset(extra_files=files))
    assert _facts(t) == _hwloc(
        2, 15, 30, 2,
        allowed_cpus=[0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 27],
        allowed_nodes=[0, 16, 17, 18, 19], node_ids=[0, 8] + GPU_NODES)


def test_cgroup_v1_cpuset_at_its_standard_mount_point_without_proc_mounts(tmp_path):
    # A capture without proc/mounts: hwloc since 2.11 (commit f90b69c, "try standard cgroup/cpuset
    # mount point before reading /proc/mounts") reads /sys/fs/cgroup/cpuset all the same. The
    # installed lstopo 2.9.0 predates that rule and finds no cpuset here (all CPUs allowed).
    machine = _gpu_machine_in_a_v1_cpuset()
    files = {rel: text for rel, text in machine.extra_files.items() if rel != "proc/mounts"}
    files["proc/mounts"] = ""
    t = probe_tree(tmp_path, _gpu_machine_in_a_v1_cpuset(extra_files=files))
    assert list(t.allowed.cpus) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 27]
    assert list(t.allowed.nodes) == [0, 16, 17, 18, 19]
    assert (t.allowed.cgroup_version, t.allowed.cgroup_path) == (1, "/job")


# ---------------------------------------------------------------------------------------------
# AMD compute units (Bulldozer-style modules)


@pytest.mark.parametrize("family, own_core_ids, hwloc", [
    # family 0x15, each CPU of a module with its own core_id: 16 cores of 1 thread
    (21, True, _hwloc(2, 16, 16, 1, range(16), [0, 1], [0, 1])),
    # family 0x16 likewise
    (22, True, _hwloc(2, 16, 16, 1, range(16), [0, 1], [0, 1])),
    # family 0x15 whose siblings share a core_id: SMT, 8 cores of 2 threads
    (21, False, _hwloc(2, 8, 16, 2, range(16), [0, 1], [0, 1])),
    # Zen (0x17) siblings are SMT threads whatever their core_id says
    (23, True, _hwloc(2, 8, 16, 2, range(16), [0, 1], [0, 1])),
])
def test_amd_compute_units(tmp_path, family, own_core_ids, hwloc):
    machine = FakeMachine(cores_per_node=4, threads_per_core=2, vendor="AuthenticAMD", cpu_family=family,
                          siblings_share_core_id=not own_core_ids, model_name="AMD Opteron(tm) Processor 6272")
    t = probe_tree(tmp_path, machine)
    assert _facts(t) == hwloc
    split = hwloc["threads_per_core"] == 1
    assert t.cpu(0).siblings == ((0,) if split else (0, 8))
    assert len(t.core_groups(range(16))) == hwloc["cores"]
    assert len(t.one_cpu_per_core(range(16))) == hwloc["cores"]


def test_intel_siblings_with_their_own_core_ids_stay_smt(tmp_path):
    machine = FakeMachine(cores_per_node=4, threads_per_core=2, siblings_share_core_id=False)
    assert _facts(probe_tree(tmp_path, machine)) == _hwloc(2, 8, 16, 2, range(16), [0, 1], [0, 1])


# ---------------------------------------------------------------------------------------------
# Package ids that repeat or conflict


def test_package_ids_repeated_across_sockets(tmp_path):
    # four sockets (one node each) whose kernel reports ids 0, 0, 1, 1
    t = probe_tree(tmp_path, FakeMachine(sockets=4, cores_per_node=2, package_ids=[0, 0, 1, 1]))
    assert _facts(t) == _hwloc(4, 8, 8, 1, range(8), range(4), range(4))
    # the ids do not tell the packages apart: numbered by their first CPU
    assert [t.cpu(cpu).package for cpu in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [t.packages_of_node(node) for node in range(4)] == [(0,), (1,), (2,), (3,)]


def test_package_ids_kept_when_they_tell_packages_apart(tmp_path):
    t = probe_tree(tmp_path, FakeMachine(sockets=2, cores_per_node=2, package_ids=[3, 1]))
    assert _facts(t) == _hwloc(2, 4, 4, 1, range(4), [0, 1], [0, 1])
    assert [t.cpu(cpu).package for cpu in range(4)] == [3, 3, 1, 1]


def test_package_sibling_set_that_contradicts_the_others(tmp_path):
    # cpu4's package set claims CPUs 0-4 while 5-7 say 4-7: hwloc keeps the package of CPUs 0-3
    # and puts 4-7 in none
    conflict = _cpumask(range(5), 8) + "\n"
    t = probe_tree(tmp_path, FakeMachine(sockets=2, cores_per_node=4, extra_files={
        "sys/devices/system/cpu/cpu4/topology/package_cpus": conflict,
        "sys/devices/system/cpu/cpu4/topology/core_siblings": conflict}))
    assert _facts(t) == _hwloc(1, 8, 8, 1, range(8), [0, 1], [0, 1])
    assert [t.cpu(cpu).package for cpu in range(8)] == [0, 0, 0, 0, None, None, None, None]


# ---------------------------------------------------------------------------------------------
# Itanium: sysfs without what x86 always has


def test_ia64_tree_without_dies_lists_caches_sharing_or_physical_id(tmp_path):
    t = probe_tree(tmp_path, FakeMachine(arch="ia64", sockets=2, cores_per_node=2, threads_per_core=2,
                                         package_ids=[0, 512]))
    assert _facts(t) == _hwloc(2, 4, 8, 2, range(8), [0, 1], [0, 1])
    assert [t.cpu(cpu).package for cpu in (0, 2, 4, 6)] == [0, 512, 0, 512]
    assert t.dies is None and t.cpu(0).die is None and t.cpu(4).siblings == (0, 4)
    assert t.isa.vendor == "GenuineIntel" and t.isa.flags == ()
    assert all(len(cache.cpus) == 1 for cache in t.caches)
    for reason in ("dies: no die_id", "CPU online state: no sys/devices/system/cpu/online",
                   "list no CPUs sharing them", "cgroup cpuset: no proc/mounts"):
        assert any(reason in item for item in t.unknown), (reason, t.unknown)
