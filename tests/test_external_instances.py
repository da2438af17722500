"""One instance per node of an external engine: a configuration's instances run at the same
time, each placed and threaded as `launch --instance i` places it, and the trial is their sum.

The engine is tests/fake_engine.py (--by-cpu: each instance's samples, memory, failure or hang,
chosen by the lowest CPU it may run on; --peers: each waits until all have started), on a
generated 2-node tree whose node i is CPU i, so that the instances really run on this host's two
CPUs. This host has one memory node: binding to node 1 is refused by the kernel, so `numactl` on
PATH is a shim that logs the arguments numatune gave it and runs the real numactl with them,
the node of --membind changed to 0 (the real binding, node by node, is checked in the 2-node
guest: tests/multinode/test_guest_llama.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from numatune.command import build_command
from numatune.config import Configuration
from numatune.external import ExternalTrials, external_engine
from numatune.profiles import find_engine_profile
from numatune.search import Stage
from numatune.trial import ModelChoice
from treegen import FakeMachine, probe_tree

FAKE = Path(__file__).resolve().parent / "fake_engine.py"
LLAMA = find_engine_profile("llama.cpp")
METRIC = r"decode: ([0-9.]+) tok/s"
MIB = 1 << 20
SHIM = """#!{python}
import json, os, sys
with open(os.environ["NUMACTL_SHIM_LOG"], "a") as log:
    log.write(json.dumps({{"pid": os.getpid(), "argv": sys.argv[1:]}}) + "\\n")
args = ["--membind=0" if a.startswith("--membind=") else a for a in sys.argv[1:]]
os.execv({real!r}, [{real!r}] + args)
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    real = shutil.which("numactl")
    assert real, "numactl is not installed"
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.fail("these tests run instances on CPUs 0 and 1, which this process may not use")
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    (shim_dir / "numactl").write_text(SHIM.format(python=sys.executable, real=real))
    (shim_dir / "numactl").chmod(0o755)
    (shim_dir / "llama-cli").symlink_to(FAKE)
    monkeypatch.setenv("PATH", f"{shim_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("NUMACTL_SHIM_LOG", str(tmp_path / "numactl.jsonl"))
    monkeypatch.delenv("NUMATUNE_NO_NUMACTL", raising=False)
    topology = probe_tree(tmp_path / "tree", FakeMachine(sockets=2, cores_per_node=1))
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    yield {"dir": tmp_path, "topology": topology, "model": ModelChoice(model, str(model))}
    log = tmp_path / "runs.jsonl"      # when a test fails, no instance it started outlives it
    for line in log.read_text().splitlines() if log.exists() else ():
        try:
            os.kill(json.loads(line)["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


CONFIG = Configuration((0, 1), "bind", (0, 1), instances=2)


def trial_with(setup, by_cpu: dict, share_s: float = 120.0):
    folder = setup["dir"]
    (folder / "by-cpu.json").write_text(json.dumps(by_cpu))
    peers = folder / "peers"
    peers.mkdir(exist_ok=True)
    engine = external_engine(LLAMA, [str(folder / "bin" / "llama-cli"), "-m", "{model}", "--by-cpu",
                                     str(folder / "by-cpu.json"), "--peers", f"{peers}:2",
                                     "--log", str(folder / "runs.jsonl")], metric=METRIC)
    trials = ExternalTrials(engine, setup["topology"], share_s=share_s)
    return trials(CONFIG, setup["model"], 0, Stage(tokens=8, repeats=1))


def runs(setup) -> dict[int, dict]:
    """Each instance's last log line, by the CPU it ran on."""
    lines = [json.loads(line) for line in (setup["dir"] / "runs.jsonl").read_text().splitlines()]
    return {int(r["cpus_allowed"]): r for r in lines}


def numactl_calls(setup) -> dict[int, list[str]]:
    lines = [json.loads(line) for line in (setup["dir"] / "numactl.jsonl").read_text().splitlines()]
    return {r["pid"]: r["argv"] for r in lines}


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_instances_run_at_once_placed_on_their_nodes_and_add_up(setup):
    trial = trial_with(setup, {"0": {"samples": [10, 11, 12], "allocate": 48},
                               "1": {"samples": [100, 200], "allocate": 96}})
    assert trial.error is None, trial.error
    # repetition i of each instance ran beside repetition i of the other: summed pairwise; instance
    # 0's third sample has no partner and is left out
    assert trial.tokens_per_s.samples == (110.0, 211.0)
    # the peaks of both instances, summed (either alone is at most 96 MiB + an interpreter's ~30)
    assert (48 + 96) * MIB <= trial.resident_bytes < (48 + 96 + 80) * MIB, trial.resident_bytes
    by_cpu, calls = runs(setup), numactl_calls(setup)
    assert sorted(by_cpu) == [0, 1]
    # both ran at the same time: each saw the other's pid file, and their lifetimes overlap
    assert all(r.get("peers_seen") == 2 for r in by_cpu.values())
    assert max(r["start"] for r in by_cpu.values()) < min(r["end"] for r in by_cpu.values())
    for i, part in enumerate(CONFIG.split(setup["topology"].node_of_cpu)):
        run = by_cpu[i]
        # placed by numactl as `launch --instance i` places it: the same command, word for word
        launched = build_command(part, LLAMA, setup["topology"], trial_argv(setup))
        assert ["numactl", *calls[run["pid"]]] == list(launched.argv), (calls[run["pid"]], launched.argv)
        assert f"--physcpubind={i}" in calls[run["pid"]] and f"--membind={i}" in calls[run["pid"]]
        # the kernel's view in the instance: its node's CPU only, its memory policy a bind
        assert run["cpus_allowed"] == str(i) and run["mempolicy"] == ["bind", [0]]
        assert run["argv"][run["argv"].index("-t") + 1] == "1" and run["argv"][run["argv"].index("--numa") + 1] == "numactl"


def trial_argv(setup) -> list[str]:
    folder = setup["dir"]
    return [str(folder / "bin" / "llama-cli"), "-m", str(setup["model"].path), "--by-cpu", str(folder / "by-cpu.json"),
            "--peers", f"{folder / 'peers'}:2", "--log", str(folder / "runs.jsonl")]


def test_one_failing_instance_fails_the_trial_and_the_others_are_killed(setup):
    trial = trial_with(setup, {"0": {"hang": True}, "1": {"fail": True}}, share_s=20.0)
    assert trial.error.startswith("instance 1 (node 1): exit status 3: "), trial.error
    assert "failed to allocate 12 GiB" in trial.error
    hung = runs(setup)[0]
    assert not running(hung["pid"])


def test_an_instance_without_a_metric_fails_the_trial_by_its_number(setup):
    trial = trial_with(setup, {"0": {"samples": []}, "1": {"samples": [5]}})
    assert trial.error.startswith("instance 0 (node 0): no line matched"), trial.error


def test_the_budget_deadline_is_the_group_s(setup):
    trial = trial_with(setup, {"0": {"samples": [1]}, "1": {"hang": True}}, share_s=5.0)
    assert trial.error.startswith("instance 1 (node 1): ran past its share of the budget (5 s)"), trial.error
    assert not running(runs(setup)[1]["pid"])


def test_ctrl_c_kills_every_instance(setup):
    """A process measuring a 2-instance trial gets SIGINT (Ctrl-C) while both instances run:
    it stops with KeyboardInterrupt, and neither instance is left running."""
    folder = setup["dir"]
    (folder / "by-cpu.json").write_text(json.dumps({"0": {"hang": True}, "1": {"hang": True}}))
    (folder / "peers").mkdir()
    script = folder / "measure.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from numatune.config import Configuration
from numatune.external import ExternalTrials, external_engine
from numatune.profiles import find_engine_profile
from numatune.search import Stage
from numatune.trial import ModelChoice
from treegen import FakeMachine, probe_tree
from pathlib import Path
t = probe_tree(Path({str(folder / 'tree2')!r}), FakeMachine(sockets=2, cores_per_node=1))
engine = external_engine(find_engine_profile("llama.cpp"), {trial_argv(setup)!r}, metric={METRIC!r})
try:
    ExternalTrials(engine, t, share_s=300)(Configuration((0, 1), "bind", (0, 1), instances=2),
                                          ModelChoice(Path({str(setup['model'].path)!r}), "m"), 0, Stage(8, 1))
except KeyboardInterrupt:
    sys.exit(42)
""")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        log = folder / "runs.jsonl"
        for _ in range(600):
            if log.exists() and len(log.read_text().splitlines()) == 4:
                break
            time.sleep(0.1)
        started = runs(setup)
        assert sorted(started) == [0, 1] and all(running(r["pid"]) for r in started.values())
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) == 42, child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not any(running(r["pid"]) for r in started.values())
