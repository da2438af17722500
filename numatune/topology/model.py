"""The probe: what a Root says about the machine, as a frozen `Topology`.

Everything above the probe takes a Topology, never a path. Facts that cannot be read are not
guessed silently: each lands in `Topology.unknown` with the reason, and the field that would
hold it is None (or empty).

Packages and cores are built as hwloc builds them: a package is a distinct package sibling set,
a core a distinct SMT sibling set (on AMD families 0x15/0x16 whose module siblings report their
own core_id, each CPU). `Cpu.package` is the kernel's physical_package_id of the package's first
CPU while those ids tell the packages apart; else (-1 on s390 and POWER, ids repeated on IA-64)
packages are numbered by their first CPU. `Cpu.die` is the kernel's die_id (numbered within its
package). `Cpu.core` is a machine-wide core index, cores numbered by their first CPU.
"""
from __future__ import annotations

import math
import os
import posixpath
import re
import shutil
from collections import Counter
from dataclasses import dataclass, fields, is_dataclass
from functools import cached_property
from typing import Callable, Iterable, Optional, TypeVar

from ..errors import ProbeError
from ..sysfs import (CgroupHierarchy, CgroupMembership, Mount, Root, cgroup_hierarchies,
                    cgroup_path_of, format_cpulist, parse_bracketed_choice, parse_cfs_quota,
                    parse_cpu_max, parse_cpuinfo, parse_cpulist, parse_cpumask, parse_distances,
                    parse_int, parse_isolcpus, parse_memory_limit, parse_meminfo, parse_mounts,
                    parse_proc_cgroup, parse_size, parse_status)

SCHEMA_VERSION = 1

SYS_CPU = "sys/devices/system/cpu"
SYS_NODE = "sys/devices/system/node"
SYS_TIERS = "sys/devices/virtual/memory_tiering"
THP = "sys/kernel/mm/transparent_hugepage"

# ISA features that matter to the kernels numatune runs, under one name whatever the source
# spells them (/proc/cpuinfo writes "avx512_vnni", py-cpuinfo "avx512vnni").
KNOWN_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
    "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2",
)
_FLAG_BY_SPELLING = {name.replace("_", ""): name for name in KNOWN_FLAGS}

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# The values


def _to_json(value):
    if is_dataclass(value):
        return {f.name: _to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_to_json(item) for item in value]
    return value


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _optional_ints(values) -> Optional[tuple[int, ...]]:
    return None if values is None else _ints(values)


@dataclass(frozen=True)
class HugePagePool:
    size_bytes: int
    total: int
    free: int

    @classmethod
    def from_json(cls, data: dict) -> "HugePagePool":
        return cls(data["size_bytes"], data["total"], data["free"])


@dataclass(frozen=True)
class Node:
    id: int
    cpus: tuple[int, ...]              # as the kernel lists them, offline ones included
    memory_total_bytes: int            # 0 for a node without memory
    memory_free_bytes: Optional[int]
    hugepages: tuple[HugePagePool, ...]
    distances: Optional[tuple[int, ...]]   # row of the distance matrix, ordered by node id
    local_cpus: tuple[int, ...]        # `cpus`, or for a CPU-less node the CPUs nearest to it

    @property
    def has_cpus(self) -> bool:
        return bool(self.cpus)

    @property
    def has_memory(self) -> bool:
        return self.memory_total_bytes > 0

    @classmethod
    def from_json(cls, data: dict) -> "Node":
        return cls(data["id"], _ints(data["cpus"]), data["memory_total_bytes"], data["memory_free_bytes"],
                   tuple(HugePagePool.from_json(p) for p in data["hugepages"]),
                   _optional_ints(data["distances"]), _ints(data["local_cpus"]))


@dataclass(frozen=True)
class Cpu:
    id: int
    online: bool
    package: Optional[int]
    die: Optional[int]
    core: Optional[int]                # machine-wide core index (see the module's docstring)
    node: Optional[int]
    siblings: tuple[int, ...]          # SMT siblings, itself included
    isolated: bool

    @classmethod
    def from_json(cls, data: dict) -> "Cpu":
        return cls(data["id"], data["online"], data["package"], data["die"], data["core"],
                   data["node"], _ints(data["siblings"]), data["isolated"])


@dataclass(frozen=True)
class Cache:
    level: int
    type: str                          # "Data", "Instruction" or "Unified"
    size_bytes: Optional[int]
    cpus: tuple[int, ...]              # the CPUs sharing this cache

    @classmethod
    def from_json(cls, data: dict) -> "Cache":
        return cls(data["level"], data["type"], data["size_bytes"], _ints(data["cpus"]))


@dataclass(frozen=True)
class Isa:
    vendor: Optional[str]
    model_name: Optional[str]
    flags: tuple[str, ...]             # among KNOWN_FLAGS, in that order

    def has(self, name: str) -> bool:
        return _normal_flag(name) in self.flags

    @classmethod
    def from_json(cls, data: dict) -> "Isa":
        return cls(data["vendor"], data["model_name"], tuple(data["flags"]))


@dataclass(frozen=True)
class Allowed:
    """What a process on this root may use: online CPUs and nodes narrowed by every restriction read."""
    cpus: tuple[int, ...]
    nodes: tuple[int, ...]
    cgroup_version: Optional[int]
    cgroup_path: Optional[str]
    cpuset_cpus: Optional[tuple[int, ...]]
    cpuset_mems: Optional[tuple[int, ...]]
    memory_limit_bytes: Optional[int]
    cpu_quota: Optional[float]         # CPUs' worth of time per period (cgroup cpu.max); None: unlimited
    sources: tuple[str, ...]           # the files (and calls) these restrictions were read from

    @classmethod
    def from_json(cls, data: dict) -> "Allowed":
        # "cpu_quota_cpus" is how probe JSON written before the rename spelled the quota.
        quota = data["cpu_quota"] if "cpu_quota" in data else data["cpu_quota_cpus"]
        return cls(_ints(data["cpus"]), _ints(data["nodes"]), data["cgroup_version"], data["cgroup_path"],
                   _optional_ints(data["cpuset_cpus"]), _optional_ints(data["cpuset_mems"]),
                   data["memory_limit_bytes"], quota, tuple(data["sources"]))


@dataclass(frozen=True)
class KernelKnobs:
    numa_balancing: Optional[int]
    thp_enabled: Optional[str]
    thp_defrag: Optional[str]
    zone_reclaim_mode: Optional[int]
    governors: tuple[tuple[str, tuple[int, ...]], ...]   # (governor, its CPUs), by first CPU
    cmdline: Optional[str]

    def to_json(self) -> dict:
        data = _to_json(self)
        data["governors"] = [{"governor": name, "cpus": list(cpus)} for name, cpus in self.governors]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "KernelKnobs":
        governors = tuple((g["governor"], _ints(g["cpus"])) for g in data["governors"])
        return cls(data["numa_balancing"], data["thp_enabled"], data["thp_defrag"],
                   data["zone_reclaim_mode"], governors, data["cmdline"])


@dataclass(frozen=True)
class Tools:
    numactl: Optional[str]
    lstopo: Optional[str]

    @classmethod
    def from_json(cls, data: dict) -> "Tools":
        return cls(data["numactl"], data["lstopo"])


@dataclass(frozen=True)
class MemoryTier:
    id: int
    nodes: tuple[int, ...]

    @classmethod
    def from_json(cls, data: dict) -> "MemoryTier":
        return cls(data["id"], _ints(data["nodes"]))


@dataclass(frozen=True)
class Topology:
    schema_version: int
    root: str
    nodes: tuple[Node, ...]
    cpus: tuple[Cpu, ...]
    packages: int                      # 0: the root gives no package information
    dies: Optional[int]
    cores: int                         # cores with at least one online CPU
    pus: int                           # online hardware threads
    threads_per_core: Optional[int]    # most online threads on one core; None if cores unknown
    online_cpus: tuple[int, ...]
    all_cpus: tuple[int, ...]
    offline_cpus: tuple[int, ...]
    isolated_cpus: tuple[int, ...]
    caches: tuple[Cache, ...]
    isa: Isa
    allowed: Allowed
    knobs: KernelKnobs
    tools: Tools
    memory_total_bytes: Optional[int]
    memory_available_bytes: Optional[int]
    memory_tiers: tuple[MemoryTier, ...]
    unknown: tuple[str, ...]           # each fact that could not be read, and why

    @cached_property
    def _cpu_by_id(self) -> dict[int, Cpu]:
        return {cpu.id: cpu for cpu in self.cpus}

    @cached_property
    def _node_by_id(self) -> dict[int, Node]:
        return {node.id: node for node in self.nodes}

    def node(self, node_id: int) -> Node:
        try:
            return self._node_by_id[node_id]
        except KeyError:
            raise KeyError(f"no NUMA node {node_id}") from None

    def cpu(self, cpu_id: int) -> Cpu:
        try:
            return self._cpu_by_id[cpu_id]
        except KeyError:
            raise KeyError(f"no CPU {cpu_id}") from None

    def node_of_cpu(self, cpu_id: int) -> Optional[int]:
        cpu = self._cpu_by_id.get(cpu_id)
        return cpu.node if cpu else None

    def core_groups(self, cpus: Iterable[int]) -> list[tuple[int, ...]]:
        """The given CPUs grouped by physical core, by first CPU; a CPU of unknown core is alone."""
        groups: dict[object, list[int]] = {}
        for cpu_id in sorted(set(cpus)):
            cpu = self._cpu_by_id.get(cpu_id)
            key = ("core", cpu.core) if cpu is not None and cpu.core is not None else ("cpu", cpu_id)
            groups.setdefault(key, []).append(cpu_id)
        return sorted(tuple(group) for group in groups.values())

    def one_cpu_per_core(self, cpus: Iterable[int]) -> tuple[int, ...]:
        return tuple(group[0] for group in self.core_groups(cpus))

    def usable_cpus_of_node(self, node_id: int) -> tuple[int, ...]:
        """The node's CPUs that are online and that this process may use."""
        usable = set(self.online_cpus) & set(self.allowed.cpus)
        return tuple(cpu for cpu in self.node(node_id).cpus if cpu in usable)

    def usable_cpus(self) -> tuple[int, ...]:
        """Every online CPU this process may run on."""
        usable = set(self.online_cpus) & set(self.allowed.cpus)
        return tuple(sorted(usable))

    def quota_threads(self) -> Optional[int]:
        """Busy threads the cgroup CPU quota can keep running without throttling: the quota
        rounded down (a thread beyond it stalls a whole lockstep pool every period), at least 1;
        None when there is no quota."""
        quota = self.allowed.cpu_quota
        return None if quota is None else max(1, math.floor(quota + 1e-9))

    def max_busy_threads(self) -> int:
        """Threads that can run at once: the usable CPUs, capped by the CPU quota, at least 1."""
        usable = len(self.usable_cpus())
        by_quota = self.quota_threads()
        return max(1, usable if by_quota is None else min(usable, by_quota))

    def packages_of_node(self, node_id: int) -> tuple[int, ...]:
        """The packages (sockets) the node's CPUs belong to; () for a CPU-less node or unknown packages."""
        packages = {self._cpu_by_id[c].package for c in self.node(node_id).cpus if c in self._cpu_by_id}
        return tuple(sorted(p for p in packages if p is not None))

    def to_json(self) -> dict:
        data = _to_json(self)
        data["knobs"] = self.knobs.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Topology":
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ProbeError(f"probe JSON: schema_version {data.get('schema_version')!r} is not "
                             f"supported (expected {SCHEMA_VERSION})")
        return cls(
            SCHEMA_VERSION, data["root"], tuple(Node.from_json(n) for n in data["nodes"]),
            tuple(Cpu.from_json(c) for c in data["cpus"]), data["packages"], data["dies"],
            data["cores"], data["pus"], data["threads_per_core"], _ints(data["online_cpus"]),
            _ints(data["all_cpus"]), _ints(data["offline_cpus"]), _ints(data["isolated_cpus"]),
            tuple(Cache.from_json(c) for c in data["caches"]), Isa.from_json(data["isa"]),
            Allowed.from_json(data["allowed"]), KernelKnobs.from_json(data["knobs"]),
            Tools.from_json(data["tools"]), data["memory_total_bytes"], data["memory_available_bytes"],
            tuple(MemoryTier.from_json(t) for t in data["memory_tiers"]), tuple(data["unknown"]))


# ---------------------------------------------------------------------------------------------
# Reading helpers


class _Reader:
    """A root plus the list of what could not be read from it."""

    def __init__(self, root: Root):
        self.root = root
        self.unknown: list[str] = []

    def note(self, message: str) -> None:
        self.unknown.append(message)

    def value(self, rel: str, parse: Callable[[str], T]) -> Optional[T]:
        """The parsed file; None when absent (silently) or unparsable (noted)."""
        text = self.root.read_text(rel)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            self.note(f"{rel}: cannot parse ({exc})")
            return None

    def first_value(self, rels: Iterable[str], parse: Callable[[str], T]) -> Optional[T]:
        for rel in rels:
            if self.root.exists(rel):
                return self.value(rel, parse)
        return None

    def numbered(self, rel: str, prefix: str) -> list[int]:
        """The N of entries named prefix+N in a directory, sorted."""
        pattern = re.compile(re.escape(prefix) + r"(\d+)")
        return sorted(int(m.group(1)) for m in map(pattern.fullmatch, self.root.listdir(rel)) if m)


def _strip(text: str) -> str:
    return text.replace("\x00", "").strip()


# ---------------------------------------------------------------------------------------------
# CPUs


def _cpu_ids(reader: _Reader) -> list[int]:
    ids = reader.numbered(SYS_CPU, "cpu")
    if ids:
        return ids
    for name in ("present", "possible"):
        listed = reader.value(f"{SYS_CPU}/{name}", parse_cpulist)
        if listed:
            reader.note(f"CPUs: no cpuN directories in {SYS_CPU}; taken from its '{name}' list")
            return listed
    processors = [int(r["processor"]) for r in _cpuinfo(reader) if r.get("processor", "").isdigit()]
    reader.note(f"CPUs: nothing in {SYS_CPU}; taken from the processors of proc/cpuinfo")
    return sorted(processors)


def _online_cpus(reader: _Reader, cpu_ids: list[int]) -> list[int]:
    listed = reader.value(f"{SYS_CPU}/online", parse_cpulist)
    if listed is not None:
        strays = set(listed) - set(cpu_ids)
        if strays:
            reader.note(f"CPUs {format_cpulist(strays)}: online but without a cpuN directory; left out")
        return sorted(set(listed) & set(cpu_ids))
    states = {cpu: reader.value(f"{SYS_CPU}/cpu{cpu}/online", parse_int) for cpu in cpu_ids}
    if all(state is None for state in states.values()):
        reader.note(f"CPU online state: no {SYS_CPU}/online nor cpuN/online; all CPUs taken as online")
    # A CPU without an 'online' file cannot be taken offline (cpu0 on most machines).
    return [cpu for cpu, state in states.items() if state != 0]


@dataclass(frozen=True)
class _CpuTopologyFiles:
    """One CPU's sysfs topology directory, as read."""
    package_id: Optional[int]
    die_id: Optional[int]
    core_id: Optional[int]
    thread_siblings: Optional[frozenset]
    package_siblings: Optional[frozenset]


def _valid_id(value: Optional[int]) -> Optional[int]:
    return None if value is None or value < 0 else value   # the kernel writes -1 for "none"


def _read_cpu_topology(reader: _Reader, cpu: int) -> _CpuTopologyFiles:
    base = f"{SYS_CPU}/cpu{cpu}/topology"

    def siblings(mask_names: tuple[str, ...], list_names: tuple[str, ...]) -> Optional[frozenset]:
        # The masks first, as hwloc reads them: where a capture's mask and list disagree, hwloc's
        # answer is the mask's.
        listed = reader.first_value([f"{base}/{n}" for n in mask_names], parse_cpumask)
        if listed is None:
            listed = reader.first_value([f"{base}/{n}" for n in list_names], parse_cpulist)
        return frozenset(listed) if listed else None

    return _CpuTopologyFiles(
        _valid_id(reader.value(f"{base}/physical_package_id", parse_int)),
        _valid_id(reader.value(f"{base}/die_id", parse_int)),
        _valid_id(reader.value(f"{base}/core_id", parse_int)),
        siblings(("core_cpus", "thread_siblings"), ("core_cpus_list", "thread_siblings_list")),
        siblings(("package_cpus", "core_siblings"), ("package_cpus_list", "core_siblings_list")))


def _index_by_first_cpu(keys: dict[int, object]) -> dict[int, int]:
    """CPU -> index of its key, keys numbered in the order of their first CPU."""
    order: dict[object, int] = {}
    for cpu in sorted(keys):
        order.setdefault(keys[cpu], len(order))
    return {cpu: order[key] for cpu, key in keys.items()}


def _groups_from_sibling_sets(sets: dict[int, frozenset], online: list[int]) -> dict[int, frozenset]:
    """CPU -> its group (a package or a core) built from sibling sets the way hwloc builds them.

    Each online CPU that is the first online CPU of its own set opens a group: that set's online
    CPUs. A set that overlaps an earlier group without being it is firmware contradicting
    itself and is dropped, as hwloc drops it; its CPUs stay in no group. An offline CPU joins the
    group its set's online CPUs form, if they form one.
    """
    online_set = set(online)
    groups: dict[int, frozenset] = {}
    for cpu in sorted(online_set):
        members = frozenset(sets.get(cpu, frozenset()) & online_set)
        if members and min(members) == cpu and not any(m in groups for m in members):
            groups.update(dict.fromkeys(members, members))
    for cpu, siblings in sets.items():
        members = frozenset(siblings & online_set)
        if cpu not in online_set and members and groups.get(min(members)) == members:
            groups[cpu] = members
    return groups


def _packages_of(files: dict[int, _CpuTopologyFiles], online: list[int]) -> dict[int, int]:
    """CPU -> package number, for the CPUs whose package is known.

    One package per distinct package sibling set (hwloc's rule: the sets can be checked against
    each other, the ids cannot; IA-64 repeats ids across sockets). A package is numbered by the
    kernel's physical_package_id of its first CPU while those ids tell the packages apart, else
    by the order of its first CPU. Without sibling sets, the ids alone.
    """
    sets = {cpu: f.package_siblings for cpu, f in files.items() if f.package_siblings}
    if not any(cpu in sets for cpu in online):
        if not online or any(files[cpu].package_id is None for cpu in online):
            return {}
        return {cpu: f.package_id for cpu, f in files.items() if f.package_id is not None}
    groups = _groups_from_sibling_sets(sets, online)
    ids = {group: files[min(group)].package_id for group in set(groups.values())}
    if None not in ids.values() and len(set(ids.values())) == len(ids):
        return {cpu: ids[group] for cpu, group in groups.items()}
    return _index_by_first_cpu(groups)


def _splits_compute_units(records: list[dict[str, str]], files: dict[int, _CpuTopologyFiles],
                          online: list[int]) -> bool:
    """Whether the SMT sibling sets are AMD compute units of separate cores (hwloc's rule).

    AMD families 0x15 and 0x16 (Bulldozer to Jaguar) list both cores of a compute unit as
    thread siblings. hwloc looks at the first online CPU with an online sibling: when the two
    report different core_id, every CPU is a core of its own; the same core_id means SMT.
    """
    first = records[0] if records else {}
    if first.get("vendor_id") != "AuthenticAMD" or first.get("cpu family") not in ("21", "22"):
        return False
    online_set = set(online)
    for cpu in sorted(online_set):
        others = sorted(((files[cpu].thread_siblings or frozenset()) & online_set) - {cpu})
        if others:
            return files[cpu].core_id != files[others[0]].core_id
    return False


def _cores_of(files: dict[int, _CpuTopologyFiles], packages: dict[int, int], online: list[int],
              split_compute_units: bool) -> dict[int, int]:
    """CPU -> machine-wide core index, from SMT sibling sets, else from (package, die, core_id)."""
    sets = {cpu: (frozenset({cpu}) if split_compute_units else f.thread_siblings)
            for cpu, f in files.items() if f.thread_siblings}
    keys: dict[int, object] = dict(_groups_from_sibling_sets(sets, online))
    for cpu, f in files.items():
        if cpu not in keys and cpu not in sets and f.core_id is not None:
            keys[cpu] = (packages.get(cpu), f.die_id, f.core_id)
    return _index_by_first_cpu(keys)


@dataclass(frozen=True)
class _Counts:
    packages: int
    dies: Optional[int]
    cores: int
    threads_per_core: Optional[int]


def _count(online: list[int], packages: dict[int, int], dies: dict[int, int],
           cores: dict[int, int]) -> _Counts:
    threads_of_core = Counter(cores[cpu] for cpu in online if cpu in cores)
    die_keys = {(packages.get(cpu), dies[cpu]) for cpu in online if cpu in dies}
    return _Counts(len({packages[cpu] for cpu in online if cpu in packages}),
                   len(die_keys) if die_keys else None, len(threads_of_core),
                   max(threads_of_core.values(), default=None))


def _isolated_cpus(reader: _Reader, cmdline: Optional[str]) -> list[int]:
    isolated = set(reader.value(f"{SYS_CPU}/isolated", parse_cpulist) or [])
    if cmdline:
        try:
            isolated |= set(parse_isolcpus(cmdline) or [])
        except ValueError as exc:
            reader.note(f"isolcpus= of proc/cmdline: cannot parse ({exc})")
    return sorted(isolated)


# ---------------------------------------------------------------------------------------------
# Nodes


def _node_cpus(reader: _Reader, node: int) -> tuple[int, ...]:
    base = f"{SYS_NODE}/node{node}"
    listed = reader.value(f"{base}/cpulist", parse_cpulist)
    if listed is None:
        # Old kernels have no cpulist; the node directory links its CPUs as cpuN.
        listed = reader.numbered(base, "cpu") or reader.value(f"{base}/cpumap", parse_cpumask)
    if listed is None:
        reader.note(f"node {node} CPUs: no cpulist, cpuN entries nor cpumap in {base}")
    return tuple(listed or ())


def _node_memory(reader: _Reader, node: int) -> tuple[int, Optional[int]]:
    """(MemTotal, MemFree) of a node in bytes; (0, None) when its meminfo cannot be read."""
    rel = f"{SYS_NODE}/node{node}/meminfo"
    info = reader.value(rel, parse_meminfo) or {}
    if "MemTotal" not in info:
        reader.note(f"node {node} memory: no MemTotal in {rel}; counted as 0")
        return 0, None
    return info["MemTotal"], info.get("MemFree")


def _hugepage_pools(reader: _Reader, directory: str) -> tuple[HugePagePool, ...]:
    pools = []
    for name in reader.root.listdir(directory):
        match = re.fullmatch(r"hugepages-(\d+)kB", name)
        if not match:
            continue
        total = reader.value(f"{directory}/{name}/nr_hugepages", parse_int)
        free = reader.value(f"{directory}/{name}/free_hugepages", parse_int)
        if total is None or free is None:
            reader.note(f"{directory}/{name}: nr_hugepages or free_hugepages unreadable")
            continue
        pools.append(HugePagePool(int(match.group(1)) * 1024, total, free))
    return tuple(sorted(pools, key=lambda pool: pool.size_bytes))


def _distance_rows(reader: _Reader, ids: list[int]) -> dict[int, Optional[tuple[int, ...]]]:
    """Each node's row of the distance matrix, or None.

    None everywhere on a single node (a 1x1 matrix says nothing), and for a row that is missing
    or does not hold one distance per node.
    """
    if len(ids) < 2:
        return {node: None for node in ids}
    rows: dict[int, Optional[tuple[int, ...]]] = {}
    for node in ids:
        rel = f"{SYS_NODE}/node{node}/distance"
        row = reader.value(rel, parse_distances)
        if row is not None and len(row) != len(ids):
            reader.note(f"node {node} distances: {rel} has {len(row)} values for {len(ids)} nodes; ignored")
            row = None
        rows[node] = tuple(row) if row is not None else None
    missing = [node for node in ids if not reader.root.exists(f"{SYS_NODE}/node{node}/distance")]
    if missing:
        reader.note(f"node distances: no nodeN/distance in this root for node(s) {format_cpulist(missing)}")
    return rows


def _local_cpus(reader: _Reader, node: int, cpus_of: dict[int, tuple[int, ...]],
                rows: dict[int, Optional[tuple[int, ...]]]) -> tuple[int, ...]:
    """A node's CPUs; for a CPU-less node, those of its nearest nodes with CPUs.

    Nearest by the firmware's own statement when there is one (HMAT: the best CPU initiators
    listed in nodeN/access1/initiators), else by the distance matrix (all nodes at the least
    distance). Empty when neither says.
    """
    if cpus_of[node]:
        return cpus_of[node]
    initiators = reader.numbered(f"{SYS_NODE}/node{node}/access1/initiators", "node")
    nearest = [n for n in initiators if cpus_of.get(n)]
    row = rows.get(node)
    if not nearest and row is not None:
        with_cpus = {other: distance for other, distance in zip(sorted(cpus_of), row) if cpus_of[other]}
        least = min(with_cpus.values(), default=None)
        nearest = [other for other, distance in with_cpus.items() if distance == least]
    return tuple(sorted({cpu for n in nearest for cpu in cpus_of[n]}))


def _whole_machine_node(reader: _Reader, cpu_ids: list[int]) -> Node:
    """Node 0 of a kernel built without NUMA: every CPU, and the memory of proc/meminfo."""
    info = reader.value("proc/meminfo", parse_meminfo) or {}
    if "MemTotal" not in info:
        reader.note("node 0 memory: no MemTotal in proc/meminfo; counted as 0")
    pools = _hugepage_pools(reader, "sys/kernel/mm/hugepages")
    return Node(0, tuple(cpu_ids), info.get("MemTotal", 0), info.get("MemFree"), pools, None, tuple(cpu_ids))


def _nodes(reader: _Reader, cpu_ids: list[int]) -> tuple[Node, ...]:
    ids = reader.numbered(SYS_NODE, "node")
    if not ids:
        reader.note(f"NUMA nodes: no {SYS_NODE}/nodeN (kernel without NUMA); "
                    "one node 0 holds all CPUs and memory")
        return (_whole_machine_node(reader, cpu_ids),)
    cpus_of = {node: _node_cpus(reader, node) for node in ids}
    rows = _distance_rows(reader, ids)
    nodes = []
    for node in ids:
        total, free = _node_memory(reader, node)
        pools = _hugepage_pools(reader, f"{SYS_NODE}/node{node}/hugepages")
        nodes.append(Node(node, cpus_of[node], total, free, pools, rows[node],
                          _local_cpus(reader, node, cpus_of, rows)))
    return tuple(nodes)


def _node_of_cpus(reader: _Reader, nodes: tuple[Node, ...], cpu_ids: list[int]) -> dict[int, int]:
    owners: dict[int, list[int]] = {}
    for node in nodes:
        for cpu in node.cpus:
            owners.setdefault(cpu, []).append(node.id)
    shared = [cpu for cpu, ids in owners.items() if len(ids) > 1]
    if shared:
        reader.note(f"CPUs {format_cpulist(shared)}: listed by several nodes (broken firmware NUMA "
                    "information?); each is counted in the lowest")
    node_of = {cpu: ids[0] for cpu, ids in owners.items()}
    for cpu in cpu_ids:
        linked = reader.numbered(f"{SYS_CPU}/cpu{cpu}", "node") if cpu not in node_of else []
        if linked:
            node_of[cpu] = linked[0]
    return node_of


def _memory_tiers(reader: _Reader) -> tuple[MemoryTier, ...]:
    tiers = []
    for tier in reader.numbered(SYS_TIERS, "memory_tier"):
        nodes = reader.value(f"{SYS_TIERS}/memory_tier{tier}/nodelist", parse_cpulist)
        if nodes is not None:
            tiers.append(MemoryTier(tier, tuple(nodes)))
    return tuple(tiers)


# ---------------------------------------------------------------------------------------------
# Caches and ISA


def _caches(reader: _Reader, cpu_ids: list[int]) -> tuple[Cache, ...]:
    """One Cache per distinct (level, type, CPUs sharing it)."""
    caches: dict[tuple, Cache] = {}
    unshared = 0
    for cpu in cpu_ids:
        base = f"{SYS_CPU}/cpu{cpu}/cache"
        for index in reader.numbered(base, "index"):
            directory = f"{base}/index{index}"
            level = reader.value(f"{directory}/level", parse_int)
            kind = reader.value(f"{directory}/type", _strip)
            if level is None or not kind:
                continue
            shared = reader.value(f"{directory}/shared_cpu_list", parse_cpulist)
            if shared is None:   # kernels before 2.6.26 write only the mask
                shared = reader.value(f"{directory}/shared_cpu_map", parse_cpumask)
            if not shared:
                unshared += 1
                shared = [cpu]
            key = (level, kind, tuple(shared))
            if key not in caches:
                caches[key] = Cache(level, kind, reader.value(f"{directory}/size", parse_size), key[2])
    if unshared:
        reader.note(f"caches: {unshared} cpuN/cache/indexM list no CPUs sharing them; "
                    "each counted as private to its CPU")
    return tuple(sorted(caches.values(), key=lambda c: (c.level, c.type, c.cpus)))


def _cpuinfo(reader: _Reader) -> list[dict[str, str]]:
    text = reader.root.read_text("proc/cpuinfo")
    return parse_cpuinfo(text) if text else []


def _normal_flag(name: str) -> str:
    return _FLAG_BY_SPELLING.get(name.lower().replace("_", ""), name.lower())


def _first_field(records: list[dict[str, str]], keys: tuple[str, ...]) -> Optional[str]:
    for key in keys:
        for record in records:
            if record.get(key):
                return record[key]
    return None


def _py_cpuinfo_flags(reader: _Reader) -> set[str]:
    try:
        import cpuinfo
        return {_normal_flag(flag) for flag in cpuinfo.get_cpu_info().get("flags", [])}
    except Exception as exc:   # py-cpuinfo probes CPUID in a child process; any failure is "unknown"
        reader.note(f"ISA flags from py-cpuinfo: {type(exc).__name__}: {exc}")
        return set()


def _isa(reader: _Reader) -> Isa:
    records = _cpuinfo(reader)
    if not records:
        reader.note("ISA: no proc/cpuinfo in this root")
    flag_sets = [{_normal_flag(flag) for flag in (r.get("flags") or r.get("Features") or r.get("features")).split()}
                 for r in records if r.get("flags") or r.get("Features") or r.get("features")]
    # A flag counts only if every CPU has it (hybrid parts may differ between core types).
    flags = set.intersection(*flag_sets) if flag_sets else set()
    # py-cpuinfo runs CPUID in a child process (about a second); trial children, which need no
    # ISA facts, skip it with NUMATUNE_QUICK_PROBE=1.
    if reader.root.is_live and not os.environ.get("NUMATUNE_QUICK_PROBE"):
        flags |= _py_cpuinfo_flags(reader)
    return Isa(_first_field(records, ("vendor_id", "vendor", "CPU implementer")),
               _first_field(records, ("model name", "cpu", "family")),
               tuple(flag for flag in KNOWN_FLAGS if flag in flags))


# ---------------------------------------------------------------------------------------------
# What this process may use


def _ancestors(path: str) -> list[str]:
    """"/a/b" -> ["/a/b", "/a", "/"]."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _cgroup_file(hierarchy: CgroupHierarchy, path: str, name: str) -> str:
    return posixpath.join(hierarchy.mountpoint, path.lstrip("/"), hierarchy.file_prefix + name).lstrip("/")


def _holds(reader: _Reader, hierarchy: CgroupHierarchy, controller: str) -> Optional[bool]:
    """Whether a hierarchy has `controller`; None when its cgroup.controllers is not in the root."""
    if hierarchy.version == 1:
        return True
    text = reader.root.read_text(posixpath.join(hierarchy.mountpoint, "cgroup.controllers").lstrip("/"))
    return None if text is None else controller in text.split()


@dataclass(frozen=True)
class _Cpuset:
    version: int
    path: str
    cpus: tuple[int, ...]
    mems: tuple[int, ...]
    sources: tuple[str, ...]


def _read_cpuset_files(reader: _Reader, hierarchy: CgroupHierarchy, path: str) -> Optional[_Cpuset]:
    if hierarchy.version == 2:
        cpus_name, mems_name = "cpus.effective", "mems.effective"
        # A v2 cgroup without the cpuset controller enabled runs on its parent's cpuset.
        directories = _ancestors(path)
    else:
        # v1 (and the legacy cpuset fs): the group's own cpus/mems, as hwloc reads them. The
        # "effective_" files can be stale after hotplug (a POWER9 capture says effective 0-87
        # of cpus 0-175 with 0-15,88-103 online); offline CPUs are taken out later anyway.
        cpus_name, mems_name = "cpus", "mems"
        directories = [path]
    for directory in directories:
        cpus_rel = _cgroup_file(hierarchy, directory, cpus_name)
        mems_rel = _cgroup_file(hierarchy, directory, mems_name)
        cpus = reader.value(cpus_rel, parse_cpulist)
        mems = reader.value(mems_rel, parse_cpulist)
        if cpus is not None and mems is not None:
            return _Cpuset(hierarchy.version, path, tuple(cpus), tuple(mems),
                           (reader.root.path_of(cpus_rel), reader.root.path_of(mems_rel)))
    return None


# Where hwloc looks for the cpuset hierarchy before reading proc/mounts: a file that only that
# hierarchy has, and the hierarchy.
_STANDARD_CPUSET_MOUNTS = (
    ("sys/fs/cgroup/cpuset.cpus.effective", CgroupHierarchy(2, "/sys/fs/cgroup", "cpuset.")),
    ("sys/fs/cgroup/cpuset/cpuset.cpus", CgroupHierarchy(1, "/sys/fs/cgroup/cpuset", "cpuset.")),
    ("dev/cpuset/cpus", CgroupHierarchy(1, "/dev/cpuset", "")),
)


def _cpuset_hierarchy(reader: _Reader, mounts: list[Mount]) -> Optional[CgroupHierarchy]:
    """The cpuset hierarchy, chosen as hwloc chooses it: a standard mount point holding its files,
    else the first mount in proc/mounts that holds the cpuset controller."""
    for marker, hierarchy in _STANDARD_CPUSET_MOUNTS:
        if reader.root.exists(marker):
            return hierarchy
    order = [mount.mountpoint for mount in mounts]
    unconfirmed = []
    for hierarchy in sorted(cgroup_hierarchies(mounts, "cpuset"), key=lambda h: order.index(h.mountpoint)):
        holds = _holds(reader, hierarchy, "cpuset")
        if holds:
            return hierarchy
        if holds is None:
            unconfirmed.append(hierarchy.mountpoint)
    if unconfirmed:
        reader.note(f"cgroup cpuset: cgroup.controllers of {', '.join(unconfirmed)} not in this root")
    elif not mounts:
        reader.note("cgroup cpuset: no proc/mounts in this root")
    return None


def _cpuset(reader: _Reader, mounts: list[Mount], memberships: list[CgroupMembership]) -> Optional[_Cpuset]:
    """The process's cgroup cpuset: its group from proc/self/cpuset, else proc/self/cgroup."""
    hierarchy = _cpuset_hierarchy(reader, mounts)
    if hierarchy is None:
        return None
    path = (reader.value("proc/self/cpuset", _strip) or cgroup_path_of(memberships, "cpuset", 1)
            or cgroup_path_of(memberships, "cpuset", 2))
    if path is None:
        reader.note("cgroup cpuset: the process's cgroup is in neither proc/self/cpuset "
                    "nor proc/self/cgroup")
        return None
    found = _read_cpuset_files(reader, hierarchy, path)
    if found is None:
        reader.note(f"cgroup cpuset: no cpus/mems files for {path} under {hierarchy.mountpoint} "
                    "in this root")
    return found


def _read_cpu_quota(reader: _Reader, hierarchy: CgroupHierarchy, directory: str) -> tuple[Optional[float], str]:
    if hierarchy.version == 2:
        rel = _cgroup_file(hierarchy, directory, "max")
        return reader.value(rel, parse_cpu_max), rel
    quota_rel = _cgroup_file(hierarchy, directory, "cfs_quota_us")
    quota = reader.root.read_text(quota_rel)
    period = reader.root.read_text(_cgroup_file(hierarchy, directory, "cfs_period_us"))
    if quota is None or period is None:
        return None, quota_rel
    try:
        return parse_cfs_quota(quota, period), quota_rel
    except ValueError as exc:
        reader.note(f"{quota_rel}: cannot parse ({exc})")
        return None, quota_rel


def _read_memory_limit(reader: _Reader, hierarchy: CgroupHierarchy, directory: str) -> tuple[Optional[int], str]:
    rel = _cgroup_file(hierarchy, directory, "max" if hierarchy.version == 2 else "limit_in_bytes")
    return reader.value(rel, parse_memory_limit), rel


def _tightest_limit(reader: _Reader, mounts: list[Mount], memberships: list[CgroupMembership],
                    controller: str, read_one) -> tuple[Optional[float], list[str]]:
    """The smallest limit of `controller` on the process's cgroup and its ancestors, and its files."""
    for hierarchy in cgroup_hierarchies(mounts, controller):
        path = cgroup_path_of(memberships, controller, hierarchy.version)
        if path is None or not _holds(reader, hierarchy, controller):
            continue
        limits = [read_one(reader, hierarchy, directory) for directory in _ancestors(path)]
        limits = [(value, rel) for value, rel in limits if value is not None]
        if not limits:
            return None, []
        value, rel = min(limits)
        return value, [reader.root.path_of(rel)]
    return None, []


def _allowed(reader: _Reader, online: list[int], node_ids: list[int]) -> Allowed:
    mounts = reader.value("proc/mounts", parse_mounts) or []
    memberships = reader.value("proc/self/cgroup", parse_proc_cgroup) or []
    cpus, nodes, sources = set(online), set(node_ids), []
    cpuset = _cpuset(reader, mounts, memberships)
    if cpuset:
        cpus &= set(cpuset.cpus)
        nodes &= set(cpuset.mems)
        sources += cpuset.sources
    status = reader.value("proc/self/status", parse_status)
    if status and status.cpus_allowed is not None:
        cpus &= set(status.cpus_allowed)
    if status and status.mems_allowed is not None:
        nodes &= set(status.mems_allowed)
    if status and (status.cpus_allowed is not None or status.mems_allowed is not None):
        sources.append(reader.root.path_of("proc/self/status"))
    if reader.root.is_live and hasattr(os, "sched_getaffinity"):
        cpus &= os.sched_getaffinity(0)
        sources.append("sched_getaffinity(0)")
    quota, quota_files = _tightest_limit(reader, mounts, memberships, "cpu", _read_cpu_quota)
    memory, memory_files = _tightest_limit(reader, mounts, memberships, "memory", _read_memory_limit)
    version, path = _cgroup_membership(cpuset, memberships)
    return Allowed(tuple(sorted(cpus)), tuple(sorted(nodes)), version, path,
                   cpuset.cpus if cpuset else None, cpuset.mems if cpuset else None,
                   memory, quota, tuple(sources + quota_files + memory_files))


def _cgroup_membership(cpuset: Optional[_Cpuset],
                       memberships: list[CgroupMembership]) -> tuple[Optional[int], Optional[str]]:
    """(cgroup version, path) of the process: that of its cpuset, else what proc/self/cgroup says."""
    if cpuset:
        return cpuset.version, cpuset.path
    if any(entry.hierarchy != 0 for entry in memberships):
        return 1, cgroup_path_of(memberships, "cpuset", 1)
    unified = cgroup_path_of(memberships, "", 2)
    return (2, unified) if unified else (None, None)


# ---------------------------------------------------------------------------------------------
# Kernel knobs and tools


def _knob(reader: _Reader, rel: str, parse: Callable[[str], T]) -> Optional[T]:
    value = reader.value(rel, parse)
    if value is None and not reader.root.exists(rel):
        reader.note(f"{rel}: not in this root")
    return value


def _governors(reader: _Reader, cpu_ids: list[int]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    cpus_of: dict[str, list[int]] = {}
    for cpu in cpu_ids:
        governor = reader.value(f"{SYS_CPU}/cpu{cpu}/cpufreq/scaling_governor", _strip)
        if governor:
            cpus_of.setdefault(governor, []).append(cpu)
    if not cpus_of:
        reader.note("CPU frequency governor: no cpuN/cpufreq/scaling_governor in this root")
    return tuple(sorted(((g, tuple(c)) for g, c in cpus_of.items()), key=lambda item: item[1][0]))


def _knobs(reader: _Reader, cpu_ids: list[int], cmdline: Optional[str]) -> KernelKnobs:
    return KernelKnobs(
        _knob(reader, "proc/sys/kernel/numa_balancing", parse_int),
        _knob(reader, f"{THP}/enabled", parse_bracketed_choice),
        _knob(reader, f"{THP}/defrag", parse_bracketed_choice),
        _knob(reader, "proc/sys/vm/zone_reclaim_mode", parse_int),
        _governors(reader, cpu_ids), cmdline)


def _tools(root: Root) -> Tools:
    if not root.is_live:
        return Tools(None, None)
    return Tools(shutil.which("numactl"), shutil.which("lstopo"))


# ---------------------------------------------------------------------------------------------
# The probe


def _note_missing_layout(reader: _Reader, online: list[int], packages: dict[int, int],
                         dies: dict[int, int], cores: dict[int, int]) -> None:
    if online and not any(cpu in packages for cpu in online):
        reader.note("packages: no physical_package_id nor package sibling list in cpuN/topology")
    if online and not any(cpu in dies for cpu in online):
        reader.note("dies: no die_id in cpuN/topology (kernels before 5.2, most non-x86); dies unknown")
    if online and not any(cpu in cores for cpu in online):
        reader.note("cores: no SMT sibling list nor core_id in cpuN/topology; threads per core unknown")


def _smt_siblings(files: _CpuTopologyFiles, cpu: int, split_compute_units: bool) -> tuple[int, ...]:
    if split_compute_units or not files.thread_siblings:
        return (cpu,)
    return tuple(sorted(files.thread_siblings))


def probe(root: Root) -> Topology:
    """Reads everything numatune needs to know about the machine under `root`."""
    reader = _Reader(root)
    cpu_ids = _cpu_ids(reader)
    online = _online_cpus(reader, cpu_ids)
    files = {cpu: _read_cpu_topology(reader, cpu) for cpu in cpu_ids}
    packages = _packages_of(files, online)
    dies = {cpu: f.die_id for cpu, f in files.items() if f.die_id is not None}
    split_compute_units = _splits_compute_units(_cpuinfo(reader), files, online)
    cores = _cores_of(files, packages, online, split_compute_units)
    counts = _count(online, packages, dies, cores)
    _note_missing_layout(reader, online, packages, dies, cores)
    nodes = _nodes(reader, cpu_ids)
    node_of = _node_of_cpus(reader, nodes, cpu_ids)
    cmdline = _knob(reader, "proc/cmdline", _strip)
    isolated = _isolated_cpus(reader, cmdline)
    online_set = set(online)
    cpus = tuple(Cpu(cpu, cpu in online_set, packages.get(cpu), dies.get(cpu), cores.get(cpu), node_of.get(cpu),
                     _smt_siblings(files[cpu], cpu, split_compute_units), cpu in isolated)
                 for cpu in cpu_ids)
    meminfo = reader.value("proc/meminfo", parse_meminfo)
    if meminfo is None:
        reader.note("system memory: no proc/meminfo in this root")
    meminfo = meminfo or {}
    return Topology(
        schema_version=SCHEMA_VERSION, root=root.spec, nodes=nodes, cpus=cpus,
        packages=counts.packages, dies=counts.dies, cores=counts.cores, pus=len(online),
        threads_per_core=counts.threads_per_core, online_cpus=tuple(online), all_cpus=tuple(cpu_ids),
        offline_cpus=tuple(cpu for cpu in cpu_ids if cpu not in online_set),
        isolated_cpus=tuple(isolated), caches=_caches(reader, cpu_ids), isa=_isa(reader),
        allowed=_allowed(reader, online, [node.id for node in nodes]),
        knobs=_knobs(reader, cpu_ids, cmdline), tools=_tools(root),
        memory_total_bytes=meminfo.get("MemTotal"), memory_available_bytes=meminfo.get("MemAvailable"),
        memory_tiers=_memory_tiers(reader), unknown=tuple(reader.unknown))
