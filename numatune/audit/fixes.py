"""The engine command a finding proposes as its fix, built as numatune's command builder builds
it (the user's own program and flags kept): the same command on fewer or other CPUs.
"""
from __future__ import annotations

from typing import Iterable

from ..command import build_command
from ..config import Configuration
from ..errors import NumatuneError
from ..topology.model import Topology
from .core import AuditContext


def suggested_command(t: Topology, c: AuditContext, config: Configuration) -> str:
    """The engine's command for `config`, as numatune's command builder makes it (the user's own
    program and flags kept), for a finding's fix."""
    profile = c.engine_profile()
    if profile is None:
        return f"use at most {config.threads} threads"
    program = c.command.program if c.command is not None else ()
    try:
        return build_command(config, profile, t, program, use_numactl=True).shell()
    except NumatuneError as exc:
        return str(exc)


def _spread_cpus(t: Topology, pool: Iterable[int], count: int) -> tuple[int, ...]:
    """`count` CPUs of the pool, one per physical core, taken from its nodes in turn."""
    by_node: dict[int, list[int]] = {}
    for cpu in t.one_cpu_per_core(sorted(pool)):
        by_node.setdefault(t.node_of_cpu(cpu), []).append(cpu)
    queues = [cpus for _, cpus in sorted(by_node.items())]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        chosen += [q.pop(0) for q in queues if q][:count - len(chosen)]
    return tuple(sorted(chosen))


def _with_cpus(t: Topology, c: AuditContext, cpus: tuple[int, ...]) -> Configuration:
    """The configuration the user's command asks for, on `cpus` instead of its own."""
    profile = c.engine_profile()
    command = c.command
    if c.engine is not None and c.engine.numa_aware and profile is not None and profile.numa_aware == "build-flag":
        return Configuration(cpus, "replicate", tuple(n.id for n in t.nodes if n.has_memory))
    if command is not None and command.memory_mode in ("bind", "interleave") and command.memory_nodes:
        policy = "bind" if command.memory_mode == "bind" and len(command.memory_nodes) == 1 else "interleave"
        return Configuration(cpus, policy, command.memory_nodes)
    return Configuration(cpus, "first-touch", tuple(sorted({t.node_of_cpu(cpu) for cpu in cpus})))


def fewer_threads(t: Topology, c: AuditContext, pool: Iterable[int], cpus_given: int) -> str:
    """The fix that gives the engine `cpus_given` CPUs of the pool (its compute threads are those
    less the ones it reserves)."""
    if cpus_given < 1:
        return "use fewer threads"
    return suggested_command(t, c, _with_cpus(t, c, _spread_cpus(t, pool, cpus_given)))
