"""The memory placement policies, one vocabulary for the whole program.

The values are the names users type (`--policy`, `--expect`, profiles, saved results); the C++
engine has the same five as `Placement` in kernels/engine.h, bound as `_kernels.Placement`, in
the same order (tests/test_policy.py checks that both agree, names and numbers).
"""
from __future__ import annotations

from enum import Enum


class Policy(str, Enum):
    FIRST_TOUCH = "first-touch"    # the default: each page lands on the node of the thread that first touches it
    INTERLEAVE = "interleave"      # pages round-robin over a node set
    BIND = "bind"                  # every page on one node
    REPLICATE = "replicate"        # a full copy per node; each node's workers read their own
    PARTITION = "partition"        # each node holds a slice of every expert; workers read their slice

    def __str__(self) -> str:      # the user's word, in messages and f-strings alike
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def code(self) -> int:
        """The number of the same placement in the C++ engine (its position in this enum)."""
        return list(Policy).index(self)

    @property
    def per_node_groups(self) -> bool:
        """replicate and partition: the engine places a share on each node for that node's workers."""
        return self in (Policy.REPLICATE, Policy.PARTITION)

    @classmethod
    def parse(cls, name: str, where: str) -> "Policy":
        """The policy called `name`; a ValueError naming `where` (a flag or a field) otherwise."""
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"{where}: unknown policy '{name}' (expected one of: {', '.join(NAMES)})") from None


NAMES = tuple(policy.value for policy in Policy)
