"""Engine.placement() with automatic NUMA balancing on (Debian's default; the harness turns it
off for the other tests, so that the balancer cannot migrate first-touch pages under them).

The balancer marks a process's pages PROT_NONE to sample accesses (counted in /proc/vmstat as
numa_pte_updates). A move_pages() status query must still find such a page where it is: a
bound, resident engine in use must be reported on its node, page for page, while the balancer
scans it. (A previous run of this suite reported holes here; three later runs of 20-30 s with
the scanner busy saw none, so this is checked as the behaviour to keep, not as a known bug.)
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from guestlib import node_cpus

pytestmark = pytest.mark.multinode

BALANCING = "/proc/sys/kernel/numa_balancing"
DEBUGFS = "/sys/kernel/debug"
KNOBS = f"{DEBUGFS}/sched/numa_balancing"
# The balancer's scanner, made fast and eager so that the effect shows within a second or two.
FAST = {"scan_delay_ms": "0", "scan_period_min_ms": "50", "scan_period_max_ms": "200"}


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@pytest.fixture
def balancing_on():
    if not os.access(BALANCING, os.W_OK):
        pytest.skip(f"{BALANCING} is not writable here")
    if not os.path.isdir(KNOBS) and os.path.isdir(DEBUGFS):
        os.system(f"mount -t debugfs debugfs {DEBUGFS} 2>/dev/null")
    if not all(os.access(f"{KNOBS}/{name}", os.W_OK) for name in FAST):
        pytest.skip(f"no writable {KNOBS} (debugfs) to speed up the balancer's scanner")
    saved = {name: _read(f"{KNOBS}/{name}") for name in FAST}
    saved_mode = _read(BALANCING)
    try:
        for name, value in FAST.items():
            _write(f"{KNOBS}/{name}", value)
        _write(BALANCING, "1")
        yield
    finally:
        _write(BALANCING, saved_mode)
        for name, value in saved.items():
            _write(f"{KNOBS}/{name}", value)


def _pte_updates() -> int:
    with open("/proc/vmstat") as f:
        for line in f:
            name, value = line.split()
            if name == "numa_pte_updates":
                return int(value)
    pytest.skip("no numa_pte_updates in /proc/vmstat (kernel without NUMA balancing)")


def test_placement_sees_every_page_while_balancing_runs(models, topology, balancing_on):
    from numatune.engine import Engine
    node = topology.node_of_cpu(topology.online_cpus[-1])
    cpus = node_cpus(topology, node)
    engine = Engine.load(models["tiny"], cpus, "bind", [node], topology=topology)
    x = np.ones(engine.model.hidden, np.float32)
    expected = engine.moe_forward(0, x)
    before = _pte_updates()
    deadline = time.monotonic() + 40
    checks_while_scanned = 0
    while time.monotonic() < deadline and checks_while_scanned < 5:
        # Busy decoding, as a server is: the balancer scans an address space on behalf of the
        # threads that run in it, in proportion to their CPU time.
        busy_until = time.monotonic() + 0.5
        while time.monotonic() < busy_until:
            engine.moe_forward(0, x)
        pages = engine.placement()["pages"]
        holes = {group: counts for group, counts in pages.items() if set(counts) != {str(node)}}
        assert not holes, f"bound to node {node}, in use, yet reported elsewhere or absent: {holes}"
        if _pte_updates() > before:
            checks_while_scanned += 1
    assert checks_while_scanned, "the balancer marked no page in 40 s (numa_pte_updates unchanged)"
    np.testing.assert_array_equal(engine.moe_forward(0, x), expected)
