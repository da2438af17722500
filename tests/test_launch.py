"""Engine profiles, `numatune recommend` and `numatune launch`: plans on generated trees, real
children placed by numactl or by numatune itself, exit status and signal forwarding."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from numatune.cli import main
from numatune.config import Configuration
from numatune.errors import NumatuneError
from numatune.command import build_command
from numatune.launch import run
from numatune.models import resolve_model
from numatune.profiles import ProfileError, engine_profiles, find_engine_profile
from numatune.recommend import recommend, recommend_all
from numatune.stats import Measurement
from numatune.store import Trial, TuneResult, fingerprint, save_result
from numatune.sysfs import Root
from numatune.topology import probe as probe_root
from treegen import seed_machine, write_tree



def probe(path: str):
    return probe_root(Root.open(path))


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ----- engine profiles -------------------------------------------------------------------------

def test_every_shipped_engine_profile_loads():
    profiles = engine_profiles()
    assert set(profiles) == {"ktransformers", "llama.cpp", "vllm-cpu", "sglang-cpu", "openmp", "numatune"}
    assert profiles["ktransformers"].placement_condition("replicate") == "build-flag"
    assert profiles["ktransformers"].build_flag == "USE_NUMA"
    assert profiles["llama.cpp"].placement_condition("replicate") == "never"


VALID = """
name: demo
executable: "demo-engine"
numa_aware: no
multi_node: threads-only
placements: {bind: always}
threads: {flag: "-t", value: "{threads}"}
numactl: true
"""


@pytest.mark.parametrize("change, needle", [
    ("numa_aware: maybe", "field 'numa_aware'"),
    ("placements: {bind: sometimes}", "field 'placements.bind'"),
    ("placements: {scatter: always}", "field 'placements.scatter'"),
    ('threads: {flag: "-t", value: "{cores}"}', "unknown template variable '{cores}'"),
    ("numactl: 3", "field 'numactl'"),
    ("numa_aware: build-flag", "field 'build.flag'"),
    ('env: [{name: OMP_NUM_THREADS, value: "{threads}", when: later}]', "field 'env[0].when'"),
    ('threads: {flag: "-t", reserved_threads: 1, reserved_per: node}', "field 'threads.reserved_per'"),
    ('threads: {flag: "-t", default: "all cores"}', "field 'threads.default'"),
    ('threads: {flag: "-t", aliases: "--threads"}', "field 'threads.aliases'"),
    ('threads: {flag: "-t", build_flag_spread: evenly}', "field 'threads.build_flag_spread'"),
    ('threads: {flag: "-t", numa_flag: {flag: "--numa", spreads: {distribute: scatter}}}',
     "field 'threads.numa_flag.spreads.distribute'"),
    ('maps_model: ""', "field 'maps_model' must be a non-empty string"),
])
def test_bad_engine_profile_is_one_line_naming_file_and_field(tmp_path, change, needle):
    key = change.split(":")[0]
    text = "\n".join(line for line in VALID.splitlines() if not line.startswith(key + ":")) + "\n" + change + "\n"
    (tmp_path / "demo.yaml").write_text(text)
    with pytest.raises(ProfileError) as info:
        engine_profiles(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "demo.yaml") in message and needle in message


def test_unknown_engine_is_a_clean_cli_error(capsys, tiny_root):
    code, out, err = cli(capsys, "recommend", "--engine", "nope", "--root", str(tiny_root))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no engine profile named 'nope'" in err


# ----- recommend -------------------------------------------------------------------------------

def test_seed_ktransformers_deepseek_gets_numa_build_replicated_per_socket(seed):
    r = recommend(seed, "ktransformers", resolve_model("deepseek-r1:Q4_K_M"))
    assert r.config.policy == "replicate" and r.config.nodes == (0, 1)
    assert r.config.threads == 64                            # one CPU per physical core, both sockets
    assert "--cpu_infer" in r.plan.argv
    # 63 workers + the submitting thread that spins beside them: 64 busy threads on 64 cores
    assert r.plan.argv[r.plan.argv.index("--cpu_infer") + 1] == "64"
    assert r.plan.budget.compute_threads == 63 and r.plan.budget.reserved_threads == 1
    assert not r.plan.uses_numactl                            # the NUMA build binds its own workers
    text = " ".join(r.warnings)
    assert "memory doubles" in text and "USE_NUMA=1" in text


def test_replication_that_does_not_fit_is_not_recommended(tmp_path):
    small = probe(str(write_tree(tmp_path, seed_machine(memory_per_node=256 * (1 << 30)))))
    r = recommend(small, "ktransformers", resolve_model("deepseek-r1:Q4_K_M"))
    assert r.config.policy != "replicate"
    assert any("replicate does not fit" in reason for reason in r.reasons)


def test_non_numa_ktransformers_build_stays_on_one_socket(seed):
    from numatune.engines import EngineInstall
    install = EngineInstall(engine="ktransformers", location="/x/cpuinfer_ext.so", numa_aware=False,
                            evidence="DT_NEEDED has no libnuma")
    r = recommend(seed, "ktransformers", resolve_model("deepseek-r1:Q4_K_M"), install=install)
    assert r.config.policy == "bind" and r.config.nodes in ((0,), (1,)) and r.config.threads == 32
    assert r.plan.argv[r.plan.argv.index("--cpu_infer") + 1] == "32"     # 31 workers + the spinning one


def test_llama_cpp_on_the_seed_is_bound_to_one_socket_by_numactl(seed, monkeypatch, require):
    require("numactl")
    monkeypatch.delenv("NUMATUNE_NO_NUMACTL", raising=False)
    r = recommend(seed, "llama.cpp", resolve_model("deepseek-r1:Q4_K_M"))
    assert r.plan.argv[:3] == ("numactl", "--physcpubind=0-31", "--membind=0")
    assert r.plan.argv[3] == "llama-server"
    assert r.plan.argv[r.plan.argv.index("-t") + 1] == "32" and "--numa" in r.plan.argv


def test_vllm_gets_one_rank_per_node_through_the_environment(seed):
    r = recommend(seed, "vllm-cpu", resolve_model("qwen3-30b-a3b:Q8_0"))
    env = dict(r.plan.env)
    assert env.get("VLLM_CPU_OMP_THREADS_BIND") == "0-30|32-62"    # each rank leaves a CPU to the front end
    assert r.plan.argv[r.plan.argv.index("--tensor-parallel-size") + 1] == "2"


def test_recommend_all_covers_every_profile(seed):
    assert set(recommend_all(seed, resolve_model("qwen3-30b-a3b:Q4_K_M"))) == set(engine_profiles())


def test_saved_result_is_followed_when_the_engine_can_do_it(seed, seed_root, tmp_path, capsys):
    winner = Trial(Configuration(tuple(range(32, 48)), "bind", (1,)), Measurement.of([10.0, 11.0, 10.5]),
                   None, 1 << 30, stage=2)
    result = TuneResult(fingerprint(seed, kernel="6.1"), "synthetic:default", (winner,), winner, None,
                        True, "2026-11-25T00:00:00Z")
    path = save_result(result, tmp_path / "result.json")
    code, out, err = cli(capsys, "recommend", "--engine", "openmp", "--root", str(seed_root), "--from", str(path), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "saved" and data["config"]["cpus"] == list(range(32, 48))
    assert data["command"]["env"]["OMP_NUM_THREADS"] == "16"


def test_replace_a_flag_the_user_already_gave(seed):
    config = Configuration(tuple(range(8)), "bind", (0,))
    plan = build_command(config, find_engine_profile("llama.cpp"), seed, ["llama-cli", "-m", "x.gguf", "-t", "99"])
    assert plan.argv.count("-t") == 1 and plan.argv[plan.argv.index("-t") + 1] == "8"
    assert any("replaced the command's own -t 99 with 8" in w for w in plan.warnings)


# ----- launch: real children -------------------------------------------------------------------

STATUS = "grep -E '^(Cpus_allowed_list|Mems_allowed_list):' /proc/self/status; grep -m1 -o 'bind:[0-9-]*\\|interleave:[0-9-]*\\|default' /proc/self/numa_maps; exit 7"


@pytest.mark.parametrize("numactl", [True, False])
def test_launch_places_the_child_and_passes_its_exit_status(capfd, tiny_root, monkeypatch, numactl, require):
    if numactl:
        require("numactl")
        monkeypatch.delenv("NUMATUNE_NO_NUMACTL", raising=False)
    else:
        monkeypatch.setenv("NUMATUNE_NO_NUMACTL", "1")
    code = main(["launch", "--engine", "openmp", "--root", str(tiny_root), "--", "sh", "-c", STATUS])
    out, err = capfd.readouterr()
    assert code == 7, err
    assert "Cpus_allowed_list:\t0\n" in out
    assert "bind:0" in out                      # one node, one core: bind node 0


def test_dry_run_prints_command_and_environment_and_runs_nothing(capsys, tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMATUNE_NO_NUMACTL", "1")
    marker = tmp_path / "ran"
    code, out, err = cli(capsys, "launch", "--dry-run", "--engine", "openmp", "--root", str(tiny_root),
                         "--", "touch", str(marker))
    assert code == 0, err
    assert "OMP_NUM_THREADS=1" in out and f"touch {marker}" in out and "placed by numatune: CPUs 0" in out
    assert not marker.exists()


def test_launch_of_a_missing_command_is_a_one_line_error(capsys, tiny_root, monkeypatch):
    monkeypatch.setenv("NUMATUNE_NO_NUMACTL", "1")
    code, out, err = cli(capsys, "launch", "--root", str(tiny_root), "--", "/nonexistent/engine")
    assert code == 2 and err.count("\n") == 1 and "command not found: /nonexistent/engine" in err


def test_numatune_places_the_process_itself_when_numactl_is_absent(tiny_root, monkeypatch):
    monkeypatch.setenv("NUMATUNE_NO_NUMACTL", "1")
    r = recommend(probe(str(tiny_root)), "openmp", user_argv=("true",))
    assert not r.plan.uses_numactl and r.plan.argv == ("true",)
    assert run(r.plan) == 0


def test_placement_the_kernel_refuses_is_a_clean_error(tiny_root, monkeypatch):
    monkeypatch.setenv("NUMATUNE_NO_NUMACTL", "1")
    r = recommend(probe(str(tiny_root)), "openmp", user_argv=("true",))
    from dataclasses import replace
    bad = replace(r.plan, placement=replace(r.plan.placement, cpus=(100000,)))
    with pytest.raises(NumatuneError):
        run(bad)


def test_signals_reach_the_child(tiny_root, tmp_path):
    ready = tmp_path / "ready"
    script = f"trap 'exit 42' TERM; touch {ready}; while true; do sleep 0.05; done"
    env = dict(os.environ, NUMATUNE_NO_NUMACTL="1")
    parent = subprocess.Popen(["numatune", "launch", "--root", str(tiny_root), "--", "sh", "-c", script],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.time() + 30
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists(), parent.stderr.read() if parent.poll() is not None else "child never started"
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 42


def test_throughput_recommendation_is_one_command_per_node(seed, seed_root, capsys, tmp_path):
    r = recommend(seed, "llama.cpp", resolve_model("qwen3-30b-a3b:Q4_K_M"), objective="throughput")
    assert r.config.instances == 2 and len(r.plans) == 2
    assert [p.placement.memory_nodes for p in r.plans] == [(0,), (1,)]
    assert r.plans[1].placement.cpus == tuple(range(32, 64))
    # llama.cpp maps the file: one page-cache copy for all instances unless each loads its own
    shared = [w for w in r.warnings if "maps the model file" in w]
    assert len(shared) == 1 and "--load-mode none" in shared[0]
    assert not any("maps the model file" in w for w in recommend(seed, "llama.cpp").warnings)   # one instance
    assert not any("maps the model file" in w
                   for w in recommend(seed, "ktransformers", objective="throughput").warnings)
    root = str(seed_root)
    code, out, err = cli(capsys, "launch", "--root", root, "--engine", "llama.cpp", "--model", "qwen3-30b-a3b:Q4_K_M",
                         "--dry-run", "--", "llama-server")
    assert code == 0, err                       # latency: one instance, no --instance needed
    saved = tmp_path / "tp.json"
    winner = Trial(r.config, Measurement.of([30.0, 31.0, 29.0]), None, 1 << 30, stage=2)
    save_result(TuneResult(fingerprint(seed, kernel="6.1"), "m", (winner,), winner, None, True, "x"), saved)
    code, out, err = cli(capsys, "launch", "--root", root, "--engine", "llama.cpp", "--from", str(saved),
                         "--dry-run", "--", "llama-server")
    assert code == 2 and "--instance 0 … 1" in err
    code, out, err = cli(capsys, "launch", "--root", root, "--engine", "llama.cpp", "--from", str(saved),
                         "--instance", "1", "--dry-run", "--", "llama-server")
    assert code == 0 and "32-63" in out


def test_recommendation_never_exceeds_the_cpu_quota(seed):
    from dataclasses import replace
    limited = replace(seed, allowed=replace(seed.allowed, cpu_quota=6.5))
    r = recommend(limited, "llama.cpp", resolve_model("qwen3-30b-a3b:Q4_K_M"))
    assert r.config.threads == 6
    assert r.plan.argv[r.plan.argv.index("-t") + 1] == "6"
    assert any("CPU quota (6.5 CPUs)" in reason for reason in r.reasons)
