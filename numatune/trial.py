"""One trial of the search: the bundled engine decoding in a child process, placed exactly as
`numatune launch` would place the target engine for the same configuration (a numactl prefix
when the target's profile uses numactl and it is installed; otherwise CPU affinity and memory
policy set by numatune in the child before exec).

The child is `python -m numatune.cli bench --json`, run from `/` so that a source checkout in
the current directory cannot shadow the installed package. It is handed the parent's Topology
as a probe JSON file (`--topology`): the machine is probed once per run, not once per trial.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import Configuration
from .errors import NumatuneError
from .command import numactl_args, placement_for, thread_budget
from .launch import apply_placement
from .profiles import EngineProfile, find_engine_profile
from .search import Stage
from .stats import Measurement
from .store import Trial
from .sysfs import format_cpulist
from .topology.model import Topology


@dataclass(frozen=True)
class ModelChoice:
    """The model trials decode: a user's GGUF file, or a synthetic preset (regenerated from its
    label when the cached file is gone, e.g. on a fresh CI runner)."""

    path: Path
    label: str               # stored in results: the file's absolute path, or synthetic:PRESET:TYPE:LxE

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelChoice":
        p = Path(path).resolve()
        if not p.is_file():
            raise NumatuneError(f"--model: {path}: no such GGUF file")
        return cls(p, str(p))

    @classmethod
    def synthetic(cls, topology, preset: str = "default", type_name: str = "Q4_K_M") -> "ModelChoice":
        from .synth import model_for_machine
        path = model_for_machine(topology, type_name, preset)
        layers_experts = path.stem.rsplit("-", 1)[-1]          # e.g. 2x128
        return cls(path, f"synthetic:{preset}:{type_name.upper()}:{layers_experts}")

    @classmethod
    def complete(cls, preset: str = "default", type_name: str = "Q4_K_M") -> "ModelChoice":
        """A synthetic complete model (fullmodel.py), for engines that need one to decode."""
        from .fullmodel import cached_complete_model
        path = cached_complete_model(preset, type_name)
        layers_experts = path.stem.rsplit("-", 1)[-1]
        return cls(path, f"synthetic-complete:{preset}:{type_name.upper()}:{layers_experts}")

    @classmethod
    def from_label(cls, label: str) -> "ModelChoice":
        if not label.startswith(("synthetic:", "synthetic-complete:")):
            return cls.from_file(label)
        try:
            kind, preset, type_name, shape = label.split(":")
            layers, experts = (int(x) for x in shape.split("x"))
        except ValueError:
            raise NumatuneError(f"model '{label}': not a file path or synthetic:PRESET:TYPE:LAYERSxEXPERTS") from None
        if kind == "synthetic-complete":
            from .fullmodel import cached_complete_model
            return cls(cached_complete_model(preset, type_name, layers=layers, experts=experts), label)
        from .synth import cached_model
        return cls(cached_model(preset, type_name, layers=layers, experts=experts), label)


def trial_argv(model: Path, config: Configuration, stage: Stage, topology_file: Path,
               compute_cpus: Optional[tuple[int, ...]] = None, sync_barriers: int = 0) -> list[str]:
    """The child's command: the bundled engine's threads on `compute_cpus` (default: every CPU of
    the configuration); `sync_barriers`: the target engine's barriers per layer (its profile's sync),
    emulated."""
    return [sys.executable, "-m", "numatune.cli", "bench", "--model", str(model),
            "--cpus", format_cpulist(compute_cpus or config.cpus), "--policy", config.policy.value,
            "--nodes", format_cpulist(config.nodes), "--tokens", str(stage.tokens),
            "--repeats", str(stage.repeats), "--no-bandwidth", "--topology", str(topology_file), "--json"] + \
        (["--sync-barriers", str(sync_barriers)] if sync_barriers else [])


def drop_cached_pages(path: Path) -> None:
    """Evicts the file's clean pages from the page cache (posix_fadvise DONTNEED: any user who can
    read the file may), so that a trial loads from a known, cold state."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_trial(config: Configuration, model: ModelChoice, stage_index: int, stage: Stage,
              target: Optional[EngineProfile] = None, timeout: float = 600.0, cold_cache: bool = False,
              topology: Optional[Topology] = None) -> Trial:
    """Runs one trial to completion. A failed child is a Trial with `error` set (its last line
    of stderr), never an exception: one bad configuration does not stop the search.

    With `cold_cache`, the model file's pages are dropped from the page cache first, so every
    trial loads from disk into the placement it asks for (without it, pages cached by an earlier
    trial stay on the node that read them; the bundled engine copies the weights into placed
    memory, so this changes load time, not the decode speed measured).

    Several instances (one per node) run as that many children at once; the trial's tokens/s
    is their sum, repeat by repeat (the aggregate throughput), its memory their sum.

    `topology` is the live machine's, probed once by the caller; without it, it is probed here."""
    target = target or find_engine_profile("numatune")
    topology = topology or _probe_live()
    if cold_cache:
        drop_cached_pages(model.path)
    with tempfile.TemporaryDirectory(prefix="numatune-trial-") as folder:
        topology_file = Path(folder) / "topology.json"
        topology_file.write_text(json.dumps(topology.to_json()))
        return _run_children(config, model, stage_index, stage, target, timeout, topology, topology_file)


def _run_children(config: Configuration, model: ModelChoice, stage_index: int, stage: Stage, target: EngineProfile,
                  timeout: float, topology: Topology, topology_file: Path) -> Trial:
    parts = config.split(topology.node_of_cpu) if config.instances > 1 else (config,)
    children = []
    try:
        for part in parts:
            try:
                budget = thread_budget(part, target, topology.node_of_cpu)
            except NumatuneError as exc:
                return _failed(config, stage_index, str(exc))
            child = _start(part, model, stage, target, topology_file, budget.compute_cpus)
            if isinstance(child, str):
                return _failed(config, stage_index, child)
            children.append(child)
        outputs = [_finish(child, timeout) for child in children]
    except BaseException:               # Ctrl-C: the children are in their own sessions; stop them too
        for child in children:
            _kill(child)
        raise
    failed = [out for out in outputs if isinstance(out, str)]
    if failed:
        return _failed(config, stage_index, failed[0])
    compute = tuple(sorted(cpu for o in outputs for cpu in o[3]))
    if len(outputs) == 1:
        tokens, gbps, resident, _ = outputs[0]
        return Trial(config, tokens, gbps, resident, stage_index, compute_cpus=compute)
    speeds = [sum(values) for values in zip(*(o[0].samples for o in outputs))]
    gbps = [sum(values) for values in zip(*(o[1].samples for o in outputs))]
    return Trial(config, Measurement.of(speeds, "tok/s"), Measurement.of(gbps, "GB/s"),
                 sum(o[2] for o in outputs), stage_index, compute_cpus=compute)


def _probe_live() -> Topology:
    from .sysfs import Root
    from .topology.probing import probe
    return probe(Root.open("/"))


def _start(config: Configuration, model: ModelChoice, stage: Stage, target: EngineProfile, topology_file: Path,
           compute_cpus: Optional[tuple[int, ...]] = None):
    """The placed child: the process on the CPUs and memory policy the target's launch gets, its
    engine threads on the CPUs the target's compute threads get (`thread_budget`)."""
    placement, by_numactl = placement_for(config, target)
    argv = (numactl_args(placement) if by_numactl else []) + trial_argv(model.path, config, stage, topology_file,
                                                                         compute_cpus, target.sync_barriers)
    env = dict(os.environ)
    preexec = None if by_numactl else (lambda: apply_placement(placement))
    try:
        return subprocess.Popen(argv, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=preexec, start_new_session=True)
    except (OSError, subprocess.SubprocessError) as exc:     # e.g. the kernel refused the placement
        return f"could not start the placed child: {exc}"


def _finish_json(child: subprocess.Popen, timeout: float):
    """The child's whole `bench --json` report, or its error as a string."""
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(child)
        return f"timed out after {timeout:.0f} s"
    if child.returncode != 0:
        lines = [line for line in (err or "").strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {child.returncode}"
    try:
        data = json.loads(out)
    except ValueError as exc:
        return f"unreadable trial output ({exc})"
    return data if isinstance(data, dict) else "unreadable trial output (not an object)"


def _finish(child: subprocess.Popen, timeout: float):
    """The child's (tokens/s, weight GB/s, resident bytes, CPUs its engine threads ran on), or its
    error as a string."""
    data = _finish_json(child, timeout)
    if isinstance(data, str):
        return data
    try:
        return (Measurement.from_json(data["tokens_per_s"]), Measurement.from_json(data["weight_gb_per_s"]),
                int(data["resident_bytes"]), tuple(int(c) for c in data["cpus"]))
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable trial output ({exc})"


def _kill_session(child: subprocess.Popen) -> None:
    """SIGKILL to the child's session (it was started with start_new_session); not waited for."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill(child: subprocess.Popen) -> None:
    if child.poll() is not None:
        return
    _kill_session(child)
    child.wait()


def _failed(config: Configuration, stage: int, why: str) -> Trial:
    return Trial(config, Measurement.of([0.0], "tok/s"), None, 0, stage, error=why)
