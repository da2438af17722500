"""Helpers of the multi-node suite: the views of numactl and hwloc, probing, page counting."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Optional

MiB = 1 << 20


def numatune_command() -> list[str]:
    """The `numatune` console script next to this Python, else `python -m numatune.cli`."""
    script = os.path.join(os.path.dirname(os.path.realpath(sys.executable)), "numatune")
    if os.access(script, os.X_OK):
        return [script]
    found = shutil.which("numatune")
    return [found] if found else [sys.executable, "-m", "numatune.cli"]


def run(command: list[str], timeout: float = 300, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def probe_now():
    """A fresh in-process probe of the live machine (free memory as it is now). The harness sets
    NUMATUNE_QUICK_PROBE in the guest: no py-cpuinfo child (~13 s under the emulator)."""
    from numatune.sysfs import Root
    from numatune.topology import probe
    return probe(Root.open("/"))


@dataclass(frozen=True)
class NumactlNode:
    cpus: tuple[int, ...]
    size_mib: int
    free_mib: int


@dataclass(frozen=True)
class NumactlView:
    nodes: dict[int, NumactlNode]
    distances: dict[int, tuple[int, ...]]   # row of node i, columns by node id


def parse_numactl_hardware(text: str) -> NumactlView:
    cpus: dict[int, tuple[int, ...]] = {}
    size: dict[int, int] = {}
    free: dict[int, int] = {}
    distances: dict[int, tuple[int, ...]] = {}
    columns: list[int] = []
    in_distances = False
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if line.startswith("node distances"):
            in_distances = True
            continue
        if in_distances:
            if words[0] == "node":
                columns = [int(w) for w in words[1:]]
            else:
                row = int(words[0].rstrip(":"))
                values = [int(w) for w in words[1:]]
                by_node = dict(zip(columns, values))
                distances[row] = tuple(by_node[n] for n in sorted(by_node))
            continue
        if words[0] == "node" and len(words) >= 3:
            node = int(words[1])
            if words[2] == "cpus:":
                cpus[node] = tuple(int(w) for w in words[3:])
            elif words[2] == "size:":
                size[node] = int(words[3])
            elif words[2] == "free:":
                free[node] = int(words[3])
    nodes = {n: NumactlNode(cpus.get(n, ()), size[n], free[n]) for n in sorted(size)}
    return NumactlView(nodes, distances)


def numactl_now() -> NumactlView:
    return parse_numactl_hardware(run(["numactl", "--hardware"]).stdout)


@dataclass(frozen=True)
class HwlocNode:
    cpus: tuple[int, ...]       # PUs whose nodeset is this node
    cpuset: tuple[int, ...]     # the node object's own cpuset (its locality)
    memory_bytes: int


@dataclass(frozen=True)
class HwlocView:
    nodes: dict[int, HwlocNode]
    distances: Optional[dict[int, tuple[int, ...]]]


def _bitmap(text: Optional[str]) -> set[int]:
    """hwloc's bitmap: "0x00000006", or 32-bit words "0x00000001,0xffffffff" high to low."""
    if not text:
        return set()
    words = [w[2:] if w.startswith("0x") else w for w in text.split(",")]
    value = int("".join(w.rjust(8, "0") for w in words) or "0", 16)
    return {bit for bit in range(value.bit_length()) if value >> bit & 1}


def parse_hwloc_xml(text: str) -> HwlocView:
    root = ET.fromstring(text)
    node_objects = [o for o in root.iter("object") if o.get("type") == "NUMANode"]
    pus = [o for o in root.iter("object") if o.get("type") == "PU"]
    nodes = {}
    for obj in node_objects:
        node = int(obj.get("os_index"))
        own = tuple(sorted(int(pu.get("os_index")) for pu in pus if _bitmap(pu.get("nodeset")) == {node}))
        nodes[node] = HwlocNode(own, tuple(sorted(_bitmap(obj.get("cpuset")))), int(obj.get("local_memory", 0)))
    distances = None
    for block in root.iter("distances2"):
        if block.get("type") != "NUMANode":
            continue
        count = int(block.get("nbobjs"))
        indexes = [int(w) for w in " ".join(i.text or "" for i in block.iter("indexes")).split()]
        values = [int(w) for w in " ".join(v.text or "" for v in block.iter("u64values")).split()]
        if block.get("indexing", "os") != "os" or len(values) != count * count:
            continue
        distances = {indexes[i]: tuple(v for _, v in sorted(zip(indexes, values[i * count:(i + 1) * count])))
                     for i in range(count)}
        break
    return HwlocView(nodes, distances)


def node_cpus(topology, node: int) -> list[int]:
    return list(topology.usable_cpus_of_node(node))


def all_cpus(topology) -> list[int]:
    return [cpu for n in topology.nodes for cpu in topology.usable_cpus_of_node(n.id)]


def cpu_nodes(topology) -> list[int]:
    return [n.id for n in topology.nodes if topology.usable_cpus_of_node(n.id)]


def memory_nodes(topology) -> list[int]:
    return [n.id for n in topology.nodes if n.has_memory and n.id in topology.allowed.nodes]


def pages_by_node(placement: dict, group_filter=None) -> dict[int, int]:
    """Sampled weight pages per node, summed over the tensor groups (optionally some of them)."""
    total: dict[int, int] = {}
    for group, counts in placement["pages"].items():
        if group_filter is not None and not group_filter(group):
            continue
        for node, pages in counts.items():
            total[int(node)] = total.get(int(node), 0) + pages
    return total


def assert_pages_only_on(placement: dict, nodes, group_filter=None) -> None:
    found = pages_by_node(placement, group_filter)
    assert found, f"no pages sampled: {placement['pages']}"
    bad = {n: c for n, c in found.items() if n not in set(nodes)}
    assert not bad, (f"{placement['policy']}: pages outside node(s) {sorted(set(nodes))}: {bad} "
                     f"(negative: not resident or query error); per group: {placement['pages']}")
