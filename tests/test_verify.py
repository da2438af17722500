"""`numatune verify` on generated /proc trees (numa_maps, status, task stats written here), the
/proc parsers on odd input, and one real command started on this host."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jsonschema
import pytest

import numatune

from numatune.cli import main
from numatune.engines import EngineInstall
from numatune.errors import NumatuneError
from numatune.sysfs import Root
from numatune.topology import probe
from numatune.verify import (Expectation, expectation_for, parse_numa_maps, parse_task_stat, preflight,
                             read_process, verify_process)
from treegen import GIB, FakeMachine, seed_machine, write_tree

PID = 4242
SCHEMAS = Path(numatune.__file__).parent / "schemas"
KT_NUMA = EngineInstall("ktransformers", "/x/cpuinfer_ext.so", True, "links libnuma.so.1", None)
PAGES_PER_GIB = GIB // 4096


def validate(data: dict, schema: str) -> None:
    jsonschema.validate(data, json.loads((SCHEMAS / schema).read_text()))


def stat_line(tid: int, cpu: int, state: str = "R", name: str = "python3") -> str:
    # fields 3.. of proc(5): state, then 35 more up to "processor" (field 39)
    rest = [state] + ["0"] * 10 + ["100", "20"] + ["0"] * 23 + [str(cpu)] + ["0"] * 13
    return f"{tid} ({name}) " + " ".join(rest) + "\n"


def write_process(root, maps: str, threads: list[tuple[int, str]], cpus="0-63", mems="0-3"):
    base = root / "proc" / str(PID)
    (base / "task").mkdir(parents=True)
    (base / "status").write_text(f"Name:\tpython3\nCpus_allowed_list:\t{cpus}\nMems_allowed_list:\t{mems}\n")
    (base / "numa_maps").write_text(maps)
    for i, (cpu, state) in enumerate(threads):
        tid = PID + i
        (base / "task" / str(tid)).mkdir()
        (base / "task" / str(tid) / "stat").write_text(stat_line(tid, cpu, state))


def machine(tmp_path, maps, threads, m=None, **status):
    root = write_tree(tmp_path / "root", m or seed_machine(cores_per_node=8, threads_per_core=1))
    write_process(root, maps, threads, **status)
    return probe(Root.open(str(root))), Root.open(str(root)), root


def pages(gib: float) -> int:
    return int(gib * PAGES_PER_GIB)


REPLICATED = (f"7f0000000000 bind:0 anon={pages(20)} dirty={pages(20)} N0={pages(20)} kernelpagesize_kB=4\n"
              f"7f1000000000 bind:1 anon={pages(20)} dirty={pages(20)} N1={pages(20)} kernelpagesize_kB=4\n"
              "7f2000000000 default file=/models/m.gguf mapped=256 N0=256 kernelpagesize_kB=4\n")
SPLIT = (f"7f0000000000 default file=/models/m.gguf mapped={pages(20)} N0={pages(10)} N1={pages(10)} "
         "kernelpagesize_kB=4\n")
TWO_NODES_BUSY = [(0, "R"), (1, "R"), (8, "R"), (9, "R"), (3, "S")]


# ----- parsers -----------------------------------------------------------------------------------------

def test_numa_maps_parsed_per_node_with_page_sizes_and_kinds():
    maps = parse_numa_maps("00400000 default file=/usr/bin/python3 mapped=10 N0=6 N1=4 kernelpagesize_kB=4\n"
                           "7f0000000000 interleave:0-1 anon=1024 dirty=1024 N0=512 N1=512 kernelpagesize_kB=2048\n"
                           "7ffd00000000 default stack anon=3 dirty=3 N1=3 kernelpagesize_kB=4\x00\n\n")
    assert [m.policy for m in maps] == ["default", "interleave:0-1", "default"]
    assert maps[0].bytes_by_node() == {0: 6 * 4096, 1: 4 * 4096} and maps[0].file == "/usr/bin/python3"
    assert maps[1].bytes_by_node()[0] == 512 * 2 * 1024 * 1024 and maps[1].anonymous
    assert parse_numa_maps("") == []


@pytest.mark.parametrize("text", ["not a line\n", "7f00\n"])
def test_numa_maps_rejects_other_text(text):
    with pytest.raises(ValueError):
        parse_numa_maps(text)


def test_task_stat_with_spaces_and_parentheses_in_the_name():
    stat = parse_task_stat(stat_line(77, 13, "S", name="kt (worker) 3"))
    assert (stat.tid, stat.state, stat.cpu, stat.cpu_ticks) == (77, "S", 13, 120)
    with pytest.raises(ValueError):
        parse_task_stat("77 (x) R 1 2")


# ----- memory placement --------------------------------------------------------------------------------

def test_replicated_copies_pass(tmp_path):
    t, root, _ = machine(tmp_path, REPLICATED, TWO_NODES_BUSY)
    report = verify_process(t, root, PID, expectation_for(t, "replicate", (0, 1)))
    memory = report.checks[0]
    assert memory.id == "memory-placement" and memory.passed, memory.title
    assert report.passed
    view = read_process(root, PID)
    assert view.resident_on(0) == 20 * GIB + 256 * 4096 and view.bound_bytes(1) == 20 * GIB
    assert set(view.busy_tids) == {PID, PID + 1, PID + 2, PID + 3}


def test_memory_split_instead_of_doubled_fails_issue_634(tmp_path):
    t, root, _ = machine(tmp_path, SPLIT, TWO_NODES_BUSY)
    report = verify_process(t, root, PID, expectation_for(t, "replicate", (0, 1)))
    memory = report.checks[0]
    assert not memory.passed and "no per-node copies" in memory.title
    assert "USE_NUMA=1" in memory.fix and "#634" in memory.explanation
    assert not report.passed


def test_replicate_with_the_model_size_compares_each_node_with_a_copy(tmp_path):
    t, root, _ = machine(tmp_path, SPLIT, TWO_NODES_BUSY)
    short = Expectation("replicate", (0, 1), 20 * GIB, "--expect")
    assert not verify_process(t, root, PID, short).checks[0].passed
    t2, root2, _ = machine(tmp_path / "b", REPLICATED, TWO_NODES_BUSY)
    assert verify_process(t2, root2, PID, Expectation("replicate", (0, 1), 20 * GIB, "--expect")).checks[0].passed


def test_engine_build_implies_the_expectation(tmp_path):
    t, _, _ = machine(tmp_path, REPLICATED, TWO_NODES_BUSY)
    expect = expectation_for(t, None, None, KT_NUMA)
    assert expect.policy == "replicate" and expect.nodes == (0, 1)
    unknown = EngineInstall("ktransformers", None, None, "no extension", None)
    with pytest.raises(NumatuneError, match="cannot tell"):
        expectation_for(t, None, None, unknown)
    with pytest.raises(NumatuneError, match="say what to expect"):
        expectation_for(t, None, None, None)
    with pytest.raises(NumatuneError, match="no NUMA node 7"):
        expectation_for(t, "interleave", (0, 7))
    with pytest.raises(NumatuneError, match="exactly one node"):
        expectation_for(t, "bind", (0, 1))


def test_bind_and_interleave(tmp_path):
    on_zero = f"7f0000000000 bind:0 anon={pages(4)} N0={pages(4)} kernelpagesize_kB=4\n"
    t, root, _ = machine(tmp_path, on_zero, [(0, "R"), (1, "R")])
    assert verify_process(t, root, PID, expectation_for(t, "bind", (0,))).passed
    interleave = verify_process(t, root, PID, expectation_for(t, "interleave", (0, 1)))
    assert not interleave.checks[0].passed and "--interleave=0-1" in interleave.checks[0].fix
    t2, root2, _ = machine(tmp_path / "split", SPLIT, TWO_NODES_BUSY)
    assert verify_process(t2, root2, PID, expectation_for(t2, "interleave", (0, 1))).checks[0].passed
    assert not verify_process(t2, root2, PID, expectation_for(t2, "bind", (0,))).checks[0].passed


def test_nothing_resident_yet_fails(tmp_path):
    t, root, _ = machine(tmp_path, "00400000 default file=/bin/x\n", [(0, "R")])
    check = verify_process(t, root, PID, expectation_for(t, "bind", (0,))).checks[0]
    assert not check.passed and "--after" in check.explanation


# ----- CPU placement -----------------------------------------------------------------------------------

def test_threads_outside_the_bound_node_fail(tmp_path):
    t, root, _ = machine(tmp_path, REPLICATED, [(0, "R"), (9, "R")])
    checks = {c.id: c for c in verify_process(t, root, PID, expectation_for(t, "bind", (0,))).checks}
    assert not checks["cpu-placement"].passed


def test_a_node_without_working_threads_fails_replicate(tmp_path):
    t, root, _ = machine(tmp_path, REPLICATED, [(0, "R"), (1, "R"), (2, "R"), (9, "S")])
    checks = {c.id: c for c in verify_process(t, root, PID, expectation_for(t, "replicate", (0, 1))).checks}
    assert not checks["cpu-placement"].passed and "[1]" in checks["cpu-placement"].explanation


def test_more_busy_threads_than_cores_on_a_node(tmp_path):
    crowded = [(cpu % 8, "R") for cpu in range(10)] + [(8, "R")]
    t, root, _ = machine(tmp_path, REPLICATED, crowded)
    checks = {c.id: c for c in verify_process(t, root, PID, expectation_for(t, "replicate", (0, 1))).checks}
    assert not checks["busy-threads-per-node"].passed and "10 busy threads on 8" in checks["busy-threads-per-node"].title
    t2, root2, _ = machine(tmp_path / "ok", REPLICATED, TWO_NODES_BUSY)
    assert "busy-threads-per-node" not in {c.id for c in verify_process(t2, root2, PID,
                                                                          expectation_for(t2, "replicate", (0, 1))).checks}


def test_mems_allowed_missing_a_node(tmp_path):
    t, root, _ = machine(tmp_path, REPLICATED, TWO_NODES_BUSY, mems="0")
    checks = {c.id: c for c in verify_process(t, root, PID, expectation_for(t, "replicate", (0, 1))).checks}
    assert not checks["mems-allowed"].passed


# ----- the command line before it runs ------------------------------------------------------------------

def test_preflight_flags_an_oversubscribed_command(tmp_path):
    t = probe(Root.open(str(write_tree(tmp_path / "r", FakeMachine(sockets=2, cores_per_node=24)))))
    found = preflight(t, KT_NUMA, ("python", "-m", "ktransformers.local_chat", "--cpu_infer", "50"))
    assert "node-oversubscribed" in {f.id for f in found}
    assert preflight(t, KT_NUMA, ("ktransformers", "--cpu_infer", "42")) == ()


# ----- CLI ----------------------------------------------------------------------------------------------

def test_cli_json_and_exit_status(tmp_path, capsys):
    _, _, root = machine(tmp_path, SPLIT, TWO_NODES_BUSY)
    status = main(["verify", "--root", str(root), "--pid", str(PID), "--expect", "replicate", "--nodes", "0,1",
                   "--json"])
    data = json.loads(capsys.readouterr().out)
    validate(data, "verify-v1.schema.json")
    assert status == 1 and data["passed"] is False
    assert data["process"]["resident_bytes_by_node"] == {"0": 10 * GIB, "1": 10 * GIB}
    assert data["expected"] == {"policy": "replicate", "nodes": [0, 1], "weight_bytes": None, "why": "as --expect says"}
    assert main(["verify", "--root", str(root), "--pid", str(PID), "--expect", "interleave"]) == 0


@pytest.mark.parametrize("args, message", [
    (["--pid", "99999", "--expect", "bind", "--nodes", "0"], "no such process"),
    (["--expect", "bind", "--nodes", "0"], "exactly one of --pid"),
    (["--pid", str(PID), "--expect", "replicate", "--nodes", "x"], "--nodes"),
    (["--pid", str(PID), "--expect", "bind", "--nodes", "0", "--", "sleep", "1"], "exactly one of --pid"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    _, _, root = machine(tmp_path, SPLIT, TWO_NODES_BUSY)
    assert main(["verify", "--root", str(root)] + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_command_on_another_root_is_refused(tmp_path, capsys):
    _, _, root = machine(tmp_path, SPLIT, TWO_NODES_BUSY)
    assert main(["verify", "--root", str(root), "--expect", "bind", "--nodes", "0", "--", "true"]) == 2
    assert "live machine" in capsys.readouterr().err


needs_numa_maps = pytest.mark.skipif(not os.path.exists("/proc/self/numa_maps"),
                                     reason="this kernel has no /proc/PID/numa_maps (CONFIG_NUMA off)")


@needs_numa_maps
def test_a_real_command_placed_as_expected_passes(capsys, require, host_memory_node):
    """A real child bound by numactl to one node, CPUs and memory: verify must pass it, and stop it."""
    node = str(host_memory_node)
    program = "b = bytearray(64 << 20)\nimport time\nwhile True: time.sleep(0.05)"
    status = main(["verify", "--expect", "bind", "--nodes", node, "--after", "1", "--sample", "0", "--json",
                   "--", require("numactl"), f"--cpunodebind={node}", f"--membind={node}", sys.executable,
                   "-c", program])
    data = json.loads(capsys.readouterr().out)
    validate(data, "verify-v1.schema.json")
    assert [check["id"] for check in data["checks"] if not check["passed"]] == []
    assert status == 0 and data["passed"] is True
    assert data["stopped"] is True and data["exit_status"] is not None
    assert data["process"]["resident_bytes_by_node"][node] > 48 << 20


def test_a_command_that_exits_early_is_an_error(capsys):
    assert main(["verify", "--expect", "bind", "--nodes", "0", "--after", "5", "--", sys.executable, "-c",
                 "raise SystemExit(3)"]) == 2
    assert "exited with status 3" in capsys.readouterr().err
