"""Audit rules: small functions from a Topology (and what the user runs) to Findings.

Each finding carries the values read and where they were read, a short explanation, and the
command or configuration line that fixes it. `core` holds the vocabulary (Finding, Evidence,
AuditContext), `registry` the order of the checks and `run_audit`; the checks live by subject:
`kernel` (kernel settings), `threads` (thread counts, quota, spread over nodes), `placement`
(engines across nodes, sub-NUMA clustering) and `memory` (nodes' memory, the model's fit, the
page cache); `fixes` builds the commands they propose.
"""
from .core import (GIB, SEVERITIES, AuditContext, Evidence, Finding, Rule, usable_cores, usable_nodes,
                   worst_severity)
from .kernel import cpu_governor, numa_balancing_on, transparent_huge_pages, zone_reclaim
from .memory import (cpuset_hides_nodes, memoryless_cpu_nodes, model_fit, model_page_cache, node_memory_mismatch,
                     placements_that_fit, unequal_free_memory)
from .placement import engine_spans_nodes, ktransformers_without_numa, snc_packages, sub_numa_clustering
from .registry import RULES, run_audit
from .threads import (ThreadSpread, busy_threads, cpu_quota, node_oversubscribed, smt_counted_as_cores,
                      thread_spread, threads_exceed_cpus)

__all__ = ["GIB", "RULES", "SEVERITIES", "AuditContext", "Evidence", "Finding", "Rule", "ThreadSpread",
           "busy_threads", "cpu_governor", "cpu_quota", "cpuset_hides_nodes", "engine_spans_nodes",
           "ktransformers_without_numa", "memoryless_cpu_nodes", "model_fit", "model_page_cache",
           "node_memory_mismatch", "node_oversubscribed", "numa_balancing_on", "placements_that_fit", "run_audit",
           "smt_counted_as_cores", "snc_packages", "sub_numa_clustering", "thread_spread", "threads_exceed_cpus",
           "transparent_huge_pages", "unequal_free_memory", "usable_cores", "usable_nodes", "worst_severity",
           "zone_reclaim"]
