"""What this process may use (`Allowed`): cgroup cpusets, CPU quota, memory limit, affinity.

The cpuset hierarchy and the process's group are found as hwloc finds them (standard mount
points first, then proc/mounts; proc/self/cpuset, then proc/self/cgroup); cgroup v1 and v2 are
both read. The CPU quota and memory limit are the tightest over the group and its ancestors.
proc/self/status and, on the live machine, sched_getaffinity narrow the CPUs and nodes further.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Optional

from ..sysfs import (CgroupHierarchy, CgroupMembership, Mount, cgroup_hierarchies, cgroup_path_of,
                     parse_cfs_quota, parse_cpu_max, parse_cpulist, parse_memory_limit, parse_mounts,
                     parse_proc_cgroup, parse_status)
from .model import Allowed
from .reader import Reader, strip_text


def _ancestors(path: str) -> list[str]:
    """"/a/b" -> ["/a/b", "/a", "/"]."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _cgroup_file(hierarchy: CgroupHierarchy, path: str, name: str) -> str:
    return posixpath.join(hierarchy.mountpoint, path.lstrip("/"), hierarchy.file_prefix + name).lstrip("/")


def _holds(reader: Reader, hierarchy: CgroupHierarchy, controller: str) -> Optional[bool]:
    """Whether a hierarchy has `controller`; None when its cgroup.controllers is not in the root."""
    if hierarchy.version == 1:
        return True
    text = reader.root.read_text(posixpath.join(hierarchy.mountpoint, "cgroup.controllers").lstrip("/"))
    return None if text is None else controller in text.split()


@dataclass(frozen=True)
class _Cpuset:
    version: int
    path: str
    cpus: tuple[int, ...]
    mems: tuple[int, ...]
    sources: tuple[str, ...]


def _read_cpuset_files(reader: Reader, hierarchy: CgroupHierarchy, path: str) -> Optional[_Cpuset]:
    if hierarchy.version == 2:
        cpus_name, mems_name = "cpus.effective", "mems.effective"
        # A v2 cgroup without the cpuset controller enabled runs on its parent's cpuset.
        directories = _ancestors(path)
    else:
        # v1 (and the legacy cpuset fs): the group's own cpus/mems, as hwloc reads them. The
        # "effective_" files can be stale after hotplug (a POWER9 capture says effective 0-87
        # of cpus 0-175 with 0-15,88-103 online); offline CPUs are taken out later anyway.
        cpus_name, mems_name = "cpus", "mems"
        directories = [path]
    for directory in directories:
        cpus_rel = _cgroup_file(hierarchy, directory, cpus_name)
        mems_rel = _cgroup_file(hierarchy, directory, mems_name)
        cpus = reader.value(cpus_rel, parse_cpulist)
        mems = reader.value(mems_rel, parse_cpulist)
        if cpus is not None and mems is not None:
            return _Cpuset(hierarchy.version, path, tuple(cpus), tuple(mems),
                           (reader.root.path_of(cpus_rel), reader.root.path_of(mems_rel)))
    return None


# Where hwloc looks for the cpuset hierarchy before reading proc/mounts: a file that only that
# hierarchy has, and the hierarchy.
_STANDARD_CPUSET_MOUNTS = (
    ("sys/fs/cgroup/cpuset.cpus.effective", CgroupHierarchy(2, "/sys/fs/cgroup", "cpuset.")),
    ("sys/fs/cgroup/cpuset/cpuset.cpus", CgroupHierarchy(1, "/sys/fs/cgroup/cpuset", "cpuset.")),
    ("dev/cpuset/cpus", CgroupHierarchy(1, "/dev/cpuset", "")),
)


def _cpuset_hierarchy(reader: Reader, mounts: list[Mount]) -> Optional[CgroupHierarchy]:
    """The cpuset hierarchy, chosen as hwloc chooses it: a standard mount point holding its files,
    else the first mount in proc/mounts that holds the cpuset controller."""
    for marker, hierarchy in _STANDARD_CPUSET_MOUNTS:
        if reader.root.exists(marker):
            return hierarchy
    order = [mount.mountpoint for mount in mounts]
    unconfirmed = []
    for hierarchy in sorted(cgroup_hierarchies(mounts, "cpuset"), key=lambda h: order.index(h.mountpoint)):
        holds = _holds(reader, hierarchy, "cpuset")
        if holds:
            return hierarchy
        if holds is None:
            unconfirmed.append(hierarchy.mountpoint)
    if unconfirmed:
        reader.note(f"cgroup cpuset: cgroup.controllers of {', '.join(unconfirmed)} not in this root")
    elif not mounts:
        reader.note("cgroup cpuset: no proc/mounts in this root")
    return None


def _cpuset(reader: Reader, mounts: list[Mount], memberships: list[CgroupMembership]) -> Optional[_Cpuset]:
    """The process's cgroup cpuset: its group from proc/self/cpuset, else proc/self/cgroup."""
    hierarchy = _cpuset_hierarchy(reader, mounts)
    if hierarchy is None:
        return None
    path = (reader.value("proc/self/cpuset", strip_text) or cgroup_path_of(memberships, "cpuset", 1)
            or cgroup_path_of(memberships, "cpuset", 2))
    if path is None:
        reader.note("cgroup cpuset: the process's cgroup is in neither proc/self/cpuset "
                    "nor proc/self/cgroup")
        return None
    found = _read_cpuset_files(reader, hierarchy, path)
    if found is None:
        reader.note(f"cgroup cpuset: no cpus/mems files for {path} under {hierarchy.mountpoint} "
                    "in this root")
    return found


def _read_cpu_quota(reader: Reader, hierarchy: CgroupHierarchy, directory: str) -> tuple[Optional[float], str]:
    if hierarchy.version == 2:
        rel = _cgroup_file(hierarchy, directory, "max")
        return reader.value(rel, parse_cpu_max), rel
    quota_rel = _cgroup_file(hierarchy, directory, "cfs_quota_us")
    quota = reader.root.read_text(quota_rel)
    period = reader.root.read_text(_cgroup_file(hierarchy, directory, "cfs_period_us"))
    if quota is None or period is None:
        return None, quota_rel
    try:
        return parse_cfs_quota(quota, period), quota_rel
    except ValueError as exc:
        reader.note(f"{quota_rel}: cannot parse ({exc})")
        return None, quota_rel


def _read_memory_limit(reader: Reader, hierarchy: CgroupHierarchy, directory: str) -> tuple[Optional[int], str]:
    rel = _cgroup_file(hierarchy, directory, "max" if hierarchy.version == 2 else "limit_in_bytes")
    return reader.value(rel, parse_memory_limit), rel


def _tightest_limit(reader: Reader, mounts: list[Mount], memberships: list[CgroupMembership],
                    controller: str, read_one) -> tuple[Optional[float], list[str]]:
    """The smallest limit of `controller` on the process's cgroup and its ancestors, and its files."""
    for hierarchy in cgroup_hierarchies(mounts, controller):
        path = cgroup_path_of(memberships, controller, hierarchy.version)
        if path is None or not _holds(reader, hierarchy, controller):
            continue
        limits = [read_one(reader, hierarchy, directory) for directory in _ancestors(path)]
        limits = [(value, rel) for value, rel in limits if value is not None]
        if not limits:
            return None, []
        value, rel = min(limits)
        return value, [reader.root.path_of(rel)]
    return None, []


def read_allowed(reader: Reader, online: list[int], node_ids: list[int]) -> Allowed:
    mounts = reader.value("proc/mounts", parse_mounts) or []
    memberships = reader.value("proc/self/cgroup", parse_proc_cgroup) or []
    cpus, nodes, sources = set(online), set(node_ids), []
    cpuset = _cpuset(reader, mounts, memberships)
    if cpuset:
        cpus &= set(cpuset.cpus)
        nodes &= set(cpuset.mems)
        sources += cpuset.sources
    status = reader.value("proc/self/status", parse_status)
    if status and status.cpus_allowed is not None:
        cpus &= set(status.cpus_allowed)
    if status and status.mems_allowed is not None:
        nodes &= set(status.mems_allowed)
    if status and (status.cpus_allowed is not None or status.mems_allowed is not None):
        sources.append(reader.root.path_of("proc/self/status"))
    if reader.root.is_live and hasattr(os, "sched_getaffinity"):
        cpus &= os.sched_getaffinity(0)
        sources.append("sched_getaffinity(0)")
    quota, quota_files = _tightest_limit(reader, mounts, memberships, "cpu", _read_cpu_quota)
    memory, memory_files = _tightest_limit(reader, mounts, memberships, "memory", _read_memory_limit)
    version, path = _cgroup_membership(cpuset, memberships)
    return Allowed(tuple(sorted(cpus)), tuple(sorted(nodes)), version, path,
                   cpuset.cpus if cpuset else None, cpuset.mems if cpuset else None,
                   memory, quota, tuple(sources + quota_files + memory_files))


def _cgroup_membership(cpuset: Optional[_Cpuset],
                       memberships: list[CgroupMembership]) -> tuple[Optional[int], Optional[str]]:
    """(cgroup version, path) of the process: that of its cpuset, else what proc/self/cgroup says."""
    if cpuset:
        return cpuset.version, cpuset.path
    if any(entry.hierarchy != 0 for entry in memberships):
        return 1, cgroup_path_of(memberships, "cpuset", 1)
    unified = cgroup_path_of(memberships, "", 2)
    return (2, unified) if unified else (None, None)
