"""A configuration to run: which CPUs, which memory policy on which nodes — and how a process is
placed to realise it (by numactl or by numatune itself)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .policy import Policy


@dataclass(frozen=True)
class Configuration:
    """One point of the search space; also what a saved result and a recommendation hold.

    `cpus` are the worker CPUs (one thread each); `nodes` the memory nodes of the policy:
    bind → one node; interleave → the set; replicate/partition → the nodes holding a copy or
    a slice (each with workers); first-touch → the nodes of the workers. `numa_mode` is the value
    of the engine's own thread-placement flag (llama.cpp --numa) when the search chose it; None
    leaves the profile's own.
    """

    cpus: tuple[int, ...]
    policy: Policy                  # a policy name is accepted and turned into its Policy
    nodes: tuple[int, ...]
    instances: int = 1
    numa_mode: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", Policy.parse(self.policy, "configuration"))
        if not self.cpus or not self.nodes or self.instances < 1:
            raise ValueError("a configuration needs CPUs, nodes and at least one instance")
        if self.instances > 1 and (self.policy is not Policy.BIND or len(self.nodes) != self.instances):
            raise ValueError("several instances run one per node, each bound to its node")

    def split(self, node_of_cpu) -> tuple["Configuration", ...]:
        """One configuration per instance: instance i runs on node i's CPUs, bound to node i."""
        if self.instances == 1:
            return (self,)
        return tuple(Configuration(tuple(c for c in self.cpus if node_of_cpu(c) == node), Policy.BIND, (node,),
                                   numa_mode=self.numa_mode) for node in self.nodes)

    @property
    def threads(self) -> int:
        return len(self.cpus)

    def label(self) -> str:
        from .sysfs import format_cpulist
        return (f"{self.policy} nodes={format_cpulist(self.nodes)} threads={self.threads} "
                f"cpus={format_cpulist(self.cpus)}" + (f" ×{self.instances} instances" if self.instances > 1 else "")
                + (f" numa={self.numa_mode}" if self.numa_mode else ""))

    def to_json(self) -> dict:
        data = {"cpus": list(self.cpus), "policy": self.policy.value, "nodes": list(self.nodes),
                "instances": self.instances}
        if self.numa_mode is not None:
            data["numa_mode"] = self.numa_mode
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Configuration":
        mode = data.get("numa_mode")
        return cls(tuple(int(c) for c in data["cpus"]), str(data["policy"]),
                   tuple(int(n) for n in data["nodes"]), int(data.get("instances", 1)),
                   None if mode is None else str(mode))


@dataclass(frozen=True)
class ProcessPlacement:
    """What the launcher sets on a process before it starts: CPU affinity and memory policy.

    memory_mode: "default" (local allocation, first touch), "bind", "interleave", or
    "preferred" over `memory_nodes` — the modes of set_mempolicy(2) and of numactl.
    """

    cpus: tuple[int, ...]
    memory_mode: str
    memory_nodes: tuple[int, ...]


def process_placement(config: Configuration, engine_places_memory: bool) -> ProcessPlacement:
    """The process-level placement of a configuration.

    bind and interleave are process memory policies. first-touch is the default policy. For
    replicate and partition the engine places each copy or slice itself (numatune's engine, a
    NUMA build of ktransformers), so the process only gets its CPUs; an engine that cannot place
    memory itself gets them as an interleave over the nodes, the closest it can come.
    """
    if config.policy in (Policy.BIND, Policy.INTERLEAVE):      # the memory modes of the same names
        return ProcessPlacement(config.cpus, config.policy.value, config.nodes)
    if config.policy.per_node_groups and not engine_places_memory:
        return ProcessPlacement(config.cpus, "interleave", config.nodes)
    return ProcessPlacement(config.cpus, "default", ())
