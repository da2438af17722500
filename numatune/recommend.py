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
from .capacity import available_bytes
from .config import Configuration
from .engines import EngineInstall
from .launch import LaunchPlan, build_plan
from .models import ModelFootprint
from .profiles import EngineProfile, engine_profiles, find_engine_profile
from .search import engine_can, max_busy_threads
from .store import TuneResult
from .topology import Topology

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


def _node_cores(t: Topology) -> dict[int, tuple[int, ...]]:
    """One CPU per physical core of every node this process can run and allocate on."""
    out = {}
    for node in t.nodes:
        cpus = t.one_cpu_per_core(t.usable_cpus_of_node(node.id))
        if cpus and node.has_memory and node.id in t.allowed.nodes:
            out[node.id] = tuple(cpus)
    return out


def _can(profile: EngineProfile, policy: str, numa_build: Optional[bool]) -> bool:
    """What the engine can do as built; an uninspected build is given the benefit of the doubt
    (the warnings then say which build the command needs)."""
    return engine_can(profile, policy, numa_build)


def _from_topology(t: Topology, profile: EngineProfile, model: Optional[ModelFootprint],
                   numa_build: Optional[bool]) -> tuple[Configuration, list[str]]:
    cores = _node_cores(t)
    if not cores:
        raise ValueError("no node with usable CPUs and memory")
    weights = model.weight_bytes if model else 0
    reasons = []
    nodes = sorted(cores)
    all_cpus = tuple(c for n in nodes for c in cores[n])
    if len(nodes) > 1:
        for policy, share in (("replicate", weights), ("partition", weights // len(nodes))):
            if not _can(profile, policy, numa_build):
                continue
            short = [n for n in nodes if available_bytes(t, n) < share]
            if short:
                reasons.append(f"{policy} does not fit: node(s) {short} lack {share / GIB:.0f} GiB free")
                continue
            how = ("a full copy of the weights on each node" if policy == "replicate"
                   else "one tensor-parallel rank per node, each holding its shard")
            reasons.append(f"{policy}: {how}, so every node's threads read local memory "
                           f"({len(nodes)} nodes, {len(all_cpus)} physical cores)")
            return Configuration(all_cpus, policy, tuple(nodes)), reasons
    best = max(nodes, key=lambda n: (len(cores[n]), available_bytes(t, n)))
    if _can(profile, "bind", numa_build) and available_bytes(t, best) >= weights:
        if len(nodes) > 1:
            reasons.append(f"{profile.name} cannot read locally on several nodes as built: confined to "
                           f"node {best}, whose memory holds the weights; threads on other nodes would "
                           "read them remotely and slow decode down")
        reasons.append(f"bind: threads and memory on node {best} ({len(cores[best])} physical cores)")
        return Configuration(cores[best], "bind", (best,)), reasons
    policy = "interleave" if _can(profile, "interleave", numa_build) else "first-touch"
    why = ("the weights do not fit one node" if available_bytes(t, best) < weights
           else f"{profile.name} cannot be bound to one node as built")
    reasons.append(f"{policy} over nodes {nodes}: {why}, so one copy is spread over all of them")
    return Configuration(all_cpus, policy, tuple(nodes)), reasons


def _from_saved(t: Topology, profile: EngineProfile, saved: TuneResult, model, numa_build):
    winner = saved.winner.config
    if _can(profile, winner.policy, numa_build):
        reasons = [f"measured best on this host ({saved.winner.tokens_per_s.describe()} on the bundled "
                   f"engine): {winner.label()}"]
        return winner, reasons
    config, reasons = _from_topology(t, profile, model, numa_build)
    reasons.insert(0, f"the measured best ({winner.policy}) is not something {profile.name} can do; "
                      "falling back to the topology")
    return config, reasons


def _per_instance(t: Topology, profile: EngineProfile, model: Optional[ModelFootprint],
                  numa_build: Optional[bool]) -> Optional[tuple[Configuration, list[str]]]:
    """One instance per node, each bound to its node with its own copy: for throughput serving."""
    cores = _node_cores(t)
    nodes = sorted(cores)
    weights = model.weight_bytes if model else 0
    if len(nodes) < 2 or not _can(profile, "bind", numa_build):
        return None
    short = [n for n in nodes if available_bytes(t, n) < weights]
    if short:
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
    return replace(config, cpus=cpus), (f"threads capped at {len(cpus)}: the CPU quota ({quota:g} CPUs) cannot run "
                                        f"{config.threads} at once, and threads beyond it wait for their time slice")


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
    per = config.threads // config.instances
    reasons.append(f"threads: one per physical core, {per}" + (" per instance" if config.instances > 1 else " in all")
                   + (f" ({profile.threads_flag}: {profile.threads_counts})" if profile.threads_flag else ""))
    plan = build_plan(config, profile, user_argv, topology, numa_build)
    instance_plans = tuple(build_plan(part, profile, user_argv, topology, numa_build)
                           for part in config.split(topology.node_of_cpu)) if config.instances > 1 else ()
    warnings = list(plan.warnings) + _warnings(topology, profile, config, model, install, numa_build)
    if config.instances > 1 and model is not None:
        warnings.append(f"memory: {config.instances} instances each hold a copy: "
                        f"{config.instances} × {model.weight_bytes / GIB:.0f} GiB")
    return Recommendation(engine, config, instance_plans[0] if instance_plans else plan, tuple(reasons),
                          tuple(warnings), source, instance_plans)


def _warnings(t, profile, config, model, install, numa_build) -> list[str]:
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
                           model=model, threads=config.threads)
    for finding in run_audit(t, context):
        if finding.severity != "info" and finding.id != "ktransformers-no-numa-build":
            out.append(f"{finding.id}: {finding.title}" + (f" (fix: {finding.fix})" if finding.fix else ""))
    return out


def recommend_all(topology: Topology, model: Optional[ModelFootprint] = None,
                  saved: Optional[TuneResult] = None, objective: str = "latency") -> dict[str, Recommendation]:
    return {name: recommend(topology, name, model, saved, objective=objective) for name in engine_profiles()}
