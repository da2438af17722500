"""The probe: what a Root says about the machine, as a frozen `Topology`.

Everything above the probe takes a Topology, never a path. Facts that cannot be read are not
guessed silently: each lands in `Topology.unknown` with the reason, and the field that would
hold it is None (or empty). The values and their JSON are in `model`; `probing.probe` reads
them through one `reader.Reader`, part by part: `layout` (CPUs, packages, cores, SMT), `nodes`
(NUMA nodes, memory, distances, tiers), `cpu_features` (caches, ISA), `cgroups` (what this
process may use) and `knobs` (kernel settings, tools).
"""
from .model import (KNOWN_FLAGS, SCHEMA_VERSION, Allowed, Cache, Cpu, HugePagePool, Isa, KernelKnobs,
                    MemoryTier, Node, Tools, Topology)
from .probing import probe

__all__ = ["KNOWN_FLAGS", "SCHEMA_VERSION", "Allowed", "Cache", "Cpu", "HugePagePool", "Isa", "KernelKnobs",
           "MemoryTier", "Node", "Tools", "Topology", "probe"]
