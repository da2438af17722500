"""Machines to plan for: the profiles in profiles/machines/*.yaml (parsed and validated, each bad
field one line naming the file and the field), and this machine as probed and measured.

A machine is counted, not numbered: per node its cores, SMT threads and memory; the node × node
read bandwidth, one core's read speed, the socket link and cache-line transfer times; and the
decode speeds someone measured on it (observations), to set beside the predictions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from .errors import NumatuneError, ProfileError
from .policy import NAMES as POLICY_NAMES
from .policy import Policy
from .profiles import PROFILES_DIR, _count, _positive_int, _positive_number, _str_list, _text, read_yaml

GIB = 1 << 30

# Defaults for a probed machine, which measures bandwidth but not cache-line transfer times.
DEFAULT_LINE_TRANSFER_NS = (60.0, 180.0)


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

