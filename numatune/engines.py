"""What an installed target engine can do with several NUMA nodes, read from the install itself."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from .elf import needed_libraries
from .errors import NumatuneError

ENGINES = ("ktransformers", "llama.cpp", "vllm-cpu", "sglang-cpu")

# ktransformers' README: the NUMA build (one copy of the experts per node) is made by setting
# USE_NUMA=1 in the environment of its install script; its CMake then links libnuma into the
# cpuinfer_ext extension, which is how an installed build can be told apart.
KTRANSFORMERS_REBUILD = "cd ktransformers && USE_NUMA=1 bash install.sh"


@dataclass(frozen=True)
class EngineInstall:
    """An engine as found on this machine (or as given by --engine-bin)."""

    engine: str
    location: str | None
    numa_aware: bool | None          # None: could not tell
    evidence: str
    fix: str | None = None


def inspect_engine(engine: str, engine_bin: Path | None = None) -> EngineInstall:
    if engine not in ENGINES:
        raise NumatuneError(f"--engine: unknown engine '{engine}' (expected one of: {', '.join(ENGINES)})")
    if engine_bin is not None and not engine_bin.exists():
        raise NumatuneError(f"--engine-bin: {engine_bin} does not exist")
    return _INSPECTORS[engine](engine_bin)


def _inspect_ktransformers(engine_bin: Path | None) -> EngineInstall:
    extension = _find_cpuinfer_ext(engine_bin)
    if extension is None:
        where = str(engine_bin) if engine_bin else "the Python path"
        return EngineInstall("ktransformers", None, None,
                             f"no cpuinfer_ext extension found in {where}: cannot tell whether the "
                             "build is NUMA-aware", KTRANSFORMERS_REBUILD)
    needed = needed_libraries(extension)
    numa = any(name.startswith("libnuma.so") for name in needed)
    evidence = (f"{extension} links {', '.join(needed) or 'no shared libraries'}"
                + ("" if numa else " (no libnuma: built without USE_NUMA)"))
    return EngineInstall("ktransformers", str(extension), numa, evidence,
                         None if numa else KTRANSFORMERS_REBUILD)


def _find_cpuinfer_ext(engine_bin: Path | None) -> Path | None:
    if engine_bin is not None:
        if engine_bin.is_file():
            return engine_bin
        found = sorted(engine_bin.rglob("cpuinfer_ext*.so"))
        return found[0] if found else None
    spec = importlib.util.find_spec("cpuinfer_ext")
    if spec is not None and spec.origin and spec.origin.endswith(".so"):
        return Path(spec.origin)
    for entry in sys.path:
        found = sorted(Path(entry or ".").glob("cpuinfer_ext*.so"))
        if found:
            return found[0]
    return None


def _inspect_llama_cpp(engine_bin: Path | None) -> EngineInstall:
    # llama.cpp spreads or confines its threads with --numa, but keeps one copy of the weights
    # (memory-mapped page cache, placed where first read): threads on other nodes read remotely.
    where = str(engine_bin) if engine_bin else None
    return EngineInstall("llama.cpp", where, False,
                         "llama.cpp keeps one copy of the weights; --numa only places threads",
                         "run one node's cores with --numa numactl under numactl --cpunodebind/--membind")


def _inspect_tensor_parallel(engine: str, module: str, env: str) -> EngineInstall:
    # vLLM's and SGLang's CPU back ends use several nodes through tensor parallelism, one rank
    # per node, each rank's threads bound by the *_CPU_OMP_THREADS_BIND variable.
    spec = importlib.util.find_spec(module)
    where = spec.origin if spec is not None else None
    evidence = (f"{engine} uses several nodes only with one tensor-parallel rank per node and {env} "
                "set per rank")
    return EngineInstall(engine, where, True, evidence, None)


_INSPECTORS = {
    "ktransformers": _inspect_ktransformers,
    "llama.cpp": _inspect_llama_cpp,
    "vllm-cpu": lambda _: _inspect_tensor_parallel("vllm-cpu", "vllm", "VLLM_CPU_OMP_THREADS_BIND"),
    "sglang-cpu": lambda _: _inspect_tensor_parallel("sglang-cpu", "sglang", "SGLANG_CPU_OMP_THREADS_BIND"),
}
