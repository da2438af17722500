"""`numatune bench`: the bundled engine's decode speed for one placement, against the memory's limit."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import psutil

from . import bandwidth
from .engine import Engine
from .errors import NumatuneError
from .policy import Policy
from .stats import Measurement
from .topology.model import Topology


@dataclass(frozen=True)
class BenchResult:
    model: str
    policy: Policy
    nodes: tuple[int, ...]
    cpus: tuple[int, ...]
    isa: str
    tokens: int
    tokens_per_s: Measurement
    weight_gb_per_s: Measurement
    bytes_per_token: float
    resident_bytes: int
    rss_bytes: int
    read_gb_per_s: Measurement | None          # the probe's read bandwidth, same CPUs and memory
    placement: dict
    step_bytes_per_token: int = 0              # what a real decode step of the file reads
    executed_share: float = 1.0                # share of those bytes the engine executes
    sync_barriers: int = 0                     # emulated barriers per layer (another engine's synchronisation)

    @property
    def fraction_of_read(self) -> float | None:
        if self.read_gb_per_s is None or not self.read_gb_per_s.median:
            return None
        return self.weight_gb_per_s.median / self.read_gb_per_s.median

    def to_json(self) -> dict:
        return {"schema_version": 1, "model": self.model, "policy": self.policy.value, "nodes": list(self.nodes),
                "cpus": list(self.cpus), "isa": self.isa, "tokens": self.tokens,
                "tokens_per_s": self.tokens_per_s.to_json(), "weight_gb_per_s": self.weight_gb_per_s.to_json(),
                "bytes_per_token": self.bytes_per_token, "resident_bytes": self.resident_bytes,
                "rss_bytes": self.rss_bytes,
                "read_gb_per_s": self.read_gb_per_s.to_json() if self.read_gb_per_s else None,
                "fraction_of_read": self.fraction_of_read, "placement": self.placement,
                "step_bytes_per_token": self.step_bytes_per_token, "executed_share": self.executed_share,
                "sync_barriers": self.sync_barriers}


def pick_cpus(topology: Topology, threads: int) -> tuple[int, ...]:
    """`threads` CPUs this process may use: one per physical core, node by node, then SMT siblings."""
    usable = [cpu for node in topology.nodes for cpu in topology.usable_cpus_of_node(node.id)]
    firsts = list(topology.one_cpu_per_core(usable))
    siblings = [cpu for cpu in usable if cpu not in firsts]
    ordered = firsts + siblings
    if not 1 <= threads <= len(ordered):
        raise NumatuneError(f"--threads: {threads} asked, this process may use 1 to {len(ordered)} CPUs")
    return tuple(sorted(ordered[:threads]))


def run_bench(model_path: str, cpus: Sequence[int], policy: Policy | str, nodes: Sequence[int] | None,
              topology: Topology, tokens: int = 64, repeats: int = 5, warmup: int = 4,
              measure_read: bool = True, sync_barriers: int = 0) -> BenchResult:
    engine = Engine.load(model_path, cpus, policy, nodes, topology=topology, sync_barriers=sync_barriers)
    runs = [engine.decode_bench(tokens, warmup if i == 0 else 1, seed=i) for i in range(repeats)]
    placed = engine.placement(samples_per_group=1024)
    read = _read_bandwidth(engine, topology, repeats) if measure_read else None
    return BenchResult(
        model=str(model_path), policy=engine.plan.policy, nodes=engine.plan.nodes, cpus=tuple(cpus), isa=runs[0]["isa"],
        tokens=tokens, tokens_per_s=Measurement.of((r["tokens_per_s"] for r in runs), "tok/s"),
        weight_gb_per_s=Measurement.of((r["gb_per_s"] for r in runs), "GB/s"),
        bytes_per_token=runs[0]["bytes_per_token"], resident_bytes=placed["resident_bytes"],
        rss_bytes=psutil.Process(os.getpid()).memory_info().rss, read_gb_per_s=read, placement=placed,
        step_bytes_per_token=engine.model.step_bytes_per_token, executed_share=engine.model.executed_share,
        sync_barriers=engine.sync_barriers)


def _read_bandwidth(engine: Engine, topology: Topology, repeats: int) -> Measurement:
    """Read bandwidth the same CPUs get from the same memory: per node group for local
    placements (their sum), bound to the node for bind, unbound otherwise."""
    llc = max((c.size_bytes or 0 for c in topology.caches if c.type == "Unified"), default=0)
    plan = engine.plan
    if plan.policy.per_node_groups:
        groups = {node: [c for c, n in zip(engine.cpus, plan.worker_nodes) if n == node] for node in plan.nodes}
        per_group = [bandwidth.measure(cpus, node, "read", repeats=repeats, llc_bytes=llc).gbps
                     for node, cpus in groups.items()]
        sums = [sum(samples) for samples in zip(*(m.samples for m in per_group))]
        return Measurement.of(sums, "GB/s")
    node = plan.nodes[0] if plan.policy is Policy.BIND else None
    return bandwidth.measure(engine.cpus, node, "read", repeats=repeats, llc_bytes=llc).gbps
