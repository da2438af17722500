"""How the CPUs are laid out: online CPUs, packages, dies, cores and SMT, as hwloc builds them.

A package is a distinct package sibling set, a core a distinct SMT sibling set (on AMD families
0x15/0x16 whose module siblings report their own core_id, each CPU). `Cpu.package` is the
kernel's physical_package_id of the package's first CPU while those ids tell the packages
apart; else (-1 on s390 and POWER, ids repeated on IA-64) packages are numbered by their first
CPU. `Cpu.die` is the kernel's die_id (numbered within its package). `Cpu.core` is a
machine-wide core index, cores numbered by their first CPU. Isolated CPUs are here too.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from ..sysfs import format_cpulist, parse_cpulist, parse_cpumask, parse_int, parse_isolcpus
from .reader import SYS_CPU, Reader, cpuinfo_records


def read_cpu_ids(reader: Reader) -> list[int]:
    ids = reader.numbered(SYS_CPU, "cpu")
    if ids:
        return ids
    for name in ("present", "possible"):
        listed = reader.value(f"{SYS_CPU}/{name}", parse_cpulist)
        if listed:
            reader.note(f"CPUs: no cpuN directories in {SYS_CPU}; taken from its '{name}' list")
            return listed
    processors = [int(r["processor"]) for r in cpuinfo_records(reader) if r.get("processor", "").isdigit()]
    reader.note(f"CPUs: nothing in {SYS_CPU}; taken from the processors of proc/cpuinfo")
    return sorted(processors)


def read_online_cpus(reader: Reader, cpu_ids: list[int]) -> list[int]:
    listed = reader.value(f"{SYS_CPU}/online", parse_cpulist)
    if listed is not None:
        strays = set(listed) - set(cpu_ids)
        if strays:
            reader.note(f"CPUs {format_cpulist(strays)}: online but without a cpuN directory; left out")
        return sorted(set(listed) & set(cpu_ids))
    states = {cpu: reader.value(f"{SYS_CPU}/cpu{cpu}/online", parse_int) for cpu in cpu_ids}
    if all(state is None for state in states.values()):
        reader.note(f"CPU online state: no {SYS_CPU}/online nor cpuN/online; all CPUs taken as online")
    # A CPU without an 'online' file cannot be taken offline (cpu0 on most machines).
    return [cpu for cpu, state in states.items() if state != 0]


@dataclass(frozen=True)
class CpuTopologyFiles:
    """One CPU's sysfs topology directory, as read."""
    package_id: Optional[int]
    die_id: Optional[int]
    core_id: Optional[int]
    thread_siblings: Optional[frozenset]
    package_siblings: Optional[frozenset]


def _valid_id(value: Optional[int]) -> Optional[int]:
    return None if value is None or value < 0 else value   # the kernel writes -1 for "none"


def read_cpu_topology(reader: Reader, cpu: int) -> CpuTopologyFiles:
    base = f"{SYS_CPU}/cpu{cpu}/topology"

    def siblings(mask_names: tuple[str, ...], list_names: tuple[str, ...]) -> Optional[frozenset]:
        # The masks first, as hwloc reads them: where a capture's mask and list disagree, hwloc's
        # answer is the mask's.
        listed = reader.first_value([f"{base}/{n}" for n in mask_names], parse_cpumask)
        if listed is None:
            listed = reader.first_value([f"{base}/{n}" for n in list_names], parse_cpulist)
        return frozenset(listed) if listed else None

    return CpuTopologyFiles(
        _valid_id(reader.value(f"{base}/physical_package_id", parse_int)),
        _valid_id(reader.value(f"{base}/die_id", parse_int)),
        _valid_id(reader.value(f"{base}/core_id", parse_int)),
        siblings(("core_cpus", "thread_siblings"), ("core_cpus_list", "thread_siblings_list")),
        siblings(("package_cpus", "core_siblings"), ("package_cpus_list", "core_siblings_list")))


def _index_by_first_cpu(keys: dict[int, object]) -> dict[int, int]:
    """CPU -> index of its key, keys numbered in the order of their first CPU."""
    order: dict[object, int] = {}
    for cpu in sorted(keys):
        order.setdefault(keys[cpu], len(order))
    return {cpu: order[key] for cpu, key in keys.items()}


def _groups_from_sibling_sets(sets: dict[int, frozenset], online: list[int]) -> dict[int, frozenset]:
    """CPU -> its group (a package or a core) built from sibling sets the way hwloc builds them.

    Each online CPU that is the first online CPU of its own set opens a group: that set's online
    CPUs. A set that overlaps an earlier group without being it is firmware contradicting
    itself and is dropped, as hwloc drops it; its CPUs stay in no group. An offline CPU joins the
    group its set's online CPUs form, if they form one.
    """
    online_set = set(online)
    groups: dict[int, frozenset] = {}
    for cpu in sorted(online_set):
        members = frozenset(sets.get(cpu, frozenset()) & online_set)
        if members and min(members) == cpu and not any(m in groups for m in members):
            groups.update(dict.fromkeys(members, members))
    for cpu, siblings in sets.items():
        members = frozenset(siblings & online_set)
        if cpu not in online_set and members and groups.get(min(members)) == members:
            groups[cpu] = members
    return groups


def packages_of(files: dict[int, CpuTopologyFiles], online: list[int]) -> dict[int, int]:
    """CPU -> package number, for the CPUs whose package is known.

    One package per distinct package sibling set (hwloc's rule: the sets can be checked against
    each other, the ids cannot; IA-64 repeats ids across sockets). A package is numbered by the
    kernel's physical_package_id of its first CPU while those ids tell the packages apart, else
    by the order of its first CPU. Without sibling sets, the ids alone.
    """
    sets = {cpu: f.package_siblings for cpu, f in files.items() if f.package_siblings}
    if not any(cpu in sets for cpu in online):
        if not online or any(files[cpu].package_id is None for cpu in online):
            return {}
        return {cpu: f.package_id for cpu, f in files.items() if f.package_id is not None}
    groups = _groups_from_sibling_sets(sets, online)
    ids = {group: files[min(group)].package_id for group in set(groups.values())}
    if None not in ids.values() and len(set(ids.values())) == len(ids):
        return {cpu: ids[group] for cpu, group in groups.items()}
    return _index_by_first_cpu(groups)


def splits_compute_units(records: list[dict[str, str]], files: dict[int, CpuTopologyFiles],
                          online: list[int]) -> bool:
    """Whether the SMT sibling sets are AMD compute units of separate cores (hwloc's rule).

    AMD families 0x15 and 0x16 (Bulldozer to Jaguar) list both cores of a compute unit as
    thread siblings. hwloc looks at the first online CPU with an online sibling: when the two
    report different core_id, every CPU is a core of its own; the same core_id means SMT.
    """
    first = records[0] if records else {}
    if first.get("vendor_id") != "AuthenticAMD" or first.get("cpu family") not in ("21", "22"):
        return False
    online_set = set(online)
    for cpu in sorted(online_set):
        others = sorted(((files[cpu].thread_siblings or frozenset()) & online_set) - {cpu})
        if others:
            return files[cpu].core_id != files[others[0]].core_id
    return False


def cores_of(files: dict[int, CpuTopologyFiles], packages: dict[int, int], online: list[int],
              split_compute_units: bool) -> dict[int, int]:
    """CPU -> machine-wide core index, from SMT sibling sets, else from (package, die, core_id)."""
    sets = {cpu: (frozenset({cpu}) if split_compute_units else f.thread_siblings)
            for cpu, f in files.items() if f.thread_siblings}
    keys: dict[int, object] = dict(_groups_from_sibling_sets(sets, online))
    for cpu, f in files.items():
        if cpu not in keys and cpu not in sets and f.core_id is not None:
            keys[cpu] = (packages.get(cpu), f.die_id, f.core_id)
    return _index_by_first_cpu(keys)


@dataclass(frozen=True)
class LayoutCounts:
    packages: int
    dies: Optional[int]
    cores: int
    threads_per_core: Optional[int]


def count_layout(online: list[int], packages: dict[int, int], dies: dict[int, int],
           cores: dict[int, int]) -> LayoutCounts:
    threads_of_core = Counter(cores[cpu] for cpu in online if cpu in cores)
    die_keys = {(packages.get(cpu), dies[cpu]) for cpu in online if cpu in dies}
    return LayoutCounts(len({packages[cpu] for cpu in online if cpu in packages}),
                   len(die_keys) if die_keys else None, len(threads_of_core),
                   max(threads_of_core.values(), default=None))


def read_isolated_cpus(reader: Reader, cmdline: Optional[str]) -> list[int]:
    isolated = set(reader.value(f"{SYS_CPU}/isolated", parse_cpulist) or [])
    if cmdline:
        try:
            isolated |= set(parse_isolcpus(cmdline) or [])
        except ValueError as exc:
            reader.note(f"isolcpus= of proc/cmdline: cannot parse ({exc})")
    return sorted(isolated)


def note_missing_layout(reader: Reader, online: list[int], packages: dict[int, int],
                         dies: dict[int, int], cores: dict[int, int]) -> None:
    if online and not any(cpu in packages for cpu in online):
        reader.note("packages: no physical_package_id nor package sibling list in cpuN/topology")
    if online and not any(cpu in dies for cpu in online):
        reader.note("dies: no die_id in cpuN/topology (kernels before 5.2, most non-x86); dies unknown")
    if online and not any(cpu in cores for cpu in online):
        reader.note("cores: no SMT sibling list nor core_id in cpuN/topology; threads per core unknown")


def smt_siblings(files: CpuTopologyFiles, cpu: int, split_compute_units: bool) -> tuple[int, ...]:
    if split_compute_units or not files.thread_siblings:
        return (cpu,)
    return tuple(sorted(files.thread_siblings))
