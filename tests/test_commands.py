"""The command builder and its reader: commands never oversubscribe, and read back as built.

Invariant over every engine profile × every generated and captured topology × both objectives:
what `recommend` emits, read back by audit's command reader, keeps no more busy threads than the
CPUs it is given (nor than the CPU quota), and numatune's own audit finds no error in it.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from numatune import recommend as recommend_module
from numatune.audit import AuditContext, run_audit
from numatune.cli import main
from numatune.command import build_command, parse_command, thread_budget
from numatune.config import Configuration
from numatune.engines import EngineInstall
from numatune.errors import NumatuneError
from numatune.profiles import engine_profiles, find_engine_profile
from numatune.recommend import recommend
from numatune.sysfs import Root
from numatune.topology import probe
from treegen import FakeMachine, ids, probe_tree, seed_machine, write_tree

FIXTURES = Path("/work/shared/fixtures/hwloc-linux")
PROFILES = engine_profiles()
OBJECTIVES = ("latency", "throughput")

GENERATED = {
    "one-node": FakeMachine(sockets=1, cores_per_node=8),
    "two-sockets": FakeMachine(),
    "snc": FakeMachine(nodes_per_socket=2, cores_per_node=6),
    "smt": seed_machine(),
    "memory-only-nodes": FakeMachine(memory_only_nodes=2),
    "cgroup-limited": FakeMachine(cores_per_node=8, threads_per_core=2, cgroup_cpus="0-5,16-21", cgroup_mems="0",
                                  cpu_max="300000 100000"),
    "two-cpus": FakeMachine(sockets=1, cores_per_node=2),
}
CAPTURED = sorted(p.name[:-len(".tar.bz2")] for p in FIXTURES.glob("*.tar.bz2"))


@pytest.fixture(scope="module")
def topologies(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    found = {name: probe(Root.open(str(write_tree(base / name, machine)))) for name, machine in GENERATED.items()}
    found.update({name: probe(Root.open(str(FIXTURES / f"{name}.tar.bz2"))) for name in CAPTURED})
    return found


def _installs(engine: str):
    """The builds a recommendation is made for: unknown, and for a build-flag engine both builds."""
    if PROFILES[engine].numa_aware != "build-flag":
        return (None,)
    return (None,) + tuple(EngineInstall(engine, f"/x/{engine}.so", numa, "test build") for numa in (True, False))


# About the install on this machine, not the command: a plain ktransformers build on a multi-node
# machine, and a NUMA build on one with memory-only nodes, are errors whatever they are run with
# (recommend says so in warnings of its own).
ABOUT_THE_INSTALL = {"ktransformers-no-numa-build", "workers-bound-to-cpuless-nodes"}


def _errors(topology, profile, install, words) -> list[str]:
    command = parse_command(profile, words)
    findings = run_audit(topology, AuditContext(engine=install, command=command, profile=profile))
    return [f"{f.id}: {f.title}" for f in findings if f.severity == "error" and f.id not in ABOUT_THE_INSTALL]


def _room_for_a_compute_thread(topology, profile) -> bool:
    """Whether the machine has more CPUs than the engine reserves: in all (a process), or on some
    node (a rank per node). Where it has not, no command can avoid oversubscribing."""
    if profile.reserved_per == "rank":
        return any(len(topology.usable_cpus_of_node(n.id)) > profile.reserved_threads for n in topology.nodes)
    return topology.max_busy_threads() > profile.reserved_threads


def test_the_corpus_is_all_there():
    assert len(CAPTURED) == 21


@pytest.mark.parametrize("engine", sorted(PROFILES))
def test_recommended_commands_never_oversubscribe_and_pass_the_audit(topologies, engine):
    profile = PROFILES[engine]
    checked = 0
    for name, topology in topologies.items():
        for objective in OBJECTIVES:
            for install in _installs(engine):
                where = f"{name} {objective} {install.numa_aware if install else 'unknown'} build"
                if not _room_for_a_compute_thread(topology, profile):
                    with pytest.raises(NumatuneError, match="give it at least"):
                        recommend(topology, engine, install=install, objective=objective)
                    continue
                r = recommend(topology, engine, install=install, objective=objective)
                for plan in r.plans:
                    command = parse_command(profile, plan.words())
                    busy = command.busy_threads(profile)
                    given = plan.placement.cpus
                    assert busy is not None, where
                    assert busy <= len(given), f"{where}: {busy} busy threads on {len(given)} CPUs: {plan.shell()}"
                    assert busy <= topology.max_busy_threads(), f"{where}: beyond the quota: {plan.shell()}"
                    if command.cpus is not None:
                        assert set(command.cpus) == set(given), where
                    assert _errors(topology, profile, install, plan.words()) == [], f"{where}: {plan.shell()}"
                    checked += 1
    assert checked >= 2 * len(topologies)


def _configurations(topology):
    """Configurations of every shape on a topology: one node bound, all nodes with each policy."""
    nodes = [n.id for n in topology.nodes if topology.usable_cpus_of_node(n.id) and n.has_memory]
    cores = {n: tuple(topology.one_cpu_per_core(topology.usable_cpus_of_node(n))) for n in nodes}
    out = [Configuration(cores[nodes[0]], "bind", (nodes[0],))]
    if len(nodes) > 1:
        every = tuple(sorted(c for n in nodes for c in cores[n]))
        out += [Configuration(every, policy, tuple(nodes))
                for policy in ("first-touch", "interleave", "replicate", "partition")]
    return out


@pytest.mark.parametrize("engine", sorted(PROFILES))
@pytest.mark.parametrize("machine", ["one-node", "two-sockets", "snc", "smt"])
def test_built_command_reads_back_as_the_same_configuration(topologies, engine, machine):
    profile, topology = PROFILES[engine], topologies[machine]
    for config in _configurations(topology):
        built = build_command(config, profile, topology, use_numactl=True)
        read = parse_command(profile, built.words())
        budget = thread_budget(config, profile, topology.node_of_cpu)
        compute_cpus = tuple(c for _, cpus in budget.compute for c in cpus)
        assert read.threads == budget.compute_threads == len(config.cpus) - budget.reserved_threads, built.shell()
        assert read.busy_threads(profile) == len(config.cpus), built.shell()
        if read.compute_cpus is not None:
            assert read.compute_cpus == compute_cpus
        if built.uses_numactl:
            assert read.cpus == config.cpus
            mode = {"default": "local"}.get(built.placement.memory_mode, built.placement.memory_mode)
            assert (read.memory_mode, read.memory_nodes or ()) == (mode, built.placement.memory_nodes)
        elif not profile.numactl:      # the engine places itself: its own words say where
            assert read.cpus is None
            assert (read.compute_cpus, read.policy, read.nodes, read.ranks) != (None, None, None, None), built.shell()
        if read.policy is not None:
            assert (read.policy, read.nodes) == (config.policy, config.nodes)
        if read.ranks is not None:
            assert read.ranks == len({topology.node_of_cpu(c) for c in config.cpus})


def test_reserved_threads_come_out_of_the_cpus_given(topologies):
    seed = topologies["smt"]
    node0 = Configuration(tuple(range(32)), "bind", (0,))
    kt = build_command(node0, find_engine_profile("ktransformers"), seed, use_numactl=True)
    assert kt.shell() == "numactl --physcpubind=0-31 --membind=0 ktransformers --cpu_infer 32"
    both = Configuration(tuple(range(64)), "partition", (0, 1))
    vllm = build_command(both, find_engine_profile("vllm-cpu"), seed)
    assert dict(vllm.env)["VLLM_CPU_OMP_THREADS_BIND"] == "0-30|32-62"      # one CPU per rank left out
    llama = build_command(node0, find_engine_profile("llama.cpp"), seed, use_numactl=True)
    assert llama.argv[llama.argv.index("-t") + 1] == "32"


def test_too_few_cpus_for_the_reserved_threads_is_a_one_line_error(topologies):
    one = Configuration((0,), "bind", (0,))
    with pytest.raises(NumatuneError, match=r"ktransformers: 1 CPU\(s\) given, but it keeps 1 busy.*at least 2"):
        build_command(one, find_engine_profile("ktransformers"), topologies["one-node"])


def test_the_two_cpu_machine_gets_one_worker_and_the_spinning_thread(topologies):
    r = recommend(topologies["two-cpus"], "ktransformers")
    assert r.plan.argv[r.plan.argv.index("--cpu_infer") + 1] == "2"


def _oversubscribing(build):
    """The old builder: ktransformers' --cpu_infer one above the CPUs given."""
    def old(config, profile, topology, user_argv=(), use_numactl=None):
        plan = build(config, profile, topology, user_argv, use_numactl)
        i = plan.argv.index("--cpu_infer") + 1
        return replace(plan, argv=plan.argv[:i] + (str(int(plan.argv[i]) + 1),) + plan.argv[i + 1:])
    return old


@pytest.mark.parametrize("machine", ["one-node", "two-sockets", "smt"])
def test_recommend_warns_of_an_oversubscribed_command_on_any_root(topologies, machine, monkeypatch):
    """Its warnings audit the command itself (its numactl CPUs), not a thread count over the machine."""
    monkeypatch.setattr(recommend_module, "build_command", _oversubscribing(build_command))
    plain = EngineInstall("ktransformers", "/x/cpuinfer_ext.so", False, "no libnuma")
    r = recommend(topologies[machine], "ktransformers", install=plain)
    assert any(w.startswith("threads-exceed-cpus") for w in r.warnings), r.warnings


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("engine,machine,objective", [
    ("ktransformers", "one-node", "latency"), ("ktransformers", "two-sockets", "latency"),
    ("llama.cpp", "snc", "throughput"), ("vllm-cpu", "smt", "latency"), ("openmp", "cgroup-limited", "latency"),
])
def test_audit_of_the_recommended_command_on_the_cli(tmp_path, capsys, engine, machine, objective):
    root = str(write_tree(tmp_path / machine, GENERATED[machine]))
    code, out, err = _cli(capsys, "recommend", "--engine", engine, "--root", root, "--objective", objective, "--json")
    assert code == 0, err
    for instance in json.loads(out)["instances"]:
        words = shlex.split(instance["shell"])
        code, out, err = _cli(capsys, "audit", "--root", root, "--engine", engine, "--json", "--", *words)
        errors = [f["id"] for f in json.loads(out)["findings"] if f["severity"] == "error"]
        assert code == 0 and errors == [], (instance["shell"], errors, err)


def test_audit_fix_for_too_many_threads_is_a_built_command(tmp_path):
    t = probe_tree(tmp_path, FakeMachine(sockets=1, cores_per_node=32))
    kt = find_engine_profile("ktransformers")
    words = ["numactl", "--physcpubind=0-31", "--membind=0", "ktransformers", "--cpu_infer", "33"]
    findings = run_audit(t, AuditContext(command=parse_command(kt, words), profile=kt))
    fix = next(f.fix for f in findings if f.id == "threads-exceed-cpus")
    assert fix == "numactl --physcpubind=0-31 --membind=0 ktransformers --cpu_infer 32"
    assert "threads-exceed-cpus" not in ids(run_audit(t, AuditContext(command=parse_command(kt, shlex.split(fix)),
                                                                      profile=kt)))
