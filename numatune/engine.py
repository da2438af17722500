"""The bundled MoE engine: loads a GGUF's routed experts into placed memory and runs them.

Policy decisions (which nodes, whether memory suffices) are made here, in Python; the C++ core
(`_kernels.MoeEngine`) copies, places and computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import _kernels
from .capacity import HEADROOM_PERCENT, bytes_per_node, shortfalls
from .errors import NumatuneError, PlacementError
from .gguf_moe import SUPPORTED_TYPES, MoeLayer, MoeModel, read_moe_model
from .policy import Policy
from .topology.model import Topology

GIB = 1 << 30


@dataclass(frozen=True)
class PlacementPlan:
    """Where the weights go: the policy, its node set, and what each node must hold."""

    policy: Policy
    nodes: tuple[int, ...]
    worker_nodes: tuple[int, ...]       # node of each worker CPU, in CPU order
    bytes_per_node: tuple[tuple[int, int], ...]

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.bytes_per_node)


def plan_placement(topology: Topology, cpus: Sequence[int], policy: Policy | str, nodes: Sequence[int] | None,
                   weight_bytes: int) -> PlacementPlan:
    """Checks the request against the machine and the memory each node has free."""
    try:
        policy = Policy.parse(policy, "--policy")
    except ValueError as exc:
        raise PlacementError(str(exc)) from None
    if not cpus:
        raise PlacementError("--cpus: no CPUs given")
    worker_nodes = []
    for cpu in cpus:
        node = topology.node_of_cpu(cpu)
        if node is None or cpu not in topology.online_cpus:
            raise PlacementError(f"--cpus: CPU {cpu} is not an online CPU of this machine")
        if cpu not in topology.allowed.cpus:
            raise PlacementError(f"--cpus: CPU {cpu} is outside this process's cpuset")
        worker_nodes.append(node)
    cpu_nodes = sorted(set(worker_nodes))
    chosen = _node_set(topology, policy, nodes, cpu_nodes)
    need = bytes_per_node(policy, weight_bytes, chosen, worker_nodes)
    for node, needed, have in shortfalls(topology, need)[:1]:
        raise PlacementError(
            f"node {node}: {policy} needs {needed / GIB:.2f} GiB of weights there (+{HEADROOM_PERCENT}% working "
            f"memory) but only {have / GIB:.2f} GiB is free" + (" (one full copy per node)" if policy is Policy.REPLICATE else ""))
    return PlacementPlan(policy, tuple(chosen), tuple(worker_nodes), tuple(sorted(need.items())))


def _node_set(topology: Topology, policy: Policy, nodes: Sequence[int] | None, cpu_nodes: list[int]) -> list[int]:
    memory_nodes = {n.id for n in topology.nodes if n.has_memory}
    if nodes:
        for node in nodes:
            if node not in memory_nodes:
                raise PlacementError(f"--nodes: node {node} does not exist or has no memory")
            if node not in topology.allowed.nodes:
                raise PlacementError(f"--nodes: node {node} is outside this process's allowed memory nodes")
    if policy is Policy.FIRST_TOUCH:
        return sorted(set(cpu_nodes))
    if policy is Policy.BIND:
        chosen = list(nodes) if nodes else [cpu_nodes[0]]
        if len(chosen) != 1:
            raise PlacementError(f"--nodes: bind places memory on one node, got {chosen}")
        if chosen[0] not in memory_nodes:
            raise PlacementError(f"node {chosen[0]} has no memory to bind to")
        return chosen
    if policy is Policy.INTERLEAVE:
        return sorted(nodes) if nodes else sorted(n for n in memory_nodes if n in topology.allowed.nodes)
    # replicate and partition: one copy or slice per node that has workers (reading locally).
    chosen = sorted(nodes) if nodes else cpu_nodes
    missing = [n for n in cpu_nodes if n not in chosen]
    if missing:
        raise PlacementError(f"--nodes: workers run on node(s) {missing}, which get no {policy} copy")
    idle = [n for n in chosen if n not in cpu_nodes]
    if idle:
        raise PlacementError(f"--nodes: node(s) {idle} would hold a {policy} share but run no worker")
    for node in chosen:
        if node not in memory_nodes:
            raise PlacementError(f"node {node} has CPUs but no memory: {policy} cannot place a share there")
    return chosen


def _ffn_args(gate, up, down, width: int) -> tuple:
    return (gate.data, up.data, down.data, SUPPORTED_TYPES[gate.type_name], SUPPORTED_TYPES[up.type_name],
            SUPPORTED_TYPES[down.type_name], width)


def _add_layer(core, model: MoeModel, layer: MoeLayer) -> None:
    none = np.zeros(0, np.float32)
    shared = layer.shared
    core.add_layer(
        hidden=model.hidden,
        experts=None if layer.dense else _ffn_args(layer.gate, layer.up, layer.down, model.intermediate),
        shared=None if shared is None else _ffn_args(shared.gate, shared.up, shared.down, shared.width),
        top_k=0 if layer.dense else model.top_k,
        router=none.reshape(0, model.hidden) if layer.dense else layer.router,
        bias=layer.router_bias if layer.router_bias is not None else none,
        gating=model.gating, normalize=model.normalize, scale=model.scale, groups=model.groups,
        groups_used=model.groups_used, weight_before=model.weight_before,
        shared_gate=shared.gate_inp if shared is not None and shared.gate_inp is not None else none)


class Engine:
    """A loaded model, placed, with its pinned workers."""

    def __init__(self, model: MoeModel, plan: PlacementPlan, cpus: Sequence[int], core) -> None:
        self.model = model
        self.plan = plan
        self.cpus = tuple(cpus)
        self._core = core

    @classmethod
    def load(cls, path: str | Path, cpus: Sequence[int], policy: Policy | str = Policy.FIRST_TOUCH,
             nodes: Sequence[int] | None = None, topology: Topology | None = None,
             sync_barriers: int = 0) -> "Engine":
        """`sync_barriers`: barriers all workers meet at per layer, emulating another engine's
        synchronisation (EngineProfile.sync); 0 runs the engine as it is."""
        if sync_barriers < 0:
            raise NumatuneError(f"sync barriers per layer: {sync_barriers} is negative")
        model = read_moe_model(path)
        if topology is None:
            from .sysfs import Root
            from .topology.probing import probe
            topology = probe(Root.open("/"))
        plan = plan_placement(topology, cpus, policy, nodes, model.placed_bytes)
        try:
            core = _kernels.MoeEngine(list(cpus), list(plan.worker_nodes), _kernels.Placement(plan.policy.code),
                                      list(plan.nodes))
            for layer in model.layers:
                _add_layer(core, model, layer)
            core.set_sync_barriers(sync_barriers)
        except ValueError as exc:
            raise PlacementError(str(exc)) from None
        return cls(model, plan, cpus, core)

    @property
    def layers(self) -> int:
        return len(self.model.layers)

    @property
    def sync_barriers(self) -> int:
        return self._core.sync_barriers()

    @property
    def barriers_passed(self) -> int:
        """Emulated barriers all workers have passed since the engine started."""
        return self._core.barriers_passed()

    def experts_forward(self, layer: int, x: np.ndarray, expert_ids: Sequence[int],
                        expert_weights: Sequence[float]) -> np.ndarray:
        x = self._activation(layer, x)
        if self.model.layers[layer].dense:
            raise NumatuneError(f"layer {layer} is a dense block: it has no routed experts")
        ids = np.ascontiguousarray(expert_ids, dtype=np.int32)
        weights = np.ascontiguousarray(expert_weights, dtype=np.float32)
        if ids.shape != weights.shape or ids.ndim != 1:
            raise NumatuneError("expert_ids and expert_weights must be 1-D and of equal length")
        return self._core.experts_forward(layer, x, ids, weights)

    def moe_forward(self, layer: int, x: np.ndarray) -> np.ndarray:
        return self.route_and_forward(layer, x)[0]

    def route_and_forward(self, layer: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y, chosen expert ids, their weights)."""
        return self._core.moe_forward(layer, self._activation(layer, x))

    def placement(self, samples_per_group: int = 4096) -> dict:
        """Policy, nodes, and where sampled pages of each tensor group really are (node → pages)."""
        pages = self._core.placement(samples_per_group)
        return {"policy": self.plan.policy.value, "nodes": list(self.plan.nodes),
                "bytes_per_node": {str(n): b for n, b in self.plan.bytes_per_node},
                "resident_bytes": self._core.resident_bytes(),
                "pages": {group: {str(node): count for node, count in sorted(counts.items())}
                          for group, counts in sorted(pages.items())},
                "worker_cpus": list(self._core.worker_cpus())}

    def decode_bench(self, tokens: int = 32, warmup: int = 4, seed: int = 0) -> dict:
        if tokens < 1 or warmup < 0:
            raise NumatuneError("decode_bench: tokens must be ≥ 1 and warmup ≥ 0")
        stats = self._core.decode_bench(tokens, warmup, seed)
        seconds = stats["seconds"]
        per_token = stats["bytes_per_token"]
        return {"tokens": tokens, "warmup": warmup, "seconds": seconds,
                "tokens_per_s": tokens / seconds if seconds > 0 else float("inf"),
                "bytes_per_token": per_token,
                "step_bytes_per_token": self.model.step_bytes_per_token,
                "executed_share": self.model.executed_share,
                "gb_per_s": per_token * tokens / seconds / 1e9 if seconds > 0 else float("inf"),
                "isa": _kernels.active_isa(), "threads": len(self.cpus), "policy": self.plan.policy.value,
                "sync_barriers": self.sync_barriers}

    def _activation(self, layer: int, x: np.ndarray) -> np.ndarray:
        if not 0 <= layer < self.layers:
            raise NumatuneError(f"layer {layer} out of range (the model has {self.layers} FFN layers)")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != (self.model.hidden,):
            raise NumatuneError(f"x must have shape ({self.model.hidden},), got {x.shape}")
        return x
