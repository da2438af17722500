"""The one command builder, and its reader.

`build_command` turns a configuration and an engine profile into the command that runs it (the
numactl prefix, the engine's thread and placement flags, its environment); every path that emits
a command (recommend, auto, launch, plan, audit's fixes) goes through it. `parse_command` reads
such a command line back (what the audit checks). Everything engine-specific comes from the
profile (profiles/engines/*.yaml), nothing from here.

A configuration's CPUs are the CPUs the engine is *given*. An engine keeps `reserved_threads`
busy beside its compute threads (ktransformers' submitting thread spins while its workers run;
vLLM's front end wants a CPU per rank), so its compute threads are the CPUs given less the
reserved ones: busy threads never exceed the CPUs given.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass
from typing import Sequence

from .config import Configuration, ProcessPlacement, process_placement
from .errors import NumatuneError
from .profiles import EngineProfile, TemplatedFlag, find_engine_profile
from .sysfs import format_cpulist, parse_cpulist, parse_cpumask
from .topology.model import Topology


@dataclass(frozen=True)
class ThreadBudget:
    """How the CPUs given to an engine are used: per node, the CPUs given and the CPUs its compute
    threads are told about; the rest are kept for its reserved (busy, non-compute) threads."""

    given: tuple[tuple[int, tuple[int, ...]], ...]       # (node, CPUs given there)
    compute: tuple[tuple[int, tuple[int, ...]], ...]     # (node, CPUs of the compute threads there)

    @property
    def cpus_given(self) -> int:
        return sum(len(cpus) for _, cpus in self.given)

    @property
    def compute_threads(self) -> int:
        return sum(len(cpus) for _, cpus in self.compute)

    @property
    def compute_cpus(self) -> tuple[int, ...]:
        return tuple(cpu for _, cpus in self.compute for cpu in cpus)

    @property
    def reserved_threads(self) -> int:
        return self.cpus_given - self.compute_threads


def thread_budget(config: Configuration, profile: EngineProfile, node_of_cpu) -> ThreadBudget:
    """The CPUs of `config` split into compute and reserved ones, as `profile` reserves them:
    once per process (taken from the end), or once per rank (one rank per node, each losing its
    last CPUs, as vLLM's own automatic binding does)."""
    by_node: dict[int, list[int]] = {}
    for cpu in sorted(config.cpus):
        by_node.setdefault(node_of_cpu(cpu), []).append(cpu)
    given = tuple((node, tuple(cpus)) for node, cpus in sorted(by_node.items()))
    reserved = profile.reserved_threads
    if profile.reserved_per == "rank":
        short = [node for node, cpus in given if len(cpus) <= reserved]
        if short:
            raise _too_few(profile, len(dict(given)[short[0]]), f" on node {short[0]} (one rank)")
        return ThreadBudget(given, tuple((node, cpus[:len(cpus) - reserved]) for node, cpus in given))
    if len(config.cpus) <= reserved:
        raise _too_few(profile, len(config.cpus), "")
    keep, compute = len(config.cpus) - reserved, []
    for node, cpus in given:
        compute.append((node, cpus[:keep]))
        keep = max(0, keep - len(cpus))
    return ThreadBudget(given, tuple((node, cpus) for node, cpus in compute if cpus))


def cpus_for_compute(compute: Sequence[tuple[int, int]], profile: EngineProfile) -> tuple[tuple[int, int], ...]:
    """(node, CPUs to give) for (node, compute threads) wanted: the inverse of `thread_budget`, for
    machines described by counts rather than CPU ids (plan). Once per rank, every node's rank
    gets its reserved threads more; once per process, the last node does (`thread_budget` takes
    them from the end)."""
    reserved = profile.reserved_threads
    if profile.reserved_per == "rank":
        return tuple((node, count + reserved) for node, count in compute)
    *head, (last, count) = compute
    return (*head, (last, count + reserved))


def _too_few(profile: EngineProfile, cpus: int, where: str) -> NumatuneError:
    return NumatuneError(f"{profile.name}: {cpus} CPU(s) given{where}, but it keeps {profile.reserved_threads} "
                         f"busy besides its compute threads (threads.reserved_threads in {profile.source}): "
                         f"give it at least {profile.reserved_threads + 1}")


@dataclass(frozen=True)
class LaunchPlan:
    """A built command: what to run, with what environment, placed how, with how many threads."""

    argv: tuple[str, ...]              # the full command, numactl prefix included when used
    env: tuple[tuple[str, str], ...]   # variables added to the environment
    placement: ProcessPlacement
    uses_numactl: bool
    warnings: tuple[str, ...]
    budget: ThreadBudget

    def shell(self) -> str:
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return (assignments + " " if assignments else "") + shlex.join(self.argv)

    def words(self) -> tuple[str, ...]:
        """The command as one argv with the environment as leading NAME=VALUE words (a shell line)."""
        return tuple(f"{k}={v}" for k, v in self.env) + self.argv

    def to_json(self) -> dict:
        return {"argv": list(self.argv), "env": dict(self.env), "uses_numactl": self.uses_numactl,
                "placement": {"cpus": list(self.placement.cpus), "memory_mode": self.placement.memory_mode,
                              "memory_nodes": list(self.placement.memory_nodes)},
                "threads": {"cpus_given": self.budget.cpus_given, "compute": self.budget.compute_threads,
                            "reserved": self.budget.reserved_threads},
                "warnings": list(self.warnings), "shell": self.shell()}


def numactl_available() -> str | None:
    return None if os.environ.get("NUMATUNE_NO_NUMACTL") else shutil.which("numactl")


def numactl_args(placement: ProcessPlacement) -> list[str]:
    args = ["numactl", f"--physcpubind={format_cpulist(placement.cpus)}"]
    nodes = format_cpulist(placement.memory_nodes)
    args.append({"bind": f"--membind={nodes}", "interleave": f"--interleave={nodes}",
                 "preferred": f"--preferred={nodes}"}.get(placement.memory_mode, "--localalloc"))
    return args


def template_values(config: Configuration, budget: ThreadBudget, program: str = "") -> dict[str, str]:
    return {"threads": str(budget.compute_threads), "threads_plus_one": str(budget.compute_threads + 1),
            "threads_per_node": str(max(len(c) for _, c in budget.compute)),
            "nodes": format_cpulist(config.nodes), "cpus": format_cpulist(budget.compute_cpus),
            "cpus_by_rank": "|".join(format_cpulist(cpus) for _, cpus in budget.compute),
            "ranks": str(len(budget.compute)), "policy": config.policy, "program": program}


def _applies(item: TemplatedFlag, config: Configuration, multi_node: bool) -> bool:
    return {"always": True, "multi-node": multi_node, "single-node": not multi_node,
            "replicate": config.policy == "replicate",
            "tensor-parallel": config.policy == "partition"}[item.when]


def build_command(config: Configuration, profile: EngineProfile, topology: Topology,
                  user_argv: Sequence[str] = (), use_numactl: bool | None = None) -> LaunchPlan:
    """The command for `profile` running `config`. `user_argv` is the user's own command (its
    first word replaces the profile's executable). `use_numactl`: None places by numactl when
    the profile wants it and numactl is installed; False/True decide (audit's fixes say numactl)."""
    budget = thread_budget(config, profile, topology.node_of_cpu)
    values = template_values(config, budget, shlex.join(user_argv) or "<program>")
    multi_node = len(config.nodes) > 1
    warnings: list[str] = []
    command = list(user_argv) or shlex.split(profile.executable.format(**values))
    engine_flags: list[tuple[str, str]] = []
    if profile.threads_flag:
        engine_flags.append((profile.threads_flag, profile.threads_value.format(**values)))
    engine_flags += [(f.name, f.value.format(**values)) for f in profile.flags if _applies(f, config, multi_node)]
    if config.numa_mode is not None and config.numa_mode in dict(profile.numa_flag_modes):
        # the search chose the engine's thread-placement mode: it replaces the profile's own value
        engine_flags = [(f, v) for f, v in engine_flags if f != profile.numa_flag] + \
            [(profile.numa_flag, config.numa_mode)]
    for flag, value in engine_flags:
        spellings = (flag,) + (profile.threads_aliases if flag == profile.threads_flag else ())
        command, replaced = _set_flag(command, spellings, flag, value)
        if replaced:
            warnings.append(f"replaced the command's own {flag} {replaced} with {value}")
    env = tuple((e.name, e.value.format(**values)) for e in profile.env if _applies(e, config, multi_node))
    placement, numactl = placement_for(config, profile)
    if use_numactl is not None:
        numactl = use_numactl and _wants_numactl(config, profile)
    argv = tuple((numactl_args(placement) if numactl else []) + command)
    return LaunchPlan(argv, env, placement, numactl, tuple(warnings), budget)


def _wants_numactl(config: Configuration, profile: EngineProfile) -> bool:
    # A NUMA build of a build-flag engine re-binds its own workers: a numactl prefix would only
    # confine it wrongly; engines that bind themselves (profile numactl: false) get none either.
    places_memory = config.policy in ("replicate", "partition")
    return profile.numactl and not (profile.numa_aware == "build-flag" and places_memory)


def placement_for(config: Configuration, profile: EngineProfile) -> tuple[ProcessPlacement, bool]:
    """How a process running `config` for `profile` is placed, and whether by numactl (True) or
    by numatune itself before exec (False). Shared by launch and by tune's trials."""
    placement = process_placement(config, engine_places_memory=config.policy in ("replicate", "partition"))
    return placement, bool(_wants_numactl(config, profile) and numactl_available())


def _set_flag(argv: list[str], spellings: tuple[str, ...], flag: str, value: str) -> tuple[list[str], str | None]:
    """argv with `flag value` set once: an existing occurrence of any spelling (`--f v` or
    `--f=v`) is replaced."""
    out, replaced, i = [], None, 0
    while i < len(argv):
        word = argv[i]
        if word in spellings and i + 1 < len(argv):
            replaced = argv[i + 1]
            i += 2
            continue
        given = next((s for s in spellings if word.startswith(s + "=")), None)
        if given is not None:
            replaced = word.split("=", 1)[1]
            i += 1
            continue
        out.append(word)
        i += 1
    return out + [flag, value], replaced


# ---------------------------------------------------------------------------------------------
# The reader: a command line back to what it asks for


@dataclass(frozen=True)
class EngineCommand:
    """What a command line says about threads and placement, read without running it."""

    argv: tuple[str, ...]
    program: tuple[str, ...] = ()         # the engine's own words, after any prefix
    threads: int | None = None            # compute threads, counted as --threads counts them
    thread_flag: str | None = None        # the flag as written, e.g. "--cpu_infer 42"
    ranks: int | None = None              # processes/ranks, each keeping the engine's reserved threads
    compute_cpus: tuple[int, ...] | None = None  # CPUs the engine is told to run compute threads on
    policy: str | None = None             # the engine's own memory policy flag (numatune --policy)
    nodes: tuple[int, ...] | None = None  # the engine's own node flag (numatune --nodes)
    numa_mode: str | None = None          # the engine's thread-placement flag (llama.cpp --numa)
    cpu_nodes: tuple[int, ...] | None = None     # numactl --cpunodebind
    cpus: tuple[int, ...] | None = None          # numactl --physcpubind, taskset -c
    memory_mode: str | None = None        # numactl: "bind", "interleave", "preferred" or "local"
    memory_nodes: tuple[int, ...] | None = None

    def busy_threads(self, profile: EngineProfile | None) -> int | None:
        """Compute threads plus the engine's reserved ones (once, or once per rank)."""
        if self.threads is None:
            return None
        if profile is None:
            return self.threads
        copies = (self.ranks or 1) if profile.reserved_per == "rank" else 1
        return self.threads + profile.reserved_threads * copies


# numactl's options that take a value: long name -> short name
_NUMACTL_OPTIONS = {"--cpunodebind": "-N", "--physcpubind": "-C", "--membind": "-m",
                    "--interleave": "-i", "--preferred": "-p", "--preferred-many": "-P"}
_MEMORY_MODES = {"--membind": "bind", "--interleave": "interleave", "--preferred": "preferred",
                 "--preferred-many": "preferred"}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _node_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = parse_cpulist(text.replace("+", ""))
    except ValueError:
        raise NumatuneError(f"{flag}: '{text}' is not a CPU or node list like 0-3,8") from None
    if not values:
        raise NumatuneError(f"{flag}: empty list")
    return tuple(values)


def _option(argv: list[str], i: int, names: tuple[str, ...]) -> tuple[str | None, int]:
    """The value of argv[i] if it is one of `names` ("--x V", "--x=V", "-xV"), and the next index."""
    word = argv[i]
    for name in names:
        if word == name:
            if i + 1 >= len(argv):
                raise NumatuneError(f"{name}: missing value in the command line")
            return argv[i + 1], i + 2
        if word.startswith(name + "="):
            return word[len(name) + 1:], i + 1
        attached = word[len(name):]
        if len(name) == 2 and word.startswith(name) and (attached[:1].isdigit() or attached == "all"):
            return word[2:], i + 1
    return None, i


def _numactl_option(argv: list[str], i: int, fields: dict) -> int:
    """Reads one numactl option at argv[i] into `fields`; the index after it."""
    for long, short in _NUMACTL_OPTIONS.items():
        value, after = _option(argv, i, (long, short))
        if value is None:
            continue
        if long in _MEMORY_MODES:
            fields["memory_mode"] = _MEMORY_MODES[long]
            fields["memory_nodes"] = None if value == "all" else _node_list(value, f"numactl {long}")
        elif long == "--cpunodebind":
            fields["cpu_nodes"] = _node_list(value, "numactl --cpunodebind")
        else:
            fields["cpus"] = _node_list(value, "numactl --physcpubind")
        return after
    if argv[i] in ("-l", "--localalloc"):
        fields["memory_mode"], fields["memory_nodes"] = "local", None
    return i + 1


def _read_prefix(argv: list[str], fields: dict, env: dict[str, str]) -> int:
    """Reads NAME=VALUE assignments and `numactl …`, `taskset -c …`, `env A=B` prefixes; the
    index of the engine's program."""
    i = 0
    while i < len(argv) and _ASSIGNMENT.match(argv[i]):
        name, _, value = argv[i].partition("=")
        env[name], i = value, i + 1
    while i < len(argv) and argv[i].rsplit("/", 1)[-1] in ("numactl", "taskset", "env"):
        tool, i = argv[i].rsplit("/", 1)[-1], i + 1
        while i < len(argv) and (argv[i].startswith("-") or (tool == "env" and "=" in argv[i])):
            if tool == "numactl":
                i = _numactl_option(argv, i, fields)
                continue
            if tool == "env" and "=" in argv[i]:
                name, _, value = argv[i].partition("=")
                env[name] = value
            value, after = _option(argv, i, ("-c", "--cpu-list")) if tool == "taskset" else (None, i)
            if value is not None:
                fields["cpus"] = _node_list(value, "taskset -c")
            i = after if value is not None else i + 1
        if tool == "taskset" and "cpus" not in fields and i + 1 < len(argv):
            # taskset MASK COMMAND: a hexadecimal CPU mask before the program
            try:
                fields["cpus"] = tuple(parse_cpumask(argv[i]))
                i += 1
            except ValueError:
                pass
    return i


def _variable(template: str) -> str | None:
    """The template variable a value consists of ('{threads_plus_one}' -> 'threads_plus_one')."""
    match = re.fullmatch(r"{(\w+)}", template)
    return match.group(1) if match else None


def _read_value(variable: str, value: str, where: str, fields: dict) -> None:
    """Reads back one templated value into the command's fields."""
    if variable in ("threads", "threads_plus_one"):
        try:
            count = int(value)
        except ValueError:
            raise NumatuneError(f"{where}: '{value}' is not a thread count") from None
        compute = count - 1 if variable == "threads_plus_one" else count
        if compute < 1:
            raise NumatuneError(f"{where}: {count} leaves no compute thread")
        fields["threads"] = compute
    elif variable in ("cpus", "cpus_by_rank"):
        ranks = [_node_list(part, where) for part in value.split("|")] if variable == "cpus_by_rank" \
            else [_node_list(value, where)]
        fields["compute_cpus"] = tuple(sorted(c for rank in ranks for c in rank))
        fields["threads"] = len(fields["compute_cpus"])
        if variable == "cpus_by_rank":
            fields["ranks"] = len(ranks)
    elif variable == "ranks":
        fields.setdefault("ranks", int(value) if value.isdigit() else None)
    elif variable == "policy":
        fields["policy"] = value
    elif variable == "nodes":
        fields["nodes"] = _node_list(value, where)


def _templated_option(rest: list[str], j: int, flags: dict[str, str]) -> tuple[str | None, str | None, int]:
    """(flag, value, next index) if rest[j] is a flag whose value is a template variable."""
    for name, template in flags.items():
        if _variable(template):
            value, after = _option(rest, j, (name,))
            if value is not None:
                return name, value, after
    return None, None, j + 1


def _read_engine_words(profile: EngineProfile, rest: list[str], env: dict[str, str], fields: dict) -> None:
    """Reads the profile's thread flag, its templated flags and variables, and its --numa flag."""
    flags = {f.name: f.value for f in profile.flags}
    if profile.threads_flag:
        for spelling in (profile.threads_flag,) + profile.threads_aliases:
            flags[spelling] = profile.threads_value
    for item in profile.env:
        variable = _variable(item.value)
        if variable and item.name in env:
            _read_value(variable, env[item.name], item.name, fields)
    j = 0
    while j < len(rest):
        if profile.numa_flag and (rest[j] == profile.numa_flag or rest[j].startswith(profile.numa_flag + "=")):
            attached = rest[j].partition("=")[2] if "=" in rest[j] else None
            given = attached is None and j + 1 < len(rest) and not rest[j + 1].startswith("-")
            fields["numa_mode"] = (rest[j + 1] if given else attached) or profile.numa_flag_bare
            j += 2 if given else 1
            continue
        name, value, after = _templated_option(rest, j, flags)
        if name is None:
            j = after
            continue
        _read_value(_variable(flags[name]), value, name, fields)
        if name in (profile.threads_flag,) + profile.threads_aliases:
            fields["thread_flag"] = f"{name} {value}"
        j = after


def parse_command(engine: str | EngineProfile | None, argv: Sequence[str]) -> EngineCommand:
    """Reads a command line: leading NAME=VALUE words, a `numactl …`/`taskset -c …`/`env` prefix,
    and what the engine's profile says its flags and variables mean (threads, CPUs, ranks)."""
    argv = list(argv)
    fields: dict = {}
    env: dict[str, str] = {}
    start = _read_prefix(argv, fields, env)
    profile = find_engine_profile(engine) if isinstance(engine, str) else engine
    if profile is not None:
        _read_engine_words(profile, argv[start:], env, fields)
    return EngineCommand(tuple(argv), tuple(argv[start:]), **fields)
