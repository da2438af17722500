"""Fixtures shared by the test files: hwloc's captured machines, generated trees, a small GGUF model.

Each is made once per session; tests that change a tree write their own (treegen.write_tree).
"""
from __future__ import annotations

import functools
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from treegen import FakeMachine, hwloc_corpus, seed_machine, write_tree


# tests/multinode runs inside the guests its harness boots (docs/multinode.md), which set
# NUMATUNE_MULTINODE; on a host its tests could only be skipped, so they are not collected.
collect_ignore = [] if os.environ.get("NUMATUNE_MULTINODE") else ["multinode"]

# What .ci/run installs: a test that needs one of these fails when it is missing, never skips.
CI_COMMANDS = {"numactl": "numactl", "lstopo": "hwloc", "g++": "g++", "numatune": "numatune itself (pip install -e .)"}


@pytest.fixture(scope="session")
def require():
    """require(command) -> its path; fails the test, naming the package, when it is not on PATH."""
    def found(command: str) -> str:
        path = shutil.which(command)
        if path is None:
            pytest.fail(f"{command} is not installed (install {CI_COMMANDS[command]}; .ci/run does)", pytrace=False)
        return path
    return found


@functools.lru_cache(maxsize=None)
def _probe_capture(name: str):
    from numatune.sysfs import Root
    from numatune.topology import probe
    path = hwloc_corpus() / f"{name}.tar.bz2"
    if not path.is_file():          # a name mistyped or a capture dropped from the corpus: an error, not a skip
        raise FileNotFoundError(f"no capture {name} in {hwloc_corpus()}")
    return probe(Root.open(str(path)))


@pytest.fixture(scope="session")
def capture():
    """capture(name) -> the Topology probed from hwloc's capture `name`.tar.bz2, read in place."""
    return _probe_capture


@pytest.fixture(scope="session")
def seed_root(tmp_path_factory) -> Path:
    """The seed's two-socket Xeon as a generated tree (read-only: copy it before changing it)."""
    return write_tree(tmp_path_factory.mktemp("seed") / "root", seed_machine())


@pytest.fixture(scope="session")
def seed(seed_root):
    """The Topology probed from seed_root."""
    from numatune.sysfs import Root
    from numatune.topology import probe
    return probe(Root.open(str(seed_root)))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """One node, one core: CPU 0 and node 0, which every Linux host has, so real children can be
    placed as a plan made from this root says whatever this machine looks like."""
    return write_tree(tmp_path_factory.mktemp("tiny") / "root", FakeMachine(sockets=1, cores_per_node=1))


@pytest.fixture(scope="session")
def host_memory_node() -> int:
    """A NUMA node this process may allocate on, read from this host (node 0 on most; which one
    does not matter to the tests that place real memory there)."""
    from numatune.sysfs import Root
    from numatune.topology import probe
    host = probe(Root.open("/"))
    return next(node.id for node in host.nodes if node.has_memory and node.id in host.allowed.nodes)


@pytest.fixture(scope="session")
def small_gguf(tmp_path_factory) -> Path:
    """A real GGUF with the default preset's layout shrunk: 2 layers of 8 experts, top-2, Q8_0."""
    from numatune.synth import PRESETS, synthesize
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    synthesize(path, replace(PRESETS["default"], hidden=512, intermediate=256, experts=8, top_k=2, layers=2), "Q8_0")
    return path


@pytest.fixture(scope="session")
def host():
    """The live machine's topology, for tests that run the engine on it (never for its layout)."""
    from numatune.sysfs import Root
    from numatune.topology import probe
    return probe(Root.open("/"))
