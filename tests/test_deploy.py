"""`recommend --format`: the winner as a systemd unit/drop-in (checked by systemd-analyze verify), a
Kubernetes Pod (checked against the API schema) with its KubeletConfiguration, a Slurm batch
script and a docker command; every one quotes a hostile model path so that it arrives as one
argument and nothing in it runs."""
from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from numatune.cli import main
from numatune.deploy import engine_command, render, systemd_exec
from numatune.models import resolve_model
from numatune.recommend import recommend
from numatune.sysfs import Root
from numatune.topology import probe as probe_root
from treegen import GIB, seed_machine, write_tree

HOSTILE = "a b 'q' \"d\" $HOME %h `x` \\ ; touch {marker}"


def probe(path) -> object:
    return probe_root(Root.open(str(path)))


@pytest.fixture
def seed_root(tmp_path):
    return write_tree(tmp_path / "seed", seed_machine())


@pytest.fixture
def seed(seed_root):
    return probe(seed_root)


@pytest.fixture
def hostile_model(tmp_path):
    marker = tmp_path / "pwned"
    return str(tmp_path / HOSTILE.format(marker=marker)), marker


def throughput(seed, argv=()):
    return recommend(seed, "llama.cpp", resolve_model("qwen3-30b-a3b:Q4_K_M"), user_argv=argv,
                     objective="throughput")


def _recorder(directory: Path, name: str) -> Path:
    """An executable that writes its arguments, NUL-separated, to $ARGS_OUT."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text('#!/bin/sh\nprintf \'%s\\0\' "$@" >> "$ARGS_OUT"\nprintf \'\\n\' >> "$ARGS_OUT"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _recorded(path: Path) -> list[list[str]]:
    return [line.split("\0")[:-1] for line in path.read_text().split("\0\n") if line] if path.exists() else []


# ----- shell quoting: nothing a user wrote reaches a shell --------------------------------------

def test_numatune_never_hands_a_string_to_a_shell():
    sources = Path(__file__).resolve().parent.parent / "numatune"
    for path in sources.glob("*.py"):
        text = path.read_text()
        for needle in ("shell=True", "os.system(", "os.popen(", '"sh", "-c"', "'sh', '-c'", '"bash", "-c"'):
            assert needle not in text, f"{path.name} uses {needle}"


@pytest.mark.parametrize("fmt", ["shell", "docker", "slurm"])
def test_printed_command_pasted_into_sh_passes_the_path_as_one_argument(fmt, seed, hostile_model, tmp_path):
    model, marker = hostile_model
    rec = recommend(seed, "llama.cpp", resolve_model("qwen3-30b-a3b:Q4_K_M"), user_argv=("llama-server", "-m", model))
    text = render(rec, seed, fmt)
    bin_dir = tmp_path / "bin"
    for name in ("numactl", "docker", "srun"):
        _recorder(bin_dir, name)
    out = tmp_path / "args"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", ARGS_OUT=str(out), IMAGE="engine:latest",
               HOME="/nonexistent-home")
    subprocess.run(["sh", "-c", text], env=env, check=True)   # the test, not numatune, runs a shell
    calls = _recorded(out)
    assert len(calls) == 1
    assert model in calls[0] and calls[0][calls[0].index(model) - 1] == "-m"
    assert not marker.exists()


def test_launch_dry_run_quotes_the_users_words(capsys, seed_root, hostile_model, tmp_path, monkeypatch):
    model, marker = hostile_model
    code = main(["launch", "--dry-run", "--root", str(seed_root), "--engine", "llama.cpp", "--",
                 "llama-server", "-m", model])
    out = capsys.readouterr().out
    assert code == 0
    command = [line for line in out.splitlines() if not line.startswith("#")][-1]
    words = shlex.split(command)
    assert model in words and words[words.index(model) - 1] == "-m"
    assert not marker.exists()


# ----- systemd ---------------------------------------------------------------------------------

def _systemd_unquote(text: str) -> list[str]:
    """What our quoting leaves for systemd to read: C-style escapes inside double quotes (those
    shlex reads the same way), `%%` undoubled, and `$$` in the arguments (the executable's path
    is not expanded: systemd-analyze verify below finds it only with a single `$`)."""
    words = [w.replace("%%", "%") for w in shlex.split(text)]
    return words[:1] + [w.replace("$$", "$") for w in words[1:]]


def test_systemd_words_round_trip():
    argv = ["/opt/llama $server/bin", "-m", "/m/a b \"c\" 'd' $X %h \\ ;", "", "plain-word"]
    assert _systemd_unquote(systemd_exec(argv)) == argv


def _units(text: str) -> dict[str, str]:
    """The files of a systemd rendering, by the path each block's first comment names."""
    files: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# /etc/systemd/system/"):
            current = line[len("# /etc/systemd/system/"):]
            files[current] = []
        elif current is not None:
            files[current].append(line)
    return {name: "\n".join(lines) + "\n" for name, lines in files.items()}


systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                     reason="systemd-analyze (Debian package systemd) is not installed")


def _verify(unit_dir: Path, unit: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_dir}:", SYSTEMD_LOG_LEVEL="notice")
    return subprocess.run(["systemd-analyze", "verify", "--man=no", unit], env=env, capture_output=True,
                          text=True, cwd=unit_dir)


@systemd_analyze
def test_systemd_units_one_per_node_pass_systemd_analyze_verify(seed, tmp_path, hostile_model):
    model, marker = hostile_model
    engine = _recorder(tmp_path / "engine dir; $x %i", "llama-server")
    rec = throughput(seed, (str(engine), "-m", model))
    text = render(rec, seed, "systemd")
    units = _units(text)
    assert sorted(units) == ["numatune-llama-cpp-node0.service", "numatune-llama-cpp-node1.service"]
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    for name, body in units.items():
        (unit_dir / name).write_text(body)
        result = _verify(unit_dir, name)
        assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    node1 = units["numatune-llama-cpp-node1.service"]
    assert "CPUAffinity=32-63\n" in node1 and "NUMAPolicy=bind\n" in node1 and "NUMAMask=1\n" in node1
    exec_line = next(line for line in node1.splitlines() if line.startswith("ExecStart="))
    assert _systemd_unquote(exec_line[len("ExecStart="):])[:3] == [str(engine), "-m", model]
    assert not marker.exists()


@systemd_analyze
def test_systemd_verify_catches_a_broken_unit(seed, tmp_path):
    """The check above can fail: a unit whose NUMA policy systemd does not know is reported."""
    rec = recommend(seed, "llama.cpp", resolve_model("qwen3-30b-a3b:Q4_K_M"), user_argv=("/bin/true",))
    body = next(iter(_units(render(rec, seed, "systemd")).values())).replace("NUMAPolicy=bind", "NUMAPolicy=nearby")
    (tmp_path / "broken.service").write_text(body)
    assert "Invalid NUMA policy" in _verify(tmp_path, "broken.service").stderr


@systemd_analyze
def test_systemd_dropin_for_an_existing_unit(seed, tmp_path):
    rec = recommend(seed, "ktransformers", resolve_model("deepseek-r1:Q4_K_M"), user_argv=("/bin/true", "--x"))
    text = render(rec, seed, "systemd-dropin")
    (name, body), = _units(text).items()
    assert name == "numatune-ktransformers.service.d/numatune.conf"
    assert "ExecStart=\nExecStart=/bin/true" in body and "[Install]" not in body
    # replicate: the engine places its copies; the process itself allocates locally
    assert "NUMAPolicy=local" in body and "NUMAMask" not in body and "copy of the weights" in body
    unit_dir = tmp_path / "units"
    (unit_dir / "numatune-ktransformers.service.d").mkdir(parents=True)
    (unit_dir / "numatune-ktransformers.service").write_text("[Service]\nExecStart=/bin/false\n")
    (unit_dir / name).write_text(body)
    result = _verify(unit_dir, "numatune-ktransformers.service")
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_interleave_maps_to_systemd_interleave_with_its_mask(tmp_path):
    small = probe(write_tree(tmp_path / "small", seed_machine(memory_per_node=300 * GIB)))
    rec = recommend(small, "llama.cpp", resolve_model("deepseek-r1:Q4_K_M"))
    assert rec.config.policy == "interleave"
    body = render(rec, small, "systemd")
    assert "NUMAPolicy=interleave\nNUMAMask=0-1\n" in body and "ExecStart=llama-server" in body


# ----- Kubernetes ------------------------------------------------------------------------------

def _documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_kubernetes_pods_are_guaranteed_and_valid_against_the_api_schema(seed, hostile_model):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    model, _ = hostile_model
    text = render(throughput(seed, ("llama-server", "-m", model)), seed, "kubernetes",
                  resolve_model("qwen3-30b-a3b:Q4_K_M").weight_bytes)
    docs = _documents(text)
    pods = [d for d in docs if d["kind"] == "Pod"]
    assert [p["metadata"]["name"] for p in pods] == ["numatune-llama-cpp-node0", "numatune-llama-cpp-node1"]
    for pod in pods:
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
        container, = pod["spec"]["containers"]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"]
        assert int(resources["limits"]["cpu"]) % 2 == 0            # whole cores of two CPUs each
        assert container["command"][:3] == ["llama-server", "-m", model]
    threads = [int(p["spec"]["containers"][0]["command"][p["spec"]["containers"][0]["command"].index("-t") + 1])
               for p in pods]
    cpus = [int(p["spec"]["containers"][0]["resources"]["limits"]["cpu"]) for p in pods]
    assert [c // 2 for c in cpus] == threads == [32, 31]        # one core left to the kubelet
    assert "The kubelet, not this pod, chooses the CPUs" in text


def test_kubernetes_schema_check_can_fail(seed):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    pod = _documents(render(throughput(seed), seed, "kubernetes"))[0]
    pod["spec"]["containers"][0]["cpuset"] = "0-31"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def _mebibytes(quantity: str) -> int:
    return int(quantity[:-2]) * (1024 if quantity.endswith("Gi") else 1)


def test_kubelet_configuration_is_consistent(seed):
    docs = _documents(render(throughput(seed), seed, "kubernetes"))
    kubelet, = [d for d in docs if d["kind"] == "KubeletConfiguration"]
    assert kubelet["cpuManagerPolicy"] == "static" and kubelet["memoryManagerPolicy"] == "Static"
    assert kubelet["topologyManagerPolicy"] == "single-numa-node" and kubelet["topologyManagerScope"] == "pod"
    # the kubelet refuses to start unless reservedMemory adds up to the reserved and eviction memory
    reserved = sum(_mebibytes(r["limits"]["memory"]) for r in kubelet["reservedMemory"])
    assert reserved == _mebibytes(kubelet["systemReserved"]["memory"]) + \
        _mebibytes(kubelet["evictionHard"]["memory.available"])
    assert kubelet["reservedSystemCPUs"] == "63,127"          # the last core, both its CPUs


def test_a_pod_over_several_nodes_gets_the_restricted_topology_policy(seed):
    rec = recommend(seed, "ktransformers", resolve_model("deepseek-r1:Q4_K_M"))
    docs = _documents(render(rec, seed, "kubernetes"))
    assert [d["kind"] for d in docs] == ["Pod", "KubeletConfiguration"]
    assert docs[1]["topologyManagerPolicy"] == "restricted"


# ----- Slurm and containers --------------------------------------------------------------------

def test_slurm_script_one_task_per_socket(seed):
    text = render(throughput(seed), seed, "slurm")
    assert text.startswith("#!/bin/sh\n")
    directives = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "--ntasks=2" in directives and "--ntasks-per-socket=1" in directives and "--exclusive" in directives
    srun, = [shlex.split(line) for line in text.splitlines() if line.startswith("srun")]
    options = srun[:srun.index("--")]
    for wanted in ("--ntasks=2", "--ntasks-per-socket=1", "--hint=nomultithread", "--cpu-bind=verbose",
                   "--mem-bind=verbose,local", "--cpus-per-task=32"):
        assert wanted in options
    assert srun[srun.index("--") + 1:] == ["llama-server", "-t", "32", "-tb", "32", "--numa", "numactl"]


def test_slurm_interleave_keeps_numactl_inside_the_task(tmp_path):
    small = probe(write_tree(tmp_path / "small", seed_machine(memory_per_node=300 * GIB)))
    rec = recommend(small, "llama.cpp", resolve_model("deepseek-r1:Q4_K_M"))
    srun, = [shlex.split(line) for line in render(rec, small, "slurm").splitlines() if line.startswith("srun")]
    assert "--mem-bind=verbose,none" in srun
    assert srun[srun.index("--") + 1:][:2] == ["numactl", "--interleave=all"]


def test_docker_one_container_per_node_with_its_cpuset(seed):
    rec = throughput(seed)
    lines = [shlex.split(line.replace('"$IMAGE"', "IMAGE")) for line in render(rec, seed, "docker").splitlines()
             if line.startswith("docker")]
    assert len(lines) == 2
    for node, words in enumerate(lines):
        assert f"--cpuset-cpus={32 * node}-{32 * node + 31}" in words and f"--cpuset-mems={node}" in words
        assert "--detach" in words
        assert words[words.index("IMAGE") + 1:] == list(engine_command(rec.plans[node]))


def test_engine_command_drops_only_the_numactl_prefix(seed, monkeypatch):
    monkeypatch.setattr("numatune.command.numactl_available", lambda: "/usr/bin/numactl")
    rec = recommend(seed, "llama.cpp", resolve_model("qwen3-30b-a3b:Q4_K_M"), user_argv=("llama-server", "--x"))
    assert rec.plan.argv[0] == "numactl"
    assert engine_command(rec.plan) == ("llama-server", "--x", "-t", "32", "-tb", "32", "--numa", "numactl")


def test_cli_format_and_json_together_is_a_one_line_error(capsys, seed_root):
    code = main(["recommend", "--engine", "llama.cpp", "--root", str(seed_root), "--format", "slurm", "--json"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--format" in err


def test_cli_format_prints_the_rendering(capsys, seed_root):
    code = main(["recommend", "--engine", "llama.cpp", "--root", str(seed_root), "--model",
                 "qwen3-30b-a3b:Q4_K_M", "--objective", "throughput", "--format", "kubernetes"])
    out = capsys.readouterr().out
    assert code == 0 and [d["kind"] for d in _documents(out)] == ["Pod", "Pod", "KubeletConfiguration"]


def test_human_output_prints_brackets_in_a_command_as_they_are(capsys, seed_root):
    """rich would take `[bold]` in a path for markup and drop it from the command shown."""
    code = main(["launch", "--dry-run", "--root", str(seed_root), "--engine", "llama.cpp", "--",
                 "llama-server", "-m", "/m/[bold]x[/bold].gguf"])
    assert code == 0 and "[bold]x[/bold]" in capsys.readouterr().out
    from numatune import render as human
    rec = recommend(probe(seed_root), "llama.cpp", user_argv=("llama-server", "-m", "/m/[red]y.gguf"))
    human.recommendation(rec)
    human.commands_table({"llama.cpp": rec})
    out = capsys.readouterr().out
    assert out.count("[red]y.gguf") == 2


def test_auto_format_writes_every_engine_for_its_platform(capsys, monkeypatch, tmp_path, seed):
    """`auto --format`: after the search (replaced here by a saved result on the seed's machine),
    one rendering per engine profile; here one systemd unit each."""
    import numatune.cli as cli_module
    from numatune import workflow
    from numatune.config import Configuration
    from numatune.profiles import engine_profiles
    from numatune.search import build_space
    from numatune.stats import Measurement
    from numatune.store import Trial, TuneResult, fingerprint
    from numatune.tune import TuneRun
    winner = Trial(Configuration(tuple(range(32)), "bind", (0,)), Measurement.of([5.0] * 3), None, 1, 0)
    result = TuneResult(fingerprint(seed), "m", (winner,), winner, None, True, "x")
    monkeypatch.setattr(workflow, "probe", lambda root: seed)
    monkeypatch.setattr(cli_module, "_run_tune", lambda *a, **k: TuneRun(build_space(seed, 1 << 20), result,
                                                                           tmp_path / "r.json", False))
    assert main(["auto", "--format", "systemd"]) == 0
    units = _units(capsys.readouterr().out)
    assert len(units) == len(engine_profiles())
    assert "CPUAffinity=0-31\nNUMAPolicy=bind\nNUMAMask=0\n" in units["numatune-llama-cpp.service"]


def test_kubernetes_refuses_when_no_core_is_left_for_the_kubelet(tmp_path, capsys):
    root = write_tree(tmp_path / "two", seed_machine(cores_per_node=1, threads_per_core=1))
    code = main(["recommend", "--engine", "llama.cpp", "--root", str(root), "--objective", "throughput",
                 "--model", "qwen3-30b-a3b:Q4_K_M", "--format", "kubernetes"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "reservedSystemCPUs" in err
