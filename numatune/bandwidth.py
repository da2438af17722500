"""Memory bandwidth of CPUs against memory nodes, measured by the C++ benchmark (kernels/membench).

The caller says which CPUs (one per physical core), which memory node, and — when the array size
is left to this module — the last-level cache size and the node's free memory. Nothing here
reads the machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from numatune import _kernels
from numatune.errors import PlacementError
from numatune.stats import Measurement

KERNELS = ("read", "copy", "triad")
ARRAYS_PER_KERNEL = {"read": 1, "copy": 2, "triad": 3}
MIN_ARRAY_BYTES = 256 << 20
LLC_MULTIPLE = 4  # arrays at least this many times the last-level cache, so they stream from memory
FREE_MEMORY_SHARE = 0.5  # a bound node that runs out of memory gets the process OOM-killed
SCHEMA_VERSION = 1
UNIT = "GB/s"
StepHook = Callable[[str], None]   # called after each measurement with what was measured


@dataclass(frozen=True)
class BandwidthResult:
    """One kernel run: `gbps` has one sample per repetition (decimal GB/s, STREAM byte counting)."""

    cpus: tuple[int, ...]
    memory_node: Optional[int]  # None: no binding, pages placed by first touch
    kernel: str
    array_bytes: int  # per array
    gbps: Measurement
    pages_on_node: tuple[tuple[int, float], ...]  # (node, fraction of sampled pages), by node
    isa: str  # loop variant that ran

    def fraction_on(self, node: int) -> float:
        return dict(self.pages_on_node).get(node, 0.0)

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "cpus": list(self.cpus),
                "memory_node": self.memory_node, "kernel": self.kernel,
                "array_bytes": self.array_bytes, "isa": self.isa, "gbps": self.gbps.to_json(),
                "pages_on_node": {str(node): share for node, share in self.pages_on_node}}

    @classmethod
    def from_json(cls, data: dict) -> "BandwidthResult":
        _check_schema(data)
        pages = tuple(sorted((int(node), float(share)) for node, share in data["pages_on_node"].items()))
        return cls(tuple(data["cpus"]), data["memory_node"], data["kernel"], data["array_bytes"],
                   Measurement.from_json(data["gbps"]), pages, data["isa"])


@dataclass(frozen=True)
class BandwidthCell:
    """A matrix entry: threads on the CPUs of `cpu_node`, memory on `result.memory_node`."""

    cpu_node: int
    result: BandwidthResult


@dataclass(frozen=True)
class BandwidthMatrix:
    cells: tuple[BandwidthCell, ...]

    def gbps(self, cpu_node: int, memory_node: int, kernel: str) -> Measurement:
        for cell in self.cells:
            result = cell.result
            if (cell.cpu_node, result.memory_node, result.kernel) == (cpu_node, memory_node, kernel):
                return result.gbps
        raise KeyError(f"no {kernel} bandwidth measured for CPUs of node {cpu_node} "
                       f"and memory of node {memory_node}")

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION,
                "cells": [{"cpu_node": c.cpu_node, "result": c.result.to_json()} for c in self.cells]}

    @classmethod
    def from_json(cls, data: dict) -> "BandwidthMatrix":
        _check_schema(data)
        return cls(tuple(BandwidthCell(c["cpu_node"], BandwidthResult.from_json(c["result"]))
                         for c in data["cells"]))


def measure(cpus: Sequence[int], memory_node: Optional[int], kernel: str = "read",
            array_bytes: Optional[int] = None, repeats: int = 5, *, llc_bytes: int = 0,
            free_bytes: Optional[int] = None) -> BandwidthResult:
    """Runs `kernel` with one thread pinned per CPU on arrays bound to `memory_node`.

    Without `array_bytes`, each array is ≥ 4× `llc_bytes` and ≥ 256 MiB, but all arrays together
    take at most half of `free_bytes` (the memory node's free memory, when known).
    """
    _check_kernel(kernel)
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if array_bytes is None:
        array_bytes = default_array_bytes(kernel, memory_node, llc_bytes, free_bytes)
    if array_bytes <= 0:
        raise PlacementError(f"array size must be positive, got {array_bytes} bytes")
    node_argument = -1 if memory_node is None else memory_node
    try:
        raw = _kernels.membench_run(kernel, list(cpus), node_argument, array_bytes, repeats)
    except ValueError as error:  # the C++ side names the CPU or node it could not use
        raise PlacementError(str(error)) from None
    return BandwidthResult(cpus=tuple(cpus), memory_node=memory_node, kernel=kernel,
                           array_bytes=raw["array_bytes"], gbps=Measurement.of(raw["gbps"], UNIT),
                           pages_on_node=tuple(sorted(raw["pages_on_node"].items())),
                           isa=raw["isa"])


def measure_matrix(node_cpus: Mapping[int, Sequence[int]], memory_nodes: Sequence[int],
                   kernels: Sequence[str] = KERNELS, array_bytes: Optional[int] = None,
                   repeats: int = 5, *, llc_bytes: int = 0,
                   free_bytes_per_node: Optional[Mapping[int, int]] = None,
                   on_step: Optional[StepHook] = None) -> BandwidthMatrix:
    """Every kernel for every (CPU node, memory node) pair, with all given CPUs of the CPU node.

    Without `array_bytes`, a kernel uses the same size for every pair (the smallest default over
    the memory nodes), so that the cells of the matrix compare like with like.
    """
    free = free_bytes_per_node or {}
    cells = []
    for kernel in kernels:
        size = array_bytes
        if size is None:
            size = min(default_array_bytes(kernel, node, llc_bytes, free.get(node))
                       for node in memory_nodes)
        for cpu_node, cpus in node_cpus.items():
            for memory_node in memory_nodes:
                result = measure(cpus, memory_node, kernel, size, repeats)
                cells.append(BandwidthCell(cpu_node, result))
                if on_step:
                    on_step(f"{kernel}: CPUs of node {cpu_node}, memory of node {memory_node}")
    return BandwidthMatrix(tuple(cells))


def thread_curve(cpus: Sequence[int], memory_node: Optional[int], kernel: str = "read",
                 counts: Optional[Sequence[int]] = None, array_bytes: Optional[int] = None,
                 repeats: int = 5, *, llc_bytes: int = 0,
                 free_bytes: Optional[int] = None, on_step: Optional[StepHook] = None) -> tuple[BandwidthResult, ...]:
    """Bandwidth with the first k CPUs for each thread count k (default 1, 2, 4, …, len(cpus)),
    all on arrays of the same size."""
    counts = thread_counts(len(cpus)) if counts is None else _checked_counts(counts, len(cpus))
    if array_bytes is None:
        array_bytes = default_array_bytes(kernel, memory_node, llc_bytes, free_bytes)
    results = []
    for count in counts:
        results.append(measure(cpus[:count], memory_node, kernel, array_bytes, repeats))
        if on_step:
            on_step(f"{kernel} with {count} thread(s) on memory node {memory_node}")
    return tuple(results)


def thread_counts(cpu_count: int) -> tuple[int, ...]:
    """Powers of two below `cpu_count`, then `cpu_count` itself."""
    counts = []
    count = 1
    while count < cpu_count:
        counts.append(count)
        count *= 2
    return tuple(counts) + (cpu_count,)


def default_array_bytes(kernel: str, memory_node: Optional[int], llc_bytes: int = 0,
                        free_bytes: Optional[int] = None) -> int:
    """Bytes per array: ≥ 4× the last-level cache and ≥ 256 MiB, all arrays within half of the
    free memory. PlacementError when that memory cannot even hold arrays of 4× the cache."""
    _check_kernel(kernel)
    wanted = max(MIN_ARRAY_BYTES, LLC_MULTIPLE * llc_bytes)
    if free_bytes is None:
        return wanted
    arrays = ARRAYS_PER_KERNEL[kernel]
    cap = int(free_bytes * FREE_MEMORY_SHARE) // arrays
    if cap < LLC_MULTIPLE * llc_bytes or cap <= 0:
        where = "memory" if memory_node is None else f"memory node {memory_node}"
        raise PlacementError(
            f"{where} has {free_bytes >> 20} MiB free: too little for {arrays} arrays of "
            f"{LLC_MULTIPLE}× the last-level cache ({LLC_MULTIPLE * llc_bytes >> 20} MiB each)")
    return min(wanted, cap)


def _checked_counts(counts: Sequence[int], cpu_count: int) -> tuple[int, ...]:
    for count in counts:
        if not 1 <= count <= cpu_count:
            raise PlacementError(f"thread count {count} is outside 1…{cpu_count} (the CPUs given)")
    return tuple(sorted(set(counts)))


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown bandwidth kernel {kernel!r} (expected one of {', '.join(KERNELS)})")


def _check_schema(data: dict) -> None:
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"bandwidth results of schema version {data.get('schema_version')!r}; "
                         f"this numatune reads version {SCHEMA_VERSION}")


@dataclass(frozen=True)
class ProbeBandwidth:
    """What `numatune probe --bandwidth` measures: the node × node matrix (all cores of the CPU
    node, one thread per core) and, per node, read bandwidth over thread counts on local memory."""

    matrix: BandwidthMatrix
    curves: tuple[tuple[int, tuple[BandwidthResult, ...]], ...]

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "matrix": self.matrix.to_json(),
                "curves": [{"node": node, "results": [r.to_json() for r in curve]}
                           for node, curve in self.curves]}


def measure_topology(topology, repeats: int = 5, kernels: Sequence[str] = KERNELS, curves: bool = True,
                     on_start: Optional[Callable[[int], None]] = None,
                     on_step: Optional[StepHook] = None) -> ProbeBandwidth:
    """Bandwidth of every usable CPU node against every allowed memory node of a probed machine
    (and, with `curves`, each node's read bandwidth by thread count). `on_start` gets the number
    of measurements to come, `on_step` a description after each."""
    from numatune.capacity import available_bytes
    node_cpus = {n.id: topology.one_cpu_per_core(topology.usable_cpus_of_node(n.id))
                 for n in topology.nodes}
    node_cpus = {node: cpus for node, cpus in node_cpus.items() if cpus}
    memory_nodes = [n.id for n in topology.nodes if n.has_memory and n.id in topology.allowed.nodes]
    if not node_cpus or not memory_nodes:
        raise PlacementError("no usable CPUs or memory nodes to measure bandwidth with")
    llc = max((c.size_bytes or 0 for c in topology.caches if c.type == "Unified"), default=0)
    free = {node: available_bytes(topology, node) for node in memory_nodes}
    if on_start:
        on_start(len(kernels) * len(node_cpus) * len(memory_nodes)
                 + (sum(len(thread_counts(len(cpus))) for cpus in node_cpus.values()) if curves else 0))
    matrix = measure_matrix(node_cpus, memory_nodes, kernels, repeats=repeats, llc_bytes=llc,
                            free_bytes_per_node=free, on_step=on_step)
    by_threads = tuple((node, thread_curve(cpus, node if node in free else None, "read", repeats=repeats,
                                           llc_bytes=llc, free_bytes=free.get(node), on_step=on_step))
                       for node, cpus in node_cpus.items()) if curves else ()
    return ProbeBandwidth(matrix, by_threads)
