"""From a configuration and an engine profile to the command that runs it, placed; and running it.

Placement is applied by `numactl` when the profile wants it and numactl is installed (unless
NUMATUNE_NO_NUMACTL is set), otherwise by numatune itself in the child before `exec`: CPU
affinity with sched_setaffinity, memory policy with set_mempolicy — both inherited across exec,
exactly as numactl leaves them.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

from .config import Configuration, ProcessPlacement, process_placement
from .errors import NumatuneError
from .profiles import EngineProfile, TemplatedFlag
from .sysfs import format_cpulist
from .topology import Topology

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                     signal.SIGUSR2)


@dataclass(frozen=True)
class LaunchPlan:
    argv: tuple[str, ...]              # the full command, numactl prefix included when used
    env: tuple[tuple[str, str], ...]   # variables added to the environment
    placement: ProcessPlacement
    uses_numactl: bool
    warnings: tuple[str, ...]

    def shell(self) -> str:
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return (assignments + " " if assignments else "") + shlex.join(self.argv)

    def to_json(self) -> dict:
        return {"argv": list(self.argv), "env": dict(self.env), "uses_numactl": self.uses_numactl,
                "placement": {"cpus": list(self.placement.cpus), "memory_mode": self.placement.memory_mode,
                              "memory_nodes": list(self.placement.memory_nodes)},
                "warnings": list(self.warnings), "shell": self.shell()}


def numactl_available() -> str | None:
    return None if os.environ.get("NUMATUNE_NO_NUMACTL") else shutil.which("numactl")


def numactl_args(placement: ProcessPlacement) -> list[str]:
    args = ["numactl", f"--physcpubind={format_cpulist(placement.cpus)}"]
    nodes = format_cpulist(placement.memory_nodes)
    args.append({"bind": f"--membind={nodes}", "interleave": f"--interleave={nodes}",
                 "preferred": f"--preferred={nodes}"}.get(placement.memory_mode, "--localalloc"))
    return args


def template_values(config: Configuration, topology: Topology, program: str = "") -> dict[str, str]:
    by_node: dict[int, list[int]] = {}
    for cpu in config.cpus:
        by_node.setdefault(topology.node_of_cpu(cpu), []).append(cpu)
    ranks = [format_cpulist(cpus) for _, cpus in sorted(by_node.items())]
    return {"threads": str(config.threads), "threads_plus_one": str(config.threads + 1),
            "threads_per_node": str(max(len(c) for c in by_node.values())),
            "nodes": format_cpulist(config.nodes), "cpus": format_cpulist(config.cpus),
            "cpus_by_rank": "|".join(ranks), "ranks": str(len(ranks)), "policy": config.policy,
            "program": program}


def _applies(item: TemplatedFlag, config: Configuration, multi_node: bool) -> bool:
    return {"always": True, "multi-node": multi_node, "single-node": not multi_node,
            "replicate": config.policy == "replicate",
            "tensor-parallel": config.policy == "partition"}[item.when]


def build_plan(config: Configuration, profile: EngineProfile, user_argv: Sequence[str], topology: Topology,
               numa_build: bool | None = None) -> LaunchPlan:
    """The command for `profile` running `config`. `user_argv` is the user's own command (its
    first word replaces the profile's executable); `numa_build` tells a build-flag engine's build."""
    values = template_values(config, topology, shlex.join(user_argv) or "<program>")
    multi_node = len(config.nodes) > 1
    warnings: list[str] = []
    command = list(user_argv) or shlex.split(profile.executable.format(**values))
    engine_flags: list[tuple[str, str]] = []
    if profile.threads_flag:
        engine_flags.append((profile.threads_flag, profile.threads_value.format(**values)))
    engine_flags += [(f.name, f.value.format(**values)) for f in profile.flags if _applies(f, config, multi_node)]
    for flag, value in engine_flags:
        command, replaced = _set_flag(command, flag, value)
        if replaced:
            warnings.append(f"replaced the command's own {flag} {replaced} with {value}")
    env = tuple((e.name, e.value.format(**values)) for e in profile.env if _applies(e, config, multi_node))
    placement, numactl = placement_for(config, profile)
    argv = tuple((numactl_args(placement) if numactl else []) + command)
    return LaunchPlan(argv, env, placement, numactl, tuple(warnings))


def placement_for(config: Configuration, profile: EngineProfile) -> tuple[ProcessPlacement, bool]:
    """How a process running `config` for `profile` is placed, and whether by numactl (True) or
    by numatune itself before exec (False). Shared by launch and by tune's trials."""
    places_memory = config.policy in ("replicate", "partition")
    placement = process_placement(config, engine_places_memory=places_memory)
    # A NUMA build of a build-flag engine re-binds its own workers: a numactl prefix would only
    # confine it wrongly; engines that bind themselves (profile numactl: false) get none either.
    wants_numactl = profile.numactl and not (profile.numa_aware == "build-flag" and places_memory)
    return placement, bool(wants_numactl and numactl_available())


def _set_flag(argv: list[str], flag: str, value: str) -> tuple[list[str], str | None]:
    """argv with `flag value` set once: an existing occurrence (`--f v` or `--f=v`) is replaced."""
    out, replaced, i = [], None, 0
    while i < len(argv):
        word = argv[i]
        if word == flag and i + 1 < len(argv):
            replaced = argv[i + 1]
            i += 2
            continue
        if word.startswith(flag + "="):
            replaced = word.split("=", 1)[1]
            i += 1
            continue
        out.append(word)
        i += 1
    return out + [flag, value], replaced


def apply_placement(placement: ProcessPlacement) -> None:
    """Sets this process's CPU affinity and memory policy (both survive exec)."""
    from . import _kernels
    try:
        os.sched_setaffinity(0, placement.cpus)
        _kernels.set_memory_policy(placement.memory_mode, list(placement.memory_nodes))
    except (OSError, ValueError) as exc:
        raise NumatuneError(f"cannot place the process on CPUs {format_cpulist(placement.cpus)} "
                            f"/ nodes {format_cpulist(placement.memory_nodes) or '-'}: {exc}") from None


def run(plan: LaunchPlan, base_env: Mapping[str, str] | None = None) -> int:
    """Runs the plan; forwards signals to the child and returns its exit status (128+N if killed)."""
    env = dict(os.environ if base_env is None else base_env)
    env.update(dict(plan.env))
    preexec = None if plan.uses_numactl else (lambda: apply_placement(plan.placement))
    try:
        child = subprocess.Popen(plan.argv, env=env, preexec_fn=preexec)
    except FileNotFoundError:
        raise NumatuneError(f"launch: command not found: {plan.argv[0]}") from None
    except subprocess.SubprocessError as exc:
        raise NumatuneError(f"launch: could not start {plan.argv[0]}: {exc}") from None
    previous = {sig: signal.signal(sig, lambda s, _f: child.send_signal(s)) for sig in FORWARDED_SIGNALS}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - status if status < 0 else status


def print_plan(plan: LaunchPlan, out=None) -> None:
    out = out or sys.stdout
    for name, value in plan.env:
        out.write(f"{name}={shlex.quote(value)}\n")
    out.write(shlex.join(plan.argv) + "\n")
    if not plan.uses_numactl:
        out.write(f"# placed by numatune: CPUs {format_cpulist(plan.placement.cpus)}, memory "
                  f"{plan.placement.memory_mode} {format_cpulist(plan.placement.memory_nodes)}\n")
