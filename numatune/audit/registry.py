"""The checks in the order they run, and `run_audit`, which runs them all.

Findings come out by severity, errors first; within a severity in the order of `RULES`, which
users and tests rely on: a new check goes where its findings should be read.
"""
from __future__ import annotations

from ..topology.model import Topology
from .core import SEVERITIES, AuditContext, Finding, Rule
from .kernel import cpu_governor, numa_balancing_on, transparent_huge_pages, zone_reclaim
from .memory import (cpuset_hides_nodes, memoryless_cpu_nodes, model_fit, model_page_cache,
                     node_memory_mismatch, unequal_free_memory)
from .placement import engine_spans_nodes, ktransformers_without_numa, sub_numa_clustering
from .threads import cpu_quota, node_oversubscribed, smt_counted_as_cores, threads_exceed_cpus

RULES: tuple[Rule, ...] = (
    engine_spans_nodes, ktransformers_without_numa, numa_balancing_on, transparent_huge_pages,
    zone_reclaim, cpu_governor, smt_counted_as_cores, cpuset_hides_nodes, unequal_free_memory,
    memoryless_cpu_nodes, node_memory_mismatch, cpu_quota, node_oversubscribed, threads_exceed_cpus,
    sub_numa_clustering, model_fit, model_page_cache,
)


def run_audit(topology: Topology, context: AuditContext = AuditContext()) -> tuple[Finding, ...]:
    findings = [finding for rule in RULES for finding in rule(topology, context)]
    return tuple(sorted(findings, key=lambda f: -SEVERITIES.index(f.severity)))
