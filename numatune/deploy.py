"""The winner written for the place it runs: a shell line, a systemd unit or drop-in, a Kubernetes
Pod with the kubelet settings it needs, a Slurm batch script, a docker/podman command.

Every format renders the same LaunchPlans (one per instance) that `recommend` and `launch` build:
their CPUs, memory policy, environment and engine command. Where the platform places the process
itself (systemd's CPUAffinity=/NUMAPolicy=, a container's cpuset, Slurm's binding, the kubelet's
CPU and memory managers), the numactl prefix is left out of the command and the placement is
written in the platform's own terms. Each format quotes by its own rules: shell for shell, docker
and Slurm lines; systemd's for unit files; YAML for Kubernetes.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, replace
from typing import Iterable, Optional

import yaml

from .capacity import available_bytes
from .config import Configuration, ProcessPlacement
from .errors import NumatuneError
from .command import LaunchPlan, build_command
from .profiles import find_engine_profile
from .recommend import Recommendation
from .sysfs import format_cpulist
from .topology.model import Topology

FORMATS = ("shell", "systemd", "systemd-dropin", "kubernetes", "slurm", "docker")
GIB = 1 << 30
# What the kubelet and the system keep on every NUMA node (memory manager's reservedMemory):
# split between systemReserved and the eviction threshold below.
RESERVED_PER_NODE = GIB
EVICTION_HARD = 100 << 20


@dataclass(frozen=True)
class Instance:
    """One process to start: its name, the engine command without a numactl prefix, its
    environment, and where it runs."""

    name: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    placement: ProcessPlacement
    nodes: tuple[int, ...]             # the NUMA nodes its CPUs and memory are on
    policy: str                        # the configuration's policy (replicate, bind, ...)


def engine_command(plan: LaunchPlan) -> tuple[str, ...]:
    """The plan's command without its numactl prefix (numactl, its options, an optional --)."""
    argv = plan.argv
    if not plan.uses_numactl or not argv or argv[0] != "numactl":
        return argv
    i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        i += 1
    return argv[i + 1:] if i < len(argv) and argv[i] == "--" else argv[i:]


def unit_name(engine: str) -> str:
    """A name usable as a systemd unit, a Kubernetes object and a Slurm job: lower case,
    letters, digits and dashes."""
    cleaned = "".join(c if c.isalnum() else "-" for c in engine.lower()).strip("-")
    return "numatune-" + "-".join(part for part in cleaned.split("-") if part)


def instances(rec: Recommendation, topology: Topology) -> tuple[Instance, ...]:
    configs = rec.config.split(topology.node_of_cpu) if rec.config.instances > 1 else (rec.config,)
    base = unit_name(rec.engine)
    out = []
    for config, plan in zip(configs, rec.plans):
        nodes = tuple(sorted({topology.node_of_cpu(c) for c in plan.placement.cpus} | set(config.nodes)))
        name = f"{base}-node{config.nodes[0]}" if len(rec.plans) > 1 else base
        out.append(Instance(name, engine_command(plan), plan.env, plan.placement, nodes, config.policy))
    return tuple(out)


def _memory_note(instance: Instance) -> str:
    if instance.policy in ("replicate", "partition") and instance.placement.memory_mode == "default":
        what = "a copy of the weights" if instance.policy == "replicate" else "its slice of every expert"
        return (f"{instance.policy}: the engine puts {what} on each of nodes {format_cpulist(instance.nodes)} "
                "itself (mbind); the process policy is local allocation for everything else")
    return ""


def _interleave_prefix(instance: Instance, nodes: str) -> tuple[str, ...]:
    """Where the platform cannot interleave a process's memory, numactl inside it does."""
    return ("numactl", f"--interleave={nodes}") if instance.placement.memory_mode == "interleave" else ()


# ----- shell -----------------------------------------------------------------------------------

def render_shell(rec: Recommendation, topology: Topology) -> str:
    lines = [f"# numatune: {rec.engine}, {rec.config.label()}"]
    for i, plan in enumerate(rec.plans):
        if len(rec.plans) > 1:
            lines.append(f"# instance {i} (node {rec.config.nodes[i]})")
        lines.append(plan.shell())      # every word and value quoted, nothing left to expand
        if not plan.uses_numactl:
            lines.append(f"# no numactl: `numatune launch` places it (CPUs {format_cpulist(plan.placement.cpus)}, "
                         f"memory {plan.placement.memory_mode} {format_cpulist(plan.placement.memory_nodes) or '-'})")
    return "\n".join(lines) + "\n"


# ----- systemd ---------------------------------------------------------------------------------

SYSTEMD_NUMA_POLICY = {"bind": "bind", "interleave": "interleave", "preferred": "preferred", "default": "local"}


def systemd_word(word: str) -> str:
    """One word of ExecStart=/Environment= as systemd reads it: double-quoted with C escapes,
    `%` doubled (specifiers). ExecStart's arguments also need `$` doubled: systemd_exec."""
    if word == "":
        return '""'
    escaped = (word.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
               .replace("%", "%%"))
    plain = all(c.isalnum() or c in "/._-+,:=@" for c in word)
    return escaped if plain and escaped == word else f'"{escaped}"'


def systemd_exec(argv: Iterable[str]) -> str:
    words = list(argv)
    if words and words[0][:1] in "@-:+!":
        # systemd reads those as prefixes of the executable, quoted or not.
        words[0] = "./" + words[0]
    # Variables are expanded in the arguments, not in the executable's path.
    return " ".join([systemd_word(words[0])] + [systemd_word(w).replace("$", "$$") for w in words[1:]]) if words else ""


def _systemd_service(instance: Instance, dropin: bool) -> list[str]:
    p = instance.placement
    lines = ["[Service]"]
    if dropin:
        lines.append("ExecStart=")
    lines.append("ExecStart=" + systemd_exec(instance.command))
    for name, value in instance.env:
        lines.append("Environment=" + systemd_word(f"{name}={value}"))
    lines.append(f"CPUAffinity={format_cpulist(p.cpus).replace(',', ' ')}")
    note = _memory_note(instance)
    if note:
        lines.append(f"# {note}")
    lines.append(f"NUMAPolicy={SYSTEMD_NUMA_POLICY[p.memory_mode]}")
    if p.memory_mode != "default":
        lines.append(f"NUMAMask={format_cpulist(p.memory_nodes)}")
    return lines


def render_systemd(rec: Recommendation, topology: Topology, dropin: bool = False) -> str:
    """One unit (or one drop-in) per instance, each after a comment naming its file."""
    blocks = []
    for instance in instances(rec, topology):
        header = (f"# /etc/systemd/system/{instance.name}.service.d/numatune.conf" if dropin
                  else f"# /etc/systemd/system/{instance.name}.service")
        body = [header, f"# numatune: {rec.engine}, {rec.config.label()}"]
        if not dropin:
            body += ["[Unit]", f"Description={rec.engine} placed by numatune", "After=network-online.target",
                     "Wants=network-online.target", ""]
        body += _systemd_service(instance, dropin)
        if not dropin:
            body += ["Restart=on-failure", "", "[Install]", "WantedBy=multi-user.target"]
        blocks.append("\n".join(body) + "\n")
    return "\n".join(blocks)


# ----- Kubernetes ------------------------------------------------------------------------------

def _quantity(n_bytes: int) -> str:
    return f"{math.ceil(n_bytes / GIB)}Gi"


def _smt_width(topology: Topology, cpus: Iterable[int]) -> int:
    """CPUs per core on the configuration's nodes (what a whole core costs in a pod's `cpu`)."""
    nodes = {topology.node_of_cpu(c) for c in cpus}
    groups = topology.core_groups(c for c in topology.usable_cpus() if topology.node_of_cpu(c) in nodes)
    return max((len(g) for g in groups), default=1)


def _kubelet_core(rec: Recommendation, topology: Topology) -> tuple[Recommendation, tuple[int, ...], bool]:
    """The CPUs the kubelet reserves for itself and the system (cpuManagerPolicy static needs
    some): the whole cores the configuration leaves free; when it uses every core, its last core
    is given up and the plans are rebuilt with one thread fewer on that node."""
    used = set(rec.config.cpus)
    groups = topology.core_groups(topology.usable_cpus())
    free = [g for g in groups if not used & set(g)]
    if free:
        return rec, tuple(sorted(c for g in free for c in g)), False
    last_core = next(g for g in reversed(groups) if used & set(g))
    node = topology.node_of_cpu(last_core[0])
    if all(c in last_core for c in rec.config.cpus if topology.node_of_cpu(c) == node):
        raise NumatuneError(f"kubernetes: the configuration uses every core and node {node} has only one: "
                            "none is left for the kubelet's reservedSystemCPUs")
    config = replace(rec.config, cpus=tuple(c for c in rec.config.cpus if c not in last_core))
    profile = find_engine_profile(rec.engine)
    # The command as planned, engine flags included: build_command sets them again to the new counts.
    command = engine_command(rec.plan)
    plan = build_command(config, profile, topology, command)
    per_instance = tuple(build_command(part, profile, topology, command)
                         for part in config.split(topology.node_of_cpu)) if config.instances > 1 else ()
    rebuilt = replace(rec, config=config, plan=per_instance[0] if per_instance else plan,
                      instance_plans=per_instance)
    return rebuilt, tuple(last_core), True


def _host_cpu_settings(engine: str) -> list[str]:
    """The engine's flags and variables whose values name this host's CPU numbers."""
    profile = find_engine_profile(engine)
    templated = [(profile.threads_flag, profile.threads_value)] if profile.threads_flag else []
    templated += [(f.name, f.value) for f in profile.flags] + [(e.name, e.value) for e in profile.env]
    return [name for name, value in templated if "{cpus" in value]


def _pod_memory(instance: Instance, topology: Topology, weight_bytes: Optional[int]) -> int:
    if weight_bytes is not None:
        copies = len(instance.nodes) if instance.policy == "replicate" else 1
        return int(copies * weight_bytes * 1.1) + 2 * GIB
    return sum(max(0, available_bytes(topology, n) - RESERVED_PER_NODE) for n in instance.nodes)


def _pod(instance: Instance, width: int, memory: int) -> dict:
    cores = len(instance.placement.cpus)
    command = list(_interleave_prefix(instance, "all") + instance.command)
    resources = {"cpu": str(cores * width), "memory": _quantity(memory)}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": instance.name, "labels": {"app.kubernetes.io/name": instance.name,
                                                       "app.kubernetes.io/managed-by": "numatune"}},
        "spec": {"restartPolicy": "Always", "containers": [{
            "name": "engine", "image": "ENGINE-IMAGE", "command": command,
            "env": [{"name": k, "value": v} for k, v in instance.env],
            "resources": {"requests": dict(resources), "limits": dict(resources)}}]}}


def _kubelet(topology: Topology, reserved_cpus: tuple[int, ...], single_node: bool) -> dict:
    memory_nodes = [n.id for n in topology.nodes if n.has_memory]
    system = RESERVED_PER_NODE * len(memory_nodes) - EVICTION_HARD
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cpuManagerPolicy": "static",
        "cpuManagerPolicyOptions": {"full-pcpus-only": "true"},
        "reservedSystemCPUs": format_cpulist(reserved_cpus),
        "topologyManagerPolicy": "single-numa-node" if single_node else "restricted",
        "topologyManagerScope": "pod",
        "memoryManagerPolicy": "Static",
        "systemReserved": {"memory": f"{system // (1 << 20)}Mi"},
        "evictionHard": {"memory.available": f"{EVICTION_HARD // (1 << 20)}Mi"},
        "reservedMemory": [{"numaNode": n, "limits": {"memory": f"{RESERVED_PER_NODE // (1 << 20)}Mi"}}
                           for n in memory_nodes]}


def render_kubernetes(rec: Recommendation, topology: Topology, weight_bytes: Optional[int] = None) -> str:
    rec, reserved, gave_up = _kubelet_core(rec, topology)
    insts = instances(rec, topology)
    width = _smt_width(topology, rec.config.cpus)
    single_node = all(len(i.nodes) == 1 for i in insts)
    lines = [
        f"# numatune: {rec.engine}, {rec.config.label()}",
        "# The kubelet, not this pod, chooses the CPUs and NUMA nodes: the pod asks for whole cores",
        f"# ({width} CPU(s) per core, one engine thread each) and Guaranteed QoS (requests = limits);",
        "# the kubelet's CPU, memory and topology managers (KubeletConfiguration below, set on the",
        "# node, then restart the kubelet) give it whole cores and memory "
        + ("on one NUMA node." if single_node else "on as few NUMA nodes as fit it."),
        f"# reservedSystemCPUs {format_cpulist(reserved)}: left to the kubelet and the system"
        + (" (the configuration used every core: its last one is given up, one thread fewer)."
           if gave_up else "."),
        "# ENGINE-IMAGE: the engine's container image; mount the model into the container.",
    ]
    for name in _host_cpu_settings(rec.engine):
        lines.append(f"# {name} names this host's CPU numbers; the CPUs the kubelet gives the pod may be other "
                     "ones: set it from the pod's own cpuset (/sys/fs/cgroup/cpuset.cpus.effective) at start.")
    if weight_bytes is None:
        lines.append("# memory: no --model given, so each pod asks for its nodes' free memory less the reserve.")
    for instance in insts:
        if instance.placement.memory_mode == "interleave":
            lines.append(f"# {instance.name}: interleave is applied inside the pod by numactl --interleave=all "
                         "(over the nodes the memory manager gives it); the image needs numactl.")
        note = _memory_note(instance)
        if note:
            lines.append(f"# {instance.name}: {note}")
    docs = [_pod(i, width, _pod_memory(i, topology, weight_bytes)) for i in insts]
    docs.append(_kubelet(topology, reserved, single_node))
    body = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, explicit_start=True)
    return "\n".join(lines) + "\n" + body


# ----- Slurm -----------------------------------------------------------------------------------

def _slurm_mem_bind(instance: Instance) -> str:
    """local: memory on the nodes of the task's CPUs (bind to its node, or first touch); none
    where the engine or numactl places memory itself."""
    mode = instance.placement.memory_mode
    if mode == "bind" or (mode == "default" and instance.policy == "first-touch"):
        return "verbose,local"
    if mode == "preferred":
        return f"verbose,prefer,map_mem:{instance.placement.memory_nodes[0]}"
    return "verbose,none"


def _tasks_per_socket(topology: Topology, insts: tuple[Instance, ...]) -> Optional[int]:
    """With one task per node: how many tasks share a socket (2 on a socket split in two nodes)."""
    if len(insts) < 2 or any(len(i.nodes) != 1 for i in insts):
        return None
    per_package: dict[tuple[int, ...], int] = {}
    for instance in insts:
        key = topology.packages_of_node(instance.nodes[0])
        per_package[key] = per_package.get(key, 0) + 1
    return max(per_package.values())


def _slurm_export(env) -> list[str]:
    return ["--export=" + ",".join(["ALL"] + [f"{k}={v}" for k, v in env])] if env else []


def render_slurm(rec: Recommendation, topology: Topology) -> str:
    """A batch script: one step of one task per instance; Slurm picks one CPU per core (the
    tuned thread count) near the task's memory, on a node allocated whole."""
    insts = instances(rec, topology)
    same = len({(i.command, i.env, len(i.placement.cpus)) for i in insts}) == 1
    cpus = len(insts[0].placement.cpus)
    per_socket = _tasks_per_socket(topology, insts)
    header = ["#!/bin/sh", f"# numatune: {rec.engine}, {rec.config.label()}",
              f"#SBATCH --job-name={unit_name(rec.engine)}", "#SBATCH --nodes=1", "#SBATCH --exclusive",
              f"#SBATCH --ntasks={len(insts)}", f"#SBATCH --cpus-per-task={cpus}", "#SBATCH --mem=0"]
    if per_socket:
        header.append(f"#SBATCH --ntasks-per-socket={per_socket}")
    notes = [f"# {i.name}: {n}" for i in insts for n in [_memory_note(i)] if n]
    notes += [f"# {i.name}: interleave by numactl inside the task (Slurm's --mem-bind has no interleave)"
              for i in insts if i.placement.memory_mode == "interleave"]

    def step(instance: Instance, ntasks: int, background: bool) -> str:
        options = ["srun", f"--ntasks={ntasks}", f"--cpus-per-task={len(instance.placement.cpus)}"]
        if per_socket and ntasks > 1:
            options.append(f"--ntasks-per-socket={per_socket}")
        options += ["--hint=nomultithread", "--cpu-bind=verbose", f"--mem-bind={_slurm_mem_bind(instance)}"]
        if not same:
            options.append("--exact")
        options += _slurm_export(instance.env)
        command = _interleave_prefix(instance, "all") + instance.command
        return shlex.join(options + ["--", *command]) + (" &" if background else "")

    if same:
        steps = [step(insts[0], len(insts), False)]
    else:
        steps = [step(i, 1, True) for i in insts] + ["wait"]
    return "\n".join(header + notes + steps) + "\n"


# ----- docker / podman -------------------------------------------------------------------------

def render_docker(rec: Recommendation, topology: Topology) -> str:
    """`docker run` (podman takes the same flags) per instance, with the host's CPU and node
    numbers: a container's cpuset is of this host."""
    lines = [f"# numatune: {rec.engine}, {rec.config.label()} (podman run takes the same options)",
             "# mount the model into the container (-v); IMAGE is the engine's container image",
             ': "${IMAGE:?set IMAGE to the engine\'s container image}"']
    insts = instances(rec, topology)
    for instance in insts:
        p = instance.placement
        mems = format_cpulist(p.memory_nodes or instance.nodes)
        note = _memory_note(instance)
        if note:
            lines.append(f"# {instance.name}: {note}")
        if p.memory_mode == "interleave":
            lines.append(f"# {instance.name}: interleaved by numactl inside the container (the image needs it)")
        options = ["docker", "run", "--rm"] + (["--detach"] if len(insts) > 1 else []) + [
            f"--name={instance.name}", f"--cpuset-cpus={format_cpulist(p.cpus)}",
                   f"--cpuset-mems={mems}"]
        for name, value in instance.env:
            options += ["-e", f"{name}={value}"]
        command = _interleave_prefix(instance, mems) + instance.command
        lines.append(shlex.join(options) + ' "$IMAGE" ' + shlex.join(command))
    return "\n".join(lines) + "\n"


def render(rec: Recommendation, topology: Topology, fmt: str, weight_bytes: Optional[int] = None) -> str:
    if fmt == "shell":
        return render_shell(rec, topology)
    if fmt in ("systemd", "systemd-dropin"):
        return render_systemd(rec, topology, dropin=fmt == "systemd-dropin")
    if fmt == "kubernetes":
        return render_kubernetes(rec, topology, weight_bytes)
    if fmt == "slurm":
        return render_slurm(rec, topology)
    if fmt == "docker":
        return render_docker(rec, topology)
    raise NumatuneError(f"--format: '{fmt}' is not one of {', '.join(FORMATS)}")
