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


# ---------------------------------------------------------------------------------------------
# Where the running llama-bench really is: its threads and its memory, sampled while it decodes


def _numa_maps(pid: int) -> list[tuple[str, bool, dict[int, int]]]:
    """/proc/PID/numa_maps: per mapping, its policy (the kernel's mpol_to_str), whether it is
    anonymous, and its resident pages per node."""
    out = []
    with open(f"/proc/{pid}/numa_maps") as f:
        for line in f:
            words = line.split()
            pages = {int(w[1:].split("=")[0]): int(w.split("=")[1]) for w in words[2:] if re.fullmatch(r"N\d+=\d+", w)}
            out.append((words[1], "file=" not in line, pages))
    return out


def _sample(binary: str, stop, seen: dict) -> None:
    """Until `stop`: every llama-bench process (its /proc/PID/exe is `binary`), when it was first
    and last seen, each of its threads' Cpus_allowed_list, and its numa_maps at the sample with
    the most anonymous pages."""
    import time
    from numatune.sysfs import parse_cpulist
    while not stop.is_set():
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                if os.path.realpath(f"/proc/{pid}/exe") != binary:
                    continue
                record = seen.setdefault(pid, {"threads": {}, "maps": [], "first": time.monotonic()})
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/status") as f:
                        allowed = next(line.split(":", 1)[1] for line in f if line.startswith("Cpus_allowed_list"))
                    record["threads"].setdefault(int(task), set()).add(tuple(parse_cpulist(allowed.strip())))
                maps = _numa_maps(pid)
            except (OSError, StopIteration):
                continue                     # it ended between two reads
            record["last"] = time.monotonic()
            anon = lambda m: sum(sum(p.values()) for _, is_anon, p in m if is_anon)  # noqa: E731
            if anon(maps) >= anon(record["maps"]):
                record["maps"] = maps
        stop.wait(0.2)


def _placed_run(config, topology, llama, tmp_path):
    """One trial of the real llama-bench for `config` (numatune's external trial, as tune runs
    it), sampled while it runs; (the trial, launch's plans for its instances, what was seen)."""
    import threading
    from numatune.external import ExternalTrials, external_engine
    from numatune.profiles import find_engine_profile
    from numatune.search import Stage
    from numatune.trial import ModelChoice
    binary = os.path.realpath(llama["binary"])
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    if not (folder / "llama-bench").exists():       # the profile knows llama-bench by its name
        (folder / "llama-bench").symlink_to(binary)
    engine = external_engine(find_engine_profile("llama.cpp"), engine_bin=folder / "llama-bench")
    stage, model = Stage(tokens=2, repeats=1), ModelChoice.from_file(llama["model"])
    trials = ExternalTrials(engine, topology)
    seen: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(binary, stop, seen), daemon=True)
    sampler.start()
    try:
        trial = trials(config, model, 0, stage)
    finally:
        stop.set()
        sampler.join()
    return trial, trials.plans(config, model, stage), seen


def _assert_placed(plan, pid: int, record, topology, where: str) -> None:
    """The process runs where launch's plan puts it: every compute thread on the plan's CPUs (the
    main thread too while it computes; ggml gives it every CPU of the machine between graphs,
    clear_numa_thread_affinity), every mapping under the plan's memory policy, and its anonymous
    pages (KV cache, compute buffers, allocated by this process) on the plan's nodes."""
    from numatune.sysfs import format_cpulist
    cpus = tuple(plan.placement.cpus)
    everything = tuple(sorted(c for n in topology.nodes for c in n.cpus))
    assert len(record["threads"]) > 1, f"{where}: no compute thread seen besides the main one: {record}"
    for tid, allowed in record["threads"].items():
        permitted = {cpus, everything} if tid == pid else {cpus}
        assert allowed <= permitted, f"{where}: thread {tid} allowed {allowed}, plan {cpus}"
    policy = f"{plan.placement.memory_mode}:{format_cpulist(plan.placement.memory_nodes)}"
    policies = {p for p, _, _ in record["maps"]}
    assert policies == {policy}, f"{where}: numa_maps policies {policies}, plan {policy}"
    anon: dict[int, int] = {}
    for _, is_anon, pages in record["maps"]:
        for node, count in pages.items():
            anon[node] = anon.get(node, 0) + count * is_anon
    nodes = set(plan.placement.memory_nodes)
    assert sum(anon.values()) > 0 and {n for n, c in anon.items() if c} <= nodes, f"{where}: anonymous pages {anon}"
    if plan.placement.memory_mode == "interleave":
        assert all(anon.get(n, 0) * 4 >= sum(anon.values()) / len(nodes) for n in nodes), f"{where}: {anon}"


def test_running_llama_bench_threads_and_memory_are_where_launch_places_them(two_nodes, topology, llama, tmp_path):
    """The real llama-bench of a trial, one process over both nodes (interleave) and one instance
    per node (each bound to its node), sampled from /proc while it decodes: its threads'
    Cpus_allowed_list and its numa_maps are those of launch's plan for it (--instance i)."""
    from numatune.config import Configuration
    both = tuple(c for n in cpu_nodes(topology) for c in topology.usable_cpus_of_node(n))
    single = Configuration(both, "interleave", tuple(cpu_nodes(topology)))
    trial, plans, seen = _placed_run(single, topology, llama, tmp_path)
    assert trial.error is None and trial.tokens_per_s.median > 0, trial.error
    assert len(seen) == 1, f"one llama-bench process expected, saw {sorted(seen)}"
    (pid, record), = seen.items()
    _assert_placed(plans[0], pid, record, topology, "one process")

    instances = Configuration(both, "bind", tuple(cpu_nodes(topology)), instances=2)
    trial, plans, seen = _placed_run(instances, topology, llama, tmp_path)
    assert trial.error is None and trial.tokens_per_s.n >= 1, trial.error
    assert len(seen) == 2, f"two llama-bench processes expected, saw {sorted(seen)}"
    for i, plan in enumerate(plans):       # each process is one instance's: found by its memory policy
        policy = f"bind:{plan.placement.memory_nodes[0]}"
        mine = [pid for pid, record in seen.items() if any(p == policy for p, _, _ in record["maps"])]
        assert len(mine) == 1, f"instance {i}: {len(mine)} processes under {policy}: {seen}"
        _assert_placed(plan, mine[0], seen[mine[0]], topology, f"instance {i}")
    # and they ran at the same time
    first, second = seen.values()
    assert max(first["first"], second["first"]) < min(first["last"], second["last"]), seen
