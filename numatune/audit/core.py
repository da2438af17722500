"""The audit's vocabulary: `Finding` and its `Evidence`, `AuditContext` (what the user runs),
severities, and the small helpers every check uses.

A finding carries the values read and where they were read (`root_path` names the file under
the probed root), a short explanation, and the command or configuration line that fixes it.
`usable_nodes` and `usable_cores` say what the process can use, node by node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ..command import EngineCommand
from ..engines import EngineInstall
from ..models import ModelFootprint
from ..pagecache import PageCacheReport
from ..profiles import EngineProfile, find_engine_profile
from ..topology.model import Topology

SEVERITIES = ("info", "warning", "error")
GIB = 1 << 30


@dataclass(frozen=True)
class Evidence:
    what: str
    value: str
    where: str


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    title: str
    evidence: tuple[Evidence, ...]
    explanation: str
    fix: str | None

    def to_json(self) -> dict:
        return {"id": self.id, "severity": self.severity, "title": self.title,
                "evidence": [e.__dict__ for e in self.evidence],
                "explanation": self.explanation, "fix": self.fix}


@dataclass(frozen=True)
class AuditContext:
    """What the user intends to run, as far as they told us."""

    engine: EngineInstall | None = None
    model: ModelFootprint | None = None
    threads: int | None = None
    command: EngineCommand | None = None
    page_cache: PageCacheReport | None = None     # where the model file's cached pages are
    profile: EngineProfile | None = None          # the engine's profile (default: the installed engine's)

    def engine_profile(self) -> EngineProfile | None:
        if self.profile is not None:
            return self.profile
        return find_engine_profile(self.engine.engine) if self.engine is not None else None


Rule = Callable[[Topology, AuditContext], Iterable[Finding]]


def worst_severity(findings: Iterable[Finding]) -> str | None:
    levels = [SEVERITIES.index(f.severity) for f in findings]
    return SEVERITIES[max(levels)] if levels else None


def usable_nodes(topology: Topology) -> list[int]:
    """Nodes with at least one CPU this process may run on."""
    return [n.id for n in topology.nodes if topology.usable_cpus_of_node(n.id)]


def usable_cores(topology: Topology, node: int) -> int:
    return len(topology.core_groups(topology.usable_cpus_of_node(node)))


def root_path(topology: Topology, rel: str) -> str:
    root = topology.root.rstrip("/")
    return f"{root}/{rel}" if root else f"/{rel}"


def gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / GIB:.1f} GiB"
