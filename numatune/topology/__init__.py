"""The probe and its values; the modules of this package are split in the next commit."""
from .model import (KNOWN_FLAGS, SCHEMA_VERSION, Allowed, Cache, Cpu, HugePagePool, Isa, KernelKnobs,
                    MemoryTier, Node, Tools, Topology, probe)

__all__ = ["KNOWN_FLAGS", "SCHEMA_VERSION", "Allowed", "Cache", "Cpu", "HugePagePool", "Isa", "KernelKnobs",
           "MemoryTier", "Node", "Tools", "Topology", "probe"]
