"""The roofline model of `numatune plan`: predicted decode tokens/s of one configuration.

Batch-1 decode reads every active weight once per token, so a token takes as long as the
slowest resource needs to move its share of those bytes. The resources are:

- each node's worker threads, which stream at most `per_core_read_gbps` per physical core
  (SMT siblings add no bandwidth) and at most the node × node read bandwidth of where the
  bytes sit (a node that reads half locally and half remotely spends time in both);
- each node's memory controllers (their local read bandwidth), shared by every reader;
- the link between two sockets, per direction (UPI, xGMI), which caps remote traffic;

plus synchronisation: every sync point of the engine (a barrier per step of a MoE layer) costs
one cache-line transfer per arriving worker, dearer when the workers span sockets; and
oversubscription: more busy threads than hardware threads on a node.

What sits where follows the placement policy: replicate and partition read locally,
interleave spreads over the policy's nodes, bind puts everything on one node, first-touch puts
pages where they were first written — by the workers for engines that fault weights in from
their own threads, by one loader thread for engines that load weights before starting workers.

Bandwidth comes from a machine profile (profiles/machines/*.yaml) or from this machine's
measured bandwidth (`numatune probe --bandwidth`'s matrix and thread curves).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .machines import Machine, Observation
from .policy import Policy
from .profiles import EngineProfile

# Linux's scheduler gives a runnable thread a slice of about 3 ms when CPUs are overcommitted
# (CFS/EEVDF base slice 0.75 ms scaled by 1 + log2(min(CPUs, 8)) = 4); a barrier whose worker
# was preempted waits for that slice.
SCHEDULER_SLICE_S = 3e-3


@dataclass(frozen=True)
class EngineTraits:
    """How an engine's decode turns into memory traffic and synchronisation.

    reads: "routed-experts" when only the routed experts run on the CPU (attention, dense layers
    and shared experts on a GPU), "active" when all active weights are read by the CPU.
    first_touch_by: "workers" when the weights are first written or faulted in by the worker
    threads, "loader" when one thread loads them before the workers start.
    sync_points_per_layer: barriers per decoder layer and token.
    """

    reads: str
    first_touch_by: str
    sync_points_per_layer: int
    why: str


ENGINE_TRAITS = {
    "ktransformers": EngineTraits(
        "routed-experts", "loader", 3,
        "KExpertsCPU runs only the routed experts on the CPU; the experts are loaded by the Python "
        "thread before the pool starts; per MoE layer one submit/sync plus two work-stealing jobs "
        "(gate+up, down)"),
    "llama.cpp": EngineTraits(
        "active", "workers", 24,
        "CPU-only: every active weight is read on the CPU; with mmap and --numa the pages are faulted "
        "in by the threads that first read them (cold page cache); one barrier per graph node, about "
        "two dozen nodes per MoE layer (estimate)"),
    "numatune": EngineTraits(
        "routed-experts", "workers", 2,
        "the bundled engine runs the routed experts; each node's workers place their own slice; "
        "one barrier after gate/up and one after down"),
}
DEFAULT_TRAITS = EngineTraits("active", "workers", 3, "generic: all active weights on the CPU")


@dataclass(frozen=True)
class PlanConfig:
    """A configuration to predict.

    workers: (node, worker threads) for every node with workers. memory_nodes: the policy's node
    set (bind: its one node; interleave: the set; replicate: the nodes holding copies).
    copy_groups (replicate): each group holds one copy interleaved over its nodes — one node per
    group is a copy per node, a socket's nodes per group a copy per socket.
    reserved: (node, threads the engine keeps busy there besides its workers), placed by the
    command builder's rule (`reserved_by_node`).
    """

    policy: Policy
    workers: tuple[tuple[int, int], ...]
    memory_nodes: tuple[int, ...]
    numa_build: Optional[bool] = None
    copy_groups: tuple[tuple[int, ...], ...] = ()
    instances: int = 1
    reserved: tuple[tuple[int, int], ...] = ()

    @property
    def total_workers(self) -> int:
        return sum(t for _, t in self.workers)

    @property
    def worker_nodes(self) -> tuple[int, ...]:
        return tuple(n for n, _ in self.workers)

    def busy_threads(self, node_id: int) -> int:
        """Workers plus reserved threads on a node: the CPUs the command builder gives it."""
        return dict(self.workers).get(node_id, 0) + dict(self.reserved).get(node_id, 0)

    def label(self) -> str:
        from .sysfs import format_cpulist
        nodes = format_cpulist(self.worker_nodes)
        counts = [t for _, t in self.workers]
        per_node = f"{counts[0]}/node" if len(set(counts)) == 1 else "/".join(str(t) for t in counts)
        how = self.policy
        if self.policy == Policy.REPLICATE and self.copy_groups and any(len(g) > 1 for g in self.copy_groups):
            how = "replicate per socket"
        if self.policy in (Policy.BIND, Policy.INTERLEAVE) and set(self.memory_nodes) != set(self.worker_nodes):
            how += " mem=" + format_cpulist(self.memory_nodes)
        build = {True: " (NUMA build)", False: " (non-NUMA build)", None: ""}[self.numa_build]
        many = f" ×{self.instances} instances" if self.instances > 1 else ""
        return f"{how} nodes={nodes} workers={self.total_workers} ({per_node}){build}{many}"

    def to_json(self) -> dict:
        return {"policy": self.policy, "workers": {str(n): t for n, t in self.workers},
                "memory_nodes": list(self.memory_nodes), "numa_build": self.numa_build,
                "copy_groups": [list(g) for g in self.copy_groups], "instances": self.instances,
                "reserved_threads": sum(r for _, r in self.reserved), "label": self.label()}


@dataclass(frozen=True)
class Prediction:
    config: PlanConfig
    tokens_per_s: float
    memory_s: float                  # per token, the slowest resource
    sync_s: float                    # per token, barriers (and preemption when oversubscribed)
    bottleneck: str
    bytes_per_token: int
    resident_bytes: tuple[tuple[int, int], ...]    # (node, bytes placed there)
    notes: tuple[str, ...] = ()
    measured: Optional[Observation] = None

    @property
    def efficiency(self) -> Optional[float]:
        return self.measured.tokens_per_s / self.tokens_per_s if self.measured else None

    def to_json(self) -> dict:
        data = {"config": self.config.to_json(), "predicted_tokens_per_s": round(self.tokens_per_s, 3),
                "seconds_per_token": {"memory": self.memory_s, "sync": self.sync_s},
                "bottleneck": self.bottleneck, "bytes_per_token": self.bytes_per_token,
                "resident_bytes": {str(n): b for n, b in self.resident_bytes}, "notes": list(self.notes)}
        if self.measured:
            data["measured"] = self.measured.to_json()
            data["efficiency"] = round(self.efficiency, 4)
        return data


def traits_of(engine: Optional[EngineProfile]) -> EngineTraits:
    return ENGINE_TRAITS.get(engine.name, DEFAULT_TRAITS) if engine else DEFAULT_TRAITS


def cpu_bytes_per_token(profile, quantization: str, traits: EngineTraits) -> int:
    """Weight bytes the CPU reads per decoded token."""
    if traits.reads == "routed-experts":
        return profile.routed_expert_bytes(quantization) * profile.top_k // profile.experts
    return profile.active_bytes_per_token(quantization)


def cpu_weight_bytes(profile, quantization: str, traits: EngineTraits) -> int:
    """Weight bytes the CPU holds (one copy)."""
    if traits.reads == "routed-experts":
        return profile.routed_expert_bytes(quantization)
    return profile.weight_bytes(quantization)


def _sources(machine: Machine, config: PlanConfig, node: int, traits: EngineTraits) -> dict[int, float]:
    """Fraction of node `node`'s reads served by each memory node."""
    policy = config.policy
    if policy == Policy.PARTITION:
        return {node: 1.0}
    if policy == Policy.REPLICATE:
        group = next((g for g in config.copy_groups if node in g), (node,))
        return {m: 1.0 / len(group) for m in group}
    if policy == Policy.BIND:
        return {config.memory_nodes[0]: 1.0}
    if policy == Policy.INTERLEAVE:
        return {m: 1.0 / len(config.memory_nodes) for m in config.memory_nodes}
    if traits.first_touch_by == "loader":
        return {config.worker_nodes[0]: 1.0}
    return {node: 1.0}


def placed_bytes(config: PlanConfig, weights: int, traits: EngineTraits) -> dict[int, int]:
    """Weight bytes each node holds under the configuration."""
    if config.instances > 1:
        return {n: weights for n in config.worker_nodes}
    if config.policy == Policy.REPLICATE:
        groups = config.copy_groups or tuple((n,) for n in config.memory_nodes)
        return {n: weights // len(g) for g in groups for n in g}
    if config.policy in (Policy.INTERLEAVE, Policy.PARTITION):
        nodes = config.memory_nodes if config.policy == Policy.INTERLEAVE else config.worker_nodes
        return {n: weights // len(nodes) for n in nodes}
    if config.policy == Policy.BIND or traits.first_touch_by == "loader":
        target = config.memory_nodes[0] if config.policy == Policy.BIND else config.worker_nodes[0]
        return {target: weights}
    total = config.total_workers
    return {n: weights * t // total for n, t in config.workers}


def predict(machine: Machine, config: PlanConfig, bytes_per_token: int, weights: int,
            layers: int, traits: EngineTraits) -> Prediction:
    """Predicted decode speed of one configuration (one instance; instances are summed)."""
    if config.instances > 1:
        return _predict_instances(machine, config, bytes_per_token, weights, layers, traits)
    total = config.total_workers
    times: list[tuple[float, str]] = []
    demand: dict[int, float] = {}          # GB read from each memory node
    link: dict[tuple[int, int], float] = {}
    notes: list[str] = []
    for node_id, workers in config.workers:
        node = machine.node(node_id)
        share = bytes_per_token / 1e9 * workers / total
        busy = config.busy_threads(node_id)
        pull = min(workers, node.cores) * machine.per_core_read_gbps
        if workers > node.cores:
            notes.append(f"node {node_id}: {workers} workers on {node.cores} cores share cores by SMT "
                         "(no extra bandwidth)")
        if workers <= node.hardware_threads < busy:
            pull *= node.hardware_threads / busy
            notes.append(f"node {node_id}: {busy} busy threads on {node.hardware_threads} hardware threads "
                         "(the engine's spinning thread takes a worker's share)")
        seconds = 0.0
        for memory, fraction in _sources(machine, config, node_id, traits).items():
            gb = share * fraction
            seconds += gb / machine.bandwidth(node_id, memory)
            demand[memory] = demand.get(memory, 0.0) + gb
            mem_socket = machine.node(memory).socket
            if mem_socket != node.socket:
                link[(mem_socket, node.socket)] = link.get((mem_socket, node.socket), 0.0) + gb
        times.append((seconds, f"node {node_id} reads (node×node bandwidth)"))
        times.append((share / pull, f"node {node_id} threads ({min(workers, node.cores)} cores)"))
    shared = [(gb / machine.bandwidth(memory, memory), f"memory of node {memory}")
              for memory, gb in sorted(demand.items())]
    shared += [(gb / machine.link_gbps, f"socket link {src}→{dst}") for (src, dst), gb in sorted(link.items())]
    # On a tie a shared resource is named: it is what more threads cannot fix.
    memory_s, bottleneck = max(shared + times, key=lambda item: item[0])
    if config.policy == Policy.FIRST_TOUCH and traits.first_touch_by == "workers" and len(config.workers) > 1:
        notes.append("first-touch read locally assumes a cold page cache: pages cached by an earlier run "
                     "stay where they were (drop caches first)")
    if config.policy == Policy.FIRST_TOUCH and traits.first_touch_by == "loader" and len(config.workers) > 1:
        notes.append(f"one loader thread places every weight on node {config.worker_nodes[0]}; the other "
                     "nodes read remotely")
    sync_s = _sync_seconds(machine, config, layers, traits, notes)
    return Prediction(config, 1.0 / (memory_s + sync_s), memory_s, sync_s, bottleneck, bytes_per_token,
                      tuple(sorted(placed_bytes(config, weights, traits).items())), tuple(notes))


def _sync_seconds(machine: Machine, config: PlanConfig, layers: int, traits: EngineTraits,
                  notes: list[str]) -> float:
    """Barriers: arrivals serialise on one cache line, each a transfer from the last arriver;
    across sockets about half of those transfers cross. A worker preempted at a barrier (more
    workers than hardware threads on a node) holds it for a scheduler slice."""
    points = layers * traits.sync_points_per_layer
    same, cross = machine.line_transfer_ns
    spans = len({machine.node(n).socket for n in config.worker_nodes}) > 1
    per_arrival = (same + cross) / 2 if spans else same
    seconds = points * config.total_workers * per_arrival * 1e-9
    for node_id, workers in config.workers:
        node = machine.node(node_id)
        if workers > node.hardware_threads:
            notes.append(f"node {node_id}: {workers} workers on {node.hardware_threads} hardware threads: "
                         f"every barrier waits for a preempted worker (~{SCHEDULER_SLICE_S * 1e3:.0f} ms)")
            seconds += points * SCHEDULER_SLICE_S
    return seconds


def _predict_instances(machine: Machine, config: PlanConfig, bytes_per_token: int, weights: int,
                       layers: int, traits: EngineTraits) -> Prediction:
    reserved = dict(config.reserved)
    singles = [predict(machine, PlanConfig(Policy.BIND, ((n, t),), (n,), config.numa_build,
                                           reserved=((n, reserved[n]),) if n in reserved else ()),
                       bytes_per_token, weights, layers, traits) for n, t in config.workers]
    slowest = max(singles, key=lambda p: p.memory_s + p.sync_s)
    return Prediction(config, sum(p.tokens_per_s for p in singles), slowest.memory_s, slowest.sync_s,
                      f"per instance: {slowest.bottleneck}", bytes_per_token,
                      tuple(sorted(placed_bytes(config, weights, traits).items())),
                      ("tokens/s summed over the instances (throughput, not one request's latency)",))

