"""Issue 7's audit rules: CPU quota, oversubscribed nodes, sub-NUMA clustering, memory fit per
node, a model's page cache — each made to fire, and to stay quiet, on generated or captured trees."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from numatune.audit import AuditContext, run_audit, snc_packages, thread_spread
from numatune.command import parse_command
from numatune.cli import main
from numatune.engines import EngineInstall
from numatune.errors import NumatuneError
from numatune.models import resolve_model
from numatune.pagecache import PageCacheReport
from numatune.topology import Topology
from treegen import GIB, FakeMachine, by_id, ids, probe_tree, seed_machine, write_tree

KT_NUMA = EngineInstall("ktransformers", "/x/cpuinfer_ext.so", True, "links libnuma.so.1", None)
KT_PLAIN = EngineInstall("ktransformers", "/x/cpuinfer_ext.so", False, "no libnuma", "USE_NUMA=1 bash install.sh")
LLAMA = EngineInstall("llama.cpp", None, False, "one copy", None)
R1 = "deepseek-r1:Q4_K_M"


topo = probe_tree


# ----- CPU quota --------------------------------------------------------------------------------

def test_quota_is_read_and_exposed_as_cpus_and_busy_threads(tmp_path):
    t = topo(tmp_path, FakeMachine(sockets=1, cores_per_node=16, cpu_max="450000 100000"))
    assert t.allowed.cpu_quota == 4.5
    assert t.quota_threads() == 4 and t.max_busy_threads() == 4
    free = topo(tmp_path, FakeMachine(sockets=1, cores_per_node=16), "free")
    assert free.allowed.cpu_quota is None and free.quota_threads() is None and free.max_busy_threads() == 16
    tiny = topo(tmp_path, FakeMachine(sockets=1, cores_per_node=4, cpu_max="50000 100000"), "tiny")
    assert tiny.max_busy_threads() == 1


def test_quota_round_trips_through_probe_json_and_reads_the_old_key(tmp_path):
    t = topo(tmp_path, FakeMachine(sockets=1, cpu_max="250000 100000"))
    data = t.to_json()
    assert data["allowed"]["cpu_quota"] == 2.5
    assert Topology.from_json(json.loads(json.dumps(data))).allowed.cpu_quota == 2.5
    data["allowed"]["cpu_quota_cpus"] = data["allowed"].pop("cpu_quota")
    assert Topology.from_json(data).allowed.cpu_quota == 2.5


def test_probe_json_with_quota_validates_against_the_schema(tmp_path):
    schema = json.loads((Path(__file__).parent.parent / "numatune/schemas/probe-v1.schema.json").read_text())
    t = topo(tmp_path, FakeMachine(sockets=1, cpu_max="250000 100000"))
    jsonschema.validate(t.to_json(), schema)


def test_threads_beyond_the_quota_are_an_error(tmp_path):
    t = topo(tmp_path, FakeMachine(sockets=1, cores_per_node=8, cpu_max="400000 100000"))
    f = by_id(run_audit(t, AuditContext(engine=LLAMA, threads=8)), "threads-exceed-cpu-quota")
    assert f.severity == "error"
    assert "-t 4" in f.fix and "45" in f.explanation
    assert any("cpu.max" in e.where for e in f.evidence)


def test_engine_default_threads_are_assumed_when_none_given(tmp_path):
    t = topo(tmp_path, FakeMachine(sockets=1, cores_per_node=8, cpu_max="400000 100000"))
    f = by_id(run_audit(t, AuditContext(engine=LLAMA)), "threads-exceed-cpu-quota")
    assert "default" in " ".join(e.where for e in f.evidence)
    kt = by_id(run_audit(t, AuditContext(engine=KT_PLAIN)), "threads-exceed-cpu-quota")
    assert "--cpu_infer 4" in kt.fix        # 3 workers + the spinning submitter fit a quota of 4


def test_threads_within_the_quota_do_not_fire(tmp_path):
    t = topo(tmp_path, FakeMachine(sockets=1, cores_per_node=8, cpu_max="400000 100000"))
    findings = run_audit(t, AuditContext(engine=LLAMA, threads=4))
    assert "threads-exceed-cpu-quota" not in ids(findings)
    assert "cpu-quota-below-cpuset" in ids(findings)
    kt = run_audit(t, AuditContext(engine=KT_PLAIN, threads=4))    # 4 workers + 1 spinning = 5 > 4
    assert "threads-exceed-cpu-quota" in ids(kt)
    unlimited = topo(tmp_path, FakeMachine(sockets=1, cores_per_node=8), "unlimited")
    assert not ids(run_audit(unlimited, AuditContext(engine=LLAMA, threads=8))) & {
        "threads-exceed-cpu-quota", "cpu-quota-below-cpuset"}


# ----- oversubscribed nodes (ktransformers PR #685) ----------------------------------------------

def pr685(tmp_path, **changes):
    """2 sockets × 24 cores, SMT off, as in the PR."""
    return topo(tmp_path, FakeMachine(sockets=2, cores_per_node=24, **changes))


def test_numa_build_spreads_workers_evenly_over_the_memory_nodes(tmp_path):
    t = pr685(tmp_path)
    spread = thread_spread(t, AuditContext(engine=KT_NUMA, threads=41))
    assert dict(spread.bound) == {0: 21, 1: 20} and spread.floating == 1 and spread.busy == 42


def test_one_worker_too_many_for_a_node_is_an_error(tmp_path):
    t = pr685(tmp_path)
    f = by_id(run_audit(t, AuditContext(engine=KT_NUMA, threads=49)), "node-oversubscribed")
    assert f.severity == "error" and "node 0" in f.title
    assert "25 / 24 / 24" in [e.value for e in f.evidence]
    assert "--cpu_infer 48" in f.fix
    assert "#685" in f.explanation


def test_workers_that_fit_the_nodes_do_not_fire(tmp_path):
    t = pr685(tmp_path)
    findings = run_audit(t, AuditContext(engine=KT_NUMA, threads=47))     # --cpu_infer 48
    assert not ids(findings) & {"node-oversubscribed", "threads-exceed-cpus"}


def test_more_workers_than_cores_but_not_threads_is_a_warning_on_smt(tmp_path):
    t = topo(tmp_path, FakeMachine(sockets=2, cores_per_node=24, threads_per_core=2))
    f = by_id(run_audit(t, AuditContext(engine=KT_NUMA, threads=60)), "node-oversubscribed")
    assert f.severity == "warning" and "physical cores" in f.title


def test_a_command_line_is_read_for_the_thread_count(tmp_path):
    t = pr685(tmp_path)
    command = parse_command("ktransformers", ["python", "-m", "ktransformers.local_chat", "--cpu_infer", "50"])
    assert command.threads == 49
    f = by_id(run_audit(t, AuditContext(engine=KT_NUMA, command=command)), "node-oversubscribed")
    assert f.evidence[-1].where == "--cpu_infer 50"
    ok = parse_command("ktransformers", ["ktransformers", "--cpu_infer=42"])
    assert "node-oversubscribed" not in ids(run_audit(t, AuditContext(engine=KT_NUMA, command=ok)))


def test_llama_cpp_distribute_goes_round_robin_over_nodes(tmp_path):
    t = pr685(tmp_path)
    over = parse_command("llama.cpp", ["llama-server", "-t", "50", "--numa", "distribute"])
    assert dict(thread_spread(t, AuditContext(engine=LLAMA, command=over)).bound) == {0: 25, 1: 25}
    assert "node-oversubscribed" in ids(run_audit(t, AuditContext(engine=LLAMA, command=over)))
    fits = parse_command("llama.cpp", ["llama-server", "-t", "48", "--numa", "distribute"])
    assert "node-oversubscribed" not in ids(run_audit(t, AuditContext(engine=LLAMA, command=fits)))


def test_threads_beyond_a_numactl_node_binding(tmp_path):
    t = pr685(tmp_path)
    bound = parse_command("llama.cpp", ["numactl", "--cpunodebind=0", "--membind=0", "llama-server", "-t", "30"])
    f = by_id(run_audit(t, AuditContext(engine=LLAMA, command=bound)), "threads-exceed-cpus")
    assert "30 busy threads on 24 CPUs" == f.title and "-t 24" in f.fix
    fits = parse_command("llama.cpp", ["numactl", "-N", "0", "llama-server", "-t", "24"])
    assert "threads-exceed-cpus" not in ids(run_audit(t, AuditContext(engine=LLAMA, command=fits)))


def test_non_numa_build_is_checked_against_all_cpus(tmp_path):
    t = pr685(tmp_path)
    findings = run_audit(t, AuditContext(engine=KT_PLAIN, threads=48))    # 48 workers + 1 spinning
    assert "threads-exceed-cpus" in ids(findings) and "node-oversubscribed" not in ids(findings)
    assert "threads-exceed-cpus" not in ids(run_audit(t, AuditContext(engine=KT_PLAIN, threads=47)))


@pytest.mark.parametrize("argv, message", [
    (["ktransformers", "--cpu_infer", "many"], "--cpu_infer: 'many' is not a thread count"),
    (["ktransformers", "--cpu_infer", "1"], "leaves no compute thread"),
    (["numactl", "--cpunodebind", "x", "ktransformers"], "numactl --cpunodebind"),
    (["ktransformers", "--cpu_infer"], "missing value"),
])
def test_bad_command_lines_are_one_line_errors(argv, message):
    with pytest.raises(NumatuneError, match=message):
        parse_command("ktransformers", argv)


# ----- sub-NUMA clustering -------------------------------------------------------------------------

def snc(tmp_path, **changes):
    return topo(tmp_path, seed_machine(nodes_per_socket=2, cores_per_node=16, **changes))


def test_snc_detected_on_a_generated_machine(tmp_path):
    t = snc(tmp_path)
    assert snc_packages(t) == {0: (0, 1), 1: (2, 3)}
    f = by_id(run_audit(t), "sub-numa-clustering")
    assert f.severity == "info"
    assert "distance within 12, to node 2 21" in f.evidence[0].value
    assert "--interleave=0-1" in f.fix
    assert by_id(run_audit(t, AuditContext(engine=KT_NUMA)), "sub-numa-clustering").severity == "warning"


def test_no_snc_with_one_node_per_socket(tmp_path):
    assert snc_packages(topo(tmp_path, seed_machine())) == {}
    assert "sub-numa-clustering" not in ids(run_audit(topo(tmp_path, seed_machine(), "plain")))


def test_snc_on_captured_machines(capture):
    arm = capture("128arm-2pa2n8cluster4co")
    assert snc_packages(arm) and all(len(nodes) == 2 for nodes in snc_packages(arm).values())
    assert "sub-numa-clustering" in ids(run_audit(arm))
    magny = capture("48amd64-4pa2n6c-sparse")      # 4 packages of 2 dies, a node per die
    assert len(snc_packages(magny)) == 4


@pytest.mark.parametrize("name", ["16amd64-8n2c", "8em64t-2s2ca2c-buggynuma", "2i386-2t-hugepagesizecount"])
def test_no_snc_on_captured_machines_without_it(capture, name):
    t = capture(name)        # one node per package; nodes spanning packages (broken tables); one node
    assert snc_packages(t) == {}
    assert "sub-numa-clustering" not in ids(run_audit(t))


# ----- memory fit per node ---------------------------------------------------------------------------

def test_replication_under_snc_runs_out_of_memory_issue_1147(tmp_path):
    t = snc(tmp_path, memory_per_node=256 * GIB)         # 1 TiB on 2 sockets, 4 nodes
    f = by_id(run_audit(t, AuditContext(engine=KT_NUMA, model=resolve_model(R1))), "model-no-replicas")
    assert f.severity == "error" and "4 ×" in f.title
    assert len([e for e in f.evidence if e.what.startswith("node ")]) == 4
    assert "one copy per socket interleaved" in f.fix
    assert "numactl --cpunodebind=0-1 --interleave=0-1" in f.fix
    assert "interleaved or partitioned over nodes [0, 1, 2, 3]" in f.fix
    assert "sub-NUMA" in f.explanation


def test_replication_without_a_replicating_engine_is_a_warning(tmp_path):
    t = snc(tmp_path, memory_per_node=256 * GIB)
    assert by_id(run_audit(t, AuditContext(model=resolve_model(R1))), "model-no-replicas").severity == "warning"


def test_replication_that_fits_does_not_fire(tmp_path):
    t = snc(tmp_path, memory_per_node=1024 * GIB)
    findings = run_audit(t, AuditContext(engine=KT_NUMA, model=resolve_model(R1)))
    assert "model-no-replicas" not in ids(findings) and "model-fits-one-node" in ids(findings)


def test_fewer_copies_are_offered_when_some_nodes_can_hold_one(tmp_path):
    free = [900 * GIB, 900 * GIB, 100 * GIB, 100 * GIB]
    t = snc(tmp_path, memory_per_node=1024 * GIB, free_per_node=free)
    f = by_id(run_audit(t, AuditContext(engine=KT_NUMA, model=resolve_model(R1))), "model-no-replicas")
    assert "nodes [0, 1] only (fewer copies)" in f.fix
    assert "numactl --cpunodebind=0 --membind=0" in f.fix


# ----- a model's pages in the page cache ----------------------------------------------------------------

def cached(pages_by_node, pages=1000):
    resident = sum(p for _, p in pages_by_node)
    return PageCacheReport("/models/m.gguf", pages * 4096, 4096, pages, resident, tuple(pages_by_node), 0)


def test_cached_model_pages_on_a_two_node_machine(tmp_path):
    t = topo(tmp_path, FakeMachine(sockets=2))
    f = by_id(run_audit(t, AuditContext(engine=LLAMA, page_cache=cached([(1, 800)]))), "model-in-page-cache")
    assert f.severity == "warning" and "drop" in f.fix and "#1437" in f.explanation


def test_cached_pages_outside_the_planned_nodes(tmp_path):
    t = topo(tmp_path, FakeMachine(sockets=2))
    bound = parse_command("llama.cpp", ["numactl", "-N", "0", "-m", "0", "llama-server", "-t", "4"])
    f = by_id(run_audit(t, AuditContext(engine=LLAMA, command=bound, page_cache=cached([(0, 300), (1, 500)]))),
              "model-in-page-cache")
    assert "node(s) [1]" in f.title
    local = AuditContext(engine=LLAMA, command=bound, page_cache=cached([(0, 800)]))
    assert "model-in-page-cache" not in ids(run_audit(t, local))


def test_page_cache_quiet_on_one_node_or_when_nothing_is_cached(tmp_path):
    one = topo(tmp_path, FakeMachine(sockets=1), "one")
    assert "model-in-page-cache" not in ids(run_audit(one, AuditContext(page_cache=cached([(0, 900)]))))
    two = topo(tmp_path, FakeMachine(sockets=2), "two")
    assert "model-in-page-cache" not in ids(run_audit(two, AuditContext(page_cache=cached([(0, 10)]))))


# ----- through the CLI ------------------------------------------------------------------------------

def test_audit_cli_reports_the_new_rules_as_json(tmp_path, capsys):
    root = write_tree(tmp_path / "root", seed_machine(nodes_per_socket=2, cores_per_node=16,
                                                       cpu_max="800000 100000"))
    status = main(["audit", "--root", str(root), "--threads", "16", "--json", "--fail-on", "never"])
    found = {f["id"] for f in json.loads(capsys.readouterr().out)["findings"]}
    assert status == 0 and {"sub-numa-clustering", "threads-exceed-cpu-quota"} <= found


def test_search_sees_the_quota_through_the_topology(tmp_path):
    from numatune.search import max_busy_threads
    t = topo(tmp_path, FakeMachine(sockets=2, cores_per_node=8, cpu_max="600000 100000"))
    assert max_busy_threads(t) == t.max_busy_threads() == 6
    assert replace(t, allowed=replace(t.allowed, cpu_quota=None)).max_busy_threads() == 16


@pytest.mark.parametrize("engine, argv, expected", [
    ("ktransformers", "numactl -N 0 --membind=0 python -m ktransformers.local_chat --cpu_infer 42",
     dict(threads=41, thread_flag="--cpu_infer 42", cpu_nodes=(0,), memory_mode="bind", memory_nodes=(0,))),
    ("ktransformers", "numactl -N0 -m0 -l ktransformers --cpu_infer=33",
     dict(threads=32, cpu_nodes=(0,), memory_mode="local", memory_nodes=None)),
    ("llama.cpp", "env A=1 numactl --interleave=all llama-server -tb 8 -t 32 --numa distribute -m x.gguf",
     dict(threads=32, numa_mode="distribute", memory_mode="interleave", memory_nodes=None)),
    ("llama.cpp", "taskset -c 0-7 llama-cli --threads=8 --numa",
     dict(threads=8, numa_mode="distribute", cpus=tuple(range(8)))),
    ("llama.cpp", "taskset 0xf0 llama-cli --numa=isolate",
     dict(threads=None, numa_mode="isolate", cpus=(4, 5, 6, 7))),
    ("llama.cpp", "numactl --physcpubind=0-3,8 llama-bench -t16", dict(threads=16, cpus=(0, 1, 2, 3, 8))),
])
def test_command_lines_are_read(engine, argv, expected):
    command = parse_command(engine, argv.split())
    assert {key: getattr(command, key) for key in expected} == expected


def test_uneven_free_memory_offers_a_weighted_spread(tmp_path):
    free = [300 * GIB, 300 * GIB, 40 * GIB, 300 * GIB]     # one copy fits in all, not evenly
    t = snc(tmp_path, memory_per_node=512 * GIB, free_per_node=free)
    f = by_id(run_audit(t, AuditContext(model=resolve_model(R1))), "model-no-replicas")
    assert "--weighted-interleave=0-3" in f.fix and "node(s) [2]" in f.fix
    assert "interleaved or partitioned" not in f.fix


def test_audit_reads_the_intended_command_line_after_the_double_dash(tmp_path, capsys):
    root = str(write_tree(tmp_path / "root", FakeMachine(sockets=2, cores_per_node=4, threads_per_core=1)))
    argv = ["audit", "--root", root, "--engine", "llama.cpp", "--json", "--fail-on", "error", "--",
            "numactl", "--physcpubind=0-3", "--membind=0", "llama-server", "-t", "12"]
    code = main(argv)
    findings = {f["id"] for f in json.loads(capsys.readouterr()[0])["findings"]}
    assert code == 1 and findings & {"threads-exceed-cpus", "node-oversubscribed"}
    code = main(argv[:-1] + ["4"])                 # four threads on the four CPUs numactl gives: fine
    findings = {f["id"] for f in json.loads(capsys.readouterr()[0])["findings"]}
    assert not findings & {"threads-exceed-cpus", "node-oversubscribed"}
