"""Audit rules; the modules of this package are split in the next commit."""
from .threads import (GIB, RULES, SEVERITIES, AuditContext, Evidence, Finding, Rule, ThreadSpread, busy_threads,
                      cpu_governor, cpu_quota, cpuset_hides_nodes, engine_spans_nodes, ktransformers_without_numa,
                      memoryless_cpu_nodes, model_fit, model_page_cache, node_memory_mismatch, node_oversubscribed,
                      numa_balancing_on, placements_that_fit, run_audit, smt_counted_as_cores, snc_packages,
                      sub_numa_clustering, thread_spread, threads_exceed_cpus, transparent_huge_pages,
                      unequal_free_memory, usable_cores, usable_nodes, worst_severity, zone_reclaim)

__all__ = ["GIB", "RULES", "SEVERITIES", "AuditContext", "Evidence", "Finding", "Rule", "ThreadSpread",
           "busy_threads", "cpu_governor", "cpu_quota", "cpuset_hides_nodes", "engine_spans_nodes",
           "ktransformers_without_numa", "memoryless_cpu_nodes", "model_fit", "model_page_cache",
           "node_memory_mismatch", "node_oversubscribed", "numa_balancing_on", "placements_that_fit", "run_audit",
           "smt_counted_as_cores", "snc_packages", "sub_numa_clustering", "thread_spread", "threads_exceed_cpus",
           "transparent_huge_pages", "unequal_free_memory", "usable_cores", "usable_nodes", "worst_severity",
           "zone_reclaim"]
