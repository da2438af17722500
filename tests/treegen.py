"""Writes a Linux sysfs/procfs tree for a made-up machine, as a modern kernel lays it out.

Tests point the probe at it (`--root DIR`) to reproduce situations no captured machine has:
the seed's two-socket Xeon, sub-NUMA clustering, containers with quotas, odd kernel knobs.
CPUs are numbered like Linux on Intel: first one hardware thread of every core, socket by socket,
then the SMT siblings in the same order.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

GIB = 1 << 30


@functools.lru_cache(maxsize=None)
def hwloc_corpus() -> Path:
    """hwloc's captured machines (shared/fixtures/hwloc-linux): NUMATUNE_HWLOC_CORPUS, else the
    first shared/ beside a folder above the tests (a clone in CI, a worktree of /work/wt). Missing
    is an error, so a run without the captures never passes by skipping them."""
    if os.environ.get("NUMATUNE_HWLOC_CORPUS"):
        return Path(os.environ["NUMATUNE_HWLOC_CORPUS"])
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "fixtures" / "hwloc-linux"
        if (candidate / "expected.json").is_file():
            return candidate
    raise FileNotFoundError("the hwloc capture corpus (shared/fixtures/hwloc-linux) is in no folder above "
                            f"{Path(__file__).parent}; set NUMATUNE_HWLOC_CORPUS")


hwloc_captures = hwloc_corpus     # the name the probe's tests use


@dataclass
class FakeMachine:
    sockets: int = 2
    nodes_per_socket: int = 1
    cores_per_node: int = 4
    threads_per_core: int = 1
    memory_per_node: int = 16 * GIB
    free_per_node: Optional[list] = None          # bytes per node; default: 90% of total
    memory_only_nodes: int = 0                    # extra nodes with memory and no CPUs
    remote_distance: int = 21
    numa_balancing: int = 0
    thp_enabled: str = "madvise"
    thp_defrag: str = "madvise"
    zone_reclaim_mode: int = 0
    governor: Optional[str] = "performance"
    cgroup_cpus: Optional[str] = None             # cgroup v2 cpuset.cpus.effective
    cgroup_mems: Optional[str] = None
    cpu_max: str = "max 100000"
    memory_max: str = "max"
    model_name: str = "Intel(R) Xeon(R) Gold 6462C"
    flags: str = "fpu sse sse2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16"
    hugepages_2m: int = 0
    node_ids: Optional[list] = None               # sysfs ids of the nodes, CPU nodes first; default 0..n-1
    offline_cpus: tuple = ()
    package_ids: Optional[list] = None            # physical_package_id per socket; default 0..sockets-1
    vendor: str = "GenuineIntel"
    cpu_family: int = 6
    siblings_share_core_id: bool = True           # False: AMD compute units, a core_id per CPU
    arch: str = "x86_64"                          # "ia64": an Itanium's sparse sysfs and cpuinfo
    extra_files: dict = field(default_factory=dict)

    @property
    def cpu_nodes(self) -> int:
        return self.sockets * self.nodes_per_socket

    @property
    def node_count(self) -> int:
        return self.cpu_nodes + self.memory_only_nodes

    @property
    def cores(self) -> int:
        return self.cpu_nodes * self.cores_per_node

    @property
    def cpu_count(self) -> int:
        return self.cores * self.threads_per_core

    def node_id(self, index: int) -> int:
        return self.node_ids[index] if self.node_ids else index

    def cpus_of_node(self, node: int) -> list[int]:
        if node >= self.cpu_nodes:
            return []
        first = [node * self.cores_per_node + c for c in range(self.cores_per_node)]
        return [cpu + t * self.cores for t in range(self.threads_per_core) for cpu in first]

    def node_of_cpu(self, cpu: int) -> int:
        return (cpu % self.cores) // self.cores_per_node


def _cpulist(cpus) -> str:
    cpus = sorted(cpus)
    runs, start = [], None
    for i, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
            runs.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(runs)


def _cpumask(cpus, total: int) -> str:
    """The kernel's hex mask: 32-bit groups, most significant first, as wide as the CPU count."""
    value = sum(1 << cpu for cpu in cpus)
    groups = max(1, (total + 31) // 32)
    return ",".join(f"{value >> (32 * g) & 0xFFFFFFFF:08x}" for g in reversed(range(groups)))


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_tree(root: Path, m: FakeMachine) -> Path:
    all_cpus = list(range(m.cpu_count))
    cpu_list = _cpulist(all_cpus)
    for rel in ("possible", "present"):
        _write(root, f"sys/devices/system/cpu/{rel}", cpu_list + "\n")
    if m.arch != "ia64":       # old Itanium kernels write no online/offline/isolated lists
        _write(root, "sys/devices/system/cpu/online", _cpulist(set(all_cpus) - set(m.offline_cpus)) + "\n")
        _write(root, "sys/devices/system/cpu/offline", _cpulist(m.offline_cpus) + "\n")
        _write(root, "sys/devices/system/cpu/isolated", "\n")
    for cpu in all_cpus:
        _write_cpu(root, m, cpu)
    _write_nodes(root, m)
    _write_proc(root, m, all_cpus)
    # What hwloc-gather-topology records of uname; lstopo's fsroot reading takes the arch from it.
    _write(root, "proc/hwloc-nofile-info", f"OSName: Linux\nArchitecture: {m.arch}\n")
    for rel, text in m.extra_files.items():
        _write(root, rel, text)
    return root


def _write_cpu(root: Path, m: FakeMachine, cpu: int) -> None:
    base = f"sys/devices/system/cpu/cpu{cpu}"
    core_index = cpu % m.cores
    node = m.node_of_cpu(cpu)
    socket = node // m.nodes_per_socket
    siblings = [core_index + t * m.cores for t in range(m.threads_per_core)]
    socket_cpus = [c for c in range(m.cores * m.threads_per_core)
                   if m.node_of_cpu(c) // m.nodes_per_socket == socket]
    node_cpus = m.cpus_of_node(node)
    core_id = core_index % (m.cores_per_node * m.nodes_per_socket)
    if not m.siblings_share_core_id:
        core_id = core_id * m.threads_per_core + siblings.index(cpu)
    package_id = m.package_ids[socket] if m.package_ids else socket
    if m.arch == "ia64":
        # Itanium kernels: ids and masks only (no die, no lists, no online files), caches
        # without the CPUs sharing them
        topo = {"physical_package_id": str(package_id), "core_id": str(core_id),
                "thread_siblings": _cpumask(siblings, m.cpu_count),
                "core_siblings": _cpumask(socket_cpus, m.cpu_count),
                "book_id": "0", "drawer_id": "0"}
        for name, value in topo.items():
            _write(root, f"{base}/topology/{name}", value + "\n")
        for index, (level, kind, size) in enumerate([(1, "Data", "16K"), (2, "Unified", "256K"),
                                                     (3, "Unified", "9216K")]):
            for name, value in (("level", level), ("type", kind), ("size", size)):
                _write(root, f"{base}/cache/index{index}/{name}", f"{value}\n")
        (root / base / f"node{m.node_id(node)}").mkdir(parents=True, exist_ok=True)
        return
    _write(root, f"{base}/online", "0\n" if cpu in m.offline_cpus else "1\n")
    topo = {
        "physical_package_id": str(package_id), "die_id": "0", "core_id": str(core_id),
        "core_cpus_list": _cpulist(siblings), "thread_siblings_list": _cpulist(siblings),
        "package_cpus_list": _cpulist(socket_cpus), "core_siblings_list": _cpulist(socket_cpus),
        "die_cpus_list": _cpulist(socket_cpus),
        "core_cpus": _cpumask(siblings, m.cpu_count), "thread_siblings": _cpumask(siblings, m.cpu_count),
        "package_cpus": _cpumask(socket_cpus, m.cpu_count), "core_siblings": _cpumask(socket_cpus, m.cpu_count),
        "die_cpus": _cpumask(socket_cpus, m.cpu_count),
    }
    for name, value in topo.items():
        _write(root, f"{base}/topology/{name}", value + "\n")
    caches = [(1, "Data", "48K", siblings), (1, "Instruction", "32K", siblings),
              (2, "Unified", "2048K", siblings), (3, "Unified", "61440K", node_cpus)]
    for index, (level, kind, size, shared) in enumerate(caches):
        cache = f"{base}/cache/index{index}"
        _write(root, f"{cache}/level", f"{level}\n")
        _write(root, f"{cache}/type", f"{kind}\n")
        _write(root, f"{cache}/size", f"{size}\n")
        _write(root, f"{cache}/shared_cpu_list", _cpulist(shared) + "\n")
    if m.governor:
        _write(root, f"{base}/cpufreq/scaling_governor", m.governor + "\n")
    (root / base / f"node{m.node_id(node)}").mkdir(parents=True, exist_ok=True)


def _write_nodes(root: Path, m: FakeMachine) -> None:
    indexes = list(range(m.node_count))
    ids = [m.node_id(index) for index in indexes]
    base = "sys/devices/system/node"
    _write(root, f"{base}/online", _cpulist(ids) + "\n")
    _write(root, f"{base}/possible", _cpulist(ids) + "\n")
    _write(root, f"{base}/has_memory", _cpulist(ids) + "\n")
    _write(root, f"{base}/has_normal_memory", _cpulist(ids) + "\n")
    _write(root, f"{base}/has_cpu", _cpulist(ids[:m.cpu_nodes]) + "\n")
    by_id = sorted(indexes, key=m.node_id)      # distance rows are ordered by node id
    for index, node in zip(indexes, ids):
        free = m.free_per_node[index] if m.free_per_node else int(m.memory_per_node * 0.9)
        total_kb, free_kb = m.memory_per_node // 1024, free // 1024
        _write(root, f"{base}/node{node}/cpulist", _cpulist(m.cpus_of_node(index)) + "\n")
        _write(root, f"{base}/node{node}/cpumap", _cpumask(m.cpus_of_node(index), m.cpu_count) + "\n")
        _write(root, f"{base}/node{node}/meminfo",
               f"Node {node} MemTotal:       {total_kb} kB\nNode {node} MemFree:        {free_kb} kB\n"
               f"Node {node} MemUsed:        {total_kb - free_kb} kB\n")
        row = [10 if other == index else _distance(m, index, other) for other in by_id]
        _write(root, f"{base}/node{node}/distance", " ".join(map(str, row)) + "\n")
        pages = f"{base}/node{node}/hugepages"
        _write(root, f"{pages}/hugepages-2048kB/nr_hugepages", f"{m.hugepages_2m}\n")
        _write(root, f"{pages}/hugepages-2048kB/free_hugepages", f"{m.hugepages_2m}\n")
        _write(root, f"{pages}/hugepages-1048576kB/nr_hugepages", "0\n")
        _write(root, f"{pages}/hugepages-1048576kB/free_hugepages", "0\n")
        for cpu in m.cpus_of_node(index):
            (root / base / f"node{node}" / f"cpu{cpu}").mkdir(parents=True, exist_ok=True)


def _distance(m: FakeMachine, a: int, b: int) -> int:
    same_socket = (a < m.cpu_nodes and b < m.cpu_nodes
                   and a // m.nodes_per_socket == b // m.nodes_per_socket)
    return 12 if same_socket else m.remote_distance


def _write_proc(root: Path, m: FakeMachine, all_cpus: list[int]) -> None:
    total_kb = m.memory_per_node * m.node_count // 1024
    _write(root, "proc/meminfo", f"MemTotal:       {total_kb} kB\nMemFree:        {int(total_kb * 0.9)} kB\n"
           f"MemAvailable:   {int(total_kb * 0.9)} kB\n")
    if m.arch == "ia64":
        # Itanium's cpuinfo: "vendor"/"family"/"features", and here no "physical id" either;
        # the capture has no cgroup, status nor kernel knobs
        _write(root, "proc/cpuinfo", "\n".join(
            f"processor  : {cpu}\nvendor     : GenuineIntel\narch       : IA-64\nfamily     : 32\n"
            f"features   : branchlong, 16-byte atomic ops\ncpu number : 0\n" for cpu in all_cpus) + "\n")
        return
    cpuinfo = []
    for cpu in all_cpus:
        node = m.node_of_cpu(cpu)
        cpuinfo.append(
            f"processor\t: {cpu}\nvendor_id\t: {m.vendor}\ncpu family\t: {m.cpu_family}\n"
            f"model name\t: {m.model_name}\n"
            f"physical id\t: {node // m.nodes_per_socket}\ncore id\t\t: {cpu % m.cores}\n"
            f"flags\t\t: {m.flags}\n")
    _write(root, "proc/cpuinfo", "\n".join(cpuinfo) + "\n")
    cpus = m.cgroup_cpus or _cpulist(all_cpus)
    mems = m.cgroup_mems or _cpulist(m.node_id(index) for index in range(m.node_count))
    _write(root, "proc/self/status", f"Name:\tpython\nCpus_allowed_list:\t{cpus}\nMems_allowed_list:\t{mems}\n")
    _write(root, "proc/self/cgroup", "0::/numatune.slice\n")
    _write(root, "proc/mounts", "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n")
    group = "sys/fs/cgroup/numatune.slice"
    _write(root, "sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n")
    _write(root, f"{group}/cpuset.cpus.effective", cpus + "\n")
    _write(root, f"{group}/cpuset.mems.effective", mems + "\n")
    _write(root, f"{group}/cpu.max", m.cpu_max + "\n")
    _write(root, f"{group}/memory.max", m.memory_max + "\n")
    _write(root, "proc/sys/kernel/numa_balancing", f"{m.numa_balancing}\n")
    _write(root, "proc/sys/vm/zone_reclaim_mode", f"{m.zone_reclaim_mode}\n")
    _write(root, "proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro\n")
    thp = "sys/kernel/mm/transparent_hugepage"
    _write(root, f"{thp}/enabled", _bracket(["always", "madvise", "never"], m.thp_enabled))
    _write(root, f"{thp}/defrag", _bracket(["always", "defer", "defer+madvise", "madvise", "never"], m.thp_defrag))


def _bracket(choices: list[str], chosen: str) -> str:
    return " ".join(f"[{c}]" if c == chosen else c for c in choices) + "\n"


def seed_machine(**changes) -> FakeMachine:
    """The seed's server: 2 × Xeon Gold 6462C, 32 cores and 64 hardware threads per socket."""
    spec = dict(sockets=2, cores_per_node=32, threads_per_core=2, memory_per_node=512 * GIB)
    spec.update(changes)
    return FakeMachine(**spec)


# ---- helpers shared by the audit tests

def probe_tree(tmp_path: Path, machine: FakeMachine, name: str = "root"):
    """The topology numatune probes from a generated tree of `machine`."""
    from numatune.sysfs import Root
    from numatune.topology import probe
    return probe(Root.open(str(write_tree(tmp_path / name, machine))))


def ids(findings) -> set:
    return {f.id for f in findings}


def by_id(findings, finding_id: str):
    matches = [f for f in findings if f.id == finding_id]
    assert matches, f"{finding_id} not in {ids(findings)}"
    return matches[0]
