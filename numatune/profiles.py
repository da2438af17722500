"""Loads and validates the YAML profiles: engines/ (targets), models/ (shapes), machines/ (servers).

Every problem is a ProfileError naming the file and the field, in one line.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ProfileError
from .policy import NAMES as POLICY_NAMES

# Installed, the YAML files are the package numatune.profiledata; in a source checkout they are
# profiles/ beside the package.
PROFILES_DIR = Path(__file__).resolve().parent / "profiledata"
if not PROFILES_DIR.is_dir():
    PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"

# Average bits per weight of common GGUF quantizations. Single types follow from their block
# layout (Q4_K: 144 bytes per 256 weights = 4.5; Q6_K: 210/256 = 6.5625; Q8_0: 34/32 = 8.5).
# Q4_K_M and Q5_K_M mix types (attention and some FFN tensors one level up, embeddings Q6_K);
# 4.85 and 5.7 are the averages of published DeepSeek/Qwen GGUF file sizes over parameters.
DEFAULT_BITS_PER_WEIGHT = {
    "Q4_K": 4.5, "Q4_K_M": 4.85, "Q5_K_M": 5.7, "Q6_K": 6.5625, "Q8_0": 8.5,
    "F16": 16.0, "BF16": 16.0, "F32": 32.0,
}


@dataclass(frozen=True)
class ModelProfile:
    name: str
    aliases: tuple[str, ...]
    architecture: str
    layers: int
    moe_layers: int
    experts: int
    shared_experts: int
    top_k: int
    hidden: int
    expert_intermediate: int
    gating: str
    normalize_top_k: bool
    total_params: float
    active_params: float
    bits_per_weight: tuple[tuple[str, float], ...]
    source: str

    def weight_bytes(self, quantization: str) -> int:
        """Bytes of all weights at a quantization (what a GGUF of it occupies in memory)."""
        return int(self.total_params * self._bits(quantization) / 8)

    def active_bytes_per_token(self, quantization: str) -> int:
        """Weight bytes one decoded token reads (active parameters), at batch size 1."""
        return int(self.active_params * self._bits(quantization) / 8)

    def routed_expert_bytes(self, quantization: str) -> int:
        """Bytes of the routed experts alone (gate, up and down of every expert of every MoE layer)."""
        per_expert = 3 * self.hidden * self.expert_intermediate
        return int(self.moe_layers * self.experts * per_expert * self._bits(quantization) / 8)

    def _bits(self, quantization: str) -> float:
        table = dict(self.bits_per_weight)
        key = quantization.upper()
        if key not in table:
            raise ProfileError(f"model {self.name}: unknown quantization '{quantization}' "
                               f"(known: {', '.join(sorted(table))})")
        return table[key]


Check = Callable[[Any], bool]


def _field(data: dict, name: str, where: str, check: Check, expected: str, default: Any = ...) -> Any:
    if name not in data:
        if default is ...:
            raise ProfileError(f"{where}: field '{name}' is missing")
        return default
    value = data[name]
    if not check(value):
        raise ProfileError(f"{where}: field '{name}' must be {expected}, got {value!r}")
    return value


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _text(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(_text(x) for x in v)


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ProfileError(f"{path}:{line} not valid YAML") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of fields at the top level")
    return data


def parse_model_profile(data: dict, where: str) -> ModelProfile:
    f = lambda name, check, expected, default=...: _field(data, name, where, check, expected, default)  # noqa: E731
    layers = f("layers", _positive_int, "an integer ≥ 1")
    moe_layers = f("moe_layers", _positive_int, "an integer ≥ 1")
    if moe_layers > layers:
        raise ProfileError(f"{where}: field 'moe_layers' ({moe_layers}) exceeds 'layers' ({layers})")
    experts = f("experts", _positive_int, "an integer ≥ 1")
    top_k = f("top_k", _positive_int, "an integer ≥ 1")
    if top_k > experts:
        raise ProfileError(f"{where}: field 'top_k' ({top_k}) exceeds 'experts' ({experts})")
    total = float(f("total_params", _positive_number, "a positive number"))
    active = float(f("active_params", _positive_number, "a positive number"))
    if active > total:
        raise ProfileError(f"{where}: field 'active_params' exceeds 'total_params'")
    extra_bits = f("bits_per_weight", lambda v: isinstance(v, dict) and all(
        _text(k) and _positive_number(x) for k, x in v.items()), "a mapping of quantization to bits", {})
    bits = dict(DEFAULT_BITS_PER_WEIGHT)
    bits.update({k.upper(): float(v) for k, v in extra_bits.items()})
    return ModelProfile(
        name=f("name", _text, "a non-empty string"),
        aliases=tuple(f("aliases", _str_list, "a list of names", [])),
        architecture=f("architecture", _text, "a non-empty string"),
        layers=layers, moe_layers=moe_layers, experts=experts,
        shared_experts=f("shared_experts", _count, "an integer ≥ 0", 0),
        top_k=top_k,
        hidden=f("hidden", _positive_int, "an integer ≥ 1"),
        expert_intermediate=f("expert_intermediate", _positive_int, "an integer ≥ 1"),
        gating=f("gating", lambda v: v in ("softmax", "sigmoid"), "'softmax' or 'sigmoid'"),
        normalize_top_k=f("normalize_top_k", lambda v: isinstance(v, bool), "true or false", True),
        total_params=total, active_params=active,
        bits_per_weight=tuple(sorted(bits.items())),
        source=where,
    )


def load_profiles(directory: Path, parse: Callable[[dict, str], Any]) -> dict[str, Any]:
    """Every `*.yaml` of a directory, parsed and validated, by profile name."""
    out: dict[str, Any] = {}
    for path in sorted(directory.glob("*.yaml")):
        profile = parse(read_yaml(path), str(path))
        out[profile.name] = profile
    return out


def model_profiles(directory: Path | None = None) -> dict[str, ModelProfile]:
    return load_profiles(directory or PROFILES_DIR / "models", parse_model_profile)


def find_model_profile(name: str, directory: Path | None = None) -> ModelProfile:
    """A model profile by name or alias, case-insensitive; a quantization suffix is ignored."""
    profiles = model_profiles(directory)
    wanted = name.lower()
    for profile in profiles.values():
        if wanted == profile.name or wanted in (a.lower() for a in profile.aliases):
            return profile
    raise ProfileError(f"no model profile named '{name}' (known: {', '.join(sorted(profiles))})")


# ---------------------------------------------------------------------------------------------
# Engine profiles: how a configuration becomes a command for each target engine.

TEMPLATE_VARIABLES = ("threads", "threads_plus_one", "threads_per_node", "nodes", "cpus",
                      "cpus_by_rank", "ranks", "policy", "program")
PLACEMENT_CONDITIONS = ("always", "never", "build-flag", "without-build-flag", "tensor-parallel")
WHEN = ("always", "multi-node", "single-node", "replicate", "tensor-parallel")
# How an engine sends its compute threads to nodes: worker i of W to memory node floor(i*M/W)
# (ktransformers' NUMA build), or thread i to CPU node i mod N (llama.cpp --numa distribute).
SPREADS = ("by-index", "round-robin")
# Where each value of an engine's thread-placement flag puts the compute threads (llama.cpp --numa):
# on the CPUs the process was given (numactl), thread i on every CPU of node i mod N over all the
# machine's nodes (distribute), or every thread on every CPU of the node it started on (isolate).
NUMA_MODE_PLACEMENTS = ("given", "all-nodes", "starting-node")
_TEMPLATE_FIELD = re.compile(r"{([^{}]*)}")


@dataclass(frozen=True)
class TemplatedFlag:
    name: str                 # a flag ("--numa") or an environment variable
    value: str                # template
    when: str


BENCHMARK_VARIABLES = TEMPLATE_VARIABLES + ("model", "tokens", "repeats")
BENCHMARK_REPEATS = ("engine", "rerun")
# Throughput parsers (numatune.external.PARSERS implements them).
BENCHMARK_PARSERS = ("llama-bench-json", "llama-timings", "ktransformers", "vllm-bench", "sglang-bench")


@dataclass(frozen=True)
class BenchmarkSpec:
    """How `tune --engine E` runs the engine itself as a trial: its benchmark command (templated;
    the profile's thread flag and flags are then set on it as `launch` sets them), the parser
    that reads its throughput, and who repeats the measurement (the engine, or numatune by
    running the command again)."""

    command: tuple[str, ...]                   # empty: the user gives it after `--`
    parser: str
    repeats: str                               # engine | rerun
    parsers: tuple[tuple[str, str], ...]       # program name → parser, for the user's own commands
    drop_flags: tuple[str, ...]                # profile flags the benchmark program does not take

    def parser_for(self, program: str) -> str:
        return dict(self.parsers).get(Path(program).name, self.parser)


SYNC_UNITS = ("graph-node", "moe-layer")


@dataclass(frozen=True)
class SyncSpec:
    """How often the engine's compute threads all meet during a decoded token, per layer: after
    every graph node (llama.cpp's ggml thread pool) or once per MoE layer (ktransformers). When the
    bundled engine stands in for this engine in `tune`, it runs that many real barriers per layer."""

    per: str                                   # graph-node | moe-layer
    barriers_per_layer: int                    # any architecture not in by_arch
    by_arch: tuple[tuple[str, int], ...] = ()  # general.architecture -> barriers per layer

    def barriers_for(self, arch: str | None) -> int:
        """Barriers per layer of a model of this architecture (a graph's node count depends on
        its layers: a deepseek2 layer has more nodes than a qwen3moe one)."""
        return dict(self.by_arch).get(arch or "", self.barriers_per_layer)


@dataclass(frozen=True)
class EngineProfile:
    name: str
    executable: str
    numa_aware: str           # yes | no | build-flag
    build_flag: str | None
    rebuild: str | None
    multi_node: str
    placements: tuple[tuple[str, str], ...]
    threads_flag: str | None
    threads_value: str
    threads_counts: str
    reserved_threads: int
    reserved_per: str          # process | rank: the reserved threads are kept once, or once per rank
    threads_aliases: tuple[str, ...]          # other spellings of threads_flag the engine accepts
    default_cores_less: int | None            # unset, the flag's value is the physical cores minus this
    numa_flag: str | None                     # the engine's own thread-placement flag (llama.cpp --numa)
    numa_flag_bare: str | None                # what that flag means given without a value
    numa_flag_spreads: tuple[tuple[str, str], ...]   # that flag's value -> how threads go to nodes
    numa_flag_modes: tuple[tuple[str, str], ...]     # that flag's values -> NUMA_MODE_PLACEMENTS (searched)
    numa_flag_max_nodes: int | None           # nodes its NUMA code counts: node0, node1, … up to this many
    build_flag_spread: str | None             # how the build-flag (NUMA) build sends workers to nodes
    flags: tuple[TemplatedFlag, ...]
    env: tuple[TemplatedFlag, ...]
    numactl: bool
    notes: tuple[str, ...]
    source: str
    benchmark: BenchmarkSpec | None = None
    sync: SyncSpec | None = None               # None: nothing to emulate (the bundled engine's own)
    maps_model: str | None = None              # the engine maps the model file by default; how to load a private copy

    @property
    def sync_barriers(self) -> int:
        """Barriers per layer the bundled engine runs when it stands in for this engine."""
        return self.sync.barriers_per_layer if self.sync else 0

    def for_arch(self, arch: str | None) -> "EngineProfile":
        """This profile with its synchronisation counted for a model of architecture `arch`."""
        if self.sync is None or not self.sync.by_arch:
            return self
        return replace(self, sync=SyncSpec(self.sync.per, self.sync.barriers_for(arch)))

    def placement_condition(self, policy: str) -> str:
        return dict(self.placements).get(policy, "never")

    @property
    def numa_mode_default(self) -> str | None:
        """The value of the thread-placement flag that the profile's own flags always set."""
        return next((f.value for f in self.flags if f.name == self.numa_flag and f.when == "always"), None)


def _template(value: Any, where: str, field: str) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ProfileError(f"{where}: field '{field}' must be a string template, got {value!r}")
    for name in _TEMPLATE_FIELD.findall(str(value)):
        if name not in TEMPLATE_VARIABLES:
            raise ProfileError(f"{where}: field '{field}' uses unknown template variable '{{{name}}}' "
                               f"(known: {', '.join(TEMPLATE_VARIABLES)})")
    return str(value)


def _templated_list(data: dict, key: str, name_key: str, where: str) -> tuple[TemplatedFlag, ...]:
    items = data.get(key) or []
    if not isinstance(items, list):
        raise ProfileError(f"{where}: field '{key}' must be a list")
    out = []
    for i, item in enumerate(items):
        field = f"{key}[{i}]"
        if not isinstance(item, dict) or not _text(item.get(name_key)):
            raise ProfileError(f"{where}: field '{field}.{name_key}' is missing")
        when = item.get("when", "always")
        if when not in WHEN:
            raise ProfileError(f"{where}: field '{field}.when' must be one of {', '.join(WHEN)}, got {when!r}")
        out.append(TemplatedFlag(item[name_key], _template(item.get("value", ""), where, f"{field}.value"), when))
    return tuple(out)


def _section(data: dict, key: str, where: str, expected: str):
    """An optional mapping field: (its dict or None, a reader of its fields naming it in errors)."""
    spec = data.get(key)
    if spec is not None and not isinstance(spec, dict):
        raise ProfileError(f"{where}: field '{key}' must be {expected}")
    read = lambda name, check, expected, default=...: _field(spec, name, f"{where}: {key}", check, expected, default)  # noqa: E731
    return spec, read


def _benchmark(data: dict, where: str) -> BenchmarkSpec | None:
    spec, f = _section(data, "benchmark", where, "a mapping")
    if spec is None:
        return None
    command = f("command", lambda v: isinstance(v, list) and all(isinstance(x, (str, int)) for x in v),
                "a list of words", [])
    for i, word in enumerate(command):
        for name in _TEMPLATE_FIELD.findall(str(word)):
            if name not in BENCHMARK_VARIABLES:
                raise ProfileError(f"{where}: field 'benchmark.command[{i}]' uses unknown template variable "
                                   f"'{{{name}}}' (known: {', '.join(BENCHMARK_VARIABLES)})")
    parser_names = lambda v: isinstance(v, dict) and all(_text(k) and x in BENCHMARK_PARSERS for k, x in v.items())  # noqa: E731
    return BenchmarkSpec(
        command=tuple(str(w) for w in command),
        parser=f("parser", lambda v: v in BENCHMARK_PARSERS, "one of " + ", ".join(BENCHMARK_PARSERS)),
        repeats=f("repeats", lambda v: v in BENCHMARK_REPEATS, " or ".join(BENCHMARK_REPEATS), "rerun"),
        parsers=tuple(f("parsers", parser_names, "a mapping of program to parser", {}).items()),
        drop_flags=tuple(f("drop_flags", _str_list, "a list of flags", [])))


def _sync(data: dict, where: str) -> SyncSpec | None:
    spec, f = _section(data, "sync", where, "a mapping (per, barriers_per_layer, by_arch)")
    if spec is None:
        return None
    counts = lambda v: isinstance(v, dict) and all(_text(k) and _count(x) for k, x in v.items())  # noqa: E731
    return SyncSpec(per=f("per", lambda v: v in SYNC_UNITS, " or ".join(SYNC_UNITS)),
                    barriers_per_layer=f("barriers_per_layer", _count, "an integer ≥ 0"),
                    by_arch=tuple(f("by_arch", counts, "a mapping of architecture to an integer ≥ 0", {}).items()))


def parse_engine_profile(data: dict, where: str) -> EngineProfile:
    f = lambda name, check, expected, default=...: _field(data, name, where, check, expected, default)  # noqa: E731
    # YAML 1.1 reads a bare yes/no as a boolean.
    aware = {True: "yes", False: "no"}.get(data.get("numa_aware"), data.get("numa_aware"))
    if aware not in ("yes", "no", "build-flag"):
        raise ProfileError(f"{where}: field 'numa_aware' must be yes, no or build-flag, got {aware!r}")
    build = data.get("build") or {}
    if aware == "build-flag" and not (isinstance(build, dict) and _text(build.get("flag"))):
        raise ProfileError(f"{where}: field 'build.flag' is missing (numa_aware is build-flag)")
    placements = f("placements", lambda v: isinstance(v, dict), "a mapping of policy to condition")
    for policy, condition in placements.items():
        if policy not in POLICY_NAMES:
            raise ProfileError(f"{where}: field 'placements.{policy}' is not a policy")
        if condition not in PLACEMENT_CONDITIONS:
            raise ProfileError(f"{where}: field 'placements.{policy}' must be one of "
                               f"{', '.join(PLACEMENT_CONDITIONS)}, got {condition!r}")
    threads = f("threads", lambda v: isinstance(v, dict), "a mapping")
    reserved = threads.get("reserved_threads", 0)
    if not _count(reserved):
        raise ProfileError(f"{where}: field 'threads.reserved_threads' must be an integer ≥ 0")
    reserved_per = threads.get("reserved_per", "process")
    if reserved_per not in ("process", "rank"):
        raise ProfileError(f"{where}: field 'threads.reserved_per' must be process or rank, got {reserved_per!r}")
    aliases = threads.get("aliases", [])
    if not _str_list(aliases):
        raise ProfileError(f"{where}: field 'threads.aliases' must be a list of flags")
    default = threads.get("default")
    match = re.fullmatch(r"physical-cores(?: - (\d+))?", str(default)) if default is not None else None
    if default is not None and match is None:
        raise ProfileError(f"{where}: field 'threads.default' must be 'physical-cores' or 'physical-cores - N', "
                           f"got {default!r}")
    numa_flag = threads.get("numa_flag") or {}
    if not isinstance(numa_flag, dict) or (numa_flag and not _text(numa_flag.get("flag"))):
        raise ProfileError(f"{where}: field 'threads.numa_flag.flag' is missing")
    spreads = numa_flag.get("spreads") or {}
    modes = numa_flag.get("modes") or {}
    if not isinstance(modes, dict):
        raise ProfileError(f"{where}: field 'threads.numa_flag.modes' must map each value to "
                           f"{', '.join(NUMA_MODE_PLACEMENTS)}")
    for mode, placement in modes.items():
        if placement not in NUMA_MODE_PLACEMENTS:
            raise ProfileError(f"{where}: field 'threads.numa_flag.modes.{mode}' must be one of "
                               f"{', '.join(NUMA_MODE_PLACEMENTS)}, got {placement!r}")
    max_nodes = numa_flag.get("max_nodes")
    if max_nodes is not None and (not isinstance(max_nodes, int) or isinstance(max_nodes, bool) or max_nodes < 1):
        raise ProfileError(f"{where}: field 'threads.numa_flag.max_nodes' must be an integer >= 1, got {max_nodes!r}")
    build_spread = threads.get("build_flag_spread")
    for field, spread in [(f"threads.numa_flag.spreads.{k}", v) for k, v in dict(spreads).items()] + \
            ([("threads.build_flag_spread", build_spread)] if build_spread is not None else []):
        if spread not in SPREADS:
            raise ProfileError(f"{where}: field '{field}' must be one of {', '.join(SPREADS)}, got {spread!r}")
    numactl = f("numactl", lambda v: isinstance(v, bool), "true or false")
    return EngineProfile(
        name=f("name", _text, "a non-empty string"),
        executable=_template(f("executable", _text, "a non-empty string"), where, "executable"),
        numa_aware=aware, build_flag=build.get("flag") if build else None,
        rebuild=build.get("rebuild") if build else None,
        multi_node=f("multi_node", lambda v: v in ("replicate", "tensor-parallel", "threads-only", "none"),
                     "replicate, tensor-parallel, threads-only or none"),
        placements=tuple(placements.items()),
        threads_flag=threads.get("flag"),
        threads_value=_template(threads.get("value", "{threads}"), where, "threads.value"),
        threads_counts=str(threads.get("counts", "")), reserved_threads=reserved, reserved_per=reserved_per,
        threads_aliases=tuple(aliases), default_cores_less=int(match.group(1) or 0) if match else None,
        numa_flag=numa_flag.get("flag"), numa_flag_bare=numa_flag.get("bare"),
        numa_flag_spreads=tuple(dict(spreads).items()), numa_flag_modes=tuple((str(k), v) for k, v in modes.items()),
        numa_flag_max_nodes=max_nodes,
        build_flag_spread=build_spread,
        flags=_templated_list(data, "flags", "flag", where), env=_templated_list(data, "env", "name", where),
        numactl=numactl, notes=tuple(str(n) for n in data.get("notes") or ()), source=where,
        benchmark=_benchmark(data, where), sync=_sync(data, where),
        maps_model=f("maps_model", _text, "a non-empty string (how to load a private copy)", None))


def engine_profiles(directory: Path | None = None) -> dict[str, EngineProfile]:
    return load_profiles(directory or PROFILES_DIR / "engines", parse_engine_profile)


def find_engine_profile(name: str, directory: Path | None = None) -> EngineProfile:
    profiles = engine_profiles(directory)
    if name not in profiles:
        raise ProfileError(f"--engine: no engine profile named '{name}' (known: {', '.join(sorted(profiles))})")
    return profiles[name]
