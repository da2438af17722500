"""`numatune tune --engine llama.cpp` in a 2-node guest, with the real (portable) llama-bench:
every trial's process runs on exactly the CPUs and under exactly the memory policy its
configuration says, with the configuration's thread count and --numa mode, and `distribute` is
tried where it applies (the configurations given every CPU of both nodes).

llama-bench is reached through a wrapper named llama-bench (so that the profile treats it as
llama-bench) that records, for each run, its arguments, `numactl --show` of a child (which
inherits the affinity and memory policy) and its own /proc/PID/status, then execs llama-bench in
the same process. Timings under the emulator mean nothing; only placement is checked: the emulated
CPU runs llama-bench's AVX2 code at about 0.4 tokens/s (4 threads, the tiny complete model), so
the wrapper also shortens each run to one token and one repetition (-n 1 -r 1; the search's
tokens and repeats would take minutes per trial)."""
from __future__ import annotations

import json
import os
import re
import stat

import pytest

from guestlib import cpu_nodes

pytestmark = pytest.mark.multinode

BUDGET_S = 150


@pytest.fixture
def two_nodes(layout):
    if len(layout.cpu_nodes()) != 2:
        pytest.skip(f"layout {layout.name}: the llama.cpp placement check is for a machine with two CPU nodes")


def wrapper(folder, binary: str, records) -> str:
    folder.mkdir()
    path = folder / "llama-bench"
    path.write_text(f"""#!/bin/sh
out={records}/$$
printf '%s\\n' "$@" > "$out.argv"
numactl --show > "$out.show"
grep -E '^(Cpus|Mems)_allowed_list' /proc/$$/status > "$out.status"
args= prev=
for arg in "$@"; do
  case "$prev" in -n|-r) arg=1 ;; esac
  args="$args '$arg'"
  prev=$arg
done
eval "set -- $args"
exec {binary} "$@"
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _list(text: str) -> tuple[int, ...]:
    from numatune.sysfs import parse_cpulist
    return tuple(parse_cpulist(text.strip()))


def read_runs(records) -> list[dict]:
    """Each llama-bench run (not the --version call): threads, --numa mode, CPUs, memory policy."""
    runs = []
    for argv_file in sorted(records.glob("*.argv")):
        argv = argv_file.read_text().splitlines()
        if "-m" not in argv:
            continue
        pid = argv_file.stem
        # numactl --show ends the "preferred node:" line without a newline under the local
        # policy, so its fields are found by name, not line by line
        show = (records / f"{pid}.show").read_text()
        field = lambda name: re.search(rf"(?:^|\s){name}: *([0-9 ]*)", show).group(1).split()  # noqa: E731
        status = dict(line.split(":", 1) for line in (records / f"{pid}.status").read_text().splitlines())
        policy = re.search(r"^policy: (\w+)", show, re.MULTILINE).group(1)
        nodes = {"interleave": "interleavemask", "bind": "membind"}.get(policy)
        runs.append({"threads": int(argv[argv.index("-t") + 1]), "numa": argv[argv.index("--numa") + 1],
                     "cpus": _list(status["Cpus_allowed_list"]),
                     "physcpubind": tuple(int(c) for c in field("physcpubind")),
                     "policy": policy, "nodes": tuple(int(n) for n in field(nodes)) if nodes else ()})
    return runs


def expected(config: dict, topology) -> dict:
    """What the configuration says the process gets: its CPUs, one thread each, its --numa mode,
    and the memory policy numactl sets for it (first-touch: local allocation)."""
    from numatune.command import placement_for
    from numatune.config import Configuration
    from numatune.profiles import find_engine_profile
    c = Configuration.from_json(config)
    placement, _ = placement_for(c, find_engine_profile("llama.cpp"))
    policy = {"bind": "bind", "interleave": "interleave", "default": "local"}[placement.memory_mode]
    return {"threads": c.threads, "numa": c.numa_mode, "cpus": c.cpus, "physcpubind": c.cpus,
            "policy": policy, "nodes": placement.memory_nodes if policy != "local" else ()}


def test_llama_bench_trials_run_on_the_cpus_and_memory_their_configuration_says(
        two_nodes, layout, topology, llama, tmp_path, capsys):
    from numatune.cli import main
    records = tmp_path / "records"
    records.mkdir()
    program = wrapper(tmp_path / "bin", os.path.realpath(llama["binary"]), records)
    out = tmp_path / "tune.json"
    capsys.readouterr()
    status = main(["tune", "--engine", "llama.cpp", "--engine-bin", program, "--model", llama["model"],
                   "--budget", str(BUDGET_S), "--out", str(out), "--json"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert re.search(r"trials: llama\.cpp itself, .*/llama-bench", printed.err), printed.err
    data = json.loads(printed.out)
    runs = read_runs(records)
    assert runs, "llama-bench never ran"
    trials = data["trials"]
    ok = [t for t in trials if t["error"] is None]
    assert ok and data["winner"] is not None, [t["error"] for t in trials]
    wanted = [expected(t["config"], topology) for t in trials]
    for run in runs:                # every run was placed as one of the configurations says
        assert run in wanted, (run, wanted)
    for t, want in zip(trials, wanted):   # and every trial that decoded ran placed so
        if t["error"] is None:
            assert want in runs, (t["config"], runs)
    # distribute is tried on the configurations given every CPU of both nodes, and ran there
    both = tuple(c for n in cpu_nodes(topology) for c in topology.usable_cpus_of_node(n))
    modes = {m["mode"]: m for m in data["numa_modes"]}
    assert modes["distribute"]["tried"] >= 1 and modes["isolate"]["tried"] == 0, modes
    distributed = [r for r in runs if r["numa"] == "distribute"]
    assert distributed and all(r["cpus"] == both for r in distributed), distributed
    assert {r["policy"] for r in runs} >= {"bind", "interleave"}, runs
