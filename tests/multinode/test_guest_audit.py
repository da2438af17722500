"""Audit findings that need several nodes, and placements refused for lack of memory, in a
multi-node guest — and the same audit seen from one node (a cgroup cpuset holding node 0 only,
in the same guest), where those findings must not fire.

Memory is really taken: a child process bound to one node (`numactl --membind`) holds all but
a few tens of MiB of that node's free memory while these tests run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from guestlib import MiB, all_cpus, cpu_nodes, node_cpus, probe_now

pytestmark = pytest.mark.multinode

LEFT_FREE = 48 * MiB        # what the hog leaves free on its node: well under the wide model (~102 MiB)

HOG = r"""
import sys
held = [b"\x01" * int(sys.argv[1])]   # written, so every page is really allocated (on the bound node)
print("ready", flush=True)
for line in sys.stdin:                # each line: bytes more to hold; held until stdin closes
    held.append(b"\x01" * int(line))
    print("ready", flush=True)
"""


def findings(topology, **context):
    from numatune.audit import AuditContext, run_audit
    return {f.id: f for f in run_audit(topology, AuditContext(**context))}


def llama_cpp():
    from numatune.engines import inspect_engine
    return inspect_engine("llama.cpp")


# ---------------------------------------------------------------------------------------------
# Threads spanning nodes


def test_engine_spans_nodes_fires_for_threads_beyond_one_node(topology):
    found = findings(topology, engine=llama_cpp(), threads=len(all_cpus(topology)))
    assert "engine-spans-nodes" in found, sorted(found)
    finding = found["engine-spans-nodes"]
    assert finding.severity == "error"
    assert f"span {len(cpu_nodes(topology))} nodes" in finding.title
    # the fix names one node's placement, as the command builder writes it for the engine
    assert "numactl --physcpubind=" in (finding.fix or "") and "--membind=" in (finding.fix or ""), finding.fix


def test_engine_spans_nodes_quiet_within_one_node(topology):
    largest = max(len(topology.core_groups(node_cpus(topology, n))) for n in cpu_nodes(topology))
    found = findings(topology, engine=llama_cpp(), threads=largest)
    assert "engine-spans-nodes" not in found


def test_audit_command_flags_threads_across_nodes(layout, capsys):
    """`numatune audit` (its main(), in this process: a Python start costs ~30 s under the
    emulator): all CPUs for llama.cpp span the nodes, an error, so exit status 1."""
    from numatune.cli import main
    capsys.readouterr()
    status = main(["audit", "--engine", "llama.cpp", "--json", "--threads", str(layout.total_cpus)])
    ids = [f["id"] for f in json.loads(capsys.readouterr().out)["findings"]]
    assert "engine-spans-nodes" in ids and status == 1, (status, ids)


# ---------------------------------------------------------------------------------------------
# One node nearly full


@pytest.fixture(scope="module")
def hog(models):
    """(node, topology probed while the hog holds that node's memory). The page cache is
    dropped first: otherwise the kernel reclaims it on the hog's node as the hog fills it, and
    the node ends with more free memory than the hog left."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    first = probe_now()
    node = cpu_nodes(first)[-1]           # a node with CPUs, not node 0
    assert node != 0
    size = first.node(node).memory_free_bytes - LEFT_FREE
    assert size > 64 * MiB, f"node {node} has only {first.node(node).memory_free_bytes / MiB:.0f} MiB free"
    proc = subprocess.Popen(["numactl", f"--membind={node}", sys.executable, "-c", HOG, str(size)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        from numatune.gguf_moe import read_moe_model
        wide = read_moe_model(models["wide"]).expert_bytes
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"the memory hog did not start (exit status {proc.poll()})"
        # The kernel gives back reclaimable memory on the node as the hog fills it, so the node
        # can end with more free than the hog meant to leave: top it up until it does not.
        for _ in range(4):
            time.sleep(1)
            filled = probe_now()
            free = filled.node(node).memory_free_bytes
            if free < wide:
                break
            proc.stdin.write(f"{max(free - LEFT_FREE, MiB)}\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ready", f"the memory hog stopped (exit status {proc.poll()})"
        assert free < wide, (f"the hog left {free / MiB:.0f} MiB free on node {node}, not less than "
                             f"the wide model's {wide / MiB:.0f} MiB")
        yield node, filled
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def test_unequal_free_memory_fires(hog):
    node, topology = hog
    found = findings(topology)
    assert "unequal-free-memory" in found, sorted(found)
    finding = found["unequal-free-memory"]
    assert f"node {node} has" in finding.title, finding.title
    evidence = {e.what for e in finding.evidence}
    assert f"node {node} MemFree" in evidence


def test_replicate_refused_where_a_copy_does_not_fit(hog, models):
    """The wide model (~102 MiB): one copy per node does not fit on the hog's node; that node is named,
    in one line, before anything is copied."""
    from numatune.engine import Engine
    from numatune.errors import PlacementError
    node, topology = hog
    with pytest.raises(PlacementError) as refused:
        Engine.load(models["wide"], all_cpus(topology), "replicate", None, topology=topology)
    message = str(refused.value)
    assert message.startswith(f"node {node}:") and "one full copy per node" in message and "\n" not in message, message
    with pytest.raises(PlacementError, match=f"node {node}:"):
        Engine.load(models["wide"], node_cpus(topology, node), "bind", [node], topology=topology)


def test_placements_that_fit_are_accepted(hog, models):
    from numatune.engine import plan_placement
    from numatune.gguf_moe import read_moe_model
    node, topology = hog
    weights = read_moe_model(models["wide"]).expert_bytes
    others = [n for n in cpu_nodes(topology) if n != node]
    plan = plan_placement(topology, node_cpus(topology, others[0]), "bind", [others[0]], weights)
    assert plan.bytes_per_node == ((others[0], weights),)
    # The tiny model still fits everywhere, the nearly full node included.
    from numatune.engine import Engine
    engine = Engine.load(models["tiny"], all_cpus(topology), "replicate", None, topology=topology)
    assert {int(k) for k in engine.placement()["pages"][f"gate/copy@node{node}"]} == {node}


def _cgroup_root() -> str | None:
    root = "/sys/fs/cgroup"
    try:
        with open(os.path.join(root, "cgroup.controllers")) as f:
            return root if "cpuset" in f.read().split() else None
    except OSError:
        return None


@pytest.fixture
def inside_one_node(topology):
    """This test process, moved for the duration of the test into a cgroup v2 cpuset holding
    node 0's CPUs and memory only, and back into the root cgroup afterwards (which gives back
    the whole machine's CPUs). Cheaper under the emulator than a child `numatune audit`."""
    root = _cgroup_root()
    if root is None:
        pytest.skip("no cgroup v2 cpuset controller in this guest")
    with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
        f.write("+cpuset")
    path = os.path.join(root, f"numatune-one-node-{os.getpid()}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "cpuset.cpus"), "w") as f:
            f.write(",".join(str(c) for c in node_cpus(topology, 0)))
        with open(os.path.join(path, "cpuset.mems"), "w") as f:
            f.write("0")
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        try:
            yield path
        finally:
            with open(os.path.join(root, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
    finally:
        os.rmdir(path)
    assert set(os.sched_getaffinity(0)) == set(all_cpus(topology))


def test_one_node_audit_stays_quiet(hog, inside_one_node, topology):
    """The same audit seen from node 0 alone, while the hog still fills another node: neither
    multi-node finding fires; the nodes the cpuset hides are named instead."""
    one_node = probe_now()
    assert set(one_node.allowed.nodes) == {0}, one_node.allowed
    assert set(one_node.allowed.cpus) == set(node_cpus(topology, 0))
    found = findings(one_node, engine=llama_cpp(), threads=len(all_cpus(topology)))
    assert "engine-spans-nodes" not in found, found.get("engine-spans-nodes")
    assert "unequal-free-memory" not in found, found.get("unequal-free-memory")
    assert "cpuset-hides-nodes" in found, sorted(found)
