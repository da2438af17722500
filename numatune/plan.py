"""`numatune plan`: predicted decode tokens/s for machines you are not on (a roofline model).

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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from .errors import NumatuneError, ProfileError
from .policy import NAMES as POLICY_NAMES
from .policy import Policy
from .profiles import (PROFILES_DIR, EngineProfile, _count, _positive_int, _positive_number, _str_list,
                       _text, read_yaml)
from .capacity import HEADROOM_PERCENT, fits
from .command import cpus_for_compute
from .search import engine_can, thread_ladder

SCHEMA_VERSION = 1
GIB = 1 << 30

# Linux's scheduler gives a runnable thread a slice of about 3 ms when CPUs are overcommitted
# (CFS/EEVDF base slice 0.75 ms scaled by 1 + log2(min(CPUs, 8)) = 4); a barrier whose worker
# was preempted waits for that slice.
SCHEDULER_SLICE_S = 3e-3

# Defaults for a probed machine, which measures bandwidth but not cache-line transfer times.
DEFAULT_LINE_TRANSFER_NS = (60.0, 180.0)


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


# ---------------------------------------------------------------------------------------------
# Machine profiles


@dataclass(frozen=True)
class MachineNode:
    id: int
    socket: int
    cores: int
    threads_per_core: int
    memory_bytes: int

    @property
    def hardware_threads(self) -> int:
        return self.cores * self.threads_per_core


@dataclass(frozen=True)
class Observation:
    """A decode speed someone measured on this machine, with the configuration it ran."""

    label: str
    engine: str
    model: str
    policy: Policy
    nodes: tuple[int, ...]
    workers: int
    numa_build: Optional[bool]
    tokens_per_s: float
    resident_gb: Optional[float]
    source: str
    note: str

    def to_json(self) -> dict:
        return {"label": self.label, "engine": self.engine, "model": self.model, "policy": self.policy,
                "nodes": list(self.nodes), "workers": self.workers, "numa_build": self.numa_build,
                "tokens_per_s": self.tokens_per_s, "resident_gb": self.resident_gb,
                "source": self.source, "note": self.note}


@dataclass(frozen=True)
class Machine:
    name: str
    description: str
    nodes: tuple[MachineNode, ...]
    read_gbps: tuple[tuple[float, ...], ...]   # [CPU node][memory node], all cores of the CPU node
    per_core_read_gbps: float
    link_gbps: float                            # per direction between two sockets
    line_transfer_ns: tuple[float, float]       # same socket, across sockets
    bandwidth_kind: str                         # measured | estimated | published
    observations: tuple[Observation, ...]
    source: str

    def node(self, node_id: int) -> MachineNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"no node {node_id}")

    def index(self, node_id: int) -> int:
        return [n.id for n in self.nodes].index(node_id)

    def bandwidth(self, cpu_node: int, memory_node: int) -> float:
        return self.read_gbps[self.index(cpu_node)][self.index(memory_node)]

    @property
    def sockets(self) -> tuple[int, ...]:
        return tuple(sorted({n.socket for n in self.nodes}))

    def nodes_of_socket(self, socket: int) -> tuple[int, ...]:
        return tuple(n.id for n in self.nodes if n.socket == socket)

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "bandwidth_kind": self.bandwidth_kind,
                "nodes": [{"id": n.id, "socket": n.socket, "cores": n.cores,
                           "threads_per_core": n.threads_per_core, "memory_bytes": n.memory_bytes}
                          for n in self.nodes],
                "read_gbps": [list(row) for row in self.read_gbps],
                "per_core_read_gbps": self.per_core_read_gbps, "link_gbps": self.link_gbps,
                "line_transfer_ns": list(self.line_transfer_ns)}


def _get(data: dict, path: str, where: str, check, expected: str, default: Any = ...) -> Any:
    """A field by dotted path ("bandwidth.local_read_gbps"); errors name the whole path."""
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            if default is ...:
                raise ProfileError(f"{where}: field '{path}' is missing")
            return default
        value = value[part]
    if not check(value):
        raise ProfileError(f"{where}: field '{path}' must be {expected}, got {value!r}")
    return value


def _optional_bool(v: Any) -> bool:
    return v is None or isinstance(v, bool)


def _node_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_count(x) for x in v)


def parse_machine_profile(data: dict, where: str) -> Machine:
    f = lambda path, check, expected, default=...: _get(data, path, where, check, expected, default)  # noqa: E731
    sockets = f("sockets", _positive_int, "an integer ≥ 1")
    per_socket = f("nodes_per_socket", _positive_int, "an integer ≥ 1")
    cores = f("cores_per_node", _positive_int, "an integer ≥ 1")
    smt = f("threads_per_core", _positive_int, "an integer ≥ 1")
    memory = f("memory_per_node_gib", _positive_number, "a positive number")
    nodes = tuple(MachineNode(s * per_socket + k, s, cores, smt, int(memory * GIB))
                  for s in range(sockets) for k in range(per_socket))
    local = float(f("bandwidth.local_read_gbps", _positive_number, "a positive number (GB/s)"))
    _check_peak(data, where, local)
    matrix = _read_matrix(data, where, nodes, local)
    link = float(f("link.gbps_per_direction", _positive_number, "a positive number (GB/s)",
                   0.0 if sockets == 1 else ...))
    machine = Machine(
        name=f("name", _text, "a non-empty string"),
        description=f("description", _text, "a non-empty string", ""),
        nodes=nodes, read_gbps=matrix,
        per_core_read_gbps=float(f("bandwidth.per_core_read_gbps", _positive_number, "a positive number (GB/s)")),
        link_gbps=link,
        line_transfer_ns=(float(f("sync.line_transfer_ns_same_socket", _positive_number, "a positive number (ns)",
                                  DEFAULT_LINE_TRANSFER_NS[0])),
                          float(f("sync.line_transfer_ns_cross_socket", _positive_number, "a positive number (ns)",
                                  DEFAULT_LINE_TRANSFER_NS[1]))),
        bandwidth_kind=f("bandwidth.kind", lambda v: v in ("measured", "estimated", "published"),
                         "measured, estimated or published", "estimated"),
        observations=(), source=where)
    f("sources", lambda v: isinstance(v, list) and all(isinstance(s, dict) and _text(s.get("where")) for s in v),
      "a list of {what, where, says}")
    return replace(machine, observations=_observations(data, where, machine))


def _check_peak(data: dict, where: str, local: float) -> None:
    channels = _get(data, "memory.channels_per_node", where, _positive_int, "an integer ≥ 1")
    rate = _get(data, "memory.mt_per_s", where, _positive_number, "a positive number (MT/s)")
    peak = channels * rate * 8 / 1000
    if local > peak:
        raise ProfileError(f"{where}: field 'bandwidth.local_read_gbps' ({local:g}) exceeds the peak of "
                           f"{channels} channels at {rate:g} MT/s ({peak:.1f} GB/s)")


def _read_matrix(data: dict, where: str, nodes: tuple[MachineNode, ...], local: float) -> tuple[tuple[float, ...], ...]:
    explicit = _get(data, "bandwidth.matrix", where, lambda v: isinstance(v, list), "a list of rows", None)
    if explicit is not None:
        if len(explicit) != len(nodes) or not all(
                isinstance(row, list) and len(row) == len(nodes) and all(_positive_number(x) for x in row)
                for row in explicit):
            raise ProfileError(f"{where}: field 'bandwidth.matrix' must be {len(nodes)} rows of {len(nodes)} "
                               "positive numbers (GB/s), CPU node by memory node")
        return tuple(tuple(float(x) for x in row) for row in explicit)
    sockets = len({n.socket for n in nodes})
    per_socket = len(nodes) // sockets
    remote = float(_get(data, "bandwidth.remote_read_gbps", where, _positive_number, "a positive number (GB/s)",
                        0.0 if sockets == 1 else ...))
    near = float(_get(data, "bandwidth.same_socket_read_gbps", where, _positive_number,
                      "a positive number (GB/s)", local if per_socket == 1 else ...))
    for name, value in (("remote_read_gbps", remote), ("same_socket_read_gbps", near)):
        if value > local:
            raise ProfileError(f"{where}: field 'bandwidth.{name}' ({value:g}) exceeds "
                               f"'bandwidth.local_read_gbps' ({local:g})")
    return tuple(tuple(local if a.id == b.id else near if a.socket == b.socket else remote for b in nodes)
                 for a in nodes)


def _observations(data: dict, where: str, machine: Machine) -> tuple[Observation, ...]:
    items = data.get("observations") or []
    if not isinstance(items, list):
        raise ProfileError(f"{where}: field 'observations' must be a list")
    out = []
    ids = {n.id for n in machine.nodes}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProfileError(f"{where}: field 'observations[{i}]' must be a mapping")
        f = lambda name, check, expected, default=..., item=item, i=i: _obs_field(  # noqa: E731
            item, i, name, where, check, expected, default)
        nodes = tuple(f("nodes", _node_list, "a list of node ids"))
        unknown = [n for n in nodes if n not in ids]
        if unknown:
            raise ProfileError(f"{where}: field 'observations[{i}].nodes' names node {unknown[0]}, "
                               f"which this machine does not have")
        out.append(Observation(
            label=f("label", _text, "a non-empty string"), engine=f("engine", _text, "an engine name"),
            model=f("model", _text, "a model name with quantization"),
            policy=Policy(f("policy", lambda v: v in POLICY_NAMES, "one of " + ", ".join(POLICY_NAMES))),
            nodes=nodes, workers=f("workers", _positive_int, "an integer ≥ 1"),
            numa_build=f("numa_build", _optional_bool, "true, false or null", None),
            tokens_per_s=float(f("tokens_per_s", _positive_number, "a positive number")),
            resident_gb=f("resident_gb", lambda v: v is None or _positive_number(v), "a positive number", None),
            source=f("source", _text, "where the number was published"), note=f("note", _text, "text", "")))
    return tuple(out)


def _obs_field(item: dict, i: int, name: str, where: str, check, expected: str, default: Any) -> Any:
    if name not in item:
        if default is ...:
            raise ProfileError(f"{where}: field 'observations[{i}].{name}' is missing")
        return default
    if not check(item[name]):
        raise ProfileError(f"{where}: field 'observations[{i}].{name}' must be {expected}, got {item[name]!r}")
    return item[name]


def machine_profiles(directory: Optional[Path] = None) -> dict[str, Machine]:
    directory = directory or PROFILES_DIR / "machines"
    return {m.name: m for m in (parse_machine_profile(read_yaml(p), str(p)) for p in sorted(directory.glob("*.yaml")))}


def load_machine(spec: str, directory: Optional[Path] = None) -> Machine:
    """A machine profile by file path, or by name or alias among profiles/machines/."""
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) or path.is_file():
        return parse_machine_profile(read_yaml(path), str(path))
    directory = directory or PROFILES_DIR / "machines"
    wanted = spec.lower()
    for path in sorted(directory.glob("*.yaml")):
        data = read_yaml(path)
        aliases = data.get("aliases") if _str_list(data.get("aliases")) else []
        if wanted == str(data.get("name", "")).lower() or wanted in (a.lower() for a in aliases):
            return parse_machine_profile(data, str(path))
    known = ", ".join(sorted(machine_profiles(directory)))
    raise ProfileError(f"--machine: no machine profile named '{spec}' (known: {known}; or give a YAML file)")


def machine_from_probe(topology, probed) -> Machine:
    """This machine, from the probe and `measure_topology`'s bandwidth (matrix and thread curves)."""
    from .capacity import available_bytes
    nodes = []
    for node in topology.nodes:
        usable = topology.usable_cpus_of_node(node.id)
        if not usable or not node.has_memory or node.id not in topology.allowed.nodes:
            continue
        cores = len(topology.one_cpu_per_core(usable))
        packages = {topology.cpu(c).package for c in usable}
        socket = min(p for p in packages if p is not None) if packages - {None} else node.id
        nodes.append(MachineNode(node.id, socket, cores, max(1, len(usable) // cores),
                                 available_bytes(topology, node.id)))
    if not nodes:
        raise NumatuneError("no node with usable CPUs and memory to plan for")
    matrix = tuple(tuple(probed.matrix.gbps(a.id, b.id, "read").median for b in nodes) for a in nodes)
    single = [r.gbps.median for _, curve in probed.curves for r in curve if len(r.cpus) == 1]
    per_core = max(single) if single else max(row[i] for i, row in enumerate(matrix)) / max(n.cores for n in nodes)
    cross = [matrix[i][j] for i, a in enumerate(nodes) for j, b in enumerate(nodes) if a.socket != b.socket]
    return Machine(name=f"this machine ({topology.root})", description=topology.isa.model_name or "",
                   nodes=tuple(nodes), read_gbps=matrix, per_core_read_gbps=per_core,
                   link_gbps=max(cross) if cross else 0.0, line_transfer_ns=DEFAULT_LINE_TRANSFER_NS,
                   bandwidth_kind="measured", observations=(), source="probe")


# ---------------------------------------------------------------------------------------------
# The model


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


# ---------------------------------------------------------------------------------------------
# Enumeration and ranking


@dataclass(frozen=True)
class Plan:
    machine: Machine
    model: str
    engine: str
    bytes_per_token: int
    weight_bytes: int
    ranked: tuple[Prediction, ...]
    pruned: tuple[tuple[str, str], ...]
    observed: tuple[Prediction, ...]
    traits: EngineTraits

    def to_json(self, top: Optional[int] = None) -> dict:
        ranked = self.ranked[:top] if top else self.ranked
        return {"schema_version": SCHEMA_VERSION, "machine": self.machine.to_json(), "model": self.model,
                "engine": self.engine, "engine_model": {"reads": self.traits.reads,
                                                        "first_touch_by": self.traits.first_touch_by,
                                                        "sync_points_per_layer": self.traits.sync_points_per_layer},
                "bytes_per_token": self.bytes_per_token, "weight_bytes": self.weight_bytes,
                "ranked": [p.to_json() for p in ranked], "pruned": [{"config": c, "why": w} for c, w in self.pruned],
                "observed": [p.to_json() for p in self.observed]}


def _node_sets(machine: Machine) -> list[tuple[int, ...]]:
    sets = [(n.id,) for n in machine.nodes]
    if len(machine.sockets) > 1 or len(machine.nodes) > 1:
        sets += [machine.nodes_of_socket(s) for s in machine.sockets if len(machine.nodes_of_socket(s)) > 1]
    if len(machine.nodes) > 1:
        sets.append(tuple(n.id for n in machine.nodes))
    return sets


def _builds(engine: Optional[EngineProfile]) -> tuple[Optional[bool], ...]:
    return (True, False) if engine and engine.numa_aware == "build-flag" else (None,)


def _policies(machine: Machine, node_set: tuple[int, ...], engine: Optional[EngineProfile],
              numa_build: Optional[bool]) -> list[tuple[str, tuple[tuple[int, ...], ...]]]:
    """(policy, copy groups) pairs the engine can run on this node set."""
    all_nodes = tuple(n.id for n in machine.nodes)
    if len(node_set) == 1:
        return [(Policy.BIND, ())] if engine_can(engine, Policy.BIND, numa_build) else []
    out: list[tuple[str, tuple[tuple[int, ...], ...]]] = []
    for policy in (Policy.FIRST_TOUCH, Policy.INTERLEAVE, Policy.REPLICATE, Policy.PARTITION):
        if not engine_can(engine, policy, numa_build):
            continue
        if policy == Policy.REPLICATE and engine and engine.numa_aware == "build-flag" and node_set != all_nodes:
            continue           # such a build copies onto every configured node, whatever the launch says
        if policy == Policy.REPLICATE:
            out.append((policy, tuple((n,) for n in node_set)))
            sockets = sorted({machine.node(n).socket for n in node_set})
            by_socket = tuple(tuple(n for n in node_set if machine.node(n).socket == s) for s in sockets)
            per_socket = len(by_socket) > 1 and any(len(g) > 1 for g in by_socket)
            if per_socket and engine and engine.placement_condition(Policy.REPLICATE) == "always":
                out.append((policy, by_socket))
        else:
            out.append((policy, ()))
    return out


def candidates(machine: Machine, engine: Optional[EngineProfile], objective: str = "latency") -> list[PlanConfig]:
    """Every configuration to rank: node sets (a node, a socket's nodes, all), workers per node
    (a ladder up to the node's cores, never SMT siblings), and the policies the engine can do."""
    out = []
    for numa_build in _builds(engine):
        for node_set in _node_sets(machine):
            cores = min(machine.node(n).cores for n in node_set)
            for per_node in thread_ladder(cores):
                workers = tuple((n, per_node) for n in node_set)
                for policy, groups in _policies(machine, node_set, engine, numa_build):
                    out.append(PlanConfig(policy, workers, node_set, numa_build, groups,
                                          reserved=reserved_by_node(engine, workers)))
                if objective == "throughput" and len(node_set) > 1 and engine_can(engine, Policy.BIND, numa_build):
                    out.append(PlanConfig(Policy.BIND, workers, node_set, numa_build, instances=len(node_set),
                                          reserved=reserved_by_node(engine, workers, instances=len(node_set))))
    return out


def reserved_by_node(engine: Optional[EngineProfile], workers: tuple[tuple[int, int], ...],
                     instances: int = 1) -> tuple[tuple[int, int], ...]:
    """(node, reserved threads kept there) for these workers, by the command builder's rule
    (`command.cpus_for_compute`, the inverse of the `thread_budget` a launch uses); with several
    instances each is a process of its own."""
    if engine is None or not engine.reserved_threads:
        return ()
    processes = [(w,) for w in workers] if instances > 1 else [workers]
    return tuple((node, given - count) for compute in processes
                 for (node, given), (_, count) in zip(cpus_for_compute(compute, engine), compute) if given > count)


def prune_reason(machine: Machine, config: PlanConfig, weights: int, traits: EngineTraits) -> Optional[str]:
    for node_id, workers in config.workers:
        node = machine.node(node_id)
        busy = config.busy_threads(node_id)
        if busy > node.hardware_threads:
            return f"node {node_id}: {busy} busy threads exceed its {node.hardware_threads} hardware threads"
    for node_id, needed in sorted(placed_bytes(config, weights, traits).items()):
        have = machine.node(node_id).memory_bytes
        if not fits(needed, have):
            return (f"node {node_id} has {have / GIB:.0f} GiB, {config.policy} puts "
                    f"{needed / GIB:.0f} GiB (+{HEADROOM_PERCENT}%) there")
    return None


def observation_config(machine: Machine, obs: Observation, engine: Optional[EngineProfile]) -> PlanConfig:
    """The configuration an observation ran: its workers spread evenly over its nodes (the first
    nodes get the remainder, as ktransformers' split does)."""
    count = len(obs.nodes)
    workers = tuple((n, obs.workers // count + (1 if i < obs.workers % count else 0)) for i, n in enumerate(obs.nodes))
    groups = tuple((n,) for n in obs.nodes) if obs.policy == Policy.REPLICATE else ()
    memory = obs.nodes[:1] if obs.policy == Policy.BIND else obs.nodes
    return PlanConfig(obs.policy, workers, memory, obs.numa_build, groups, reserved=reserved_by_node(engine, workers))


def model_sizes(model_spec: str, traits: EngineTraits) -> tuple[str, int, int, int]:
    """(name, bytes read per token, bytes of one copy, layers) of a model profile with its
    quantization, or of a GGUF file's FFN layers (routers, routed and shared experts, dense FFNs:
    what the bundled engine reads; for an engine that reads every active weight this
    undercounts, and says so)."""
    from .models import resolve_model
    footprint = resolve_model(model_spec)
    if footprint.profile is not None:
        profile, quant = footprint.profile, footprint.quantization
        layers = profile.moe_layers if traits.reads == "routed-experts" else profile.layers
        return (footprint.name, cpu_bytes_per_token(profile, quant, traits), cpu_weight_bytes(profile, quant, traits),
                layers)
    from .gguf_moe import read_moe_model
    moe = read_moe_model(footprint.source)
    return footprint.name, moe.executed_bytes_per_token, moe.placed_bytes + moe.router_bytes, len(moe.layers)


def tune_observations(result, source: str, model_name: str) -> tuple[Observation, ...]:
    """The trials of a saved `numatune tune` result as observations of the bundled engine: each
    configuration at the deepest stage it reached (one-instance configurations only)."""
    deepest: dict = {}
    for t in result.trials:
        if t.error is None and t.config.instances == 1 and (
                t.config not in deepest or t.stage >= deepest[t.config].stage):
            deepest[t.config] = t
    return tuple(Observation(f"numatune tune (stage {t.stage}): {c.label()}", "numatune", model_name, c.policy,
                             c.nodes, c.threads, None, t.tokens_per_s.median, t.resident_bytes / 1e9, source,
                             f"median of {t.tokens_per_s.n}, spread ±{t.tokens_per_s.spread:.1f} tok/s")
                 for c, t in deepest.items())


def make_plan(machine: Machine, model_spec: str, engine: Optional[EngineProfile],
              objective: str = "latency") -> Plan:
    traits = traits_of(engine)
    name, per_token, weights, layers = model_sizes(model_spec, traits)
    kept, pruned = [], []
    for config in candidates(machine, engine, objective):
        why = prune_reason(machine, config, weights, traits)
        if why:
            pruned.append((config.label(), why))
        else:
            kept.append(predict(machine, config, per_token, weights, layers, traits))
    observed = []
    for obs in machine.observations:
        if engine and obs.engine != engine.name or _model_key(obs.model) != _model_key(name):
            continue
        config = observation_config(machine, obs, engine)
        observed.append(replace(predict(machine, config, per_token, weights, layers, traits), measured=obs))
    measured = {p.config: p.measured for p in observed}
    ranked = sorted((replace(p, measured=measured.get(p.config)) for p in kept),
                    key=lambda p: (-p.tokens_per_s, p.config.total_workers, sum(b for _, b in p.resident_bytes)))
    observed.sort(key=lambda p: -p.tokens_per_s)
    return Plan(machine, name, engine.name if engine else "generic", per_token, weights,
                tuple(ranked), tuple(pruned), tuple(observed), traits)


def _model_key(spec: str) -> str:
    from .models import DEFAULT_QUANTIZATION
    from .profiles import find_model_profile
    name, _, quant = spec.partition(":")
    try:
        name = find_model_profile(name).name
    except ProfileError:
        pass
    return f"{name.lower()}:{(quant or DEFAULT_QUANTIZATION).upper()}"


def threads_argument(engine: Optional[EngineProfile], config: PlanConfig) -> Optional[str]:
    """The engine's thread flag for one instance of a configuration (e.g. '--cpu_infer 65'), as the
    command builder writes it for CPUs given = workers plus the threads the engine reserves."""
    if engine is None or not engine.threads_flag:
        return None
    from .command import build_command
    from .config import Configuration
    workers = config.workers if config.instances == 1 else config.workers[:1]
    numbering = _CpuNumbering.of(workers, engine)
    policy = "bind" if len(workers) == 1 else config.policy
    nodes = tuple(n for n, _ in workers) if policy in ("bind", "first-touch") or config.instances > 1 \
        else config.memory_nodes
    built = build_command(Configuration(numbering.cpus, policy, nodes[:1] if policy == "bind" else nodes),
                          engine, numbering, use_numactl=False)
    value = built.argv[built.argv.index(engine.threads_flag) + 1]
    return f"{engine.threads_flag} {value}"


@dataclass(frozen=True)
class _CpuNumbering:
    """Stand-in CPU numbers for a machine profile (which counts cores, not CPU ids): each node's
    workers, plus the CPUs the command builder gives the engine's reserved threads."""

    first_cpu: tuple[tuple[int, int], ...]      # (node, its first stand-in CPU), in order
    cpus: tuple[int, ...]

    @classmethod
    def of(cls, workers: tuple[tuple[int, int], ...], engine: EngineProfile) -> "_CpuNumbering":
        first, cpus = [], []
        for node, given in cpus_for_compute(workers, engine):
            first.append((node, len(cpus)))
            cpus += range(len(cpus), len(cpus) + given)
        return cls(tuple(first), tuple(cpus))

    def node_of_cpu(self, cpu: int) -> int:
        return [node for node, start in self.first_cpu if start <= cpu][-1]


def plan_for(machine: Optional[str], model: Optional[str], target: Optional[EngineProfile],
             bandwidth: bool = False, root: str = "/", objective: str = "latency", repeats: int = 3) -> Plan:
    """What `numatune plan` shows: configurations ranked for a machine profile, or for this machine
    as probed and measured (with its saved tuning result's trials beside the predictions)."""
    if machine is not None:
        chosen = load_machine(machine)
    else:
        if not bandwidth:
            raise NumatuneError("plan without --machine predicts from this machine's measured bandwidth: "
                                "add --bandwidth (or give --machine FILE_OR_NAME)")
        from .bandwidth import measure_topology
        from .sysfs import Root
        from .topology import probe
        topology = probe(Root.open(root))
        chosen = machine_from_probe(topology, measure_topology(topology, repeats=repeats, kernels=("read",)))
        model, observed = _this_machine_measured(topology, model, root)
        if observed:
            chosen = replace(chosen, observations=observed)
    if model is None:
        raise NumatuneError("--model: which model (a profile like deepseek-r1:Q4_K_M, or a GGUF file)? Without "
                            "--machine, the model of this host's saved tuning result is the default")
    return make_plan(chosen, model, target, objective)


def _this_machine_measured(topology, model: Optional[str], root: str):
    """This host's saved tuning result, when it measured `model` (or when no model is given):
    the model file it measured, and its trials as observations to set beside the predictions."""
    from pathlib import Path

    from . import store
    from .trial import ModelChoice
    saved = store.saved_result(store.fingerprint(topology)) if root == "/" else None
    if saved is None:
        return model, ()
    if model is None:
        model = str(ModelChoice.from_label(saved.model).path)
    elif not (Path(model).is_file() and str(Path(model).resolve()) == saved.model):
        return model, ()
    source = str(store.default_path(saved.fingerprint))
    return model, tune_observations(saved, source, Path(model).name)
