"""The kernel's settings that matter to inference (NUMA balancing, THP, zone reclaim, CPU
frequency governors, the command line) and the tools found on the live machine.

A knob whose file is not in the root is None and noted in `Topology.unknown`; tools are looked
up on PATH only for the live machine (a captured tree says nothing about them).
"""
from __future__ import annotations

import shutil
from typing import Callable, Optional

from ..sysfs import Root, parse_bracketed_choice, parse_int
from .model import KernelKnobs, Tools
from .reader import SYS_CPU, T, Reader, strip_text

THP = "sys/kernel/mm/transparent_hugepage"


def read_knob(reader: Reader, rel: str, parse: Callable[[str], T]) -> Optional[T]:
    value = reader.value(rel, parse)
    if value is None and not reader.root.exists(rel):
        reader.note(f"{rel}: not in this root")
    return value


def _governors(reader: Reader, cpu_ids: list[int]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    cpus_of: dict[str, list[int]] = {}
    for cpu in cpu_ids:
        governor = reader.value(f"{SYS_CPU}/cpu{cpu}/cpufreq/scaling_governor", strip_text)
        if governor:
            cpus_of.setdefault(governor, []).append(cpu)
    if not cpus_of:
        reader.note("CPU frequency governor: no cpuN/cpufreq/scaling_governor in this root")
    return tuple(sorted(((g, tuple(c)) for g, c in cpus_of.items()), key=lambda item: item[1][0]))


def read_knobs(reader: Reader, cpu_ids: list[int], cmdline: Optional[str]) -> KernelKnobs:
    return KernelKnobs(
        read_knob(reader, "proc/sys/kernel/numa_balancing", parse_int),
        read_knob(reader, f"{THP}/enabled", parse_bracketed_choice),
        read_knob(reader, f"{THP}/defrag", parse_bracketed_choice),
        read_knob(reader, "proc/sys/vm/zone_reclaim_mode", parse_int),
        _governors(reader, cpu_ids), cmdline)


def read_tools(root: Root) -> Tools:
    if not root.is_live:
        return Tools(None, None)
    return Tools(shutil.which("numactl"), shutil.which("lstopo"))
