"""`numatune plan`: configurations an engine can run on a machine, ranked by predicted decode
tokens/s (the roofline model, roofline.py) on a machine profile or this machine measured
(machines.py), with measured speeds beside their predictions.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from .capacity import HEADROOM_PERCENT, fits
from .command import cpus_for_compute
from .errors import NumatuneError, ProfileError
from .machines import (DEFAULT_LINE_TRANSFER_NS, GIB, Machine, MachineNode, Observation, load_machine,
                       machine_from_probe, machine_profiles, parse_machine_profile)
from .policy import Policy
from .profiles import EngineProfile
from .roofline import (DEFAULT_TRAITS, ENGINE_TRAITS, EngineTraits, PlanConfig, Prediction, cpu_bytes_per_token,
                       cpu_weight_bytes, placed_bytes, predict, traits_of)
from .search import engine_can, thread_ladder

# Names callers import from here; their homes are machines.py and roofline.py.
__all__ = ["DEFAULT_LINE_TRANSFER_NS", "DEFAULT_TRAITS", "ENGINE_TRAITS", "GIB", "EngineTraits", "Machine",
           "MachineNode", "Observation", "Plan", "PlanConfig", "Prediction", "candidates", "load_machine",
           "machine_from_probe", "machine_profiles", "make_plan", "model_sizes", "observation_config",
           "parse_machine_profile", "placed_bytes", "plan_for", "predict", "prune_reason", "reserved_by_node",
           "threads_argument", "traits_of", "tune_observations"]

SCHEMA_VERSION = 1


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
