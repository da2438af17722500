"""`probe`: reads a Root and assembles the `Topology`.

The parts are read by their own modules (layout, nodes, cpu_features, cgroups, knobs) through
one `Reader`, whose notes become `Topology.unknown`; system memory (proc/meminfo) is read here.
"""
from __future__ import annotations

from ..sysfs import Root, parse_meminfo
from .cgroups import read_allowed
from .cpu_features import read_caches, read_isa
from .knobs import read_knob, read_knobs, read_tools
from .layout import (cores_of, count_layout, note_missing_layout, packages_of, read_cpu_ids,
                     read_cpu_topology, read_isolated_cpus, read_online_cpus, smt_siblings,
                     splits_compute_units)
from .model import SCHEMA_VERSION, Cpu, Topology
from .nodes import node_of_cpus, read_memory_tiers, read_nodes
from .reader import Reader, cpuinfo_records, strip_text


def probe(root: Root) -> Topology:
    """Reads everything numatune needs to know about the machine under `root`."""
    reader = Reader(root)
    cpu_ids = read_cpu_ids(reader)
    online = read_online_cpus(reader, cpu_ids)
    files = {cpu: read_cpu_topology(reader, cpu) for cpu in cpu_ids}
    packages = packages_of(files, online)
    dies = {cpu: f.die_id for cpu, f in files.items() if f.die_id is not None}
    split_compute_units = splits_compute_units(cpuinfo_records(reader), files, online)
    cores = cores_of(files, packages, online, split_compute_units)
    counts = count_layout(online, packages, dies, cores)
    note_missing_layout(reader, online, packages, dies, cores)
    nodes = read_nodes(reader, cpu_ids)
    node_of = node_of_cpus(reader, nodes, cpu_ids)
    cmdline = read_knob(reader, "proc/cmdline", strip_text)
    isolated = read_isolated_cpus(reader, cmdline)
    online_set = set(online)
    cpus = tuple(Cpu(cpu, cpu in online_set, packages.get(cpu), dies.get(cpu), cores.get(cpu), node_of.get(cpu),
                     smt_siblings(files[cpu], cpu, split_compute_units), cpu in isolated)
                 for cpu in cpu_ids)
    meminfo = reader.value("proc/meminfo", parse_meminfo)
    if meminfo is None:
        reader.note("system memory: no proc/meminfo in this root")
    meminfo = meminfo or {}
    return Topology(
        schema_version=SCHEMA_VERSION, root=root.spec, nodes=nodes, cpus=cpus,
        packages=counts.packages, dies=counts.dies, cores=counts.cores, pus=len(online),
        threads_per_core=counts.threads_per_core, online_cpus=tuple(online), all_cpus=tuple(cpu_ids),
        offline_cpus=tuple(cpu for cpu in cpu_ids if cpu not in online_set),
        isolated_cpus=tuple(isolated), caches=read_caches(reader, cpu_ids), isa=read_isa(reader),
        allowed=read_allowed(reader, online, [node.id for node in nodes]),
        knobs=read_knobs(reader, cpu_ids, cmdline), tools=read_tools(root),
        memory_total_bytes=meminfo.get("MemTotal"), memory_available_bytes=meminfo.get("MemAvailable"),
        memory_tiers=read_memory_tiers(reader), unknown=tuple(reader.unknown))
