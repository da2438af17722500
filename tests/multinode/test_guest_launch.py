"""`numatune launch --engine openmp` in a multi-node guest: the child runs on the CPUs and with
the memory policy that `numatune recommend --engine openmp --json` recommends, whether numactl
places it or numatune does (NUMATUNE_NO_NUMACTL=1), as the kernel reports it in /proc/PID.

Two recommendations are exercised: with no model, openmp (not NUMA-aware) is confined to one
node, memory bound there; with a model far larger than any node (DeepSeek-R1 Q4_K_M), one copy
interleaved over the nodes with CPUs. The first child is a small Python program that maps and
touches 16 MiB and waits; the second a real OpenMP program, whose threads must each sit on one
recommended CPU.

`recommend` and the Python child's `launch` go through numatune.cli.main(argv), the command
line run in this process, because starting Python costs ~30 s under the emulator; the OpenMP
program is started by the `numatune` script itself.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from guestlib import numatune_command
from layouts import MODELS_ENV

pytestmark = pytest.mark.multinode

BIG_MODEL = "deepseek-r1:Q4_K_M"          # a model profile: hundreds of GB, fits no node
CHILD_MIB = 16
CHILD_EXIT = 7                            # the child's exit status, which launch must pass on
HUGE_PAGE_PAGES = 512                     # 4 KiB pages in one 2 MiB transparent huge page
REPORT_TIMEOUT_S = 180

# Maps and touches CHILD_MIB MiB (a mapping of its own), reports its pid and the mapping's
# address in REPORT, waits until REPORT.done exists, exits with the status given.
CHILD = r"""
import ctypes, mmap, os, sys, time
report, size, status = sys.argv[1], int(sys.argv[2]) << 20, int(sys.argv[3])
buffer = mmap.mmap(-1, size)
for offset in range(0, size, 4096):
    buffer[offset] = 1
address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
with open(report + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {address}\n")
os.rename(report + ".tmp", report)
while not os.path.exists(report + ".done"):
    time.sleep(0.1)
sys.exit(status)
"""


def cpulist(text: str) -> list[int]:
    out: list[int] = []
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            out += range(int(first), int(last or first) + 1)
    return out


def format_list(values: list[int]) -> str:
    from numatune.sysfs import format_cpulist
    return format_cpulist(values)


def proc_status(pid: int, task: int | None = None) -> dict[str, str]:
    path = f"/proc/{pid}/status" if task is None else f"/proc/{pid}/task/{task}/status"
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def proc_environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = [entry.decode(errors="replace") for entry in f.read().split(b"\0") if entry]
    return dict(item.split("=", 1) for item in items if "=" in item)


def mapping_numa(pid: int, address: int) -> tuple[str, dict[int, int]]:
    """numa_maps' policy and pages per node for the mapping of `pid` that holds `address`."""
    start = None
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            if low <= address < high:
                start = low
                break
    assert start is not None, f"no mapping of process {pid} holds {address:#x}"
    with open(f"/proc/{pid}/numa_maps") as f:
        for line in f:
            words = line.split()
            if int(words[0], 16) == start:
                pages = {int(w[1:].split("=")[0]): int(w.split("=")[1]) for w in words[2:]
                         if w[0] == "N" and w[1:2].isdigit()}
                return words[1], pages
    raise AssertionError(f"/proc/{pid}/numa_maps has no line for the mapping at {start:#x}")


def numa_maps_policy(placement: dict) -> str:
    """How numa_maps spells a process memory policy (the kernel's mpol_to_str): bind:1,
    interleave:0-2, or default."""
    if placement["memory_mode"] == "default":
        return "default"
    return f"{placement['memory_mode']}:{format_list(placement['memory_nodes'])}"


def cli(capsys, argv: list[str]) -> tuple[int, str]:
    from numatune.cli import main
    capsys.readouterr()
    status = main(argv)
    return status, capsys.readouterr().out


def wait_for(path: str, alive, timeout: float = REPORT_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if not alive():
            raise AssertionError(f"the launched child exited before writing {path}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the launched child did not write {path} within {timeout:.0f} s")
        time.sleep(0.2)
    with open(path) as f:
        return f.read()


def widest_nodes(layout) -> list[int]:
    """The nodes with the most CPUs."""
    most = max(len(layout.node_cpus(n)) for n in layout.cpu_nodes())
    return [n for n in layout.cpu_nodes() if len(layout.node_cpus(n)) == most]


def recommend(model: str | None) -> dict:
    from numatune.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["recommend", "--engine", "openmp", "--json"] + (["--model", model] if model else []))
    assert status == 0, out.getvalue()
    return json.loads(out.getvalue())


@pytest.fixture(scope="module", params=["one-node", "big-model"])
def recommended(request) -> tuple[str | None, dict]:
    model = BIG_MODEL if request.param == "big-model" else None
    return model, recommend(model)


def test_recommendation_fits_the_layout(recommended, layout):
    """What openmp gets here, read from the layout and not from numatune: one whole node with
    the most CPUs, or every node with CPUs, interleaved, when the model fits no node."""
    model, data = recommended
    config = data["config"]
    placement = data["command"]["placement"]
    assert placement["cpus"] == config["cpus"]
    if model is None:
        (node,) = config["nodes"]
        assert config["policy"] == "bind" and node in widest_nodes(layout), config
        assert config["cpus"] == list(layout.node_cpus(node)), config
        assert (placement["memory_mode"], placement["memory_nodes"]) == ("bind", [node])
    else:
        assert config["policy"] == "interleave", config
        assert config["nodes"] == list(layout.cpu_nodes()), config
        assert config["cpus"] == list(range(layout.total_cpus)), config
        assert (placement["memory_mode"], placement["memory_nodes"]) == ("interleave", list(layout.cpu_nodes()))
    # Its numactl form, as numactl would be told.
    mode = "membind" if config["policy"] == "bind" else "interleave"
    assert data["command"]["argv"][:3] == ["numactl", f"--physcpubind={format_list(config['cpus'])}",
                                           f"--{mode}={format_list(config['nodes'])}"]
    assert data["command"]["env"]["OMP_NUM_THREADS"] == str(len(config["cpus"]))


@pytest.mark.parametrize("numactl", [True, False], ids=["numactl", "no-numactl"])
def test_launched_child_is_placed_as_recommended(recommended, numactl, layout, tmp_path, capsys, monkeypatch):
    model, data = recommended
    placement = data["command"]["placement"]
    mode = placement["memory_mode"]
    if numactl:
        monkeypatch.delenv("NUMATUNE_NO_NUMACTL", raising=False)
    else:
        monkeypatch.setenv("NUMATUNE_NO_NUMACTL", "1")
    report = str(tmp_path / "child")
    child = [sys.executable, "-I", "-S", "-c", CHILD, report, str(CHILD_MIB), str(CHILD_EXIT)]
    launch = ["launch", "--engine", "openmp"] + (["--model", model] if model else [])

    # What it will run: numactl's prefix, or numatune's own placement, with the recommended mode.
    status, dry = cli(capsys, launch + ["--dry-run", "--"] + child)
    assert status == 0, dry
    lines = dry.splitlines()
    command_line = next(line for line in lines if line.startswith(("numactl ", sys.executable)))
    if numactl:
        words = command_line.split()
        assert words[1].startswith("--physcpubind=") and words[3] == sys.executable, dry
        assert words[2].startswith("--membind=" if mode == "bind" else "--interleave="), dry
    else:
        assert command_line.startswith(sys.executable), dry
        assert lines[-1].startswith("# placed by numatune: CPUs ") and f", memory {mode} " in lines[-1], dry

    # Running it. launch waits for its child and handles signals in this (main) thread, so the
    # child is looked at from another thread, which then lets it finish.
    seen: dict = {}
    finished = threading.Event()

    def look() -> None:
        try:
            pid, address = (int(w) for w in wait_for(report, lambda: not finished.is_set()).split())
            seen["status"] = proc_status(pid)
            seen["environ"] = proc_environ(pid)
            seen["numa"] = mapping_numa(pid, address)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            seen["error"] = exc
        finally:
            with open(report + ".done", "w"):
                pass

    looker = threading.Thread(target=look, daemon=True)
    looker.start()
    status, _ = cli(capsys, launch + ["--"] + child)
    finished.set()
    looker.join(timeout=REPORT_TIMEOUT_S)
    if "error" in seen:
        raise seen["error"]
    where = f"{'numactl' if numactl else 'numatune'} placing {data['config']}"
    assert status == CHILD_EXIT, f"{where}: launch exited {status}, the child {CHILD_EXIT}"
    policy, pages = seen["numa"]
    widest = widest_nodes(layout)
    if mode == "bind" and len(widest) > 1 and policy.startswith("bind:"):
        # Nodes with as many CPUs as each other: the one with more free memory wins, and launch
        # probes again, so a few MiB allocated since the recommendation may have tipped it.
        node = int(policy.split(":")[1])
        assert node in widest, f"{where}: bound to node {node}, not one of the widest {widest}"
        placement = dict(placement, cpus=list(layout.node_cpus(node)), memory_nodes=[node])
    assert cpulist(seen["status"]["Cpus_allowed_list"]) == placement["cpus"], where
    # Mems_allowed is the cpuset's (a memory policy does not narrow it): the policy's nodes
    # must be inside it.
    assert set(placement["memory_nodes"]) <= set(cpulist(seen["status"]["Mems_allowed_list"])), where
    assert policy == numa_maps_policy(placement), f"{where}: numa_maps says {policy}"
    environ = seen["environ"]
    assert environ.get("OMP_NUM_THREADS") == str(len(placement["cpus"])), where
    assert (environ.get("OMP_PLACES"), environ.get("OMP_PROC_BIND")) == ("threads", "close"), where
    # The pages themselves: all on the bound node; or spread over the interleave set, each node
    # within one transparent huge page of an even share.
    total = CHILD_MIB << 8
    assert sum(pages.values()) >= total, f"{where}: only {pages} of {total} pages resident"
    nodes = placement["memory_nodes"]
    assert set(pages) <= set(nodes), f"{where}: pages on {pages}"
    if placement["memory_mode"] == "interleave":
        even = sum(pages.values()) / len(nodes)
        for node in nodes:
            assert abs(pages.get(node, 0) - even) <= HUGE_PAGE_PAGES, f"{where}: pages per node {pages}"


def test_openmp_threads_each_on_a_recommended_cpu(tmp_path):
    """A real OpenMP program (built on the host before boot) started by the `numatune` script,
    for the big model (threads on every node with CPUs): with the recommended CPUs and
    OMP_PLACES=threads, OMP_PROC_BIND=close, each thread is bound to a CPU of its own, and
    together they cover the recommended CPUs."""
    model = BIG_MODEL
    data = recommend(model)
    program = os.path.join(os.environ.get(MODELS_ENV, ""), "omp-threads")
    assert os.access(program, os.X_OK), f"{program}: not built (tests/multinode/guest.py builds it)"
    cpus = data["command"]["placement"]["cpus"]
    report = str(tmp_path / "threads")
    env = {k: v for k, v in os.environ.items() if k != "NUMATUNE_NO_NUMACTL"}
    proc = subprocess.Popen(numatune_command() + ["launch", "--engine", "openmp"]
                            + ["--model", model, "--", program, report],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        lines = wait_for(report, lambda: proc.poll() is None).split("\n")
        pid = int(lines[0])
        threads = {int(tid): int(cpu) for tid, cpu in (line.split() for line in lines[1:] if line)}
        bound = {tid: cpulist(proc_status(pid, tid)["Cpus_allowed_list"]) for tid in threads}
    finally:
        _, err = proc.communicate(timeout=REPORT_TIMEOUT_S)     # closes its stdin: the program ends
    assert proc.returncode == 0, err
    assert len(threads) == len(cpus), f"{len(threads)} OpenMP threads for {len(cpus)} CPUs {cpus}"
    assert all(len(allowed) == 1 for allowed in bound.values()), f"threads not bound one CPU each: {bound}"
    assert sorted(allowed[0] for allowed in bound.values()) == cpus, f"thread CPUs {bound}, recommended {cpus}"
    assert all(threads[tid] == bound[tid][0] for tid in threads), f"ran on {threads}, bound to {bound}"
