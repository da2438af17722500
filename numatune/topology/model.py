"""The values of the probe: `Topology` and the frozen records it is made of, with their JSON.

A `Topology` is what everything above the probe takes, never a path; each record turns itself
into JSON (`to_json`) and back (`from_json`), and the probe JSON carries `SCHEMA_VERSION`. Facts
the probe could not read are None (or empty) here and explained in `Topology.unknown`. How
packages, dies and cores are numbered is the layout module's (`numatune.topology.layout`);
`KNOWN_FLAGS` is the ISA vocabulary `Isa.flags` is written in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass
from functools import cached_property
from typing import Iterable, Optional

from ..errors import ProbeError

SCHEMA_VERSION = 1

# ISA features that matter to the kernels numatune runs, under one name whatever the source
# spells them (/proc/cpuinfo writes "avx512_vnni", py-cpuinfo "avx512vnni").
KNOWN_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
    "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2",
)
_FLAG_BY_SPELLING = {name.replace("_", ""): name for name in KNOWN_FLAGS}


def normal_flag(name: str) -> str:
    """An ISA flag under its one name (see KNOWN_FLAGS), whatever the source's spelling."""
    return _FLAG_BY_SPELLING.get(name.lower().replace("_", ""), name.lower())


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
    core: Optional[int]                # machine-wide core index (see the layout module)
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
        return normal_flag(name) in self.flags

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
