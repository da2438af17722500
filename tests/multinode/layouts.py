"""NUMA layouts of the guests that the multi-node suite boots, and how QEMU is told about them.

A layout is plain data: CPUs and memory of each node, and the distance matrix when it is not
QEMU's default (10 local, 20 remote). The host side (guest.py) turns it into virtme-ng options;
the guest side (conftest.py) reads it back from the environment to know what it should see.
Nothing here imports numatune.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

ENV = "NUMATUNE_MULTINODE"          # set by the harness inside the guest: the layout, as JSON
MODELS_ENV = "NUMATUNE_MULTINODE_MODELS"   # GGUF files and the OpenMP program, made on the host before boot


@dataclass(frozen=True)
class Layout:
    name: str
    title: str
    cpus: tuple[int, ...]            # CPUs of each node, node by node (0: a memory-only node)
    memory_mib: tuple[int, ...]      # memory of each node
    distances: Optional[tuple[tuple[int, ...], ...]] = None   # row i: from node i; None: 10/20
    # Test modules (tests/multinode/test_guest_<name>.py) this layout boots for: every layout
    # checks what its shape can show, and none pays for what another already covers.
    suites: tuple[str, ...] = ()

    @property
    def nodes(self) -> int:
        return len(self.cpus)

    @property
    def total_cpus(self) -> int:
        return sum(self.cpus)

    def node_cpus(self, node: int) -> tuple[int, ...]:
        """Guest CPU ids of a node: QEMU numbers them node by node."""
        first = sum(self.cpus[:node])
        return tuple(range(first, first + self.cpus[node]))

    def distance_matrix(self) -> tuple[tuple[int, ...], ...]:
        if self.distances is not None:
            return self.distances
        return tuple(tuple(10 if i == j else 20 for j in range(self.nodes)) for i in range(self.nodes))

    def memory_only_nodes(self) -> tuple[int, ...]:
        return tuple(n for n, count in enumerate(self.cpus) if count == 0)

    def cpu_nodes(self) -> tuple[int, ...]:
        return tuple(n for n, count in enumerate(self.cpus) if count > 0)

    def vng_options(self) -> list[str]:
        """--cpus, --memory, --numa and --numa-distance for virtme-ng."""
        options = ["--cpus", str(self.total_cpus), "--memory", f"{sum(self.memory_mib)}M"]
        for node in range(self.nodes):
            cpus = self.node_cpus(node)
            spec = f"{self.memory_mib[node]}M"
            if cpus:
                spec += f",cpus={cpus[0]}-{cpus[-1]}"
            options += ["--numa", spec]
        if self.distances is not None:
            # QEMU wants both directions of every pair as soon as one pair is asymmetric.
            for i in range(self.nodes):
                for j in range(self.nodes):
                    if i != j:
                        options += ["--numa-distance", f"{i},{j}={self.distances[i][j]}"]
        return options

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "title": self.title, "cpus": list(self.cpus),
                           "memory_mib": list(self.memory_mib),
                           "distances": [list(r) for r in self.distances] if self.distances else None,
                           "suites": list(self.suites)})

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        data = json.loads(text)
        distances = data.get("distances")
        return cls(data["name"], data["title"], tuple(data["cpus"]), tuple(data["memory_mib"]),
                   tuple(tuple(r) for r in distances) if distances else None,
                   tuple(data.get("suites", ())))

    def test_files(self, directory: str) -> list[str]:
        return [os.path.join(directory, f"test_guest_{suite}.py") for suite in self.suites]

    def check(self) -> None:
        if not self.cpus or len(self.cpus) != len(self.memory_mib):
            raise ValueError(f"layout {self.name}: one CPU count and one memory size per node")
        if not any(self.cpus):
            raise ValueError(f"layout {self.name}: no node has CPUs")
        if self.distances is not None:
            if len(self.distances) != self.nodes or any(len(r) != self.nodes for r in self.distances):
                raise ValueError(f"layout {self.name}: distances must be {self.nodes}×{self.nodes}")
            for i, row in enumerate(self.distances):
                if row[i] != 10 or any(d <= 10 for j, d in enumerate(row) if j != i):
                    raise ValueError(f"layout {self.name}: distance row {i} must be 10 on the "
                                     "diagonal and above 10 elsewhere")
        unknown = [suite for suite in self.suites if suite not in SUITES]
        if unknown or not self.suites:
            raise ValueError(f"layout {self.name}: suites must be some of {', '.join(SUITES)}, got {unknown or 'none'}")


SUITES = ("setup", "probe", "bandwidth", "engine", "audit", "launch", "tune", "numa_balancing", "llama")

LAYOUTS = {
    # The 2-node machine of the motivating case: everything, launch and tune included.
    "A": Layout("A", "2 nodes × 2 CPUs, 512 MiB each", (2, 2), (512, 512), suites=SUITES),
    # Uneven nodes and a node with memory only: what every policy, the audit and the launcher
    # do with them.
    "B": Layout("B", "4 nodes: 1, 2 and 1 CPUs, and a memory-only node; 512 MiB each",
                (1, 2, 1, 0), (512, 512, 512, 512),
                suites=("setup", "probe", "bandwidth", "engine", "audit", "launch")),
    # Not the default 10/20, and node 0 ↔ 2 asymmetric (25 one way, 30 the other), so that a
    # transposed or symmetrised matrix shows; three nodes for 3-way interleave and partition.
    "C": Layout("C", "3 nodes × 1 CPU, distances 10/15/20/25/30 with 0↔2 asymmetric; 512 MiB each",
                (1, 1, 1), (512, 512, 512),
                ((10, 15, 25),
                 (15, 10, 20),
                 (30, 20, 10)),
                suites=("setup", "probe", "bandwidth", "engine")),
}
for _layout in LAYOUTS.values():
    _layout.check()


def current() -> Optional[Layout]:
    """The layout this process runs in, as the harness declared it; None outside a guest."""
    text = os.environ.get(ENV)
    return Layout.from_json(text) if text else None
