"""Audit rules on generated machines: each rule fires where it should and stays quiet elsewhere."""
from __future__ import annotations

import pytest

from numatune.audit import AuditContext, run_audit, worst_severity
from numatune.engines import EngineInstall
from numatune.models import resolve_model
from treegen import GIB, FakeMachine, by_id, ids, probe_tree, seed_machine

KT_PLAIN = EngineInstall("ktransformers", "/x/cpuinfer_ext.so", False,
                         "/x/cpuinfer_ext.so links libc.so.6 (no libnuma)", "USE_NUMA=1 bash install.sh")
KT_NUMA = EngineInstall("ktransformers", "/x/cpuinfer_ext.so", True, "links libnuma.so.1", None)


topo = probe_tree


def test_clean_single_node_machine_has_no_warnings(tmp_path):
    findings = run_audit(topo(tmp_path, FakeMachine(sockets=1)))
    assert worst_severity(findings) in (None, "info")


def test_seed_failure_non_numa_ktransformers_across_sockets(tmp_path):
    t = topo(tmp_path, seed_machine())
    findings = run_audit(t, AuditContext(engine=KT_PLAIN, threads=126))
    span = by_id(findings, "engine-spans-nodes")
    assert span.severity == "error"
    # the node's 32 cores: 31 workers + the submitting thread that spins beside them
    assert "numactl --physcpubind=0-31 --membind=0 ktransformers --cpu_infer 32" in span.fix
    assert "USE_NUMA=1" in span.fix
    assert by_id(findings, "ktransformers-no-numa-build").severity == "error"
    smt = by_id(findings, "smt-counted-as-cores")
    assert "64 physical cores" in smt.title
    assert worst_severity(findings) == "error"


def test_threads_within_one_node_do_not_span(tmp_path):
    t = topo(tmp_path, seed_machine())
    findings = run_audit(t, AuditContext(engine=KT_PLAIN, threads=32))
    assert "engine-spans-nodes" not in ids(findings)


def test_numa_build_does_not_fire_spanning(tmp_path):
    t = topo(tmp_path, seed_machine())
    findings = run_audit(t, AuditContext(engine=KT_NUMA, threads=64))
    assert not ids(findings) & {"engine-spans-nodes", "ktransformers-no-numa-build"}


def test_non_numa_build_on_one_node_is_only_a_note(tmp_path):
    t = topo(tmp_path, FakeMachine(sockets=1, cores_per_node=8))
    findings = run_audit(t, AuditContext(engine=KT_PLAIN))
    assert by_id(findings, "ktransformers-no-numa-build").severity == "info"
    assert "engine-spans-nodes" not in ids(findings)


@pytest.mark.parametrize("knob, value, finding", [
    ("numa_balancing", 1, "numa-balancing-on"),
    ("thp_enabled", "never", "thp-off"),
    ("zone_reclaim_mode", 1, "zone-reclaim-on"),
    ("governor", "powersave", "governor-not-performance"),
])
def test_kernel_knobs(tmp_path, knob, value, finding):
    assert finding not in ids(run_audit(topo(tmp_path / "good", FakeMachine())))
    findings = run_audit(topo(tmp_path / "bad", FakeMachine(**{knob: value})))
    f = by_id(findings, finding)
    assert f.severity == "warning" and f.fix
    assert f.evidence and all(e.where for e in f.evidence)


def test_numa_balancing_is_harmless_on_one_node(tmp_path):
    findings = run_audit(topo(tmp_path, FakeMachine(sockets=1, numa_balancing=1)))
    assert "numa-balancing-on" not in ids(findings)


def test_cpuset_hiding_a_node(tmp_path):
    m = FakeMachine(sockets=2, cores_per_node=4, cgroup_cpus="0-3", cgroup_mems="0")
    f = by_id(run_audit(topo(tmp_path, m)), "cpuset-hides-nodes")
    assert "[1]" in f.title


def test_unequal_free_memory(tmp_path):
    m = FakeMachine(sockets=2, memory_per_node=64 * GIB, free_per_node=[60 * GIB, 20 * GIB])
    f = by_id(run_audit(topo(tmp_path, m)), "unequal-free-memory")
    assert "node 1" in f.title
    even = FakeMachine(sockets=2, memory_per_node=64 * GIB, free_per_node=[60 * GIB, 55 * GIB])
    assert "unequal-free-memory" not in ids(run_audit(topo(tmp_path / "even", even)))


def test_cpu_quota_below_visible_cpus(tmp_path):
    m = FakeMachine(sockets=1, cores_per_node=16, cpu_max="400000 100000")
    f = by_id(run_audit(topo(tmp_path, m)), "cpu-quota-below-cpuset")
    assert "at most 4 threads" in f.fix


def test_model_fits_one_node_and_not_replicated(tmp_path):
    t = topo(tmp_path, seed_machine(memory_per_node=384 * GIB))
    model = resolve_model("deepseek-r1:Q4_K_M")
    findings = run_audit(t, AuditContext(model=model))
    assert "model-no-replicas" in ids(findings)
    assert "model-fits-one-node" not in ids(findings)
    roomy = topo(tmp_path / "roomy", seed_machine(memory_per_node=1024 * GIB))
    findings = run_audit(roomy, AuditContext(model=model))
    assert "model-fits-one-node" in ids(findings) and "model-no-replicas" not in ids(findings)


def test_model_that_does_not_fit_at_all(tmp_path):
    t = topo(tmp_path, FakeMachine(sockets=2, memory_per_node=64 * GIB))
    f = by_id(run_audit(t, AuditContext(model=resolve_model("deepseek-r1:Q8_0"))), "model-does-not-fit")
    assert f.severity == "error"


def test_memory_only_and_cpu_only_nodes(tmp_path):
    m = FakeMachine(sockets=2, memory_only_nodes=1)
    t = topo(tmp_path, m)
    assert any(not n.has_cpus for n in t.nodes)
    assert "cpu-nodes-without-memory" not in ids(run_audit(t))


def test_findings_sorted_worst_first(tmp_path):
    t = topo(tmp_path, seed_machine(numa_balancing=1))
    findings = run_audit(t, AuditContext(engine=KT_PLAIN, threads=126))
    order = ["error", "warning", "info"]
    ranks = [order.index(f.severity) for f in findings]
    assert ranks == sorted(ranks)
