"""The search space of `numatune tune`, and the budgeted, noise-aware search over it.

The space comes from the probe: node sets (each node alone, all nodes together), threads per
node (a ladder from 1 to the node's cores, plus every hardware thread when the cores have SMT
siblings), and memory policies. What cannot fit in the nodes' free memory, what the target
engine cannot do, and thread counts beyond what the cpuset or the CPU quota can run are pruned,
each with its reason.

The search is successive halving: every candidate gets a short trial; the better part (1/eta)
goes on to a longer one, and so on, until one stays or the budget ends. The winner is the best
median, except that a candidate whose difference from it is within the noise of both (a tie)
wins when it uses fewer threads, then less memory.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Optional, Sequence

from .capacity import HEADROOM_PERCENT, bytes_per_node, shortfalls
from .command import thread_budget
from .config import Configuration
from .errors import NumatuneError
from .policy import Policy
from .profiles import EngineProfile
from .store import NumaModeChoice, Trial
from .topology.model import Topology

@dataclass(frozen=True)
class Space:
    candidates: tuple[Configuration, ...]
    pruned: tuple[tuple[str, str], ...]          # (configuration label, why it was left out)
    numa_modes: tuple[NumaModeChoice, ...] = ()  # the engine's --numa values tried (with_numa_modes)


def thread_ladder(cores: int) -> list[int]:
    """Thread counts per node to try: every count up to 4, then powers of two and the quarters
    of the core count, always ending with all cores."""
    counts = {n for n in range(1, min(cores, 4) + 1)}
    counts |= {2 ** k for k in range(2, int(math.log2(cores)) + 1)} if cores > 4 else set()
    counts |= {max(1, cores * q // 4) for q in (1, 2, 3, 4)}
    return sorted(c for c in counts if 1 <= c <= cores)


def _memory_nodes_usable(t: Topology) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """node → (one CPU per physical core, every usable hardware thread), for the nodes this
    process can run on and allocate from."""
    out = {}
    for node in t.nodes:
        usable = t.usable_cpus_of_node(node.id)
        if usable and node.has_memory and node.id in t.allowed.nodes:
            out[node.id] = (tuple(t.one_cpu_per_core(usable)), tuple(usable))
    return out


def max_busy_threads(t: Topology) -> int:
    """Threads that can run at once: the usable CPUs, capped by the cgroup CPU quota if any."""
    return t.max_busy_threads()


def engine_can(profile: Optional[EngineProfile], policy: str, numa_build: Optional[bool] = None) -> bool:
    if profile is None:
        return True
    condition = profile.placement_condition(policy)
    if condition == "build-flag":
        return numa_build is not False
    if condition == "without-build-flag":
        return numa_build is not True
    return condition in ("always", "tensor-parallel")


OBJECTIVES = ("latency", "throughput")


def build_space(t: Topology, weight_bytes: int, profile: Optional[EngineProfile] = None,
                numa_build: Optional[bool] = None, objective: str = "latency") -> Space:
    """`latency`: one engine instance, scored by its tokens/s. `throughput` adds one instance
    per node (each bound to its node, with its own copy), scored by the instances' sum."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
    nodes = _memory_nodes_usable(t)
    if not nodes:
        raise ValueError("no node with CPUs and memory that this process may use")
    limit = max_busy_threads(t)
    raw: list[Configuration] = []
    node_sets = [(n,) for n in sorted(nodes)] + ([tuple(sorted(nodes))] if len(nodes) > 1 else [])
    for node_set in node_sets:
        cores = min(len(nodes[n][0]) for n in node_set)
        hw = min(len(nodes[n][1]) for n in node_set)
        counts = [(c, False) for c in thread_ladder(cores)] + ([(hw, True)] if hw > cores else [])
        policies = (Policy.BIND,) if len(node_set) == 1 else tuple(p for p in Policy if p is not Policy.BIND)
        for per_node, smt in counts:
            cpus = tuple(sorted(c for n in node_set for c in (nodes[n][1] if smt else nodes[n][0][:per_node])))
            for policy in policies:
                raw.append(Configuration(cpus, policy, node_set))
            if objective == "throughput" and len(node_set) > 1:
                raw.append(Configuration(cpus, Policy.BIND, node_set, instances=len(node_set)))
    kept, pruned = [], []
    for config in raw:
        why = _prune_reason(t, config, weight_bytes, profile, numa_build, limit)
        if why:
            pruned.append((config.label(), why))
        else:
            kept.append(config)
    return Space(tuple(kept), tuple(pruned))


def _prune_reason(t, config: Configuration, weight_bytes: int, profile, numa_build, limit: int) -> Optional[str]:
    if not engine_can(profile, config.policy, numa_build):
        return f"{profile.name} cannot do {config.policy}" + (
            f" ({profile.build_flag} build)" if profile.placement_condition(config.policy) == "without-build-flag"
            else "")
    if profile is not None:
        try:
            thread_budget(config, profile, t.node_of_cpu)
        except NumatuneError:
            return (f"{profile.name} keeps {profile.reserved_threads} thread(s) busy besides its compute threads"
                    f"{' per rank' if profile.reserved_per == 'rank' else ''}: {len(config.cpus)} CPU(s) leave none to compute")
    if config.threads > limit:
        return f"{config.threads} threads exceed the {limit} that the cpuset/CPU quota can run at once"
    worker_nodes = [t.node_of_cpu(c) for c in config.cpus]
    if config.instances > 1:       # a copy per instance, each on its own node
        need = {n: weight_bytes for n in config.nodes}
    else:
        need = bytes_per_node(config.policy, weight_bytes, list(config.nodes), worker_nodes)
    for node, needed, have in shortfalls(t, need)[:1]:
        return (f"node {node} has {have / 2**30:.1f} GiB free, {config.policy} needs {needed / 2**30:.1f} GiB there "
                f"(+{HEADROOM_PERCENT}%)")
    return None


# ---------------------------------------------------------------------------------------------
# The engine's own thread-placement mode (llama.cpp --numa) as a dimension


def engine_numa_nodes(t: Topology, profile: EngineProfile):
    """The nodes the engine's NUMA code counts. With the profile's `max_nodes` (llama.cpp: ggml's
    GGML_NUMA_MAX_NODES, 8), as ggml_numa_init counts them: node0, node1, … while each exists in
    sysfs, at most that many (a machine of 16 nodes is 8 to it; nodes 0 and 2 are one); without
    it, every node of the machine."""
    limit = profile.numa_flag_max_nodes
    if limit is None:
        return t.nodes
    by_id = {n.id: n for n in t.nodes}
    counted = []
    while len(counted) < limit and len(counted) in by_id:
        counted.append(by_id[len(counted)])
    return tuple(counted)


def numa_mode_why_not(t: Topology, config: Configuration, profile: EngineProfile, mode: str) -> Optional[str]:
    """Why `mode` of the profile's thread-placement flag is not tried on `config` (None: tried).

    A mode is tried only where it can differ from the profile's default and still runs the
    configuration's threads on the configuration's CPUs (one thread per CPU given). N below is
    the number of nodes the engine counts (engine_numa_nodes: ggml counts node0, node1, … up to
    the first id missing, at most 8):
    - with N ≤ 1 (a one-node machine, or node ids not starting 0, 1) every mode places threads as
      the default does (llama.cpp: ggml_is_numa() is false, the flag changes nothing);
    - `all-nodes` (distribute) puts thread i on every CPU of node i mod N: only a configuration
      given every CPU of those N nodes, all having CPUs in equal numbers, runs where it says; it
      then differs from the default, under which every thread floats over all the CPUs given. On
      a machine of more than 8 nodes ggml sends threads to nodes 0-7 only, so a configuration of
      every node's CPUs would run twice its threads per CPU on nodes 0-7 and none on the rest:
      not tried (the space has no configuration of exactly nodes 0-7);
    - `starting-node` (isolate) puts every thread on every CPU of the node it started on: the
      default's CPUs when the configuration is that whole node, CPUs not given otherwise;
    - `given` is the default's placement.
    One instance per node (`instances` > 1) applies the rule to each instance, confined to its
    node's CPUs and bound to its node: `given` keeps each instance's threads on its CPUs (the
    default, always tried); `starting-node` starts on the instance's node and spreads its threads
    over every CPU of that node, the default's CPUs when the instance has its whole node and CPUs
    it is not given otherwise: never tried; `all-nodes` sends thread i of every instance to node
    i mod N, out of the instance's node and away from its bound memory: never tried.
    """
    flag, default = profile.numa_flag, profile.numa_mode_default
    placement = dict(profile.numa_flag_modes)[mode]
    if mode == default:
        return None
    if len(t.nodes) <= 1:
        return f"{flag} {mode}: the machine has one NUMA node, where every mode places threads as {default} does"
    counted = engine_numa_nodes(t, profile)
    if len(counted) <= 1:
        return (f"{flag} {mode}: {profile.name} counts {len(counted)} node(s) here (node0, node1, … up to the first "
                f"id missing), where every mode places threads as {default} does")
    if placement == "given":
        return f"{flag} {mode}: threads stay on the CPUs given, as with {default}"
    if config.instances > 1:
        if placement == "starting-node":
            return (f"{flag} {mode}: each instance's threads run on every CPU of its node: {default}'s CPUs when "
                    "the instance is given its whole node, CPUs it is not given otherwise")
        return (f"{flag} {mode}: thread i of each instance runs on node i mod {len(counted)}, out of the instance's "
                "node and away from the memory bound to it")
    if placement == "starting-node":
        return (f"{flag} {mode}: every thread runs on every CPU of the node it started on: {default}'s CPUs when "
                "the configuration is one whole node, CPUs it does not give otherwise")
    empty = [n.id for n in counted if not n.cpus]
    if empty:
        return f"{flag} {mode}: node {empty[0]} has no CPUs, the threads it would send there have none"
    if len({len(n.cpus) for n in counted}) > 1:
        return f"{flag} {mode}: the nodes have unequal CPU counts, and it sends each node the same number of threads"
    if set(config.cpus) != {c for n in counted for c in n.cpus}:
        if len(counted) < len(t.nodes):
            return (f"{flag} {mode}: {profile.name} counts nodes 0-{len(counted) - 1} only (at most "
                    f"{profile.numa_flag_max_nodes}): thread i runs on every CPU of node i mod {len(counted)}, the "
                    f"other {len(t.nodes) - len(counted)} nodes get none; tried only on a configuration given every "
                    f"CPU of nodes 0-{len(counted) - 1}")
        return (f"{flag} {mode}: thread i runs on every CPU of node i mod {len(counted)}: tried only on the "
                "configurations given every CPU of every node")
    return None


def with_numa_modes(t: Topology, space: Space, profile: Optional[EngineProfile]) -> Space:
    """The space with the engine's thread-placement modes (profile `threads.numa_flag.modes`) as a
    dimension: each candidate once per mode that applies to it (numa_mode_why_not), the default
    mode on all of them; a profile without modes leaves the space as it is.

    The rule, for llama.cpp's --numa: `numactl` everywhere; `distribute` only on a configuration
    of one process given every CPU of the nodes ggml counts (node0, node1, … at most 8: on more
    nodes, or on nodes of unequal CPU counts, it puts threads where the configuration has none);
    `isolate` nowhere. With one instance per node the rule holds inside each instance (confined to
    its node's CPUs, bound to its node): `isolate` is then `numactl`'s CPUs or CPUs not given,
    `distribute` sends each instance's threads to every node, so both stay untried."""
    if profile is None or not profile.numa_flag_modes or profile.numa_mode_default is None:
        return space
    candidates: list[Configuration] = []
    choices = []
    for mode, _ in profile.numa_flag_modes:
        reasons = [numa_mode_why_not(t, config, profile, mode) for config in space.candidates]
        candidates += [replace(config, numa_mode=mode) for config, why in zip(space.candidates, reasons) if why is None]
        why_not = "; ".join(dict.fromkeys(why for why in reasons if why)) or None
        choices.append(NumaModeChoice(profile.numa_flag, mode, reasons.count(None), why_not))
    return replace(space, candidates=tuple(candidates), numa_modes=tuple(choices))


# ---------------------------------------------------------------------------------------------
# Successive halving

@dataclass(frozen=True)
class Stage:
    tokens: int
    repeats: int


def stage_plan(stage: int, base_tokens: int = 32) -> Stage:
    """Later stages decode more tokens and repeat more: the noise band narrows as candidates thin."""
    return Stage(tokens=base_tokens * 2 ** stage, repeats=min(3 + 2 * stage, 9))


def rank(trials: Iterable[Trial]) -> list[Trial]:
    """Best first: by median tok/s; a tie with a better one (within both noise bands) is broken
    towards fewer threads, then less memory."""
    ok = sorted((t for t in trials if t.error is None), key=lambda t: -t.tokens_per_s.median)
    if not ok:
        return []
    ranked: list[Trial] = []
    remaining = ok
    while remaining:
        top = remaining[0]
        tied = [t for t in remaining if t.tokens_per_s.ties_with(top.tokens_per_s)]
        chosen = min(tied, key=lambda t: (t.config.threads, t.resident_bytes, -t.tokens_per_s.median))
        ranked.append(chosen)
        remaining = [t for t in remaining if t is not chosen]
    return ranked


@dataclass
class SearchState:
    """What the search has measured so far; the caller saves it when interrupted."""

    trials: list[Trial] = field(default_factory=list)
    stage: int = 0
    unmeasured: list[Configuration] = field(default_factory=list)
    stopped_by_budget: bool = False

    def final(self) -> list[Trial]:
        """The trials of the deepest stage each configuration reached, ranked."""
        deepest: dict[Configuration, Trial] = {}
        for t in self.trials:
            if t.config not in deepest or t.stage >= deepest[t.config].stage:
                deepest[t.config] = t
        top_stage = max((t.stage for t in deepest.values() if t.error is None), default=0)
        # Compare like with like: only trials of the deepest stage reached compete for the win.
        return rank(t for t in deepest.values() if t.stage == top_stage)


Measure = Callable[[Configuration, int, Stage], Trial]


MAX_STAGE = 2                  # the last stage decodes 128 tokens × 7 repeats per candidate
SMALL_SPACE = 3


def search(candidates: Sequence[Configuration], measure: Measure, budget_s: float,
           state: Optional[SearchState] = None, clock: Callable[[], float] = time.monotonic,
           on_trial: Optional[Callable[[SearchState, Trial, float], None]] = None) -> SearchState:
    """Scout, descend, then halve.

    1. Scout: candidates sharing a node set and policy differ only in thread count, which rarely
       reorders policies, so one short trial per (node set, policy) at its most threads ranks
       the groups.
    2. Descend: in the two best groups (and any tied with the best), thread counts are tried from
       the most down, until two in a row are clearly slower than the group's best (beyond both
       noise bands): fewer threads than that cannot win on a bandwidth-bound decode, and a tie
       would already have been found.
    3. Successive halving over everything measured so far.
    """
    state = state or SearchState()
    if len(candidates) <= SMALL_SPACE:
        # Halving only pays when it can eliminate: a handful of candidates are simply all
        # measured at the final length (the search is the sweep).
        return successive_halving(candidates, measure, budget_s, state=state, clock=clock, on_trial=on_trial,
                                  first_stage=MAX_STAGE)
    start = clock()
    remaining = lambda: budget_s - (clock() - start)  # noqa: E731
    groups: dict[tuple, list[Configuration]] = {}
    for config in order_for_budget(candidates):
        groups.setdefault((config.nodes, config.policy, config.instances, config.numa_mode), []).append(config)
    if len(groups) > 1:
        scouts = [members[0] for members in groups.values()]
        successive_halving(scouts, measure, remaining(), state=state, clock=clock, on_trial=on_trial, max_stage=0)
        if state.stopped_by_budget:
            return state
        ranked = rank(t for t in state.trials if t.stage == 0 and t.config in scouts)
        best = ranked[0].tokens_per_s if ranked else None
        chosen = [(t.config.nodes, t.config.policy, t.config.instances, t.config.numa_mode) for i, t in enumerate(ranked)
                  if i < 2 or t.tokens_per_s.ties_with(best)]
    else:
        chosen = list(groups)
    for key in chosen:
        if not _descend(groups[key], measure, remaining, state, clock, on_trial):
            return state
    measured = list(dict.fromkeys(t.config for t in state.trials if t.stage == 0))
    return successive_halving(measured, measure, remaining(), state=state, clock=clock, on_trial=on_trial)


def _descend(members: list[Configuration], measure: Measure, remaining, state: SearchState, clock,
             on_trial) -> bool:
    """Stage-0 trials of one group, most threads first; False when the budget ran out."""
    done = {t.config: t for t in state.trials if t.stage == 0}
    best: Optional[Trial] = None
    worse_in_a_row = 0
    for config in members:
        trial = done.get(config)
        if trial is None:
            if remaining() <= 0:
                state.stopped_by_budget = True
                state.unmeasured = [c for c in members if c not in done]
                return False
            trial = measure(config, 0, stage_plan(0))
            state.trials.append(trial)
            if on_trial:
                on_trial(state, trial, remaining())
        if trial.error is None and (best is None or trial.tokens_per_s.median > best.tokens_per_s.median):
            best, worse_in_a_row = trial, 0
        elif trial.error is not None or not trial.tokens_per_s.ties_with(best.tokens_per_s):
            worse_in_a_row += 1
            if worse_in_a_row >= 2:
                break
    return True


def successive_halving(candidates: Sequence[Configuration], measure: Measure, budget_s: float,
                       eta: int = 2, base_tokens: int = 32, state: Optional[SearchState] = None,
                       clock: Callable[[], float] = time.monotonic,
                       on_trial: Optional[Callable[[SearchState, Trial, float], None]] = None,
                       max_stage: int = MAX_STAGE, first_stage: int = 0) -> SearchState:
    """Measures candidates in rounds until one remains, the last stage is done, or the budget
    runs out. `measure` runs one trial; trials already in `state` (a resumed search, or the
    scouting round) are reused, not measured again."""
    state = state or SearchState()
    done = {(t.config, t.stage): t for t in state.trials}
    start = clock()
    alive = list(candidates)
    stage = first_stage
    costs: list[float] = []
    while alive:
        plan = stage_plan(stage, base_tokens)
        state.stage = stage
        measured: list[Trial] = []
        for i, config in enumerate(alive):
            if (config, stage) in done:
                measured.append(done[(config, stage)])
                continue
            left = budget_s - (clock() - start)
            estimate = (sum(costs) / len(costs)) * (2 ** stage) if costs else 0.0
            # Always measure at least two candidates of the first stage, so there is a winner.
            if left <= 0 or (estimate > left and (stage > first_stage or len(measured) >= 2)):
                state.stopped_by_budget = True
                state.unmeasured = list(alive[i:])
                break
            began = clock()
            trial = measure(config, stage, plan)
            costs.append((clock() - began) / (2 ** stage))
            state.trials.append(trial)
            measured.append(trial)
            if on_trial:
                on_trial(state, trial, budget_s - (clock() - start))
        ranked = rank(measured)
        if state.stopped_by_budget or len(ranked) <= 1 or stage >= max_stage:
            break
        keep = max(1, len(ranked) // eta)
        # A candidate tied with the last one kept goes on too: the noise cannot separate them.
        while keep < len(ranked) and ranked[keep].tokens_per_s.ties_with(ranked[keep - 1].tokens_per_s) \
                and keep < max(2, len(ranked) // eta * 2):
            keep += 1
        if keep == 1 and len(ranked) > 1 and stage == 0:
            keep = 2                                    # the final stage compares at least two
        alive = [t.config for t in ranked[:keep]]
        if len(alive) == len(measured) and stage > 0:
            break                                       # nothing eliminated: more rounds cannot help
        stage += 1
        if len(alive) == 1:
            break
    return state


def order_for_budget(candidates: Sequence[Configuration]) -> list[Configuration]:
    """Most promising first, so a budget that ends early has measured what matters: every node
    set and policy at its most threads first, then the lower thread counts, higher first."""
    return sorted(candidates, key=lambda c: (-c.threads, len(c.nodes) == 1, c.policy, c.nodes, c.instances,
                                             c.numa_mode or ""))
