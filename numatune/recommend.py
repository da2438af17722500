"""`numatune recommend`: the configuration and command to run for a target engine, with reasons.

From a saved tuning result for this host when there is one (its winner, mapped to what the engine
can do), otherwise from the topology, the engine's profile and the model's size: read locally
on every node when the engine can (a copy per node, or one tensor-parallel rank per node) and the
memory allows it; else one node, bound; else one copy interleaved over all nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from .audit import AuditContext, run_audit
from .capacity import HEADROOM_PERCENT, available_bytes, bytes_per_node, fits, shortfalls
from .command import LaunchPlan, build_command, parse_command
from .config import Configuration
from .engines import EngineInstall
from .errors import NumatuneError
from .models import ModelFootprint
from .profiles import EngineProfile, engine_profiles, find_engine_profile
from .search import engine_can, max_busy_threads
from .store import TuneResult
from .sysfs import format_cpulist
from .topology.model import Topology

GIB = 1 << 30


@dataclass(frozen=True)
class Recommendation:
    engine: str
    config: Configuration
    plan: LaunchPlan
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    source: str                        # "saved" or "topology"
    instance_plans: tuple[LaunchPlan, ...] = ()    # one per node when the config runs several instances

    @property
    def plans(self) -> tuple[LaunchPlan, ...]:
        return self.instance_plans or (self.plan,)

    def to_json(self) -> dict:
        return {"engine": self.engine, "config": self.config.to_json(), "command": self.plan.to_json(),
                "instances": [p.to_json() for p in self.plans],
                "reasons": list(self.reasons), "warnings": list(self.warnings), "source": self.source}


def _node_cores(t: Topology, minimum: int = 1) -> dict[int, tuple[int, ...]]:
    """One CPU per physical core of every node this process can run and allocate on, with at
    least `minimum` cores (a CPU that firmware lists under several nodes counts for its first)."""
    out = {}
    for node in t.nodes:
        own = [c for c in t.usable_cpus_of_node(node.id) if t.node_of_cpu(c) == node.id]
        cpus = t.one_cpu_per_core(own)
        if len(cpus) >= minimum and node.has_memory and node.id in t.allowed.nodes:
            out[node.id] = tuple(cpus)
    return out


def _cores_per_rank(profile: EngineProfile) -> int:
    """The fewest cores a node needs to be a rank: more than the engine reserves per rank."""
    return profile.reserved_threads + 1 if profile.reserved_per == "rank" else 1


def _can(profile: EngineProfile, policy: str, numa_build: Optional[bool]) -> bool:
    """What the engine can do as built; an uninspected build is given the benefit of the doubt
    (the warnings then say which build the command needs)."""
    return engine_can(profile, policy, numa_build)


def _from_topology(t: Topology, profile: EngineProfile, model: Optional[ModelFootprint],
                   numa_build: Optional[bool]) -> tuple[Configuration, list[str]]:
    cores = _node_cores(t, _cores_per_rank(profile))
    if not cores:
        return _without_local_memory(t, profile, numa_build)
    weights = model.weight_bytes if model else 0
    reasons = []
    nodes = sorted(cores)
    all_cpus = tuple(c for n in nodes for c in cores[n])
    if len(nodes) > 1:
        for policy in ("replicate", "partition"):
            if not _can(profile, policy, numa_build):
                continue
            short = shortfalls(t, bytes_per_node(policy, weights, nodes, nodes))
            if short:
                reasons.append(f"{policy} does not fit: node(s) {[n for n, _, _ in short]} lack "
                               f"{short[0][1] / GIB:.0f} GiB (+{HEADROOM_PERCENT}%) free")
                continue
            how = ("a full copy of the weights on each node" if policy == "replicate"
                   else "one tensor-parallel rank per node, each holding its shard")
            reasons.append(f"{policy}: {how}, so every node's threads read local memory "
                           f"({len(nodes)} nodes, {len(all_cpus)} physical cores)")
            return Configuration(all_cpus, policy, tuple(nodes)), reasons
    best = max(nodes, key=lambda n: (len(cores[n]), available_bytes(t, n)))
    if _can(profile, "bind", numa_build) and fits(weights, available_bytes(t, best)):
        if len(nodes) > 1:
            reasons.append(f"{profile.name} cannot read locally on several nodes as built: confined to "
                           f"node {best}, whose memory holds the weights; threads on other nodes would "
                           "read them remotely and slow decode down")
        reasons.append(f"bind: threads and memory on node {best} ({len(cores[best])} physical cores)")
        return Configuration(cores[best], "bind", (best,)), reasons
    policy = "interleave" if _can(profile, "interleave", numa_build) else "first-touch"
    why = ("the weights do not fit one node" if not fits(weights, available_bytes(t, best))
           else f"{profile.name} cannot be bound to one node as built")
    reasons.append(f"{policy} over nodes {nodes}: {why}, so one copy is spread over all of them")
    return Configuration(all_cpus, policy, tuple(nodes)), reasons


def _without_local_memory(t: Topology, profile: EngineProfile,
                          numa_build: Optional[bool]) -> tuple[Configuration, list[str]]:
    """No node has both usable CPUs and memory this process may allocate (CPUs on memoryless
    nodes, or a cpuset whose memory nodes hold none of its CPUs): every read is remote whatever
    the placement, so all usable cores, and memory from the allowed memory nodes."""
    cpus = tuple(t.one_cpu_per_core(t.usable_cpus()))
    if not cpus:
        raise NumatuneError("recommend: this process may run on no CPU (cpuset and online CPUs do not meet)")
    memory = tuple(n for n in t.allowed.nodes if n in {m.id for m in t.nodes if m.has_memory})
    reason = (f"no node has both usable CPUs and allowed memory: all {len(cpus)} usable cores, reading "
              f"memory of node(s) {list(memory) or 'none reported'} remotely")
    if len(memory) == 1 and _can(profile, "bind", numa_build):
        return Configuration(cpus, "bind", memory), [reason]
    if len(memory) > 1 and _can(profile, "interleave", numa_build):
        return Configuration(cpus, "interleave", memory), [reason + ", interleaved"]
    worker_nodes = tuple(sorted({t.node_of_cpu(c) for c in cpus}))
    return Configuration(cpus, "first-touch", worker_nodes), [reason + ", placed by first touch"]


def _from_saved(t: Topology, profile: EngineProfile, saved: TuneResult, model, numa_build):
    winner = saved.winner.config
    if _can(profile, winner.policy, numa_build):
        measured_on = (f"{saved.engine.name} itself" if saved.engine is not None and saved.engine.external
                       else "the bundled engine")
        reasons = [f"measured best on this host ({saved.winner.tokens_per_s.describe()} on {measured_on}): "
                   f"{winner.label()}"]
        return winner, reasons
    config, reasons = _from_topology(t, profile, model, numa_build)
    reasons.insert(0, f"the measured best ({winner.policy}) is not something {profile.name} can do; "
                      "falling back to the topology")
    return config, reasons


def _per_instance(t: Topology, profile: EngineProfile, model: Optional[ModelFootprint],
                  numa_build: Optional[bool]) -> Optional[tuple[Configuration, list[str]]]:
    """One instance per node, each bound to its node with its own copy: for throughput serving."""
    cores = _node_cores(t, profile.reserved_threads + 1)     # each instance keeps its own reserved threads
    nodes = sorted(cores)
    weights = model.weight_bytes if model else 0
    if len(nodes) < 2 or not _can(profile, "bind", numa_build):
        return None
    if shortfalls(t, {n: weights for n in nodes}):
        return None
    cpus = tuple(c for n in nodes for c in cores[n])
    return Configuration(cpus, "bind", tuple(nodes), instances=len(nodes)), [
        f"throughput: {len(nodes)} instances, one per node, each bound to its node with its own copy "
        "(no cross-node traffic or synchronisation; spread requests over the instances, each on its own port)"]


def _within_quota(t: Topology, config: Configuration) -> tuple[Configuration, Optional[str]]:
    """The configuration with no more threads than the CPU quota can run at once, taken evenly
    from its nodes (a saved result from before a quota change may have more)."""
    limit = max_busy_threads(t)
    if config.threads <= limit:
        return config, None
    by_node: dict[int, list[int]] = {}
    for cpu in config.cpus:
        by_node.setdefault(t.node_of_cpu(cpu), []).append(cpu)
    per_node = max(1, limit // len(by_node))
    cpus = tuple(sorted(c for cpus in by_node.values() for c in cpus[:per_node]))
    quota = t.allowed.cpu_quota
    why = f"the CPU quota ({quota:g} CPUs)" if quota is not None else f"the {limit} usable CPUs"
    return replace(config, cpus=cpus), (f"threads capped at {len(cpus)}: {why} cannot run "
                                        f"{config.threads} at once, and threads beyond it wait for their time slice")


def _room_for_reserved(t: Topology, profile: EngineProfile, config: Configuration) -> tuple[Configuration, Optional[str]]:
    """A process (or a rank) with no more physical cores than the engine reserves there gets the
    cores' SMT siblings, then, for a process, other usable CPUs (within the quota), so
    that it has a compute thread without oversubscribing; what still cannot is the command
    builder's one-line error."""
    reserved = profile.reserved_threads
    groups: dict[int, list[int]] = {}
    for cpu in config.cpus:
        groups.setdefault(t.node_of_cpu(cpu), []).append(cpu)
    ranks = list(groups.values()) if profile.reserved_per == "rank" else [list(config.cpus)]
    if config.instances > 1 or all(len(rank) > reserved for rank in ranks):
        return config, None
    room = max(0, min(t.max_busy_threads(), reserved + 1) - len(config.cpus)) if len(ranks) == 1 else reserved + 1
    added: list[int] = []
    for rank in ranks:
        nodes = sorted({t.node_of_cpu(c) for c in rank})
        candidates = [c for n in nodes for c in t.usable_cpus_of_node(n)]
        if profile.reserved_per == "process":     # a rank is a node's CPUs: it cannot borrow another's
            candidates += list(t.usable_cpus())
        fresh = [c for c in dict.fromkeys(candidates) if c not in config.cpus and c not in added]
        added += fresh[:min(room, reserved + 1 - len(rank))]
    if not added:
        return config, None
    cpus = tuple(sorted(config.cpus + tuple(added)))
    return replace(config, cpus=cpus), (f"{len(cpus)} CPUs ({format_cpulist(cpus)}): {profile.name} keeps "
                                        f"{reserved} busy besides its compute threads"
                                        + (" in every rank" if profile.reserved_per == "rank" else ""))


def recommend(topology: Topology, engine: str, model: Optional[ModelFootprint] = None,
              saved: Optional[TuneResult] = None, install: Optional[EngineInstall] = None,
              user_argv: tuple[str, ...] = (), objective: str = "latency") -> Recommendation:
    profile = find_engine_profile(engine)
    numa_build = install.numa_aware if install is not None else None
    chosen = _per_instance(topology, profile, model, numa_build) if objective == "throughput" else None
    if saved is not None and saved.winner is not None:
        config, reasons = _from_saved(topology, profile, saved, model, numa_build)
        source = "saved"
    elif chosen is not None:
        config, reasons = chosen
        source = "topology"
    else:
        config, reasons = _from_topology(topology, profile, model, numa_build)
        source = "topology"
    config, capped = _within_quota(topology, config)
    if capped:
        reasons.append(capped)
    config, widened = _room_for_reserved(topology, profile, config)
    if widened:
        reasons.append(widened)
    instance_plans = tuple(build_command(part, profile, topology, user_argv)
                           for part in config.split(topology.node_of_cpu)) if config.instances > 1 else ()
    plan = instance_plans[0] if instance_plans else build_command(config, profile, topology, user_argv)
    reasons.append(_threads_reason(profile, plan, config.instances))
    warnings = list(plan.warnings)
    for built in instance_plans or (plan,):
        warnings += [w for w in _warnings(topology, profile, config, built, model, install, numa_build)
                     if w not in warnings]
    if config.instances > 1 and profile.maps_model:
        warnings.append(f"{profile.name} maps the model file: the page cache holds one copy, on the node that "
                        "read it first, and every other instance reads it across nodes; give each instance its "
                        f"own copy on its node with {profile.maps_model}")
    if config.instances > 1 and model is not None:
        warnings.append(f"memory: {config.instances} instances each hold a copy: "
                        f"{config.instances} × {model.weight_bytes / GIB:.0f} GiB")
    return Recommendation(engine, config, plan, tuple(reasons), tuple(warnings), source, instance_plans)


def _threads_reason(profile: EngineProfile, plan: LaunchPlan, instances: int) -> str:
    budget = plan.budget
    text = f"threads: one CPU per physical core, {budget.cpus_given}" + (" per instance" if instances > 1 else " in all")
    if budget.reserved_threads:
        text += (f": {budget.compute_threads} compute threads + {budget.reserved_threads} that {profile.name} "
                 "keeps busy besides them" + (", one per rank" if profile.reserved_per == "rank" else ""))
    if profile.threads_flag:
        text += f" ({profile.threads_flag}: {profile.threads_counts})"
    return text


def _warnings(t, profile, config, plan, model, install, numa_build) -> list[str]:
    """What numatune's own audit says of the command built (the same rules as `audit -- CMD`)."""
    out = []
    if config.policy == "replicate" and model is not None:
        out.append(f"memory doubles: a copy per node means {len(config.nodes)} × {model.weight_bytes / GIB:.0f} "
                   f"GiB = {len(config.nodes) * model.weight_bytes / GIB:.0f} GiB of weights")
    if profile.numa_aware == "build-flag" and config.policy == "replicate" and numa_build is not True:
        if numa_build is False:
            out.append(f"this {profile.name} build has no NUMA support: rebuild with {profile.build_flag}=1 "
                       f"({profile.rebuild})")
        else:
            out.append(f"this needs a {profile.name} built with {profile.build_flag}=1; the installed build "
                       f"could not be inspected (pass --engine-bin; to rebuild: {profile.rebuild})")
    context = AuditContext(engine=install if numa_build is not True or config.policy != "replicate" else None,
                           model=model, command=parse_command(profile, plan.words()), profile=profile)
    for finding in run_audit(t, context):
        if finding.severity != "info" and finding.id != "ktransformers-no-numa-build":
            out.append(f"{finding.id}: {finding.title}" + (f" (fix: {finding.fix})" if finding.fix else ""))
    return out


def recommend_all(topology: Topology, model: Optional[ModelFootprint] = None,
                  saved: Optional[TuneResult] = None, objective: str = "latency") -> dict[str, Recommendation]:
    return {name: recommend(topology, name, model, saved, objective=objective) for name in engine_profiles()}
