"""How much memory a node can still give, and how much a placement would ask of each node."""
from __future__ import annotations

from .topology.model import Topology

HEADROOM_PERCENT = 5       # working memory a node must have free beyond the weights placed on it


def with_headroom(weight_bytes: int) -> int:
    """What a node must have free to take `weight_bytes` of weights: them plus the headroom
    (integer arithmetic, so that a boundary is the same boundary everywhere)."""
    return weight_bytes + -(-weight_bytes * HEADROOM_PERCENT // 100)


def fits(weight_bytes: int, free_bytes: int) -> bool:
    """The one capacity rule (audit, recommend, search, plan and the engine's placement use it):
    weights fit where they and their headroom are free."""
    return with_headroom(weight_bytes) <= free_bytes


def shortfalls(topology: Topology, needs: dict[int, int]) -> list[tuple[int, int, int]]:
    """(node, weight bytes, free bytes) of every node of `needs` (node → weight bytes) that they do not fit."""
    out = []
    for node, need in sorted(needs.items()):
        free = available_bytes(topology, node)
        if not fits(need, free):
            out.append((node, need, free))
    return out


def available_bytes(topology: Topology, node: int) -> int:
    """Free memory of a node, as placement can count on it.

    The node's MemFree, except on a machine whose node figures do not account for its memory
    (virtual machines that hot-add memory as it is touched report a small node total that grows;
    seen on this project's own build hosts): with a single memory node, the system's
    MemAvailable is the better figure, since all of it can only come from that node.
    """
    n = topology.node(node)
    free = n.memory_free_bytes if n.memory_free_bytes is not None else n.memory_total_bytes
    memory_nodes = [m for m in topology.nodes if m.has_memory]
    if len(memory_nodes) == 1 and topology.memory_available_bytes:
        return max(free, topology.memory_available_bytes)
    return free


def bytes_per_node(policy: str, weight_bytes: int, nodes: list[int],
                   worker_nodes: list[int]) -> dict[int, int]:
    """Weight bytes a placement puts on each node.

    first-touch follows the workers that copy the weights in (an equal share each);
    interleave spreads one copy evenly; replicate puts a whole copy on every node;
    partition and bind put each node's share (bind: all of it) on that node.
    """
    if policy == "bind":
        return {nodes[0]: weight_bytes}
    if policy == "replicate":
        return {n: weight_bytes for n in nodes}
    if policy in ("interleave", "partition"):
        return {n: weight_bytes // len(nodes) for n in nodes}
    shares: dict[int, int] = {}
    for n in worker_nodes:
        shares[n] = shares.get(n, 0) + weight_bytes // len(worker_nodes)
    return shares
