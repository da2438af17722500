"""Running a built command (numatune.command), placed.

Placement is applied by `numactl` when the profile wants it and numactl is installed (unless
NUMATUNE_NO_NUMACTL is set), otherwise by numatune itself in the child before `exec`: CPU
affinity with sched_setaffinity, memory policy with set_mempolicy — both inherited across exec,
exactly as numactl leaves them.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from typing import Mapping

from .command import LaunchPlan
from .config import ProcessPlacement
from .errors import NumatuneError
from .sysfs import format_cpulist

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                     signal.SIGUSR2)


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
