"""What the CPUs offer the kernels: their caches, and the ISA (vendor, model, known flags).

Caches come from cpuN/cache/indexM, one per distinct (level, type, sharing CPUs). ISA flags
come from proc/cpuinfo (a flag counts only if every CPU has it) and, on the live machine, from
py-cpuinfo's CPUID probe unless NUMATUNE_QUICK_PROBE is set.
"""
from __future__ import annotations

import os
from typing import Optional

from ..sysfs import parse_cpulist, parse_cpumask, parse_int, parse_size
from .model import KNOWN_FLAGS, Cache, Isa, normal_flag
from .reader import SYS_CPU, Reader, cpuinfo_records, strip_text


def read_caches(reader: Reader, cpu_ids: list[int]) -> tuple[Cache, ...]:
    """One Cache per distinct (level, type, CPUs sharing it)."""
    caches: dict[tuple, Cache] = {}
    unshared = 0
    for cpu in cpu_ids:
        base = f"{SYS_CPU}/cpu{cpu}/cache"
        for index in reader.numbered(base, "index"):
            directory = f"{base}/index{index}"
            level = reader.value(f"{directory}/level", parse_int)
            kind = reader.value(f"{directory}/type", strip_text)
            if level is None or not kind:
                continue
            shared = reader.value(f"{directory}/shared_cpu_list", parse_cpulist)
            if shared is None:   # kernels before 2.6.26 write only the mask
                shared = reader.value(f"{directory}/shared_cpu_map", parse_cpumask)
            if not shared:
                unshared += 1
                shared = [cpu]
            key = (level, kind, tuple(shared))
            if key not in caches:
                caches[key] = Cache(level, kind, reader.value(f"{directory}/size", parse_size), key[2])
    if unshared:
        reader.note(f"caches: {unshared} cpuN/cache/indexM list no CPUs sharing them; "
                    "each counted as private to its CPU")
    return tuple(sorted(caches.values(), key=lambda c: (c.level, c.type, c.cpus)))


def _first_field(records: list[dict[str, str]], keys: tuple[str, ...]) -> Optional[str]:
    for key in keys:
        for record in records:
            if record.get(key):
                return record[key]
    return None


def _py_cpuinfo_flags(reader: Reader) -> set[str]:
    try:
        import cpuinfo
        return {normal_flag(flag) for flag in cpuinfo.get_cpu_info().get("flags", [])}
    except Exception as exc:   # py-cpuinfo probes CPUID in a child process; any failure is "unknown"
        reader.note(f"ISA flags from py-cpuinfo: {type(exc).__name__}: {exc}")
        return set()


def read_isa(reader: Reader) -> Isa:
    records = cpuinfo_records(reader)
    if not records:
        reader.note("ISA: no proc/cpuinfo in this root")
    flag_sets = [{normal_flag(flag) for flag in (r.get("flags") or r.get("Features") or r.get("features")).split()}
                 for r in records if r.get("flags") or r.get("Features") or r.get("features")]
    # A flag counts only if every CPU has it (hybrid parts may differ between core types).
    flags = set.intersection(*flag_sets) if flag_sets else set()
    # py-cpuinfo runs CPUID in a child process (about a second); trial children, which need no
    # ISA facts, skip it with NUMATUNE_QUICK_PROBE=1.
    if reader.root.is_live and not os.environ.get("NUMATUNE_QUICK_PROBE"):
        flags |= _py_cpuinfo_flags(reader)
    return Isa(_first_field(records, ("vendor_id", "vendor", "CPU implementer")),
               _first_field(records, ("model name", "cpu", "family")),
               tuple(flag for flag in KNOWN_FLAGS if flag in flags))
