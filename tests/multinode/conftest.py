"""Shared pieces of the multi-node suite: when to skip, and what the guest really looks like.

Every test here is marked `multinode`. It runs only inside a guest started by guest.py, which
sets NUMATUNE_MULTINODE to the layout it booted; the node count in sysfs must agree with it.
Anywhere else (the host's plain `pytest` run included) each test is skipped with the reason.

Inside the guest, three independent views of the machine are gathered once per boot:
`numatune probe --json` (its main(), in this process), `numactl -H` and hwloc's
`lstopo --of xml`. The tests compare them, and use the probe's Topology for the engine.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from dataclasses import replace
from typing import Optional

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from guestlib import HwlocView, NumactlView, numactl_now, parse_hwloc_xml, run  # noqa: E402
from layouts import MODELS_ENV, Layout, current  # noqa: E402


def guest_problem() -> Optional[str]:
    """Why this is not a multi-node guest of the declared layout (None when it is one)."""
    layout = current()
    if layout is None:
        return ("runs only inside a multi-node guest: tests/multinode/run.sh boots one "
                "(NUMATUNE_MULTINODE is not set)")
    found = len(glob.glob("/sys/devices/system/node/node[0-9]*"))
    if found != layout.nodes:
        return (f"NUMATUNE_MULTINODE declares layout {layout.name} with {layout.nodes} NUMA nodes, "
                f"but this machine has {found}")
    return None


def pytest_collection_modifyitems(config, items):
    reason = guest_problem()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("multinode") is not None:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    """memory_node / cpu_node parameters: the nodes of the booted layout (one placeholder
    outside a guest, where the test is skipped anyway)."""
    layout = current()
    if "memory_node" in metafunc.fixturenames:
        nodes = list(range(layout.nodes)) if layout else [0]
        metafunc.parametrize("memory_node", nodes, ids=[f"node{n}" for n in nodes])
    if "cpu_node" in metafunc.fixturenames:
        nodes = list(layout.cpu_nodes()) if layout else [0]
        metafunc.parametrize("cpu_node", nodes, ids=[f"node{n}" for n in nodes])


# ---------------------------------------------------------------------------------------------
# The layout and the machine


@pytest.fixture(scope="session")
def layout() -> Layout:
    found = current()
    assert found is not None
    return found


@pytest.fixture(scope="session")
def probe_json() -> dict:
    """`numatune probe --json`, once per boot: its main() in this process (starting Python
    costs ~30 s under the emulator; test_guest_launch.py runs the `numatune` script)."""
    import contextlib
    import io
    from numatune.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["probe", "--json"])
    assert status == 0, out.getvalue()
    return json.loads(out.getvalue())


@pytest.fixture(scope="session")
def topology(probe_json):
    from numatune.topology import Topology
    return Topology.from_json(probe_json)


@pytest.fixture(scope="session")
def numactl_view() -> NumactlView:
    return numactl_now()


@pytest.fixture(scope="session")
def hwloc_view() -> HwlocView:
    tool = shutil.which("lstopo-no-graphics") or shutil.which("lstopo")
    if tool is None:
        pytest.fail("hwloc's lstopo is not installed in the guest's view (apt-get install hwloc)")
    return parse_hwloc_xml(run([tool, "--of", "xml", "-"]).stdout)


# ---------------------------------------------------------------------------------------------
# Models and engines


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
    """GGUF files: made on the host by guest.py before boot, else (run by hand) made here."""
    made = os.environ.get(MODELS_ENV)
    found = {name: os.path.join(made, f"{name}-q8_0.gguf") for name in ("tiny", "wide")} if made else {}
    if found and all(os.path.exists(p) for p in found.values()):
        return found
    from guest import MODELS
    from numatune.synth import PRESETS, synthesize
    directory = tmp_path_factory.mktemp("models")
    out = {}
    for name, shape in MODELS.items():
        out[name] = str(directory / f"{name}-q8_0.gguf")
        synthesize(out[name], replace(PRESETS["default"], **shape), "Q8_0")
    return out




@pytest.fixture(scope="session")
def llama(models) -> dict[str, str]:
    """The portable llama-bench (its path) and a complete model it decodes, made on the host by
    guest.py; a missing llama-bench fails the tests that need it (ci.sh builds it)."""
    made = os.environ.get(MODELS_ENV)
    binary = os.path.join(made, "llama-bench-portable") if made else None
    model = os.path.join(made, "tiny-complete-q8_0.gguf") if made else None
    if not (binary and os.path.exists(binary) and model and os.path.exists(model)):
        pytest.fail("no portable llama-bench or complete model from the host: run tests/multinode/ci.sh, "
                    "which builds it (tools/build-llama-bench.sh --portable)")
    return {"binary": binary, "model": model}
