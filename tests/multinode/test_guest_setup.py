"""What every guest run rests on: the guest is the layout it was booted as, and the numatune
under test is the installed one, with its compiled engine (the work tree has no extension)."""
from __future__ import annotations

import glob
import os

import pytest

pytestmark = pytest.mark.multinode

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_installed_numatune_with_its_extension():
    import numatune
    from numatune import _kernels
    package = os.path.dirname(os.path.realpath(numatune.__file__))
    pythonpath = os.environ.get("PYTHONPATH", "")
    if not pythonpath:
        assert not package.startswith(REPO + os.sep), \
            f"numatune imported from the work tree ({package}), not the installed package"
    assert os.path.dirname(os.path.realpath(_kernels.__file__)) == package
    assert _kernels.active_isa()          # the dispatcher picked a variant on the emulated CPU


def test_guest_matches_the_layout(layout):
    nodes = sorted(int(p.rsplit("node", 1)[1]) for p in glob.glob("/sys/devices/system/node/node[0-9]*"))
    assert nodes == list(range(layout.nodes))
    assert os.cpu_count() == layout.total_cpus
    for node in range(layout.nodes):
        with open(f"/sys/devices/system/node/node{node}/cpulist") as f:
            text = f.read().strip()
        expected = layout.node_cpus(node)
        assert text == (f"{expected[0]}-{expected[-1]}" if len(expected) > 1 else
                        str(expected[0]) if expected else ""), f"node {node}: cpulist {text!r}"
